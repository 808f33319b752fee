//! The stack in-process against a real nats-server and SQLite: readiness, projections,
//! poison events, restarts.

use std::time::Duration;

use crate::common::{system_event, user};
use anchorage_bus::Bus;
use anchorage_schema::event::{
    GroupCreated, MembersAdded, MembersRemoved, MessageSent, ReadMarked, RemovalReason, UserCreated,
};
use anchorage_schema::subjects::{self, header};
use anchorage_schema::{ClientMsgId, ConversationId, DeviceId, Envelope, GroupId};
use anchorage_tests::{TestNats, TestStack, dead_letters, eventually, http_get};

const WAIT: Duration = Duration::from_secs(20);

fn message(conv: &ConversationId, n: u32) -> Envelope {
    system_event(
        &format!("d1:m{n}"),
        MessageSent {
            conv: conv.clone(),
            sender: user("alice"),
            device: DeviceId::parse("d1").unwrap(),
            client_msg_id: ClientMsgId::parse(format!("m{n}")).unwrap(),
            body: serde_json::json!({"text": format!("hello {n}")}),
            client_ts: 1_763_839_999_000 + i64::from(n),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        },
    )
}

#[tokio::test]
async fn readyz_follows_nats_database_and_stream_drift() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();

    assert_eq!(http_get(addr, "/livez").await.unwrap().0, 200);
    let (status, body) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ready\":true"), "{body}");

    // Someone edits a stream behind our back: not ready, and the drift is named.
    let client = anchorage_tests::nats_client(&nats.url(), "operator")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let mut info = js
        .get_stream("READS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    info.config.max_message_size = 2048;
    js.update_stream(info.config).await.unwrap();
    let (status, body) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("stream READS: updated") && body.contains("max_msg_size"),
        "{body}"
    );

    // NATS goes away: not ready, the edge itself stays alive.
    let mut nats = nats;
    nats.server.kill().await.unwrap();
    let body = eventually(WAIT, "readyz to report NATS down", || async {
        let (status, body) = http_get(addr, "/readyz").await.ok()?;
        (status == 503 && body.contains("\"nats\":{\"ok\":false")).then_some(body)
    })
    .await
    .unwrap();
    assert!(body.contains("\"database\":{\"ok\":true}"), "{body}");
    assert_eq!(http_get(addr, "/livez").await.unwrap().0, 200);
    stack.stack.stop().await.unwrap();
}

fn row(seq: u64, client_msg_id: &str) -> anchorage_store::NewMessage {
    anchorage_store::NewMessage {
        conv: "c".into(),
        seq,
        sender: "alice".into(),
        device: "d1".into(),
        client_msg_id: client_msg_id.into(),
        body: format!(r#"{{"text":"number {seq}"}}"#),
        client_ts: 1,
        server_ts: i64::try_from(seq).unwrap(),
        event_id: format!("e{seq}"),
        kind: anchorage_store::EntryKind::Message,
        target: None,
        reply_to: None,
        mentions: Vec::new(),
        emoji: None,
        flag: None,
        membership: None,
        attachments: Vec::new(),
        terms: None,
    }
}

fn in_d(m: anchorage_store::NewMessage) -> anchorage_store::NewMessage {
    anchorage_store::NewMessage {
        conv: "d".into(),
        ..m
    }
}

// A chunk of messages is inserted in one statement that answers nothing when every row is
// new; one holding a message stored already (the same seq, or the same sender's id) is
// taken back and inserted again answering which are new: only those count, move the
// conversation and are indexed.
#[tokio::test]
async fn a_chunk_holding_stored_messages_stores_and_counts_only_the_new_ones() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.insert_messages(&[row(1, "a"), row(2, "b")])
            .await
            .unwrap(),
        2
    );
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    let chunk = [
        row(2, "b"),
        row(3, "a"),
        row(4, "c"),
        row(5, "c"),
        row(6, "d"),
        // The same id in another conversation is another message.
        in_d(row(9, "a")),
    ];
    assert_eq!(tx.insert_messages(&chunk).await.unwrap(), 3);
    assert!(!tx.insert_message(&in_d(row(10, "a"))).await.unwrap());
    // A single row says by itself whether it went in.
    assert_eq!(tx.insert_messages(&[row(7, "a")]).await.unwrap(), 0);
    assert!(!tx.insert_message(&row(4, "c")).await.unwrap());
    assert!(tx.insert_message(&row(8, "e")).await.unwrap());
    tx.commit().await.unwrap();

    let seqs: Vec<u64> = store
        .messages_after("c", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 4, 6, 8]);
    let conv = store.conversation("c").await.unwrap().unwrap();
    assert_eq!((conv.message_count, conv.last_seq), (5, 8));
    let other = store.conversation("d").await.unwrap().unwrap();
    assert_eq!((other.message_count, other.last_seq), (1, 9));

    // Many chunks (1,000 rows each), each bound while the one before is written: a message
    // stored already in the middle one is skipped there alone, and only the new ones get a
    // search document (SQLite refuses a second document for a seq).
    let in_e = |seq: u64| anchorage_store::NewMessage {
        conv: "e".into(),
        ..row(seq, &format!("m{seq}"))
    };
    let mut tx = store.begin().await.unwrap();
    assert!(tx.insert_message(&in_e(2_500)).await.unwrap());
    let many: Vec<_> = (1_000..3_500).map(in_e).collect();
    assert_eq!(tx.insert_messages(&many).await.unwrap(), 2_499);
    tx.commit().await.unwrap();
    let conv = store.conversation("e").await.unwrap().unwrap();
    assert_eq!((conv.message_count, conv.last_seq), (2_500, 3_499));
    let stored = store.messages_after("e", 0, 5_000).await.unwrap();
    assert_eq!(stored.len(), 2_500);
    assert!(stored.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    stack.stack.stop().await.unwrap();
}

#[tokio::test]
async fn projections_follow_the_streams_and_poison_goes_to_the_dead_letter_stream() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let bus: &Bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let conv = ConversationId::parse("c1").unwrap();

    // Valid events around a poison one on the same stream.
    for n in 1..=3 {
        bus.publish_event(&subjects::message(&conv), &message(&conv, n), None)
            .await
            .unwrap();
    }
    bus.publish_raw(
        &subjects::message(&conv),
        Some("junk-1"),
        b"{not json".to_vec(),
    )
    .await
    .unwrap();
    let wrong = system_event(
        "e-wrong",
        UserCreated {
            user: user("bob"),
            display_name: "Bob".into(),
        },
    );
    bus.publish_event(&subjects::message(&conv), &wrong, None)
        .await
        .unwrap();
    for n in 4..=5 {
        bus.publish_event(&subjects::message(&conv), &message(&conv, n), None)
            .await
            .unwrap();
    }
    // A retry of message 2 inside the duplicate window is stored once.
    let dup = bus
        .publish_event(&subjects::message(&conv), &message(&conv, 2), None)
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.seq.0, 2);

    let row = eventually(WAIT, "messages to be projected", || async {
        store
            .conversation("c1")
            .await
            .ok()?
            .filter(|c| c.message_count == 5)
    })
    .await
    .unwrap();
    assert_eq!(row.last_seq, 7, "seqs 4 and 5 were the poison events");
    let seqs: Vec<u64> = store
        .messages_after("c1", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 6, 7]);

    // Both poison events are in the dead-letter stream with their reasons and origin.
    let dead = dead_letters(&nats.url()).await.unwrap();
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d[header::DLQ_STREAM], "MESSAGES");
        assert_eq!(d[header::DLQ_SUBJECT], "msg.c1");
    }
    assert_eq!(
        (
            dead[0][header::DLQ_SEQ].as_str(),
            dead[0][header::DLQ_CODE].as_str()
        ),
        ("4", "malformed")
    );
    assert!(
        dead[0][header::DLQ_REASON].starts_with("not a JSON event envelope"),
        "{dead:?}"
    );
    assert_eq!(
        (
            dead[1][header::DLQ_SEQ].as_str(),
            dead[1][header::DLQ_CODE].as_str()
        ),
        ("5", "wrong_stream")
    );
    stack.stack.stop().await.unwrap();
}

#[tokio::test]
async fn membership_reads_and_users_are_projected_with_digests() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let g = GroupId::parse("g1").unwrap();
    let subject = subjects::membership(&g);

    let created = system_event(
        "g-1",
        GroupCreated {
            group: g.clone(),
            owner: user("alice"),
            title: "Ops".into(),
            members: vec![user("bob")],
            direct: false,
        },
    );
    let v1 = bus
        .publish_event(&subject, &created, Some(anchorage_schema::Seq(0)))
        .await
        .unwrap();
    let added = system_event(
        "g-2",
        MembersAdded {
            group: g.clone(),
            members: vec![user("carol"), user("dave"), user("bob")],
        },
    );
    let v2 = bus
        .publish_event(&subject, &added, Some(v1.seq))
        .await
        .unwrap();
    // A command decided on a stale version loses the race.
    let stale = system_event(
        "g-stale",
        MembersRemoved {
            group: g.clone(),
            members: vec![user("carol")],
            reason: RemovalReason::Kicked,
        },
    );
    let err = bus
        .publish_event(&subject, &stale, Some(v1.seq))
        .await
        .unwrap_err();
    assert!(
        matches!(err, anchorage_bus::PublishError::Conflict { .. }),
        "{err}"
    );
    let removed = system_event(
        "g-3",
        MembersRemoved {
            group: g.clone(),
            members: vec![user("dave")],
            reason: RemovalReason::Left,
        },
    );
    let v3 = bus
        .publish_event(&subject, &removed, Some(v2.seq))
        .await
        .unwrap();

    let conv = ConversationId::parse("g1").unwrap();
    for read_seq in [5, 9, 7] {
        let e = system_event(
            &format!("r-{read_seq}"),
            ReadMarked {
                user: user("bob"),
                conv: conv.clone(),
                read_seq,
            },
        );
        bus.publish_event(&subjects::read(&user("bob"), &conv), &e, None)
            .await
            .unwrap();
    }
    let e = system_event(
        "u-1",
        UserCreated {
            user: user("erin"),
            display_name: "Erin".into(),
        },
    );
    bus.publish_event(&subjects::user(&user("erin")), &e, None)
        .await
        .unwrap();

    let group = eventually(WAIT, "the group at its third version", || async {
        store
            .group_row("g1")
            .await
            .ok()?
            .filter(|g| g.version == v3.seq.0)
    })
    .await
    .unwrap();
    let members = store.member_ids("g1").await.unwrap();
    assert_eq!(members, vec!["alice", "bob", "carol"]);
    let digest = anchorage_digest::SetDigest::of(members.iter().map(String::as_str));
    assert_eq!(
        (group.digest_sum, group.member_count),
        (digest.sum, digest.count)
    );

    eventually(WAIT, "the read marker at its maximum", || async {
        (store.read_seq("bob", "g1").await.ok()?? == 9).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        store.read_seq("bob", "g1").await.unwrap(),
        Some(9),
        "max wins over a later 7"
    );
    eventually(WAIT, "the user", || async {
        store.user_active("erin").await.ok()?.then_some(())
    })
    .await
    .unwrap();
    stack.stack.stop().await.unwrap();
}

#[tokio::test]
async fn projector_resumes_after_a_nats_restart_without_loss_or_repeats() {
    let mut nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let conv = ConversationId::parse("c9").unwrap();
    let publisher = Bus::connect(&anchorage::bus_options(&stack.config, false))
        .await
        .unwrap();
    for n in 1..=20 {
        publisher
            .publish_event(&subjects::message(&conv), &message(&conv, n), None)
            .await
            .unwrap();
    }
    eventually(WAIT, "20 messages", || async {
        stack
            .stack
            .store
            .conversation("c9")
            .await
            .ok()?
            .filter(|c| c.message_count == 20)
    })
    .await
    .unwrap();

    nats.server.restart().await.unwrap();
    // Watch the republished live copy to know when the bus is back.
    let watcher = Bus::connect(&anchorage::bus_options(&stack.config, false))
        .await
        .unwrap();
    let mut live = watcher.subscribe_live("live.msg.c9").await.unwrap();
    watcher.flush().await.unwrap();
    let publisher = Bus::connect(&anchorage::bus_options(&stack.config, false))
        .await
        .unwrap();
    for n in 21..=40 {
        publisher
            .publish_event(&subjects::message(&conv), &message(&conv, n), None)
            .await
            .unwrap();
    }
    let first_live = tokio::time::timeout(WAIT, live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first_live.seq.0, 21);
    assert_eq!(first_live.prev.0, 20);

    let row = eventually(
        Duration::from_secs(40),
        "40 messages after the restart",
        || async {
            stack
                .stack
                .store
                .conversation("c9")
                .await
                .ok()?
                .filter(|c| c.message_count == 40)
        },
    )
    .await
    .unwrap();
    assert_eq!(row.last_seq, 40);
    let seqs: Vec<u64> = stack
        .stack
        .store
        .messages_after("c9", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    stack.stack.stop().await.unwrap();
}

/// A store on a fresh database (PostgreSQL in the suite's second pass), migrated.
async fn migrated_store(dir: &std::path::Path) -> anchorage_store::Store {
    let store = anchorage_store::Store::connect(&anchorage_store::StoreOptions {
        url: anchorage_tests::fresh_database(dir).await.unwrap(),
        max_connections: 4,
        sqlite_synchronous: "NORMAL",
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// A device takes the version of a state answer as "everything up to here": a change applied
/// while the answer is read must be in its lists or beyond its version — on SQLite, and on
/// PostgreSQL, whose default isolation gives each statement its own snapshot. Each prefs
/// change touches its own conversation, so one counted and not sent is never repaired by a
/// later one: the device's copy would differ at the end.
#[tokio::test]
async fn a_state_answer_read_while_changes_apply_holds_what_its_version_counts() {
    use anchorage_store::{PrefsChange, UserState};
    let dir = tempfile::tempdir().unwrap();
    let store = migrated_store(dir.path()).await;
    const CHANGES: u64 = 400;
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for v in 1..=CHANGES {
                let mut tx = store.begin().await.unwrap();
                if v % 2 == 0 {
                    tx.set_privacy("alice", Some(v % 4 == 0), None, v)
                        .await
                        .unwrap();
                } else {
                    let draft = format!("draft {v}");
                    let change = PrefsChange {
                        draft: Some(&draft),
                        ..PrefsChange::default()
                    };
                    tx.set_prefs("alice", &format!("c{v}"), &change, v)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    });
    // A device following along: it asks for what changed after what it holds.
    let mut held = 0;
    let mut drafts = std::collections::BTreeMap::new();
    let mut receipts = true;
    let mut take = |s: UserState| {
        for p in s.prefs {
            drafts.insert(p.conv, p.draft);
        }
        receipts = s.receipts;
        s.version
    };
    let mut answers = 0;
    while !writer.is_finished() {
        held = take(store.user_state_since("alice", held, 1_000).await.unwrap());
        answers += 1;
    }
    writer.await.unwrap();
    held = take(store.user_state_since("alice", held, 1_000).await.unwrap());
    assert_eq!(held, CHANGES);
    let all = store.user_state_since("alice", 0, 1_000).await.unwrap();
    let expected: std::collections::BTreeMap<_, _> =
        all.prefs.into_iter().map(|p| (p.conv, p.draft)).collect();
    assert_eq!(expected.len(), CHANGES as usize / 2);
    assert!(answers > 10, "the device asked {answers} times only");
    assert_eq!(drafts, expected, "after {answers} answers");
    assert_eq!(receipts, all.receipts);
    store.close().await;
}

/// A page of a conversation carries each message with its `version` and the reactions on it;
/// a device applies a later reaction entry only if it is past that version. Reactions
/// applied while pages are read must be counted in the page or come after its versions,
/// never both — on SQLite and on PostgreSQL — or the device counts one twice (or takes a
/// removal off twice), and nothing corrects it.
#[tokio::test]
async fn a_page_read_while_reactions_apply_counts_each_reaction_once() {
    use anchorage_store::{EntryKind, NewMessage, PageAt};
    use std::collections::{BTreeMap, BTreeSet};
    let dir = tempfile::tempdir().unwrap();
    let store = migrated_store(dir.path()).await;
    const ENTRIES: u64 = 1_000;
    let entry = |seq: u64, sender: &str, kind: EntryKind| NewMessage {
        sender: sender.into(),
        kind,
        ..row(seq, &format!("e{seq}"))
    };
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            // Messages, and between them ten users toggling three emoji on the newest few,
            // each change taking effect (as the projection decides them), one per commit.
            let mut held = BTreeSet::new();
            let mut messages = Vec::new();
            let mut x = 7u64;
            for seq in 1..=ENTRIES {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let mut tx = store.begin().await.unwrap();
                if messages.is_empty() || (x >> 50).is_multiple_of(4) {
                    tx.insert_message(&entry(seq, "alice", EntryKind::Message))
                        .await
                        .unwrap();
                    messages.push(seq);
                } else {
                    let newest = &messages[messages.len().saturating_sub(4)..];
                    let (target, user, emoji) = (
                        newest[(x >> 33) as usize % newest.len()],
                        format!("u{}", (x >> 20) % 10),
                        ["👍", "🎉", "👀"][((x >> 40) % 3) as usize],
                    );
                    let added = held.insert((target, user.clone(), emoji));
                    if !added {
                        held.remove(&(target, user.clone(), emoji));
                    }
                    tx.insert_message(&NewMessage {
                        target: Some(target),
                        emoji: Some(emoji.into()),
                        flag: Some(added),
                        ..entry(seq, &user, EntryKind::Reaction)
                    })
                    .await
                    .unwrap();
                    let applied = tx.apply_reaction("c", target, &user, emoji, added, seq);
                    assert!(applied.await.unwrap());
                }
                tx.commit().await.unwrap();
                tokio::task::yield_now().await;
            }
        }
    });
    // A device following along, page after page from its anchor, as the SDKs do: a message
    // with its version and counts, a reaction entry applied if past the message's version.
    let mut anchor = 0;
    let mut device: BTreeMap<u64, (u64, BTreeMap<String, i64>)> = BTreeMap::new();
    let mut take = |page: anchorage_store::EntryPage| {
        for row in &page.rows {
            match row.kind {
                EntryKind::Message => {
                    let counts = page.reactions.iter().filter(|c| c.target == row.seq);
                    let counts = counts.map(|c| (c.emoji.clone(), c.count as i64)).collect();
                    device.insert(row.seq, (row.version.max(row.seq), counts));
                }
                EntryKind::Reaction => {
                    let target = row.target.unwrap();
                    let (version, counts) = device.get_mut(&target).unwrap();
                    if row.seq > *version {
                        let n = counts.entry(row.emoji.clone().unwrap()).or_default();
                        *n += if row.flag == Some(true) { 1 } else { -1 };
                        *version = row.seq;
                    }
                }
                other => panic!("no {other:?} entries here"),
            }
        }
        page.rows.last().map(|row| row.seq)
    };
    let mut pages = 0;
    while !writer.is_finished() {
        // Small pages, so messages and the reactions on them cross page boundaries.
        let page = store.page_for("c", PageAt::After(anchor), 7, "u0").await;
        anchor = take(page.unwrap()).unwrap_or(anchor);
        pages += 1;
    }
    writer.await.unwrap();
    while let Some(last) = take(
        store
            .page_for("c", PageAt::After(anchor), 500, "u0")
            .await
            .unwrap(),
    ) {
        anchor = last;
    }
    assert_eq!(anchor, ENTRIES);
    let expected: BTreeMap<u64, BTreeMap<String, i64>> = store
        .reaction_counts("c", 1, ENTRIES, "u0")
        .await
        .unwrap()
        .into_iter()
        .fold(BTreeMap::new(), |mut all, c| {
            all.entry(c.target)
                .or_default()
                .insert(c.emoji, c.count as i64);
            all
        });
    let held: BTreeMap<u64, BTreeMap<String, i64>> = device
        .into_iter()
        .map(|(seq, (_, counts))| (seq, counts.into_iter().filter(|(_, n)| *n != 0).collect()))
        .filter(|(_, counts): &(u64, BTreeMap<String, i64>)| !counts.is_empty())
        .collect();
    assert!(pages > 10, "the device asked {pages} times only");
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(seq, counts)| held.get(seq) != Some(counts))
        .map(|(seq, counts)| format!("#{seq}: {:?} held, {counts:?} stored", held.get(seq)))
        .collect();
    assert!(wrong.is_empty(), "after {pages} pages: {wrong:?}");
    assert_eq!(held, expected);
    store.close().await;
}
