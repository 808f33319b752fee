//! The server API: an app's backend driving users, tokens, groups and messages over HTTP,
//! with API keys, idempotency keys and problem answers — and what a hostile or careless
//! caller tries against it.

use std::net::SocketAddr;
use std::time::Duration;

use anchorage_protocol::{LiveMessage, ReplyBody};
use anchorage_schema::admin::Scope;
use anchorage_tests::{
    HttpAnswer, TestCluster, TestNats, TestStack, WsClient, api_key, hello, http,
};
use serde_json::{Value, json};

use crate::common::short_window_config;

/// Calls the API with `key`.
async fn call(
    addr: SocketAddr,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    idempotency: Option<&str>,
) -> HttpAnswer {
    let auth = format!("Bearer {key}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if let Some(k) = idempotency {
        headers.push(("Idempotency-Key", k));
    }
    http(addr, method, path, &headers, body.as_ref())
        .await
        .unwrap()
}

/// A problem answer with `status` and `code`.
fn problem(answer: &HttpAnswer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json"),
        "{answer:?}"
    );
    assert_eq!(answer.body["code"], code, "{answer:?}");
    assert_eq!(answer.body["status"], status, "{answer:?}");
}

fn seq(answer: &HttpAnswer) -> u64 {
    assert!(
        (200..300).contains(&answer.status),
        "not a success: {answer:?}"
    );
    answer.body["seq"].as_u64().unwrap()
}

// The whole flow an app's backend runs: users, a device token its app signs in with, a group,
// posts as the system and for a user (seen live by the member's device, in order), history,
// unread counts, roles — every write answered with the seq the clients see.
#[tokio::test]
async fn an_app_backend_runs_a_chat_through_the_server_api() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let (key, _) = api_key(&nats.url(), Scope::Admin, 1000).await;
    let call =
        |method: &'static str, path: String, body: Option<Value>, idem: Option<&'static str>| {
            let key = key.clone();
            async move { call(addr, &key, method, &path, body, idem).await }
        };

    for (user, name) in [("alice", "Alice"), ("bob", "Bob")] {
        let created = call(
            "POST",
            "/v1/users".into(),
            Some(json!({"user": user, "display_name": name})),
            None,
        )
        .await;
        assert_eq!(created.status, 201, "{created:?}");
    }
    let again = call(
        "POST",
        "/v1/users".into(),
        Some(json!({"user": "alice", "display_name": "Alice"})),
        None,
    )
    .await;
    assert_eq!(
        (again.status, again.body["duplicate"].as_bool()),
        (201, Some(true)),
        "{again:?}"
    );
    let other = call(
        "POST",
        "/v1/users".into(),
        Some(json!({"user": "alice", "display_name": "Eve"})),
        None,
    )
    .await;
    problem(&other, 409, "conflict");
    let alice = call("GET", "/v1/users/alice".into(), None, None).await;
    assert_eq!(alice.body["display_name"], "Alice", "{alice:?}");

    // The app signs bob in and hands his phone a token from the API.
    let minted = call(
        "POST",
        "/v1/users/bob/tokens".into(),
        Some(json!({"device": "phone", "ttl_secs": 600})),
        None,
    )
    .await;
    assert_eq!(minted.status, 201, "{minted:?}");
    let token = minted.body["token"].as_str().unwrap().to_owned();
    let mut phone = WsClient::connect(addr).await.unwrap();
    assert!(matches!(
        phone.reply(hello(token)).await.unwrap(),
        ReplyBody::Welcome(_)
    ));

    let created = call(
        "POST",
        "/v1/groups".into(),
        Some(json!({"group": "team", "title": "Team", "owner": "alice", "members": ["bob"]})),
        Some("create-team"),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let group = call("GET", "/v1/groups/team".into(), None, None).await;
    assert_eq!(
        (
            group.body["owner"].as_str(),
            group.body["member_count"].as_u64()
        ),
        (Some("alice"), Some(2)),
        "{group:?}"
    );

    let system = seq(&call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"body": "welcome"})),
        None,
    )
    .await);
    let posted = call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"body": {"text": "hi bob"}, "sender": "alice"})),
        Some("alice-1"),
    )
    .await;
    let by_alice = seq(&posted);
    assert!(by_alice > system);
    let live = phone
        .pushed::<LiveMessage>(|m| m.message.seq == system)
        .await
        .unwrap();
    assert_eq!(live.message.sender, "system:api");
    let live = phone
        .pushed::<LiveMessage>(|m| m.message.seq == by_alice)
        .await
        .unwrap();
    assert_eq!(
        (
            live.message.sender.as_str(),
            live.message.device.as_str(),
            live.prev
        ),
        ("alice", "api", system)
    );
    assert_eq!(live.message.body, json!({"text": "hi bob"}));

    // The same post again is the same message.
    let repeat = call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"body": {"text": "hi bob"}, "sender": "alice"})),
        Some("alice-1"),
    )
    .await;
    assert_eq!(
        (seq(&repeat), repeat.body["duplicate"].as_bool()),
        (by_alice, Some(true))
    );
    // A post for someone who is not a member is refused.
    let outsider = call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"body": "x", "sender": "mallory"})),
        None,
    )
    .await;
    problem(&outsider, 403, "forbidden");

    let history = call(
        "GET",
        "/v1/conversations/team/messages?limit=1".into(),
        None,
        None,
    )
    .await;
    assert_eq!(
        history.body["messages"][0]["seq"].as_u64(),
        Some(by_alice),
        "{history:?}"
    );
    let before = history.body["next_before"].as_u64().unwrap();
    let older = call(
        "GET",
        format!("/v1/conversations/team/messages?before={before}"),
        None,
        None,
    )
    .await;
    assert_eq!(
        older.body["messages"].as_array().unwrap().len(),
        1,
        "{older:?}"
    );
    assert_eq!(older.body["messages"][0]["body"], "welcome");
    assert!(older.body.get("next_before").is_none(), "{older:?}");

    let convs = call("GET", "/v1/users/bob/conversations".into(), None, None).await;
    assert_eq!(convs.body["conversations"][0]["conv"], "team", "{convs:?}");
    assert_eq!(
        convs.body["conversations"][0]["unread"].as_u64(),
        Some(2),
        "{convs:?}"
    );

    // Roles and rules: the backend acts with the owner's rights, never beyond them.
    let promoted = call(
        "PUT",
        "/v1/groups/team/members/bob/role".into(),
        Some(json!({"role": "admin"})),
        None,
    )
    .await;
    seq(&promoted);
    let members = call("GET", "/v1/groups/team/members".into(), None, None).await;
    assert_eq!(
        members.body["members"],
        json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "admin"}])
    );
    let owner_out = call("DELETE", "/v1/groups/team/members/alice".into(), None, None).await;
    problem(&owner_out, 403, "forbidden");
    let owner_role = call(
        "PUT",
        "/v1/groups/team/members/alice/role".into(),
        Some(json!({"role": "owner"})),
        None,
    )
    .await;
    problem(&owner_role, 400, "invalid_request");
    seq(&call(
        "PATCH",
        "/v1/groups/team".into(),
        Some(json!({"title": "Team 2"})),
        None,
    )
    .await);
    let sessions = call("GET", "/v1/users/bob/sessions".into(), None, None).await;
    assert_eq!(sessions.status, 200, "{sessions:?}");

    // Revoking bob's phone closes it.
    seq(&call("DELETE", "/v1/users/bob/sessions/phone".into(), None, None).await);
    assert_eq!(
        phone.closed().await.unwrap(),
        anchorage_protocol::close::REVOKED
    );

    seq(&call("DELETE", "/v1/groups/team".into(), None, None).await);
    problem(
        &call("GET", "/v1/groups/team".into(), None, None).await,
        404,
        "not_found",
    );
    let recreate = call(
        "POST",
        "/v1/groups".into(),
        Some(json!({"group": "team", "title": "Team", "owner": "alice", "members": ["bob"]})),
        None,
    )
    .await;
    problem(&recreate, 409, "conflict");
    seq(&call("DELETE", "/v1/users/alice".into(), None, None).await);
    problem(
        &call("GET", "/v1/users/alice".into(), None, None).await,
        404,
        "not_found",
    );
    let reused = call(
        "POST",
        "/v1/users".into(),
        Some(json!({"user": "alice", "display_name": "Alice"})),
        None,
    )
    .await;
    problem(&reused, 409, "conflict");
    stack.stack.stop().await.unwrap();
}

// Keys: missing, malformed, forged, out of scope, over their rate, revoked — each refused
// with its code; and bodies the API cannot read.
#[tokio::test]
async fn api_keys_are_checked_scoped_rate_limited_and_revocable() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let (admin, admin_id) = api_key(&nats.url(), Scope::Admin, 1000).await;
    let (reader, reader_id) = api_key(&nats.url(), Scope::Read, 1000).await;
    let (writer, _) = api_key(&nats.url(), Scope::Write, 1000).await;

    let none = http(addr, "GET", "/v1/users/alice", &[], None)
        .await
        .unwrap();
    problem(&none, 401, "unauthorized");
    for bad in [
        "Bearer nope",
        "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
        "Bearer ak_0123456789abcdef_zz",
    ] {
        let answer = http(
            addr,
            "GET",
            "/v1/users/alice",
            &[("Authorization", bad)],
            None,
        )
        .await
        .unwrap();
        problem(&answer, 401, "unauthorized");
    }
    // Another key's id with a made-up secret.
    let forged = format!("ak_{reader_id}_{}", "0".repeat(64));
    problem(
        &call(addr, &forged, "GET", "/v1/users/alice", None, None).await,
        401,
        "unauthorized",
    );

    // Scopes: read cannot write, write cannot delete users or revoke sessions.
    problem(
        &call(addr, &reader, "GET", "/v1/users/alice", None, None).await,
        404,
        "not_found",
    );
    let write = call(
        addr,
        &reader,
        "POST",
        "/v1/users",
        Some(json!({"user": "alice", "display_name": "A"})),
        None,
    )
    .await;
    problem(&write, 403, "forbidden");
    assert_eq!(
        call(
            addr,
            &writer,
            "POST",
            "/v1/users",
            Some(json!({"user": "alice", "display_name": "A"})),
            None
        )
        .await
        .status,
        201
    );
    problem(
        &call(addr, &writer, "DELETE", "/v1/users/alice", None, None).await,
        403,
        "forbidden",
    );
    problem(
        &call(
            addr,
            &writer,
            "DELETE",
            "/v1/users/alice/sessions/d",
            None,
            None,
        )
        .await,
        403,
        "forbidden",
    );

    // The device name messages posted for users carry cannot get a token.
    let reserved = call(
        addr,
        &writer,
        "POST",
        "/v1/users/alice/tokens",
        Some(json!({"device": "api"})),
        None,
    )
    .await;
    problem(&reserved, 403, "forbidden");

    // Bodies: too large, not an object, unknown fields, not JSON.
    let big = json!({"body": "x".repeat(70 * 1024)});
    problem(
        &call(
            addr,
            &admin,
            "POST",
            "/v1/conversations/g/messages",
            Some(big),
            None,
        )
        .await,
        413,
        "too_large",
    );
    problem(
        &call(
            addr,
            &admin,
            "POST",
            "/v1/users",
            Some(json!([null, null])),
            None,
        )
        .await,
        400,
        "invalid_request",
    );
    problem(
        &call(
            addr,
            &admin,
            "POST",
            "/v1/users",
            Some(json!({"user": "x", "display_name": "X", "admin": true})),
            None,
        )
        .await,
        400,
        "invalid_request",
    );
    let auth = format!("Bearer {admin}");
    let text = http(
        addr,
        "POST",
        "/v1/users",
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        None,
    )
    .await
    .unwrap();
    problem(&text, 400, "invalid_request");
    problem(
        &call(addr, &admin, "GET", "/v1/users/a.b", None, None).await,
        400,
        "invalid_request",
    );
    problem(
        &call(
            addr,
            &admin,
            "GET",
            "/v1/groups/g/members?limit=0",
            None,
            None,
        )
        .await,
        400,
        "invalid_request",
    );
    problem(
        &call(addr, &admin, "GET", "/v1/nothing", None, None).await,
        404,
        "not_found",
    );

    // A key's rate: a burst of its rate, then 429 with Retry-After.
    let (slow, _) = api_key(&nats.url(), Scope::Read, 2).await;
    let mut limited = None;
    for _ in 0..6 {
        let answer = call(addr, &slow, "GET", "/v1/users/alice", None, None).await;
        if answer.status == 429 {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("the key's rate is enforced");
    problem(&limited, 429, "rate_limited");
    assert!(limited.header("retry-after").is_some(), "{limited:?}");

    // Revoked: refused from the next request on, on every edge (the record is the stream's).
    let bus = anchorage_bus::Bus::connect(&anchorage::bus_options(
        &anchorage_tests::operator_config(&nats.url()),
        false,
    ))
    .await
    .unwrap();
    anchorage::apikey::revoke(&bus, &admin_id).await.unwrap();
    let listed = anchorage::apikey::list(&bus).await.unwrap();
    assert_eq!(listed.len(), 4);
    assert!(
        listed
            .iter()
            .all(|r| r.secret_sha256.len() == 64 && !admin.contains(&r.secret_sha256))
    );
    bus.close().await;
    let revoked = call(addr, &admin, "GET", "/v1/users/alice", None, None).await;
    problem(&revoked, 401, "unauthorized");
    assert!(
        revoked.body["detail"].as_str().unwrap().contains("revoked"),
        "{revoked:?}"
    );
    stack.stack.stop().await.unwrap();
}

// An idempotency key names one request: the same key in another conversation is another
// message, the same key with another body is a conflict, and a repeat after the stream's
// duplicate window is still the first message — never a second copy.
#[tokio::test]
async fn idempotency_keys_are_scoped_to_their_request_and_outlive_the_duplicate_window() {
    let nats = TestNats::start().await.unwrap();
    let (config, db_dir, _streams) = short_window_config(&nats.url(), "MESSAGES").await;
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let addr = stack.edge_addr();
    let (key, _) = api_key(&nats.url(), Scope::Write, 1000).await;
    for g in ["g1", "g2"] {
        let created = call(
            addr,
            &key,
            "POST",
            "/v1/groups",
            Some(json!({"group": g, "title": g, "owner": "alice", "members": ["bob"]})),
            None,
        )
        .await;
        assert_eq!(created.status, 201, "{created:?}");
    }
    let post = |conv: &'static str, body: &'static str, sender: Option<&'static str>| {
        let key = key.clone();
        async move {
            let mut b = json!({"body": body});
            if let Some(s) = sender {
                b["sender"] = json!(s);
            }
            call(
                addr,
                &key,
                "POST",
                &format!("/v1/conversations/{conv}/messages"),
                Some(b),
                // One key per sender: a key names one post in a conversation.
                Some(if sender.is_some() {
                    "k-user"
                } else {
                    "k-system"
                }),
            )
            .await
        }
    };
    for sender in [None, Some("bob")] {
        let first = seq(&post("g1", "one", sender).await);
        let elsewhere = seq(&post("g2", "one", sender).await);
        assert_ne!(first, elsewhere, "another conversation, another message");
        problem(&post("g1", "two", sender).await, 409, "conflict");
        // Past the stream's duplicate window: the history answers.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let late = post("g1", "one", sender).await;
        assert_eq!(
            (seq(&late), late.body["duplicate"].as_bool()),
            (first, Some(true)),
            "{sender:?}: {late:?}"
        );
        problem(&post("g1", "two", sender).await, 409, "conflict");
    }
    // The stored copy no longer holds what was posted — edited, then revoked: a repeat is
    // still that post, never a conflict (a backend told so would post it again under another
    // key, a revoked message among them).
    let bobs = seq(&post("g1", "one", Some("bob")).await);
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    let conv = anchorage_tests::conv_id("g1");
    let changes: [anchorage_protocol::RequestBody; 2] = [
        anchorage_protocol::request::Edit {
            conv: conv.clone(),
            seq: bobs,
            body: json!("uno"),
        }
        .into(),
        anchorage_protocol::request::Revoke { conv, seq: bobs }.into(),
    ];
    for change in changes {
        let done = bob.ok(change.clone()).await.unwrap();
        anchorage_tests::projected(&stack.stack.store, "messages", done.seq.unwrap()).await;
        let again = post("g1", "one", Some("bob")).await;
        assert_eq!(
            (seq(&again), again.body["duplicate"].as_bool()),
            (bobs, Some(true)),
            "after {change:?}: {again:?}"
        );
        if matches!(change, anchorage_protocol::RequestBody::Edit(_)) {
            // Still not a key for another message: compared with the post as it was made.
            problem(&post("g1", "two", Some("bob")).await, 409, "conflict");
        }
    }
    // Header and body naming two different keys: refused.
    let both = call(
        addr,
        &key,
        "POST",
        "/v1/conversations/g1/messages",
        Some(json!({"body": "x", "client_msg_id": "k-2"})),
        Some("k-3"),
    )
    .await;
    problem(&both, 409, "conflict");
    // A group command under a key: once, and the key cannot be reused for another change.
    let add = |member: &'static str| {
        let key = key.clone();
        async move {
            call(
                addr,
                &key,
                "POST",
                "/v1/groups/g1/members",
                Some(json!({"members": [member]})),
                Some("add-1"),
            )
            .await
        }
    };
    let added = seq(&add("carol").await);
    assert_eq!(seq(&add("carol").await), added);
    problem(&add("dave").await, 409, "conflict");
    let history = call(
        addr,
        &key,
        "GET",
        "/v1/conversations/g1/messages",
        None,
        None,
    )
    .await;
    assert_eq!(
        history.body["messages"].as_array().unwrap().len(),
        2,
        "one copy each: {history:?}"
    );
    stack.stack.stop().await.unwrap();
}

// What a careless or hostile backend tries: deleted users as members, owners and senders, a
// muted member speaking through the API, system posts into someone's 1:1 conversation,
// repeats after the state moved on, the same idempotency key from another API key, and a
// lower-case `bearer`.
#[tokio::test]
async fn the_api_keeps_the_rules_a_device_keeps_and_repeats_stay_repeats() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let (admin, _) = api_key(&nats.url(), Scope::Admin, 1000).await;
    let (other, _) = api_key(&nats.url(), Scope::Write, 1000).await;
    let call = |key: &str, method: &'static str, path: &str, body: Value, idem: Option<&str>| {
        let (key, path, idem) = (key.to_owned(), path.to_owned(), idem.map(str::to_owned));
        async move {
            let body = (!body.is_null()).then_some(body);
            call(addr, &key, method, &path, body, idem.as_deref()).await
        }
    };
    for user in ["alice", "bob", "zed"] {
        let r = call(
            &admin,
            "POST",
            "/v1/users",
            json!({"user": user, "display_name": user}),
            None,
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let created = call(
        &admin,
        "POST",
        "/v1/groups",
        json!({"group": "team", "title": "T", "owner": "alice", "members": ["bob", "zed"]}),
        None,
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let owned = call(
        &admin,
        "POST",
        "/v1/groups",
        json!({"group": "zeds", "title": "Z", "owner": "zed", "members": ["bob"]}),
        None,
    )
    .await;
    assert_eq!(owned.status, 201, "{owned:?}");

    // A deleted user leaves every group, and is nobody's member, owner or sender again.
    let deleted = call(
        &admin,
        "DELETE",
        "/v1/users/zed",
        Value::Null,
        Some("del-zed"),
    )
    .await;
    let deleted_at = seq(&deleted);
    let members = call(&admin, "GET", "/v1/groups/team/members", Value::Null, None).await;
    assert_eq!(
        members.body["members"],
        json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "member"}])
    );
    let zeds = call(&admin, "GET", "/v1/groups/zeds/members", Value::Null, None).await;
    assert_eq!(
        zeds.body["members"],
        json!([{"user": "bob", "role": "member"}])
    );
    // The same deletion again: the same answer, not `not_found`.
    let again = call(
        &admin,
        "DELETE",
        "/v1/users/zed",
        Value::Null,
        Some("del-zed"),
    )
    .await;
    assert_eq!(
        (seq(&again), again.body["duplicate"].as_bool()),
        (deleted_at, Some(true))
    );
    // A membership left behind (a crash between the deletion and its clean-up): asking to
    // delete again, without the key, cleans it up and says the user is gone.
    let team = anchorage_tests::group_id("team");
    let leftover = anchorage_schema::Envelope::new(
        anchorage_schema::EventId::parse("test:leftover").unwrap(),
        anchorage_schema::now_ms(),
        anchorage_schema::Actor::System {
            source: anchorage_schema::SourceId::parse("test").unwrap(),
        },
        anchorage_schema::event::MembersAdded {
            group: team.clone(),
            members: vec![anchorage_tests::user_id("zed")],
        },
    );
    let p = stack
        .stack
        .bus
        .publish_event(
            &anchorage_schema::subjects::membership(&team),
            &leftover,
            None,
        )
        .await
        .unwrap();
    anchorage_tests::projected(&stack.stack.store, "membership", p.seq.0).await;
    let listed = call(&admin, "GET", "/v1/groups/team/members", Value::Null, None).await;
    assert_eq!(
        listed.body["members"].as_array().unwrap().len(),
        3,
        "{listed:?}"
    );
    problem(
        &call(&admin, "DELETE", "/v1/users/zed", Value::Null, None).await,
        404,
        "not_found",
    );
    let listed = call(&admin, "GET", "/v1/groups/team/members", Value::Null, None).await;
    assert_eq!(
        listed.body["members"],
        json!([{"user": "alice", "role": "owner"}, {"user": "bob", "role": "member"}])
    );
    problem(
        &call(
            &admin,
            "POST",
            "/v1/groups/team/members",
            json!({"members": ["zed"]}),
            None,
        )
        .await,
        404,
        "not_found",
    );
    problem(
        &call(
            &admin,
            "POST",
            "/v1/groups",
            json!({"group": "z2", "title": "Z", "owner": "zed"}),
            None,
        )
        .await,
        404,
        "not_found",
    );
    problem(
        &call(
            &admin,
            "POST",
            "/v1/groups",
            json!({"group": "z3", "title": "Z", "owner": "alice", "members": ["zed"]}),
            None,
        )
        .await,
        404,
        "not_found",
    );
    problem(
        &call(
            &admin,
            "POST",
            "/v1/conversations/zeds/messages",
            json!({"body": "ghost", "sender": "zed"}),
            None,
        )
        .await,
        404,
        "not_found",
    );

    // Muted is muted, whichever way the message comes.
    let until = anchorage_schema::now_ms() + 3_600_000;
    seq(&call(
        &admin,
        "PUT",
        "/v1/groups/team/members/bob/mute",
        json!({"until": until}),
        None,
    )
    .await);
    problem(
        &call(
            &admin,
            "POST",
            "/v1/conversations/team/messages",
            json!({"body": "hush", "sender": "bob"}),
            None,
        )
        .await,
        403,
        "forbidden",
    );
    seq(&call(
        &admin,
        "PUT",
        "/v1/groups/team/members/bob/mute",
        json!({"until": null}),
        None,
    )
    .await);
    seq(&call(
        &admin,
        "POST",
        "/v1/conversations/team/messages",
        json!({"body": "back", "sender": "bob"}),
        None,
    )
    .await);

    // A 1:1 conversation is its two members' own: no system posts into it.
    let (mut a, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let dm = a
        .ok(anchorage_protocol::request::OpenDirect {
            peer: anchorage_tests::user_id("bob"),
        })
        .await
        .unwrap();
    let dm = dm.conv.unwrap();
    problem(
        &call(
            &admin,
            "POST",
            &format!("/v1/conversations/{dm}/messages"),
            json!({"body": "psst"}),
            None,
        )
        .await,
        403,
        "forbidden",
    );

    // A group command repeated after the state moved on is still its first answer.
    let dismissed = call(
        &admin,
        "DELETE",
        "/v1/groups/zeds",
        Value::Null,
        Some("dismiss-1"),
    )
    .await;
    let first = seq(&dismissed);
    let repeat = call(
        &admin,
        "DELETE",
        "/v1/groups/zeds",
        Value::Null,
        Some("dismiss-1"),
    )
    .await;
    assert_eq!(
        (seq(&repeat), repeat.body["duplicate"].as_bool()),
        (first, Some(true))
    );
    let add = call(
        &admin,
        "POST",
        "/v1/groups/team/members",
        json!({"members": ["carol"]}),
        Some("add-c"),
    )
    .await;
    let added = seq(&add);
    assert_eq!(add.body["duplicate"].as_bool(), Some(false));
    let add = call(
        &admin,
        "POST",
        "/v1/groups/team/members",
        json!({"members": ["carol"]}),
        Some("add-c"),
    )
    .await;
    assert_eq!(
        (seq(&add), add.body["duplicate"].as_bool()),
        (added, Some(true))
    );

    // An idempotency key names the request, whichever API key sends it.
    let one = seq(&call(
        &admin,
        "POST",
        "/v1/conversations/team/messages",
        json!({"body": "once"}),
        Some("sys-1"),
    )
    .await);
    let two = call(
        &other,
        "POST",
        "/v1/conversations/team/messages",
        json!({"body": "once"}),
        Some("sys-1"),
    )
    .await;
    assert_eq!(
        (seq(&two), two.body["duplicate"].as_bool()),
        (one, Some(true))
    );

    // The scheme's name is case-insensitive.
    let auth = format!("bearer {admin}");
    let lower = http(
        addr,
        "GET",
        "/v1/users/alice",
        &[("Authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(lower.status, 200, "{lower:?}");
    stack.stack.stop().await.unwrap();
}

// Changes sent at once without a key, each decided on the version it read, on a 3-node cluster
// with R3 streams: every one answered as done is done. Two different changes decided on the
// same version once shared an event id; a clustered stream checks ids before the expected
// version, so it took the second for a repeat of the first and dropped it, answered as done.
#[tokio::test]
async fn changes_at_once_without_a_key_each_take_effect() {
    let cluster = TestCluster::start(3).await.unwrap();
    let stack = TestStack::on_cluster(&cluster, |_| {}).await.unwrap();
    let addr = stack.edge_addr();
    let (admin, _) = api_key(&cluster.url(), Scope::Admin, 10_000).await;
    // Asks until done: a conflict (the group or user changed meanwhile) and a moment's
    // unavailability are asked again, as told.
    let done = |method: &'static str, path: String, body: Value| {
        let key = admin.clone();
        async move {
            let body = (!body.is_null()).then_some(body);
            for _ in 0..50 {
                let answer = call(addr, &key, method, &path, body.clone(), None).await;
                if answer.status != 409 && answer.status != 503 {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("{method} {path} kept conflicting");
        }
    };
    let olds: Vec<String> = (0..8).map(|n| format!("old{n}")).collect();
    let news: Vec<String> = (0..8).map(|n| format!("new{n}")).collect();
    for u in olds.iter().chain(&news).chain(["boss".to_owned()].iter()) {
        let r = done(
            "POST",
            "/v1/users".into(),
            json!({"user": u, "display_name": u}),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let r = done(
        "POST",
        "/v1/groups".into(),
        json!({"group": "kg", "title": "K", "owner": "boss", "members": olds}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");

    let mut at_once = tokio::task::JoinSet::new();
    let mut ask = |rename: bool, method: &'static str, path: String, body: Value| {
        let asked = done(method, path, body);
        at_once.spawn(async move { (rename, asked.await) });
    };
    for (old, new) in olds.iter().zip(&news) {
        ask(
            false,
            "DELETE",
            format!("/v1/groups/kg/members/{old}"),
            Value::Null,
        );
        ask(
            false,
            "POST",
            "/v1/groups/kg/members".into(),
            json!({"members": [new]}),
        );
    }
    // One user renamed eight ways at once: each answer names its own change.
    for n in 0..8 {
        ask(
            true,
            "PATCH",
            "/v1/users/boss".into(),
            json!({"display_name": format!("boss {n}")}),
        );
    }
    let mut renames = Vec::new();
    while let Some(answer) = at_once.join_next().await {
        let (rename, answer) = answer.unwrap();
        let seq = seq(&answer);
        assert_ne!(answer.body["duplicate"], json!(true), "{answer:?}");
        if rename {
            renames.push(seq);
        }
    }
    renames.sort_unstable();
    renames.dedup();
    assert_eq!(
        renames.len(),
        8,
        "each rename is its own event: {renames:?}"
    );

    let members = done("GET", "/v1/groups/kg/members".into(), Value::Null).await;
    let mut held: Vec<String> = members.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap().to_owned())
        .collect();
    held.sort();
    let mut expected: Vec<String> = news.iter().cloned().chain(["boss".to_owned()]).collect();
    expected.sort();
    assert_eq!(held, expected, "{members:?}");
    stack.stack.stop().await.unwrap();
}

// Deletions racing joins and posts, and one key for one request whatever its kind: no deleted
// user is left a member, and a key is never applied twice to different requests.
#[tokio::test]
async fn deletions_racing_joins_leave_no_deleted_member_and_keys_bind_one_request() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let (admin, _) = api_key(&nats.url(), Scope::Admin, 10_000).await;
    let call = |method: &'static str, path: String, body: Value, idem: Option<String>| {
        let key = admin.clone();
        async move {
            let body = (!body.is_null()).then_some(body);
            call(addr, &key, method, &path, body, idem.as_deref()).await
        }
    };
    let users: Vec<String> = (0..12).map(|n| format!("r{n}")).collect();
    for u in &users {
        let r = call(
            "POST",
            "/v1/users".into(),
            json!({"user": u, "display_name": u}),
            None,
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let r = call(
        "POST",
        "/v1/groups".into(),
        json!({"group": "rg", "title": "R", "owner": "boss"}),
        None,
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    let mut racing = tokio::task::JoinSet::new();
    for u in users.clone() {
        racing.spawn(call(
            "DELETE",
            format!("/v1/users/{u}"),
            Value::Null,
            Some(format!("del-{u}")),
        ));
        racing.spawn(call(
            "POST",
            "/v1/groups/rg/members".into(),
            json!({"members": [u]}),
            None,
        ));
        racing.spawn(call(
            "POST",
            "/v1/groups".into(),
            json!({"group": format!("own-{u}"), "title": "O", "owner": u}),
            None,
        ));
    }
    while let Some(done) = racing.join_next().await {
        let answer = done.unwrap();
        assert!(answer.status < 500, "{answer:?}");
    }
    let members = call("GET", "/v1/groups/rg/members".into(), Value::Null, None).await;
    assert_eq!(
        members.body["members"],
        json!([{"user": "boss", "role": "owner"}]),
        "{members:?}"
    );
    for u in &users {
        let own = call(
            "GET",
            format!("/v1/groups/own-{u}/members"),
            Value::Null,
            None,
        )
        .await;
        if own.status == 200 {
            assert_eq!(own.body["members"], json!([]), "{u}: {own:?}");
        }
        // A deleted user has no sessions to revoke, and a revoke does not bury the deletion.
        problem(
            &call(
                "DELETE",
                format!("/v1/users/{u}/sessions/d"),
                Value::Null,
                None,
            )
            .await,
            404,
            "not_found",
        );
        let again = call(
            "DELETE",
            format!("/v1/users/{u}"),
            Value::Null,
            Some(format!("del-{u}")),
        )
        .await;
        assert_eq!(again.body["duplicate"].as_bool(), Some(true), "{again:?}");
    }

    // One key, one request, whatever the kind.
    let r = call(
        "POST",
        "/v1/groups".into(),
        json!({"group": "k", "title": "K", "owner": "boss"}),
        Some("K1".into()),
    )
    .await;
    assert_eq!(
        (r.status, r.body["duplicate"].as_bool()),
        (201, Some(false)),
        "{r:?}"
    );
    let r = call(
        "POST",
        "/v1/groups".into(),
        json!({"group": "k", "title": "K", "owner": "boss"}),
        Some("K1".into()),
    )
    .await;
    assert_eq!(
        (r.status, r.body["duplicate"].as_bool()),
        (201, Some(true)),
        "{r:?}"
    );
    problem(
        &call(
            "PATCH",
            "/v1/groups/k".into(),
            json!({"title": "other"}),
            Some("K1".into()),
        )
        .await,
        409,
        "conflict",
    );
    seq(&call(
        "POST",
        "/v1/groups/k/members".into(),
        json!({"members": ["m"]}),
        Some("K2".into()),
    )
    .await);
    problem(
        &call(
            "PUT",
            "/v1/groups/k/members/m/mute".into(),
            json!({"until": 1}),
            Some("K2".into()),
        )
        .await,
        409,
        "conflict",
    );
    let created = call(
        "POST",
        "/v1/users".into(),
        json!({"user": "u1", "display_name": "U"}),
        Some("U1".into()),
    )
    .await;
    seq(&created);
    problem(
        &call(
            "PATCH",
            "/v1/users/u1".into(),
            json!({"display_name": "V"}),
            Some("U1".into()),
        )
        .await,
        409,
        "conflict",
    );
    // A post's key names one post in its conversation, whoever it is for.
    seq(&call(
        "POST",
        "/v1/conversations/k/messages".into(),
        json!({"body": "x", "sender": "m"}),
        Some("P1".into()),
    )
    .await);
    problem(
        &call(
            "POST",
            "/v1/conversations/k/messages".into(),
            json!({"body": "x", "sender": "boss"}),
            Some("P1".into()),
        )
        .await,
        409,
        "conflict",
    );
    problem(
        &call(
            "POST",
            "/v1/conversations/k/messages".into(),
            json!({"body": "x"}),
            Some("P1".into()),
        )
        .await,
        409,
        "conflict",
    );
    stack.stack.stop().await.unwrap();
}
