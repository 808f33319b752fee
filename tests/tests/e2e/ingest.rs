//! Events from other systems, published by a client that is not our code (the raw NATS text
//! protocol over TCP): valid ones change state like native events, invalid ones — 1,000 of
//! them — go to the dead-letter stream with reasons while the projector carries on.

use std::collections::BTreeMap;
use std::time::Duration;

use anchorage_schema::subjects::header;
use anchorage_tests::{TestNats, TestStack, dead_letters, eventually, within};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Publishes with nothing but the NATS text protocol: CONNECT, HPUB, PING/PONG.
async fn raw_publish(port: u16, messages: &[(String, String, Vec<u8>)]) {
    within(Duration::from_secs(30), "raw publishes", async {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = String::new();
        read.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("INFO "), "{line}");
        write
            .write_all(
                format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"lang\":\"raw\",\"version\":\"0\",\"user\":\"operator\",\"pass\":\"{}\"}}\r\n",
                    anchorage_tests::credentials().password("operator").unwrap()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let mut buf = Vec::new();
        for (subject, msg_id, payload) in messages {
            let headers = format!("NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n\r\n");
            buf.extend_from_slice(
                format!("HPUB {subject} {} {}\r\n", headers.len(), headers.len() + payload.len())
                    .as_bytes(),
            );
            buf.extend_from_slice(headers.as_bytes());
            buf.extend_from_slice(payload);
            buf.extend_from_slice(b"\r\n");
        }
        buf.extend_from_slice(b"PING\r\n");
        write.write_all(&buf).await.unwrap();
        loop {
            line.clear();
            read.read_line(&mut line).await.unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            if line.starts_with("PONG") {
                break;
            }
        }
    })
    .await
    .unwrap();
}

/// Keeps `leases` held by another process ("elsewhere") until `stop`, once that shows; the
/// workers holding them here stop at their next renewal.
async fn hold_elsewhere(
    bus: &anchorage_bus::Bus,
    leases: &[&'static str],
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let forger = tokio::spawn({
        let (bus, leases) = (bus.clone(), leases.to_vec());
        async move {
            let record = json!({"holder": "elsewhere", "host": "h", "pid": 0, "since_ms": 0});
            while !stop.is_cancelled() {
                for lease in &leases {
                    bus.publish_raw(
                        &format!("lease.{lease}"),
                        None,
                        record.to_string().into_bytes(),
                    )
                    .await
                    .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    for lease in leases {
        eventually(Duration::from_secs(10), "a forged lease", || async {
            let (_, r) = bus.lease(lease).await.ok()??;
            (r.holder == "elsewhere").then_some(())
        })
        .await
        .unwrap();
    }
    forger
}

/// Waits until the ingest worker has taken in everything `INGEST` holds now.
async fn taken_in(bus: &anchorage_bus::Bus, store: &anchorage_store::Store) {
    let end = bus.stream_state("INGEST").await.unwrap().last_seq.0;
    eventually(Duration::from_secs(60), "ingest at the end", || async {
        (store.checkpoint("ingest").await.ok()??.last_seq >= end).then_some(())
    })
    .await
    .unwrap();
}

/// The code and reason of every dead letter, in order.
async fn dead_reasons(nats_url: &str) -> Vec<(String, String)> {
    dead_letters(nats_url)
        .await
        .unwrap()
        .iter()
        .map(|d| (d[header::DLQ_CODE].clone(), d[header::DLQ_REASON].clone()))
        .collect()
}

fn ext(type_name: &str, id: &str, payload: Value) -> (String, String, Vec<u8>) {
    let body = json!({"id": id, "type": type_name, "v": 1, "occurred_at": 1_763_840_000_000u64,
                      "payload": payload});
    (
        format!("ext.crm.{type_name}"),
        format!("crm:{id}"),
        body.to_string().into_bytes(),
    )
}

/// A run of two parts: 300 users named `{prefix}000`… (the first part holds 250 of them),
/// then `group` created by the first of them, as event `id`.
fn users_then_group(
    prefix: &str,
    group: &str,
    id: &str,
    title: &str,
) -> Vec<(String, String, Vec<u8>)> {
    let mut batch: Vec<_> = (0..300)
        .map(|n| {
            let name = format!("{prefix}{n:03}");
            ext(
                "user.created",
                &format!("u-{name}"),
                json!({"user": name, "display_name": name}),
            )
        })
        .collect();
    batch.push(ext(
        "group.created",
        id,
        json!({"group": group, "owner": format!("{prefix}000"), "title": title}),
    ));
    batch
}

/// The last sequence of USERS.
async fn users_seq(bus: &anchorage_bus::Bus) -> u64 {
    bus.stream_state("USERS").await.unwrap().last_seq.0
}

/// Waits until USERS holds exactly `n` more than `before`.
async fn users_stored(bus: &anchorage_bus::Bus, before: u64, n: u64, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        let stored = bus.stream_state("USERS").await.ok()?.last_seq.0;
        (stored == before + n).then_some(())
    })
    .await
    .unwrap();
}

/// The n-th of a rotating set of invalid events, and the reason code it must get.
fn invalid(n: usize) -> ((String, String, Vec<u8>), &'static str) {
    let id = format!("bad-{n}");
    match n % 8 {
        0 => (
            ("ext.crm.user.created".into(), id, b"{not json".to_vec()),
            "malformed",
        ),
        1 => (
            ext("user.promoted", &id, json!({"user": "x"})),
            "unknown_type",
        ),
        2 => (
            ext("user.created", &id, json!({"user": "x"})),
            "schema_violation",
        ),
        3 => {
            let (s, i, _) = ext("user.created", &id, json!({}));
            let body = json!({"id": id, "type": "user.created", "v": 7, "occurred_at": 1,
                              "payload": {"user": "x", "display_name": "X"}});
            ((s, i, body.to_string().into_bytes()), "newer_version")
        }
        4 => {
            let (_, i, b) = ext(
                "user.created",
                &id,
                json!({"user": "x", "display_name": "X"}),
            );
            (("ext.crm.user.updated".into(), i, b), "type_mismatch")
        }
        5 => (
            ext(
                "group.members_added",
                &id,
                json!({"group": "nope", "members": ["alice"]}),
            ),
            "unknown_group",
        ),
        6 => (
            ext("user.deleted", &id, json!({"user": "ghost"})),
            "unknown_user",
        ),
        _ => (
            ext(
                "message.system_posted",
                &id,
                json!({"conv": "nowhere", "body": "hi"}),
            ),
            "unknown_conversation",
        ),
    }
}

#[tokio::test]
async fn external_events_apply_like_native_ones_and_invalid_ones_are_dead_lettered() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;

    let mut batch = vec![
        ext(
            "user.created",
            "u-alice",
            json!({"user": "alice", "display_name": "Alice"}),
        ),
        ext(
            "user.created",
            "u-bob",
            json!({"user": "bob", "display_name": "Bob"}),
        ),
        // Refers to users created just before: accepted once their projection caught up.
        ext(
            "group.created",
            "g-1",
            json!({"group": "g1", "owner": "alice", "title": "Ops", "members": ["bob"]}),
        ),
        // carol does not exist yet.
        ext(
            "group.members_added",
            "g-2",
            json!({"group": "g1", "members": ["carol"]}),
        ),
    ];
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    *expected.entry("unknown_user").or_default() += 1;
    for n in 0..1000 {
        let (msg, code) = invalid(n);
        batch.push(msg);
        *expected.entry(code).or_default() += 1;
        if n == 500 {
            batch.push(ext(
                "user.created",
                "u-carol",
                json!({"user": "carol", "display_name": "Carol"}),
            ));
            batch.push(ext(
                "group.members_added",
                "g-3",
                json!({"group": "g1", "members": ["carol"]}),
            ));
        }
    }
    batch.push(ext(
        "message.system_posted",
        "m-1",
        json!({"conv": "g1", "body": {"text": "deployed"}}),
    ));
    // The same external event again, under another NATS message id: applied once.
    let mut again = ext(
        "message.system_posted",
        "m-1",
        json!({"conv": "g1", "body": {"text": "deployed"}}),
    );
    again.1 = "crm:m-1:retry".into();
    batch.push(again);
    raw_publish(nats.server.port(), &batch).await;

    let total_dead: usize = expected.values().sum();
    let client = anchorage_tests::nats_client(&nats.url(), "operator")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    eventually(
        Duration::from_secs(120),
        "every invalid event in the dead-letter stream",
        || async {
            let info = js
                .get_stream("DEADLETTER")
                .await
                .ok()?
                .get_info()
                .await
                .ok()?;
            (info.state.messages as usize >= total_dead).then_some(())
        },
    )
    .await
    .unwrap();

    let members = eventually(Duration::from_secs(30), "carol to join g1", || async {
        let m = store.member_ids("g1").await.ok()?;
        (m.len() == 3).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(members, vec!["alice", "bob", "carol"]);
    let conv = eventually(Duration::from_secs(30), "the system message", || async {
        store.conversation("g1").await.ok()?
    })
    .await
    .unwrap();
    assert_eq!(
        conv.message_count, 1,
        "the repeated external event was applied once"
    );
    let msgs = store.messages_after("g1", 0, 10).await.unwrap();
    assert_eq!(msgs[0].sender, "system:crm");
    assert_eq!(msgs[0].body, r#"{"text":"deployed"}"#);

    // Every dead letter names its reason and origin; the counts match what was sent.
    let dead = dead_letters(&nats.url()).await.unwrap();
    let count = dead.len();
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        assert_eq!(d[header::DLQ_STREAM], "INGEST");
        assert!(d[header::DLQ_SUBJECT].starts_with("ext.crm."));
        assert!(!d[header::DLQ_REASON].is_empty());
        *got.entry(d[header::DLQ_CODE].clone()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = expected
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(count, total_dead);
    stack.stack.stop().await.unwrap();
}

// Events arriving together are taken in as runs: each event sees what the events before it
// created (also within its run, before any projection holds it) and nothing after it; a
// deletion ends the memberships made just before it; repeats apply once.
#[tokio::test]
async fn a_run_of_events_sees_what_came_before_each_and_nothing_after() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let user = |id: &str, name: &str| {
        ext(
            "user.created",
            id,
            json!({"user": name, "display_name": name}),
        )
    };
    let add = |id: &str, member: &str| {
        ext(
            "group.members_added",
            id,
            json!({"group": "g2", "members": [member]}),
        )
    };
    let mut repeat = user("u-dave", "dave");
    repeat.1 = "crm:u-dave:again".into();
    let batch = vec![
        user("u-dave", "dave"),
        user("u-erin", "erin"),
        ext(
            "group.created",
            "g-2",
            json!({"group": "g2", "owner": "dave", "title": "Run", "members": ["erin"]}),
        ),
        // Created a moment ago, in the same run.
        ext(
            "group.created",
            "g-2b",
            json!({"group": "g2", "owner": "dave", "title": "Again"}),
        ),
        ext("user.deleted", "d-erin", json!({"user": "erin"})),
        add("a-erin", "erin"),
        user("u-erin-2", "erin"),
        // frank comes later.
        add("a-frank-early", "frank"),
        user("u-frank", "frank"),
        add("a-frank", "frank"),
        repeat,
    ];
    raw_publish(nats.server.port(), &batch).await;

    let members = eventually(Duration::from_secs(60), "frank to join g2", || async {
        let m = store.member_ids("g2").await.ok()?;
        m.contains(&"frank".to_owned()).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(members, vec!["dave", "frank"], "erin's membership ended");
    assert!(store.user_deleted("erin").await.unwrap());
    let dead = eventually(Duration::from_secs(30), "four dead letters", || async {
        let d = dead_letters(&nats.url()).await.ok()?;
        (d.len() >= 4).then_some(d)
    })
    .await
    .unwrap();
    let codes: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d[header::DLQ_CODE].as_str(), d[header::DLQ_REASON].as_str()))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("group_exists", "group g2 already exists"),
            ("unknown_user", "user erin does not exist"),
            (
                "user_deleted",
                "user erin was deleted; a deleted user's id is not taken again"
            ),
            ("unknown_user", "user frank does not exist"),
        ]
    );
    // Everything was taken in: nothing more comes.
    taken_in(&stack.stack.bus, store).await;
    assert_eq!(dead_letters(&nats.url()).await.unwrap().len(), 4);
    stack.stack.stop().await.unwrap();
}

// A deletion this worker stored holds for what comes after it even while the users
// projection has not applied it (here: its lease is held elsewhere for a while): the deleted
// id is not taken again and the deleted user joins nothing.
#[tokio::test]
async fn a_deletion_holds_while_the_users_projection_lags() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let bus = stack.stack.bus.clone();
    raw_publish(
        nats.server.port(),
        &[
            ext(
                "user.created",
                "u-ya",
                json!({"user": "ya", "display_name": "A"}),
            ),
            ext(
                "user.created",
                "u-yc",
                json!({"user": "yc", "display_name": "C"}),
            ),
            ext(
                "group.created",
                "g-y",
                json!({"group": "gy", "owner": "ya", "title": "Y", "members": ["yc"]}),
            ),
        ],
    )
    .await;
    eventually(Duration::from_secs(30), "the group", || async {
        (store.member_ids("gy").await.ok()?.len() == 2).then_some(())
    })
    .await
    .unwrap();

    // Another process "holds" the users projection: it stops applying.
    let stop = tokio_util::sync::CancellationToken::new();
    let forger = hold_elsewhere(&bus, &["users"], stop.clone()).await;
    // The holder notices at its next renewal; that it stopped is asserted below (the users
    // checkpoint stays where it was while ingest works).
    tokio::time::sleep(anchorage_bus::lease::RENEW_EVERY * 2).await;
    let users_at = store.checkpoint("users").await.unwrap().unwrap().last_seq;
    raw_publish(
        nats.server.port(),
        &[
            ext("user.deleted", "d-yc", json!({"user": "yc"})),
            ext(
                "user.created",
                "u-yc-again",
                json!({"user": "yc", "display_name": "C again"}),
            ),
            ext(
                "group.members_added",
                "a-yc",
                json!({"group": "gy", "members": ["yc"]}),
            ),
        ],
    )
    .await;
    taken_in(&bus, store).await;
    assert_eq!(
        store.checkpoint("users").await.unwrap().unwrap().last_seq,
        users_at,
        "the users projection was held back meanwhile"
    );
    stop.cancel();
    forger.await.unwrap();

    eventually(Duration::from_secs(30), "yc deleted", || async {
        store.user_deleted("yc").await.ok()?.then_some(())
    })
    .await
    .unwrap();
    let members = eventually(Duration::from_secs(30), "yc gone from gy", || async {
        let m = store.member_ids("gy").await.ok()?;
        (m.len() == 1).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(members, vec!["ya"]);
    let codes: Vec<String> = dead_letters(&nats.url())
        .await
        .unwrap()
        .iter()
        .map(|d| d[header::DLQ_CODE].clone())
        .collect();
    assert_eq!(codes, vec!["user_deleted", "unknown_user"]);
    let users = users_seq(&bus).await;
    eventually(Duration::from_secs(30), "users applied", || async {
        (store.checkpoint("users").await.ok()??.last_seq >= users).then_some(())
    })
    .await
    .unwrap();
    assert!(store.user_deleted("yc").await.unwrap(), "still deleted");
    assert_eq!(store.member_ids("gy").await.unwrap(), vec!["ya"]);
    stack.stack.stop().await.unwrap();
}

// A run longer than a part (250 events) is checked part by part while the streams store the
// part before: a later part sees what an earlier one created — stored, perhaps not yet
// acknowledged, and not projected (the users and membership projections are held elsewhere
// meanwhile) — a repeat of an earlier part's id applies once, and an event a later part
// refuses is set aside alone while those after it apply.
#[tokio::test]
async fn a_run_longer_than_a_part_sees_what_its_earlier_parts_created() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let bus = stack.stack.bus.clone();
    let user = |id: &str, name: &str| {
        ext(
            "user.created",
            id,
            json!({"user": name, "display_name": name}),
        )
    };
    let add = |id: &str, members: &[&str]| {
        ext(
            "group.members_added",
            id,
            json!({"group": "g5", "members": members}),
        )
    };
    raw_publish(
        nats.server.port(),
        &[
            user("u-olga", "olga"),
            ext(
                "group.created",
                "g-4",
                json!({"group": "g4", "owner": "olga", "title": "Before"}),
            ),
        ],
    )
    .await;
    eventually(Duration::from_secs(30), "g4", || async {
        (store.member_ids("g4").await.ok()? == ["olga"]).then_some(())
    })
    .await
    .unwrap();

    // The whole batch waits in INGEST until the ingest worker takes over again, to be pulled
    // at once; the projections it refers to stay held until it was all taken in.
    let (hold_ingest, hold_projections) = (
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let ingest_forger = hold_elsewhere(&bus, &["ingest"], hold_ingest.clone()).await;
    let projections_forger =
        hold_elsewhere(&bus, &["users", "membership"], hold_projections.clone()).await;
    tokio::time::sleep(anchorage_bus::lease::RENEW_EVERY * 2).await;
    let users_at = store.checkpoint("users").await.unwrap().unwrap().last_seq;
    let users_before = users_seq(&bus).await;
    let membership_at = store
        .checkpoint("membership")
        .await
        .unwrap()
        .unwrap()
        .last_seq;

    let names: Vec<String> = (0..400).map(|n| format!("p{n:03}")).collect();
    let mut batch = vec![
        ext(
            "message.system_posted",
            "post-1",
            json!({"conv": "g4", "body": "Welcome"}),
        ),
        ext(
            "group.created",
            "g-5",
            json!({"group": "g5", "owner": "olga", "title": "Parts"}),
        ),
    ];
    batch.extend(names.iter().map(|n| user(&format!("u-{n}"), n)));
    // The second part: p005 was created in the first, p399 in this one.
    batch.push(add("a-1", &["p005", "p399"]));
    let mut repeat = user("u-p010", "p010");
    repeat.1 = "crm:u-p010:again".into();
    repeat.2 = serde_json::to_vec(&json!({"id": "u-p010", "type": "user.created", "v": 1,
        "occurred_at": 1_763_840_000_000u64,
        "payload": {"user": "p010", "display_name": "Impostor"}}))
    .unwrap();
    batch.push(repeat);
    batch.push(add("a-2", &["nobody"]));
    batch.push(add("a-3", &["p100"]));
    assert_eq!(batch.len(), 406);
    raw_publish(nats.server.port(), &batch).await;

    hold_ingest.cancel();
    ingest_forger.await.unwrap();
    taken_in(&bus, store).await;
    assert_eq!(
        store.checkpoint("users").await.unwrap().unwrap().last_seq,
        users_at,
        "the users projection was held back meanwhile"
    );
    assert_eq!(
        store
            .checkpoint("membership")
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        membership_at,
        "the membership projection was held back meanwhile"
    );
    hold_projections.cancel();
    projections_forger.await.unwrap();

    for (name, stream) in [("users", "USERS"), ("membership", "MEMBERSHIP")] {
        let last = bus.stream_state(stream).await.unwrap().last_seq.0;
        eventually(Duration::from_secs(30), name, || async {
            (store.checkpoint(name).await.ok()??.last_seq >= last).then_some(())
        })
        .await
        .unwrap();
    }
    let mut members = store.member_ids("g5").await.unwrap();
    members.sort();
    assert_eq!(members, ["olga", "p005", "p100", "p399"]);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let known = store.users_among(&refs).await.unwrap();
    assert!(
        refs.iter().all(|n| known.get(n) == Some(false)),
        "all 400 users, active"
    );
    let (display_name, _, _) = store.user_row("p010").await.unwrap().unwrap();
    assert_eq!(display_name, "p010", "the repeat changed nothing");
    assert_eq!(
        users_seq(&bus).await - users_before,
        400,
        "each user stored once"
    );
    assert_eq!(
        dead_reasons(&nats.url()).await,
        [(
            "unknown_user".to_owned(),
            "user nobody does not exist".to_owned()
        )]
    );
    eventually(Duration::from_secs(30), "the post", || async {
        (store.conversation("g4").await.ok()??.message_count == 1).then_some(())
    })
    .await
    .unwrap();
    stack.stack.stop().await.unwrap();
}

// A part of a run that refers to a projection its run did not wait for waits for it first: a
// group another process created — stored, not yet projected — is not created again by an
// event in the run's second part. The ingest lease lost while the part waits: nothing more is
// published until the worker holds it again, and the run taken in again stores nothing twice.
#[tokio::test]
async fn a_later_part_waits_for_a_projection_its_run_did_not_wait_for() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let bus = stack.stack.bus.clone();
    let (hold_ingest, hold_membership) = (
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let ingest_forger = hold_elsewhere(&bus, &["ingest"], hold_ingest.clone()).await;
    let membership_forger = hold_elsewhere(&bus, &["membership"], hold_membership.clone()).await;
    tokio::time::sleep(anchorage_bus::lease::RENEW_EVERY * 2).await;
    crate::common::create_group(&bus, "gx", &[], 0).await;
    let ingest_at = store.checkpoint("ingest").await.unwrap();
    let users_before = users_seq(&bus).await;

    // The first part holds only users; the second creates gx again.
    let batch = users_then_group("q", "gx", "g-x", "Again");
    raw_publish(nats.server.port(), &batch).await;
    hold_ingest.cancel();
    ingest_forger.await.unwrap();
    // The first part is stored; the second waits, within the run, while the membership
    // projection is held: the run is not over, so the ingest checkpoint has not moved.
    users_stored(&bus, users_before, 250, "the first part stored").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        users_seq(&bus).await,
        users_before + 250,
        "the second part waits"
    );
    assert_eq!(
        store.checkpoint("ingest").await.unwrap(),
        ingest_at,
        "the run goes on"
    );
    assert!(
        store.group_row("gx").await.unwrap().is_none(),
        "not projected yet"
    );

    let hold_ingest = tokio_util::sync::CancellationToken::new();
    let ingest_forger = hold_elsewhere(&bus, &["ingest"], hold_ingest.clone()).await;
    tokio::time::sleep(anchorage_bus::lease::TTL + anchorage_bus::lease::RENEW_EVERY).await;
    hold_membership.cancel();
    membership_forger.await.unwrap();
    eventually(Duration::from_secs(30), "gx projected", || async {
        store.group_row("gx").await.ok()?.map(|_| ())
    })
    .await
    .unwrap();
    tokio::time::sleep(anchorage_bus::lease::RENEW_EVERY * 2).await;
    assert_eq!(
        users_seq(&bus).await,
        users_before + 250,
        "nothing published without the lease"
    );
    hold_ingest.cancel();
    ingest_forger.await.unwrap();

    taken_in(&bus, store).await;
    assert_eq!(
        users_seq(&bus).await,
        users_before + 300,
        "each user stored once"
    );
    assert_eq!(
        dead_reasons(&nats.url()).await,
        [(
            "group_exists".to_owned(),
            "group gx already exists".to_owned()
        )]
    );
    let members = eventually(Duration::from_secs(30), "gx projected", || async {
        let m = store.member_ids("gx").await.ok()?;
        (!m.is_empty()).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(members, ["alice"], "the first creation stands");
    stack.stack.stop().await.unwrap();
}

/// A run stops waiting for its projections 30 s after it started: a run whose first part
/// waited about 20 s for the users projection gives up on the membership projection for its
/// second part some 10 s later, not 30. What the first part stored counts (the ingest
/// checkpoint moves exactly past it), nothing is stored twice, and the rest is taken in once
/// the projection is back.
#[tokio::test]
async fn a_run_waits_for_its_projections_thirty_seconds_in_all() {
    use anchorage_schema::event::UserCreated;
    use anchorage_schema::subjects;
    use tokio_util::sync::CancellationToken;

    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let bus = stack.stack.bus.clone();
    let (hold_ingest, hold_users, hold_membership) = (
        CancellationToken::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    let ingest_forger = hold_elsewhere(&bus, &["ingest"], hold_ingest.clone()).await;
    let users_forger = hold_elsewhere(&bus, &["users"], hold_users.clone()).await;
    let membership_forger = hold_elsewhere(&bus, &["membership"], hold_membership.clone()).await;
    tokio::time::sleep(anchorage_bus::lease::RENEW_EVERY * 2).await;
    // A user created by another writer: the users projection is behind its stream.
    let zz = crate::common::user("zz");
    let created = crate::common::system_event(
        "e-zz",
        UserCreated {
            user: zz.clone(),
            display_name: "Z".into(),
        },
    );
    bus.publish_event(&subjects::user(&zz), &created, None)
        .await
        .unwrap();
    // And a group: the membership projection is behind too.
    crate::common::create_group(&bus, "gq", &[], 0).await;
    let ingest_at = store.checkpoint("ingest").await.unwrap();
    let users_before = users_seq(&bus).await;
    let ingest_before = bus.stream_state("INGEST").await.unwrap().last_seq.0;

    // The first part holds only users; the second creates a group.
    let batch = users_then_group("z", "gz", "g-z", "Z");
    raw_publish(nats.server.port(), &batch).await;
    hold_ingest.cancel();
    ingest_forger.await.unwrap();
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        users_seq(&bus).await,
        users_before,
        "the first part waits for the users projection"
    );
    hold_users.cancel();
    users_forger.await.unwrap();
    users_stored(&bus, users_before, 250, "the first part stored").await;
    // The run gives up once its 30 s are over (it began once the worker took the lease over,
    // within the lease's TTL and a poll of `started`); were each wait allowed 30 s of its own,
    // it would end some 53 s in.
    let (ended, at) = eventually(Duration::from_secs(60), "the run over", || async {
        let at = store.checkpoint("ingest").await.ok()?;
        (at != ingest_at).then(|| (started.elapsed(), at))
    })
    .await
    .unwrap();
    assert_eq!(
        at.map(|c| c.last_seq),
        Some(ingest_before + 250),
        "the checkpoint moves exactly past the first part"
    );
    assert!(
        ended >= Duration::from_secs(25) && ended <= Duration::from_secs(42),
        "the run ended {ended:?} after the worker could take it in"
    );
    assert_eq!(
        users_seq(&bus).await,
        users_before + 250,
        "the second part was not handed over"
    );

    hold_membership.cancel();
    membership_forger.await.unwrap();
    taken_in(&bus, store).await;
    assert_eq!(
        users_seq(&bus).await,
        users_before + 300,
        "each user stored once"
    );
    eventually(Duration::from_secs(30), "gz projected", || async {
        store.group_row("gz").await.ok()?.map(|_| ())
    })
    .await
    .unwrap();
    assert!(dead_reasons(&nats.url()).await.is_empty());
    stack.stack.stop().await.unwrap();
}
