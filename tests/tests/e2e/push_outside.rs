//! Offline push attacked from outside: client code written from PROTOCOL.md and API.md only,
//! against local providers. Each test is one attack: SSRF through the endpoint, notifications
//! lost to a revoke, removals deduplicated away, colliding API ids, pseudo-senders,
//! membership races, restarts mid-grace, hostile bodies, badges, settings racing the grace,
//! the server API's refusals, one token claimed by two users at once, deleted users.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anchorage_protocol::request::{
    AddMembers, Hide, OpenDirect, RemoveMembers, Revoke, SetPrefs, SetPush,
};
use anchorage_protocol::{ErrorCode, ReplyBody, ServerFrame};
use anchorage_schema::admin::Scope;
use anchorage_schema::push::PushTarget;
use anchorage_tests::push::{PushStack, Received, fcm, to};
use anchorage_tests::{
    WsClient, conv_id, create_group, eventually, group_id, http, send_message, user_id,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn say(c: &mut WsClient, conv: &str, id: &str, body: Value) -> u64 {
    c.ack(send_message(conv, id, body)).await.unwrap().seq
}

/// Waits up to `limit` for FCM to have taken something for `token`.
async fn fcm_for(p: &PushStack, token: &str, limit: Duration) -> Vec<Received> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = p.fcm.log.received();
        let mine: Vec<Received> = to(&got, token).into_iter().cloned().collect();
        if !mine.is_empty() || tokio::time::Instant::now() > deadline {
            return mine;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Web Push SSRF: URL parsers (the WHATWG parser reqwest uses) treat '\' as '/' in http(s)
// URLs, so `https://127.0.0.2\.notify.windows.com/x` names the host 127.0.0.2, not a
// subdomain of the default `.notify.windows.com`. It is refused at registration, and the
// worker never connects to it.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn web_push_endpoint_with_a_backslash_does_not_reach_an_unlisted_host() {
    let p = PushStack::start(200, 0).await;
    // An "internal service" at 127.0.0.2:443 that counts who connects.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:443").await;
    let hits = Arc::new(AtomicUsize::new(0));
    if let Ok(listener) = listener {
        let hits = hits.clone();
        tokio::spawn(async move {
            while let Ok((_s, _)) = listener.accept().await {
                hits.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let endpoint = "https://127.0.0.2\\.notify.windows.com/latest/meta-data";
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["mallory"]))
        .await
        .unwrap();
    let (mut mallory, _) = WsClient::signed_in(p.t.edge_addr(), "mallory", "browser")
        .await
        .unwrap();
    let answer = mallory
        .request(SetPush {
            target: PushTarget::WebPush {
                endpoint: endpoint.into(),
                p256dh: p.web.p256dh.clone(),
                auth: p.web.auth.clone(),
            },
            preview: true,
        })
        .await
        .unwrap();
    let ServerFrame::Reply(reply) = &answer else {
        // Refused: the attack held up.
        let ServerFrame::Error(e) = &answer else {
            panic!("{answer:?}")
        };
        // The host is 127.0.0.2: a push service this server does not call.
        assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}");
        return;
    };
    let ReplyBody::Ok(done) = &reply.body else {
        panic!("{reply:?}")
    };
    anchorage_tests::projected(p.store(), "users", done.seq.unwrap()).await;
    drop(mallory);
    say(&mut alice, "ops", "m1", json!("ping")).await;
    let _ = eventually(
        Duration::from_secs(15),
        "a connection to 127.0.0.2:443",
        || async { (hits.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await;
    let outcomes = p.store().push_outcomes("mallory", "ops").await.unwrap();
    panic!(
        "set_push accepted {endpoint:?}, which the worker calls as host 127.0.0.2: \
         {} connection(s) reached 127.0.0.2:443; outcomes {outcomes:?}",
        hits.load(Ordering::SeqCst)
    );
}

// ---------------------------------------------------------------------------------------
// No notification lost: two messages within the grace collapse into one row of the newer;
// when the newer is revoked before the grace ends, the older one — unread, not revoked — is
// announced instead.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn revoking_the_newest_message_does_not_swallow_the_unread_one_before_it() {
    let p = PushStack::start(1500, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    drop(p.device("bob", "phone", Some(fcm("fcm-bob"))).await);
    let first = say(&mut alice, "ops", "m1", json!("the build is red")).await;
    let second = say(&mut alice, "ops", "m2", json!("oops, wrong channel")).await;
    alice
        .ok(Revoke {
            conv: conv_id("ops"),
            seq: second,
        })
        .await
        .unwrap();
    let outcome = p.outcome("bob", "phone", "ops", second).await;
    let got = fcm_for(&p, "fcm-bob", Duration::from_secs(3)).await;
    assert!(
        !got.is_empty(),
        "bob has an unread, unrevoked message {first} and got no notification at all \
         (outcome of the row: {outcome:?})"
    );
    let m = &got[0].payload["message"];
    assert_ne!(
        m["notification"]["body"], "alice: oops, wrong channel",
        "{m}"
    );
    assert_eq!(m["android"]["notification"]["notification_count"], 1, "{m}");
}

// ---------------------------------------------------------------------------------------
// A provider's second "address no longer valid" for the same device and address, after the
// device registered the stale token again, removes it again: the removal is one per
// registration, not deduplicated away by the USERS stream's window.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn an_address_rejected_again_after_reregistering_is_removed_again() {
    let p = PushStack::start(200, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    p.fcm
        .log
        .behaviour
        .lock()
        .unwrap()
        .gone
        .insert("fcm-stale".into());
    drop(p.device("bob", "phone", Some(fcm("fcm-stale"))).await);
    let seq = say(&mut alice, "ops", "m1", json!("one")).await;
    let outcome = p.outcome("bob", "phone", "ops", seq).await;
    assert!(outcome.starts_with("failed: address rejected"), "{outcome}");
    eventually(WAIT, "the first removal", || async {
        (!p.has_target("bob", "phone").await).then_some(())
    })
    .await
    .unwrap();

    // The app registers its cached (stale) token again.
    drop(p.device("bob", "phone", Some(fcm("fcm-stale"))).await);
    assert!(p.has_target("bob", "phone").await);
    let seq = say(&mut alice, "ops", "m2", json!("two")).await;
    let outcome = p.outcome("bob", "phone", "ops", seq).await;
    assert!(outcome.starts_with("failed: address rejected"), "{outcome}");
    let removed = eventually(Duration::from_secs(5), "the second removal", || async {
        (!p.has_target("bob", "phone").await).then_some(())
    })
    .await;
    assert!(
        removed.is_ok(),
        "FCM said the address is gone a second time, but the target stays"
    );
}

// ---------------------------------------------------------------------------------------
// Registrations through the server API without an Idempotency-Key are each their own: many
// at once for one user's devices all succeed (none is taken for a repeat of another).
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn concurrent_api_registrations_for_one_user_all_succeed() {
    let p = PushStack::start(300, 0).await;
    let addr = p.t.edge_addr();
    let (write, _) = anchorage_tests::api_key(&p.nats.url(), Scope::Write, 100_000).await;
    let (read, _) = anchorage_tests::api_key(&p.nats.url(), Scope::Read, 100_000).await;
    let mut failures = Vec::new();
    let mut registered = 0;
    for round in 0..4 {
        let mut calls = tokio::task::JoinSet::new();
        for d in 0..16 {
            let auth = format!("Bearer {write}");
            calls.spawn(async move {
                let path = format!("/v1/users/bob/devices/r{round}d{d}/push");
                let body =
                    json!({"target": {"provider": "fcm", "token": format!("tok-{round}-{d}")}});
                http(addr, "PUT", &path, &[("authorization", &auth)], Some(&body))
                    .await
                    .unwrap()
            });
        }
        while let Some(answer) = calls.join_next().await {
            let answer = answer.unwrap();
            if answer.status == 200 {
                registered += 1;
            } else {
                failures.push((answer.status, answer.body));
            }
        }
    }
    let auth = format!("Bearer {read}");
    let listed = http(
        addr,
        "GET",
        "/v1/users/bob/push",
        &[("authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    let devices = listed.body["devices"].as_array().map_or(0, Vec::len);
    assert!(
        failures.is_empty(),
        "{} of 64 registrations without an Idempotency-Key were refused ({registered} taken, \
         {devices} listed): {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(devices, 64);
}

// ---------------------------------------------------------------------------------------
// A system post (server API without `sender`) names no sender: not "system:<source>: text",
// the protocol's `Sender: text` form is for messages of a user.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn a_system_post_is_not_attributed_to_a_pseudo_user() {
    let p = PushStack::start(200, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    drop(p.device("bob", "phone", Some(fcm("fcm-bob"))).await);
    let (write, _) = anchorage_tests::api_key(&p.nats.url(), Scope::Write, 1000).await;
    let auth = format!("Bearer {write}");
    let posted = http(
        p.t.edge_addr(),
        "POST",
        "/v1/conversations/ops/messages",
        &[("authorization", &auth)],
        Some(&json!({"body": "maintenance at 22:00"})),
    )
    .await
    .unwrap();
    assert_eq!(posted.status, 201, "{:?}", posted.body);
    let got = fcm_for(&p, "fcm-bob", WAIT).await;
    assert!(!got.is_empty(), "a system post notifies the members");
    let body = got[0].payload["message"]["notification"]["body"].clone();
    assert_eq!(body, "maintenance at 22:00", "{}", got[0].payload);
}

// ---------------------------------------------------------------------------------------
// Held up: 1:1 messages are pushed with the sender's name as title, urgent.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn direct_messages_are_pushed_with_the_senders_name() {
    let p = PushStack::start(200, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    drop(p.device("bob", "phone", Some(fcm("fcm-bob"))).await);
    let done = alice
        .ok(OpenDirect {
            peer: user_id("bob"),
        })
        .await
        .unwrap();
    let conv = done.conv.unwrap().to_string();
    let seq = say(&mut alice, &conv, "d1", json!("lunch?")).await;
    assert_eq!(p.outcome("bob", "phone", &conv, seq).await, "delivered");
    let got = fcm_for(&p, "fcm-bob", WAIT).await;
    let m = &got[0].payload["message"];
    assert_eq!(m["notification"]["title"], "alice", "{m}");
    assert_eq!(m["notification"]["body"], "lunch?", "{m}");
    assert_eq!(m["android"]["priority"], "HIGH", "{m}");
}

// ---------------------------------------------------------------------------------------
// Held up: a member removed during the grace is not notified; a user added after the message
// is not notified of it (only of what comes after).
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn removed_and_later_added_members_are_not_notified() {
    let p = PushStack::start(1500, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob", "carol"]))
        .await
        .unwrap();
    drop(p.device("bob", "phone", Some(fcm("fcm-bob"))).await);
    drop(p.device("carol", "phone", Some(fcm("fcm-carol"))).await);
    drop(p.device("dave", "phone", Some(fcm("fcm-dave"))).await);
    let seq = say(&mut alice, "ops", "m1", json!("secret plan")).await;
    alice
        .ok(RemoveMembers {
            group: group_id("ops"),
            members: vec![user_id("carol")],
        })
        .await
        .unwrap();
    alice
        .ok(AddMembers {
            group: group_id("ops"),
            members: vec![user_id("dave")],
        })
        .await
        .unwrap();
    assert_eq!(p.outcome("bob", "phone", "ops", seq).await, "delivered");
    let carol = p.outcome("carol", "phone", "ops", seq).await;
    assert!(carol.starts_with("suppressed"), "{carol}");
    p.settled().await;
    let got = p.fcm.log.received();
    assert!(to(&got, "fcm-carol").is_empty(), "{got:#?}");
    assert!(to(&got, "fcm-dave").is_empty(), "{got:#?}");
    // Dave is notified of what comes after he joined.
    let later = say(&mut alice, "ops", "m2", json!("welcome dave")).await;
    assert_eq!(p.outcome("dave", "phone", "ops", later).await, "delivered");
    let got = p.fcm.log.received();
    let daves = to(&got, "fcm-dave");
    assert_eq!(daves.len(), 1);
    assert_eq!(
        daves[0].payload["message"]["data"]["seq"],
        later.to_string()
    );
    assert!(to(&got, "fcm-carol").is_empty(), "{got:#?}");
}

// ---------------------------------------------------------------------------------------
// Held up: the stack restarted (same database, same NATS) while notifications wait in the
// grace and one provider fails: each conversation's notification is sent exactly once.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn a_restart_mid_grace_sends_each_notification_once() {
    let p = PushStack::start(1500, 0).await;
    p.fcm.log.behaviour.lock().unwrap().fail_next = 2;
    let mut alice = p.device("alice", "laptop", None).await;
    drop(p.device("bob", "phone", Some(fcm("fcm-bob"))).await);
    drop(
        p.device(
            "bob",
            "iphone",
            Some(PushTarget::Apns {
                token: "ab".repeat(32),
                sandbox: false,
            }),
        )
        .await,
    );
    let groups: Vec<String> = (0..6).map(|i| format!("g{i}")).collect();
    for g in &groups {
        alice.ok(create_group(g, g, &["bob"])).await.unwrap();
    }
    let mut last = Vec::new();
    for g in &groups {
        say(&mut alice, g, "a", json!("first")).await;
        last.push(say(&mut alice, g, "b", json!(format!("hello {g}"))).await);
    }
    drop(alice);
    let p = p.restart().await;
    for (g, seq) in groups.iter().zip(&last) {
        assert_eq!(p.outcome("bob", "phone", g, *seq).await, "delivered");
        assert_eq!(p.outcome("bob", "iphone", g, *seq).await, "delivered");
    }
    p.settled().await;
    let mut convs: Vec<String> = p
        .fcm
        .log
        .received()
        .iter()
        .map(|r| {
            r.payload["message"]["data"]["conv"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    convs.sort();
    let mut want = groups.clone();
    want.sort();
    assert_eq!(convs, want, "FCM: one notification per conversation");
    let mut convs: Vec<String> = p
        .apns
        .log
        .received()
        .iter()
        .map(|r| r.payload["conv"].as_str().unwrap().to_owned())
        .collect();
    convs.sort();
    assert_eq!(convs, want, "APNs: one notification per conversation");
    p.t.stack.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Held up: hostile bodies. 10 KB of text with control characters is cut to 200 characters;
// non-text bodies (a number, an encrypted-looking object) and `preview: false` say only
// "New message"; every provider keeps within its 4 KB payload.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn hostile_bodies_are_cut_or_hidden() {
    let p = PushStack::start(100, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    let long_title = "T\u{1F600}".repeat(40);
    alice
        .ok(create_group("ops", &long_title, &["bob", "carol"]))
        .await
        .unwrap();
    drop(p.device("bob", "phone", Some(fcm("fcm-bob"))).await);
    let (mut carol, _) = WsClient::signed_in(p.t.edge_addr(), "carol", "iphone")
        .await
        .unwrap();
    let done = carol
        .ok(SetPush {
            target: PushTarget::Apns {
                token: "cd".repeat(32),
                sandbox: false,
            },
            preview: false,
        })
        .await
        .unwrap();
    anchorage_tests::projected(p.store(), "users", done.seq.unwrap()).await;
    drop(carol);
    let hostile: String = "\u{0}\u{1b}[31m\u{202e}\n\"\\\u{1F600}".repeat(900);
    let seq = say(&mut alice, "ops", "m1", json!(hostile)).await;
    assert_eq!(p.outcome("bob", "phone", "ops", seq).await, "delivered");
    let got = fcm_for(&p, "fcm-bob", WAIT).await;
    let m = &got[0].payload["message"];
    let body = m["notification"]["body"].as_str().unwrap();
    assert!(body.starts_with("alice: "), "{body:?}");
    assert!(
        body.chars().count() <= "alice: ".len() + 201,
        "{}",
        body.chars().count()
    );
    assert!(got[0].payload.to_string().len() < 4096);
    let apns = p
        .apns
        .log
        .until("carol's notification", |g| !g.is_empty())
        .await;
    assert_eq!(apns[0].payload["aps"]["alert"]["title"], "New message");
    assert!(apns[0].payload["aps"]["alert"].get("body").is_none());
    assert!(apns[0].payload.to_string().len() < 4096);

    for (i, body) in [
        json!(42),
        json!({"ciphertext": "AAAA", "alg": "x25519"}),
        json!(["a", "b"]),
    ]
    .into_iter()
    .enumerate()
    {
        let n = p.fcm.log.received().len();
        let seq = say(&mut alice, "ops", &format!("x{i}"), body.clone()).await;
        assert_eq!(p.outcome("bob", "phone", "ops", seq).await, "delivered");
        let got = p.fcm.log.until("the next one", |g| g.len() > n).await;
        let m = &got[n].payload["message"];
        assert_eq!(m["notification"]["title"], "New message", "{body}: {m}");
        assert!(m["notification"].get("body").is_none(), "{body}: {m}");
    }
}

// ---------------------------------------------------------------------------------------
// Held up: the badge is the user's unread total over several conversations, without revoked
// messages and without the messages the user hid.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn the_badge_counts_unread_over_conversations_without_hidden_or_revoked() {
    let p = PushStack::start(100, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    alice
        .ok(create_group("dev", "Dev", &["bob"]))
        .await
        .unwrap();
    let mut bob = p.device("bob", "phone", Some(fcm("fcm-bob"))).await;
    let o1 = say(&mut alice, "ops", "o1", json!("o1")).await;
    let o2 = say(&mut alice, "ops", "o2", json!("o2")).await;
    say(&mut alice, "dev", "d1", json!("d1")).await;
    let d2 = say(&mut alice, "dev", "d2", json!("d2")).await;
    alice
        .ok(Revoke {
            conv: conv_id("ops"),
            seq: o1,
        })
        .await
        .unwrap();
    let hid = bob
        .ok(Hide {
            conv: conv_id("dev"),
            seqs: vec![d2],
        })
        .await
        .unwrap();
    anchorage_tests::projected(p.store(), "users", hid.seq.unwrap()).await;
    let _ = o2;
    drop(bob);
    let seq = say(&mut alice, "ops", "o3", json!("o3")).await;
    assert_eq!(p.outcome("bob", "phone", "ops", seq).await, "delivered");
    let got = p.fcm.log.received();
    let m = &to(&got, "fcm-bob")
        .into_iter()
        .find(|r| r.payload["message"]["data"]["seq"] == seq.to_string().as_str())
        .unwrap()
        .payload["message"];
    // ops: o2, o3 (o1 revoked); dev: d1 (d2 hidden).
    assert_eq!(m["data"]["badge"], "3", "{m}");
}

// ---------------------------------------------------------------------------------------
// Held up: notify settings changed during the grace are honoured at send time.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn notify_none_set_during_the_grace_is_honoured() {
    let p = PushStack::start(1500, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    let mut bob = p.device("bob", "phone", Some(fcm("fcm-bob"))).await;
    let seq = say(&mut alice, "ops", "m1", json!("hi")).await;
    let done = bob
        .ok(SetPrefs {
            conv: conv_id("ops"),
            pinned: None,
            archived: None,
            muted_until: None,
            draft: None,
            notify: Some("none".into()),
        })
        .await
        .unwrap();
    anchorage_tests::projected(p.store(), "users", done.seq.unwrap()).await;
    drop(bob);
    // Queued before the setting was projected, it is passed over at send time; queued after,
    // it is not queued at all. Either way nothing is sent.
    p.settled().await;
    let rows = p.store().push_outcomes("bob", "ops").await.unwrap();
    assert!(
        rows.iter()
            .all(|(_, pushed, o)| *pushed >= seq && o.as_deref() == Some("suppressed: settings")),
        "{rows:?}"
    );
    assert!(p.fcm.log.received().is_empty());
}

// ---------------------------------------------------------------------------------------
// Held up: the server API refuses what it should — no key, wrong scope, bad ids, bad bodies —
// and the read answer never shows an address.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn the_server_api_refuses_bad_calls() {
    let p = PushStack::start(300, 0).await;
    let addr = p.t.edge_addr();
    let (write, _) = anchorage_tests::api_key(&p.nats.url(), Scope::Write, 1000).await;
    let (read, _) = anchorage_tests::api_key(&p.nats.url(), Scope::Read, 1000).await;
    let w = format!("Bearer {write}");
    let r = format!("Bearer {read}");
    let good = json!({"target": {"provider": "fcm", "token": "tok-secret-123"}});
    let none = http(addr, "GET", "/v1/users/bob/push", &[], None)
        .await
        .unwrap();
    assert_eq!(none.status, 401);
    let none = http(
        addr,
        "PUT",
        "/v1/users/bob/devices/d/push",
        &[],
        Some(&good),
    )
    .await
    .unwrap();
    assert_eq!(none.status, 401);
    let del = http(
        addr,
        "DELETE",
        "/v1/users/bob/devices/d/push",
        &[("authorization", &r)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(del.status, 403);
    for (path, body) in [
        ("/v1/users/bob/devices/a%20b/push", good.clone()),
        ("/v1/users/b%3Ab/devices/d/push", good.clone()),
        (
            &*format!("/v1/users/bob/devices/{}/push", "x".repeat(65)),
            good.clone(),
        ),
        (
            "/v1/users/bob/devices/d/push",
            json!({"target": {"provider": "fcm", "token": "t"}, "preview": "yes"}),
        ),
        (
            "/v1/users/bob/devices/d/push",
            json!({"target": {"provider": "fcm", "token": "t"}, "user": "alice"}),
        ),
        (
            "/v1/users/bob/devices/d/push",
            json!({"target": {"provider": "fcm", "token": "a\u{0}b"}}),
        ),
        (
            "/v1/users/bob/devices/d/push",
            json!({"target": {"provider": "web_push", "endpoint": "https://[::1]/x", "p256dh": p.web.p256dh, "auth": p.web.auth}}),
        ),
        (
            "/v1/users/bob/devices/d/push",
            json!({"target": {"provider": "web_push", "endpoint": "https://fcm.googleapis.com%2f@127.0.0.1/x", "p256dh": p.web.p256dh, "auth": p.web.auth}}),
        ),
    ] {
        let answer = http(addr, "PUT", path, &[("authorization", &w)], Some(&body))
            .await
            .unwrap();
        assert_eq!(answer.status, 400, "{path} {body}: {:?}", answer.body);
    }
    // Well formed, but a push service (a port of it) the server does not call: forbidden.
    let other_port = json!({"target": {"provider": "web_push", "endpoint": "https://FCM.googleapis.com:444/x", "p256dh": p.web.p256dh, "auth": p.web.auth}});
    let answer = http(
        addr,
        "PUT",
        "/v1/users/bob/devices/d/push",
        &[("authorization", &w)],
        Some(&other_port),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 403, "{:?}", answer.body);
    let ok = http(
        addr,
        "PUT",
        "/v1/users/bob/devices/d/push",
        &[("authorization", &w)],
        Some(&good),
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let listed = http(
        addr,
        "GET",
        "/v1/users/bob/push",
        &[("authorization", &r)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(listed.status, 200);
    assert!(
        !listed.body.to_string().contains("tok-secret"),
        "{}",
        listed.body
    );
    // The user's devices never see the address either.
    let (mut bob, welcome) = WsClient::signed_in(addr, "bob", "laptop").await.unwrap();
    assert!(!format!("{welcome:?}").contains("tok-secret"));
    let state = bob
        .reply(anchorage_protocol::request::UserStateQuery { after: 0 })
        .await
        .unwrap();
    assert!(!format!("{state:?}").contains("tok-secret"), "{state:?}");
}

// ---------------------------------------------------------------------------------------
// Held up: the same token registered by two accounts at the same moment ends with exactly one
// of them, and a message to both is pushed to the token once.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn one_token_registered_by_two_users_at_once_belongs_to_one() {
    let p = PushStack::start(200, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob", "erin"]))
        .await
        .unwrap();
    let (mut bob, _) = WsClient::signed_in(p.t.edge_addr(), "bob", "phone")
        .await
        .unwrap();
    let (mut erin, _) = WsClient::signed_in(p.t.edge_addr(), "erin", "phone")
        .await
        .unwrap();
    let set = || SetPush {
        target: fcm("fcm-shared"),
        preview: true,
    };
    let (a, b) = tokio::join!(bob.ok(set()), erin.ok(set()));
    let last = a.unwrap().seq.unwrap().max(b.unwrap().seq.unwrap());
    anchorage_tests::projected(p.store(), "users", last).await;
    drop((bob, erin));
    let holders = [
        p.has_target("bob", "phone").await,
        p.has_target("erin", "phone").await,
    ];
    assert_eq!(holders.iter().filter(|h| **h).count(), 1, "{holders:?}");
    say(&mut alice, "ops", "m1", json!("hello both")).await;
    fcm_for(&p, "fcm-shared", WAIT).await;
    p.settled().await;
    assert_eq!(to(&p.fcm.log.received(), "fcm-shared").len(), 1);
}

// ---------------------------------------------------------------------------------------
// Held up: a deleted user's targets go, and the server API registers none for them again.
// ---------------------------------------------------------------------------------------
#[tokio::test]
async fn a_deleted_user_is_not_notified_nor_registrable() {
    let p = PushStack::start(200, 0).await;
    let addr = p.t.edge_addr();
    let (write, _) = anchorage_tests::api_key(&p.nats.url(), Scope::Write, 1000).await;
    let (admin, _) = anchorage_tests::api_key(&p.nats.url(), Scope::Admin, 1000).await;
    let w = format!("Bearer {write}");
    let a = format!("Bearer {admin}");
    let created = http(
        addr,
        "POST",
        "/v1/users",
        &[("authorization", &w)],
        Some(&json!({"user": "bob", "display_name": "Bob"})),
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201, "{:?}", created.body);
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    drop(p.device("bob", "phone", Some(fcm("fcm-bob"))).await);
    let deleted = http(
        addr,
        "DELETE",
        "/v1/users/bob",
        &[("authorization", &a)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    eventually(WAIT, "bob's target gone", || async {
        (!p.has_target("bob", "phone").await).then_some(())
    })
    .await
    .unwrap();
    let again = http(
        addr,
        "PUT",
        "/v1/users/bob/devices/phone/push",
        &[("authorization", &w)],
        Some(&json!({"target": {"provider": "fcm", "token": "fcm-bob"}})),
    )
    .await
    .unwrap();
    assert!(again.status >= 400, "{again:?}");
    say(&mut alice, "ops", "m1", json!("anyone?")).await;
    p.settled().await;
    assert!(p.fcm.log.received().is_empty());
    assert!(!p.has_target("bob", "phone").await);
}
