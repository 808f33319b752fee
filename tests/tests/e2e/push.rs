//! Offline push against local providers (FCM with its token endpoint, APNs over HTTP/2, a Web
//! Push service decrypting with `http_ece`): who is notified and who is not, one notification
//! per conversation with the exact badge, providers that fail or reject an address, addresses
//! that move between accounts, hostile registrations, the server API, and two workers on one
//! outbox.

use std::time::Duration;

use anchorage_protocol::request::{MarkReceived, RemovePush, SetPrefs, SetPush, UserStateQuery};
use anchorage_protocol::{ErrorCode, ReplyBody, UserState};
use anchorage_schema::admin::Scope;
use anchorage_schema::push::PushTarget;
use anchorage_store::Store;
use anchorage_tests::push::{FakeWebPush, PushStack, ec_public, fcm, quick_push_config, to};
use anchorage_tests::{
    TestNats, TestStack, WsClient, conv_id, create_group, eventually, fresh_database, http,
    send_message, test_config,
};
use base64::Engine;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn apns_token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn apns(n: u8) -> PushTarget {
    PushTarget::Apns {
        token: apns_token(n),
        sandbox: false,
    }
}

/// Stores a change of a device's push target as the operator would, on the user's subject, and
/// waits until the users projection applied it.
async fn as_operator(p: &PushStack, id: &str, event: impl Into<anchorage_schema::Event>) {
    let event = event.into();
    let user = match &event {
        anchorage_schema::Event::PushTargetSet(e) => e.user.clone(),
        anchorage_schema::Event::PushTargetRemoved(e) => e.user.clone(),
        other => panic!("not a push target change: {other:?}"),
    };
    let env = anchorage_schema::Envelope::new(
        anchorage_schema::EventId::parse(id).unwrap(),
        anchorage_schema::now_ms(),
        anchorage_schema::Actor::System {
            source: anchorage_schema::SourceId::parse("anchorage").unwrap(),
        },
        event,
    );
    let published =
        p.t.stack
            .bus
            .publish_event(&anchorage_schema::subjects::user(&user), &env, None)
            .await
            .unwrap();
    anchorage_tests::projected(p.store(), "users", published.seq.0).await;
}

async fn say(c: &mut WsClient, conv: &str, id: &str, body: Value) -> u64 {
    c.ack(send_message(conv, id, body)).await.unwrap().seq
}

/// Every provider gets what its platform shows — the group's title, the sender and text,
/// the exact badge, a collapse key per conversation — and messages that come within the
/// grace make one notification, of the newest.
#[tokio::test]
async fn offline_members_are_notified_through_each_provider_once_per_conversation() {
    let p = PushStack::start(1500, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob", "carol", "dave"]))
        .await
        .unwrap();
    let bob = p.device("bob", "phone", Some(fcm("fcm-bob"))).await;
    let carol = p.device("carol", "iphone", Some(apns(1))).await;
    let dave = p
        .device("dave", "browser", Some(p.web_target("dave")))
        .await;
    drop((bob, carol, dave));

    let first = say(&mut alice, "ops", "m1", json!("deploy finished")).await;
    let got = p
        .fcm
        .log
        .until("bob's notification", |g| !to(g, "fcm-bob").is_empty())
        .await;
    let m = &to(&got, "fcm-bob")[0].payload["message"];
    assert_eq!(m["notification"]["title"], "Ops", "{m}");
    assert_eq!(m["notification"]["body"], "alice: deploy finished", "{m}");
    assert_eq!(m["data"]["conv"], "ops");
    assert_eq!(m["data"]["seq"], first.to_string());
    assert_eq!(m["android"]["notification"]["notification_count"], 1);
    assert!(p.fcm.tokens_issued() >= 1, "an access token was obtained");

    let got = p
        .apns
        .log
        .until("carol's notification", |g| !g.is_empty())
        .await;
    let n = &got[0];
    assert_eq!(n.address, apns_token(1));
    assert_eq!(n.payload["aps"]["alert"]["body"], "alice: deploy finished");
    assert_eq!(n.payload["aps"]["badge"], 1);
    assert_eq!(n.payload["seq"], first);
    let collapse = n
        .header("apns-collapse-id")
        .expect("a collapse id")
        .to_owned();

    let got = p
        .web
        .log
        .until("dave's notification", |g| !g.is_empty())
        .await;
    let w = &got[0];
    assert_eq!(w.address, "/push/dave");
    assert_eq!(
        w.payload["body"], "alice: deploy finished",
        "{:?}",
        w.payload
    );
    assert_eq!(w.payload["badge"], 1);
    assert_eq!(w.header("content_encoding"), Some("aes128gcm"));
    assert_eq!(w.header("topic"), Some(collapse.as_str()));
    // VAPID: signed by the configured key, for the push service's origin.
    let auth = w.header("authorization").unwrap();
    let token = auth
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split(", k=").next())
        .unwrap();
    let k = auth.rsplit("k=").next().unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[format!("http://127.0.0.1:{}", p.web.port)]);
    let claims = jsonwebtoken::decode::<Value>(token, &p.vapid, &validation)
        .expect("a VAPID token signed with the configured key")
        .claims;
    assert_eq!(claims["sub"], "mailto:ops@anchorage.test");
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(k)
        .unwrap();
    jsonwebtoken::decode::<Value>(token, &ec_public(&k), &validation)
        .expect("k is the key that signed it");
    assert_eq!(p.outcome("bob", "phone", "ops", first).await, "delivered");

    // Three messages within the grace: one notification each, of the newest, counting all.
    say(&mut alice, "ops", "m2", json!("one")).await;
    say(&mut alice, "ops", "m3", json!("two")).await;
    let last = say(&mut alice, "ops", "m4", json!("three")).await;
    let got = p
        .fcm
        .log
        .until("the second notification", |g| to(g, "fcm-bob").len() >= 2)
        .await;
    assert_eq!(p.outcome("bob", "phone", "ops", last).await, "delivered");
    p.settled().await;
    let got_now = p.fcm.log.received();
    let bobs = to(&got_now, "fcm-bob");
    assert_eq!(
        bobs.len(),
        2,
        "one notification for three messages: {got:#?}"
    );
    let m = &bobs[1].payload["message"];
    assert_eq!(m["data"]["seq"], last.to_string());
    assert_eq!(m["notification"]["body"], "alice: three");
    assert_eq!(m["android"]["notification"]["notification_count"], 4);
    assert_eq!(
        m["android"]["collapse_key"],
        bobs[0].payload["message"]["android"]["collapse_key"]
    );
    // The sender is never notified of their own messages.
    assert!(
        p.store()
            .push_outcomes("alice", "ops")
            .await
            .unwrap()
            .is_empty(),
        "alice has no target and sent them all"
    );
}

/// Nothing is pushed to a user whose device received the message within the grace, who read
/// past it, who muted the conversation, or who asked only for mentions — and a mention
/// reaches the last.
#[tokio::test]
async fn received_read_muted_and_mentions_only_are_not_pushed() {
    let p = PushStack::start(1500, 0).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group(
            "ops",
            "Ops",
            &["bob", "carol", "dave", "erin"],
        ))
        .await
        .unwrap();
    let _bob_phone = p.device("bob", "phone", Some(fcm("fcm-bob"))).await;
    let mut bob_laptop = p.device("bob", "laptop", None).await;
    let _carol_phone = p.device("carol", "phone", Some(fcm("fcm-carol"))).await;
    let mut carol_laptop = p.device("carol", "laptop", None).await;
    let mut dave = p.device("dave", "phone", Some(fcm("fcm-dave"))).await;
    let mut erin = p.device("erin", "phone", Some(fcm("fcm-erin"))).await;
    let muted = dave
        .ok(SetPrefs {
            conv: conv_id("ops"),
            pinned: None,
            archived: None,
            muted_until: Some(anchorage_schema::now_ms() + 3_600_000),
            draft: None,
            notify: None,
        })
        .await
        .unwrap();
    let mentions_only = erin
        .ok(SetPrefs {
            conv: conv_id("ops"),
            pinned: None,
            archived: None,
            muted_until: None,
            draft: None,
            notify: Some("mentions".into()),
        })
        .await
        .unwrap();
    let refused = erin
        .refused(SetPrefs {
            conv: conv_id("ops"),
            pinned: None,
            archived: None,
            muted_until: None,
            draft: None,
            notify: Some("sometimes".into()),
        })
        .await
        .unwrap();
    assert_eq!(refused.code, ErrorCode::InvalidRequest);
    anchorage_tests::projected(
        p.store(),
        "users",
        muted.seq.unwrap().max(mentions_only.seq.unwrap()),
    )
    .await;

    let seq = say(&mut alice, "ops", "m1", json!("standup in 5")).await;
    bob_laptop
        .ok(MarkReceived {
            conv: conv_id("ops"),
            seq,
        })
        .await
        .unwrap();
    carol_laptop
        .ok(anchorage_protocol::request::MarkRead {
            conv: conv_id("ops"),
            seq,
        })
        .await
        .unwrap();
    assert_eq!(
        p.outcome("bob", "phone", "ops", seq).await,
        "suppressed: received"
    );
    assert_eq!(
        p.outcome("carol", "phone", "ops", seq).await,
        "suppressed: read"
    );
    assert_eq!(
        p.outcome("dave", "phone", "ops", seq).await,
        "suppressed: muted"
    );
    assert!(
        p.store()
            .push_outcomes("erin", "ops")
            .await
            .unwrap()
            .is_empty(),
        "a message without a mention is not even queued for erin"
    );

    // A mention reaches erin.
    let mut mention = send_message("ops", "m2", json!("erin, can you look?"));
    mention.mentions = vec![anchorage_tests::user_id("erin")];
    let seq = alice.ack(mention).await.unwrap().seq;
    assert_eq!(p.outcome("erin", "phone", "ops", seq).await, "delivered");
    assert_eq!(
        p.outcome("dave", "phone", "ops", seq).await,
        "suppressed: muted"
    );
    // Bob's and carol's devices did not receive this one: they are notified of it.
    assert_eq!(p.outcome("bob", "phone", "ops", seq).await, "delivered");
    let got = p.fcm.log.received();
    let want = seq.to_string();
    assert!(
        got.iter()
            .all(|r| r.payload["message"]["data"]["seq"] == want.as_str()),
        "nothing was pushed of the first message: {got:#?}"
    );
    let erins = to(&got, "fcm-erin");
    assert_eq!(erins.len(), 1, "{got:#?}");
    assert_eq!(erins[0].payload["message"]["android"]["priority"], "HIGH");
    assert!(to(&got, "fcm-dave").is_empty(), "{got:#?}");
}

/// A provider that is down is called again until it takes the notification; one that says
/// an address is gone makes the target go (a newer registration of the device stays); an
/// address registered by another account is the old account's no more; a signed-out device
/// is not notified.
#[tokio::test]
async fn failing_providers_rejected_addresses_and_moved_tokens() {
    let p = PushStack::start(300, 2).await;
    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group(
            "ops",
            "Ops",
            &["bob", "carol", "dave", "erin"],
        ))
        .await
        .unwrap();
    let _bob = p.device("bob", "phone", Some(fcm("fcm-bob"))).await;
    let _carol = p.device("carol", "iphone", Some(apns(2))).await;
    let _dave = p
        .device("dave", "browser", Some(p.web_target("dave")))
        .await;
    p.fcm.log.behaviour.lock().unwrap().fail_next = 3;
    p.apns
        .log
        .behaviour
        .lock()
        .unwrap()
        .gone
        .insert(apns_token(2));

    let seq = say(&mut alice, "ops", "m1", json!("anyone there?")).await;
    assert_eq!(p.outcome("bob", "phone", "ops", seq).await, "delivered");
    assert!(p.fcm.log.refused() >= 3, "FCM failed three times first");
    assert_eq!(p.fcm.log.received().len(), 1, "and took it once");
    assert_eq!(p.outcome("dave", "browser", "ops", seq).await, "delivered");
    assert_eq!(p.web.log.received().len(), 1, "Web Push after two failures");
    let carol = p.outcome("carol", "iphone", "ops", seq).await;
    assert!(carol.starts_with("failed: address rejected"), "{carol}");
    let metrics = anchorage_tests::scrape(p.t.edge_addr()).await;
    for (name, provider) in [
        ("anchorage_push_delivered_total", "fcm"),
        ("anchorage_push_retries_total", "fcm"),
        ("anchorage_push_retries_total", "web_push"),
        ("anchorage_push_rejected_total", "apns"),
    ] {
        let n = anchorage_tests::metric(&metrics, name, &[("provider", provider)]);
        assert!(n >= 1.0, "{name} {provider}: {n}");
    }
    assert!(anchorage_tests::metric(&metrics, "anchorage_push_queued_total", &[]) >= 3.0);
    // The rejection removed carol's target: her other devices see it gone.
    let store = p.store().clone();
    eventually(WAIT, "carol's target removed", || {
        let store = store.clone();
        async move {
            let rows = store.push_targets_since("carol", 0, 10).await.ok()?;
            rows.iter()
                .any(|r| r.device == "iphone" && r.target.is_none())
                .then_some(())
        }
    })
    .await
    .unwrap();
    let (mut carol_laptop, _) = WsClient::signed_in(p.t.edge_addr(), "carol", "laptop")
        .await
        .unwrap();
    let state: UserState = match carol_laptop
        .reply(UserStateQuery { after: 0 })
        .await
        .unwrap()
    {
        ReplyBody::UserState(s) => s,
        other => panic!("{other:?}"),
    };
    assert!(
        state
            .push
            .iter()
            .any(|d| d.device == "iphone" && d.provider.is_none()),
        "{state:?}"
    );
    // A removal naming an address the device no longer has leaves its new one.
    let mut carol_phone = p.device("carol", "iphone", Some(apns(3))).await;
    as_operator(
        &p,
        "push:carol:iphone:rejected:late",
        anchorage_schema::event::PushTargetRemoved {
            user: anchorage_tests::user_id("carol"),
            device: anchorage_schema::DeviceId::parse("iphone").unwrap(),
            address: Some(apns_token(2)),
            reason: "rejected".into(),
        },
    )
    .await;

    // Bob's phone is signed into erin's account now: the token is erin's, not bob's.
    let _erin = p.device("erin", "phone", Some(fcm("fcm-bob"))).await;
    // Dave signs his browser out.
    let revoked = anchorage::revoke_session(
        &p.t.config,
        &anchorage_tests::user_id("dave"),
        &anchorage_schema::DeviceId::parse("browser").unwrap(),
    )
    .await
    .unwrap();
    assert!(revoked.applied);
    // A registration stored after the revocation (the app's backend refreshing the browser's
    // subscription, a request racing the sign-out) does not bring its notifications back.
    as_operator(
        &p,
        "push:dave:browser:after-revoke",
        anchorage_schema::event::PushTargetSet {
            user: anchorage_tests::user_id("dave"),
            device: anchorage_schema::DeviceId::parse("browser").unwrap(),
            target: p.web_target("dave"),
            preview: true,
        },
    )
    .await;

    let seq = say(&mut alice, "ops", "m2", json!("second call")).await;
    assert_eq!(p.outcome("carol", "iphone", "ops", seq).await, "delivered");
    assert_eq!(p.outcome("erin", "phone", "ops", seq).await, "delivered");
    let got = p.apns.log.received();
    assert_eq!(
        to(&got, &apns_token(3)).len(),
        1,
        "carol's new token: {got:#?}"
    );
    let got = p.fcm.log.received();
    let tokens: Vec<&str> = got.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        tokens,
        ["fcm-bob", "fcm-bob"],
        "once for bob, then once for erin"
    );
    assert_eq!(
        got[1].payload["message"]["android"]["notification"]["notification_count"], 2,
        "erin's badge counts erin's unread, not bob's"
    );
    let bobs = p.store().push_outcomes("bob", "ops").await.unwrap();
    assert!(bobs.iter().all(|(_, pushed, _)| *pushed < seq), "{bobs:?}");
    p.settled().await;
    assert_eq!(
        p.web.log.received().len(),
        1,
        "dave's browser was signed out"
    );
    // And a device can stop being notified itself.
    carol_phone.ok(RemovePush {}).await.unwrap();
}

/// Registrations are checked: a provider that is not configured, a push service the operator
/// did not name (the server never calls an address a user chose), malformed addresses and
/// keys — each refused precisely, the connection carrying on.
#[tokio::test]
async fn hostile_registrations_are_refused() {
    let nats = TestNats::start().await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let web = FakeWebPush::start(0).await;
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    config.push = anchorage_config::PushConfig {
        web_push: Some(web.config(keys.path()).0),
        ..quick_push_config()
    };
    let t = TestStack::start_with(config, db_dir).await.unwrap();
    let (mut c, _) = WsClient::signed_in(t.edge_addr(), "mallory", "d")
        .await
        .unwrap();
    let refused = |target: PushTarget| SetPush {
        target,
        preview: true,
    };
    let keys_of = |endpoint: &str| PushTarget::WebPush {
        endpoint: endpoint.into(),
        p256dh: web.p256dh.clone(),
        auth: web.auth.clone(),
    };
    for (target, code, why) in [
        (
            fcm("tok"),
            ErrorCode::Forbidden,
            "does not push through FCM",
        ),
        (apns(1), ErrorCode::Forbidden, "does not push through APNs"),
        (
            keys_of("https://169.254.169.254/latest/meta-data"),
            ErrorCode::Forbidden,
            "does not call that push service",
        ),
        (
            keys_of(&format!("http://127.0.0.1:{}/x", t.edge_addr().port())),
            ErrorCode::Forbidden,
            "does not call that push service",
        ),
        (
            keys_of("https://fcm.googleapis.com.evil.example/x"),
            ErrorCode::Forbidden,
            "does not call that push service",
        ),
        (
            keys_of("https://user@fcm.googleapis.com/x"),
            ErrorCode::InvalidRequest,
            "without user",
        ),
        (
            PushTarget::WebPush {
                endpoint: web.endpoint("x"),
                p256dh: "AAAA".into(),
                auth: web.auth.clone(),
            },
            ErrorCode::InvalidRequest,
            "p256dh",
        ),
        (
            PushTarget::WebPush {
                endpoint: web.endpoint("x"),
                p256dh: web.p256dh.clone(),
                auth: "not base64!".into(),
            },
            ErrorCode::InvalidRequest,
            "auth",
        ),
    ] {
        let e = c.refused(refused(target.clone())).await.unwrap();
        assert_eq!(e.code, code, "{target:?}: {e:?}");
        assert!(e.message.contains(why), "{target:?}: {}", e.message);
    }
    // Unknown providers and fields are not a target at all.
    for raw in [
        r#"{"type":"set_push","id":90,"target":{"provider":"pigeon","token":"x"}}"#,
        r#"{"type":"set_push","id":91,"target":{"provider":"fcm","token":"x","url":"http://x"}}"#,
        r#"{"type":"set_push","id":92,"target":{"provider":"apns","token":"zz"},"preview":"yes"}"#,
    ] {
        c.send_text(raw).await.unwrap();
        match c.next_answer().await.unwrap() {
            anchorage_protocol::ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::InvalidRequest, "{raw}: {e:?}")
            }
            other => panic!("{raw}: {other:?}"),
        }
    }
    // The connection carries on, and a good subscription is taken.
    let done = c
        .ok(refused(keys_of(&web.endpoint("mallory"))))
        .await
        .unwrap();
    assert!(done.seq.is_some());
}

/// Two workers on one outbox (two projector processes) never send a notification twice,
/// also while the provider fails every third call.
#[tokio::test]
async fn two_workers_send_each_notification_once() {
    let p = PushStack::start(300, 0).await;
    p.fcm.log.behaviour.lock().unwrap().fail_every = 3;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let second = {
        let config = p.t.config.clone();
        let bus = anchorage_bus::Bus::connect(&anchorage::bus_options(&config, false))
            .await
            .unwrap();
        let store = Store::connect(&anchorage::store_options(&config))
            .await
            .unwrap();
        tokio::spawn(anchorage_push::run(
            bus,
            store,
            config.push.clone(),
            shutdown.clone(),
        ))
    };
    let mut alice = p.device("alice", "laptop", None).await;
    let _bob = p.device("bob", "phone", Some(fcm("fcm-bob"))).await;
    let groups: Vec<String> = (0..12).map(|i| format!("g{i}")).collect();
    for g in &groups {
        alice.ok(create_group(g, g, &["bob"])).await.unwrap();
    }
    let mut last = Vec::new();
    for g in &groups {
        last.push(say(&mut alice, g, "m", json!(format!("hello {g}"))).await);
    }
    for (g, seq) in groups.iter().zip(&last) {
        assert_eq!(p.outcome("bob", "phone", g, *seq).await, "delivered");
    }
    p.settled().await;
    let got = p.fcm.log.received();
    let mut convs: Vec<String> = got
        .iter()
        .map(|r| {
            r.payload["message"]["data"]["conv"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    convs.sort();
    let mut expected = groups.clone();
    expected.sort();
    assert_eq!(
        convs, expected,
        "each conversation's notification exactly once"
    );
    assert!(p.fcm.log.refused() >= 3, "the provider failed on the way");
    shutdown.cancel();
    second.await.unwrap().unwrap();
}

/// A backend that keeps its apps' tokens registers them through the server API (write
/// scope), sees where the user is reached and what the notifications came to (read scope),
/// and removes them; bad targets and keys without the scope are refused precisely.
#[tokio::test]
async fn the_server_api_registers_lists_and_removes_targets() {
    let p = PushStack::start(300, 0).await;
    let nats_url = p.t.config.nats.url.clone();
    let addr = p.t.edge_addr();
    let (write, _) = anchorage_tests::api_key(&nats_url, Scope::Write, 1000).await;
    let (read, _) = anchorage_tests::api_key(&nats_url, Scope::Read, 1000).await;
    let call = |method: &'static str, path: String, key: String, body: Option<Value>| async move {
        let auth = format!("Bearer {key}");
        http(
            addr,
            method,
            &path,
            &[("authorization", &auth)],
            body.as_ref(),
        )
        .await
        .unwrap()
    };
    let path = "/v1/users/bob/devices/tablet/push".to_owned();
    let target = json!({"target": {"provider": "fcm", "token": "fcm-bob-tablet"}});
    let refused = call("PUT", path.clone(), read.clone(), Some(target.clone())).await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    for bad in [
        json!({"target": {"provider": "fcm"}}),
        json!({"target": {"provider": "apns", "token": "not hex"}}),
        json!({"target": "fcm"}),
    ] {
        let answer = call("PUT", path.clone(), write.clone(), Some(bad.clone())).await;
        assert_eq!(answer.status, 400, "{bad}: {:?}", answer.body);
    }
    // Well formed, but not a push service this server calls.
    let internal = json!({"target": {"provider": "web_push", "endpoint": "https://10.0.0.1/x", "p256dh": p.web.p256dh, "auth": p.web.auth}});
    let answer = call("PUT", path.clone(), write.clone(), Some(internal)).await;
    assert_eq!(answer.status, 403, "{:?}", answer.body);
    let done = call("PUT", path.clone(), write.clone(), Some(target)).await;
    assert_eq!(done.status, 200, "{:?}", done.body);

    let mut alice = p.device("alice", "laptop", None).await;
    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    let seq = say(&mut alice, "ops", "m1", json!("via the API")).await;
    assert_eq!(p.outcome("bob", "tablet", "ops", seq).await, "delivered");
    let listed = call("GET", "/v1/users/bob/push".into(), read.clone(), None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    assert_eq!(
        listed.body["devices"],
        json!([{"device": "tablet", "provider": "fcm", "preview": true}])
    );
    assert_eq!(listed.body["recent"][0]["outcome"], "delivered");
    assert_eq!(listed.body["recent"][0]["pushed_seq"], seq);
    assert!(
        !listed.body.to_string().contains("fcm-bob-tablet"),
        "the address is not shown: {}",
        listed.body
    );

    let removed = call("DELETE", path, write, None).await;
    assert_eq!(removed.status, 200, "{:?}", removed.body);
    let listed = call("GET", "/v1/users/bob/push".into(), read, None).await;
    assert_eq!(listed.body["devices"], json!([]));
    let seq = say(&mut alice, "ops", "m2", json!("nobody to tell")).await;
    p.settled().await;
    let outcomes = p.store().push_outcomes("bob", "ops").await.unwrap();
    assert!(
        outcomes.iter().all(|(_, pushed, _)| *pushed < seq),
        "{outcomes:?}"
    );
    assert_eq!(p.fcm.log.received().len(), 1);
}
