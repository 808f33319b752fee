//! The chat itself over real WebSockets, across two edges, with a real nats-server and a real
//! database: groups and 1:1s, sends and retries, live push with `prev`, sync and history,
//! read markers across devices, reconnect summaries, authorization, bad input.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::time::Duration;

use anchorage_tests::{
    TestEdge, TestNats, TestStack, WsClient, eventually, fresh_database, test_config, token,
};
use serde_json::{Value, json};

struct Two {
    _nats: TestNats,
    stack: TestStack,
    edge2: TestEdge,
}

async fn two_edges() -> Two {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    config.edge.hello_timeout_ms = 500;
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let edge2 = TestEdge::start(&stack.config).await.unwrap();
    Two {
        _nats: nats,
        stack,
        edge2,
    }
}

fn is_message(conv: &str) -> impl Fn(&Value) -> bool + '_ {
    move |f: &Value| f["type"] == "message" && f["message"]["conv"] == conv
}

#[tokio::test]
async fn a_group_chat_across_two_edges() {
    let t = two_edges().await;
    let (e1, e2) = (t.stack.edge_addr(), t.edge2.addr);
    let (mut alice, welcome) = WsClient::signed_in(e1, "alice", "laptop").await.unwrap();
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["changes"], json!([]));
    let (mut bob, _) = WsClient::signed_in(e2, "bob", "phone").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(e2, "carol", "phone").await.unwrap();

    let created = alice
        .request(
            json!({"type": "create_group", "group": "ops", "title": "Ops", "members": ["bob"]}),
        )
        .await
        .unwrap();
    assert_eq!(created["type"], "ok", "{created}");
    let joined = bob.push(|f| f["type"] == "membership").await.unwrap();
    assert_eq!(
        (joined["conv"].as_str(), joined["joined"].as_bool()),
        (Some("ops"), Some(true))
    );
    // Creating it again is a conflict.
    let again = alice
        .request(json!({"type": "create_group", "group": "ops", "title": "Ops"}))
        .await
        .unwrap();
    assert_eq!(again["code"], "conflict");

    // Alice sends three messages; bob, on the other edge, gets each with the previous seq.
    let mut seqs = Vec::new();
    for n in 0..3 {
        let ack = alice
            .request(
                json!({"type": "send", "conv": "ops", "client_msg_id": format!("m{n}"),
                            "body": {"text": format!("hi {n}")}, "client_ts": 1000 + n}),
            )
            .await
            .unwrap();
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["duplicate"], false);
        seqs.push(ack["seq"].as_u64().unwrap());
    }
    let mut prev = 0;
    for (n, seq) in seqs.iter().enumerate() {
        let m = bob.push(is_message("ops")).await.unwrap();
        assert_eq!(m["message"]["seq"].as_u64(), Some(*seq));
        assert_eq!(m["prev"].as_u64(), Some(prev), "{m}");
        assert_eq!(m["message"]["body"]["text"], format!("hi {n}"));
        assert_eq!(m["message"]["sender"], "alice");
        prev = *seq;
    }
    // The sender's other sessions and the sender itself see the same stream.
    let own = alice.push(is_message("ops")).await.unwrap();
    assert_eq!(own["message"]["seq"].as_u64(), Some(seqs[0]));

    // A retry with the same client id gets the same seq and stores nothing new.
    let retry = alice
        .request(json!({"type": "send", "conv": "ops", "client_msg_id": "m1",
                        "body": {"text": "hi 1"}, "client_ts": 1001}))
        .await
        .unwrap();
    assert_eq!(
        (retry["seq"].as_u64(), retry["duplicate"].as_bool()),
        (Some(seqs[1]), Some(true))
    );
    let store = &t.stack.stack.store;
    eventually(
        Duration::from_secs(10),
        "three messages projected",
        || async { (store.conversation("ops").await.ok()??.message_count == 3).then_some(()) },
    )
    .await
    .unwrap();
    // Long after the duplicate window, a retry flagged as such is found in history.
    let late = alice
        .request(json!({"type": "send", "conv": "ops", "client_msg_id": "m2",
                        "body": {"text": "hi 2"}, "client_ts": 1002, "retry": true}))
        .await
        .unwrap();
    assert_eq!(
        (late["seq"].as_u64(), late["duplicate"].as_bool()),
        (Some(seqs[2]), Some(true))
    );

    // Sync and history, bounded.
    let page = bob
        .request(json!({"type": "sync", "conv": "ops", "after": 0, "limit": 2}))
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    assert_eq!(page["more"], true);
    let rest = bob
        .request(
            json!({"type": "sync", "conv": "ops", "after": page["messages"][1]["seq"], "limit": 2}),
        )
        .await
        .unwrap();
    assert_eq!(rest["messages"][0]["seq"].as_u64(), Some(seqs[2]));
    assert_eq!(rest["more"], false);
    let hist = bob
        .request(json!({"type": "history", "conv": "ops", "limit": 2}))
        .await
        .unwrap();
    let hist_seqs: Vec<u64> = hist["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(hist_seqs, vec![seqs[2], seqs[1]]);

    // Carol is not a member: she can neither read nor send, and receives nothing.
    for req in [
        json!({"type": "sync", "conv": "ops", "after": 0}),
        json!({"type": "history", "conv": "ops"}),
        json!({"type": "send", "conv": "ops", "client_msg_id": "x", "body": "let me in", "client_ts": 1}),
        json!({"type": "read", "conv": "ops", "seq": 1}),
        json!({"type": "add_members", "group": "ops", "members": ["carol"]}),
    ] {
        let answer = carol.request(req.clone()).await.unwrap();
        assert_eq!(answer["code"], "forbidden", "{req} → {answer}");
    }
    assert!(
        carol
            .pending_pushes()
            .iter()
            .all(|f| f["type"] != "message")
    );
    // Bob is a member but not an admin: he cannot add anyone.
    let denied = bob
        .request(json!({"type": "add_members", "group": "ops", "members": ["carol"]}))
        .await
        .unwrap();
    assert_eq!(denied["code"], "forbidden");

    // Alice adds carol: from now on carol gets the group's messages live.
    let added = alice
        .request(json!({"type": "add_members", "group": "ops", "members": ["carol"]}))
        .await
        .unwrap();
    assert_eq!(added["type"], "ok", "{added}");
    carol
        .push(|f| f["type"] == "membership" && f["conv"] == "ops")
        .await
        .unwrap();
    let ack = alice
        .request(json!({"type": "send", "conv": "ops", "client_msg_id": "m3", "body": "welcome carol", "client_ts": 1}))
        .await
        .unwrap();
    let m = carol.push(is_message("ops")).await.unwrap();
    assert_eq!(m["message"]["seq"], ack["seq"]);
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn direct_chats_reads_across_devices_and_reconnect_summaries() {
    let t = two_edges().await;
    let (e1, e2) = (t.stack.edge_addr(), t.edge2.addr);
    let (mut alice, _) = WsClient::signed_in(e1, "alice", "laptop").await.unwrap();
    let (mut bob_phone, _) = WsClient::signed_in(e1, "bob", "phone").await.unwrap();
    let (mut bob_laptop, _) = WsClient::signed_in(e2, "bob", "laptop").await.unwrap();

    let opened = alice
        .request(json!({"type": "open_direct", "peer": "bob"}))
        .await
        .unwrap();
    let conv = opened["conv"].as_str().unwrap().to_owned();
    assert!(conv.starts_with("dm-"));
    let from_bob = bob_phone
        .request(json!({"type": "open_direct", "peer": "alice"}))
        .await
        .unwrap();
    assert_eq!(
        from_bob["conv"],
        conv.as_str(),
        "the same conversation from both sides"
    );
    let self_chat = alice
        .request(json!({"type": "open_direct", "peer": "alice"}))
        .await
        .unwrap();
    assert_eq!(self_chat["code"], "invalid_request");
    // The laptop's edge hears of the new conversation live; what is sent before that is
    // synced, not pushed, so the live part of the test starts once it is told.
    bob_laptop
        .push(|f| f["type"] == "membership" && f["conv"] == conv.as_str())
        .await
        .unwrap();

    let mut last = 0;
    for n in 0..5 {
        let ack = alice
            .request(json!({"type": "send", "conv": conv, "client_msg_id": format!("d{n}"), "body": n, "client_ts": n}))
            .await
            .unwrap();
        assert_eq!(ack["type"], "ack", "{ack}");
        last = ack["seq"].as_u64().unwrap();
    }
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let mut got = Vec::new();
        while got.len() < 5 {
            got.push(
                bob.push(is_message(&conv)).await.unwrap()["message"]["seq"]
                    .as_u64()
                    .unwrap(),
            );
        }
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    }

    // Bob reads on the phone; the laptop, on the other edge, hears of it live.
    let third = t.stack.stack.store.messages_after(&conv, 0, 3).await;
    let third = match third {
        Ok(rows) if rows.len() == 3 => rows[2].seq,
        _ => eventually(Duration::from_secs(10), "messages projected", || async {
            let rows = t.stack.stack.store.messages_after(&conv, 0, 3).await.ok()?;
            (rows.len() == 3).then(|| rows[2].seq)
        })
        .await
        .unwrap(),
    };
    let ok = bob_phone
        .request(json!({"type": "read", "conv": conv, "seq": third}))
        .await
        .unwrap();
    assert_eq!(ok["type"], "ok");
    let read = bob_laptop.push(|f| f["type"] == "read").await.unwrap();
    assert_eq!(
        (read["conv"].as_str(), read["seq"].as_u64()),
        (Some(conv.as_str()), Some(third))
    );

    // The laptop acknowledged nothing; reconnecting, it is offered the conversation with
    // its unread count and last message.
    drop(bob_laptop);
    let store = &t.stack.stack.store;
    eventually(
        Duration::from_secs(10),
        "the read marker projected",
        || async { (store.read_seq("bob", &conv).await.ok()?? == third).then_some(()) },
    )
    .await
    .unwrap();
    let (_, welcome) = WsClient::signed_in(e2, "bob", "laptop").await.unwrap();
    let change = &welcome["changes"][0];
    assert_eq!(change["conv"], conv.as_str(), "{welcome}");
    assert_eq!(change["last_seq"].as_u64(), Some(last));
    assert_eq!(change["unread"].as_u64(), Some(2));
    assert_eq!(change["last_message"]["body"], 4);

    // The phone acknowledges receipt; its next reconnect has nothing to offer.
    let ok = bob_phone
        .request(json!({"type": "received", "conv": conv, "seq": last}))
        .await
        .unwrap();
    assert_eq!(ok["type"], "ok");
    drop(bob_phone);
    let (_, welcome) = WsClient::signed_in(e1, "bob", "phone").await.unwrap();
    assert_eq!(welcome["changes"], json!([]), "{welcome}");
    // A client that says which seq it has gets only what is newer.
    let mut c = WsClient::connect(e2).await.unwrap();
    let w = c
        .request(
            json!({"type": "hello", "protocol": 1, "token": token("bob", "tablet", 60),
                        "anchors": [{"conv": conv, "seq": last}]}),
        )
        .await
        .unwrap();
    assert_eq!(w["changes"], json!([]), "{w}");
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_precise_errors_and_the_connection_carries_on() {
    let t = two_edges().await;
    let addr = t.stack.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "laptop").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "phone").await.unwrap();
    alice
        .request(json!({"type": "open_direct", "peer": "bob"}))
        .await
        .unwrap();

    let cases = [
        ("{not json", "bad_frame"),
        (r#"{"id": 7, "type": "teleport"}"#, "unknown_type"),
        (
            r#"{"id": 8, "type": "send", "conv": "c"}"#,
            "invalid_request",
        ),
        (
            r#"{"id": 9, "type": "sync", "conv": "no.dots", "after": 0}"#,
            "invalid_request",
        ),
        (
            r#"{"id": 10, "type": "sync", "conv": "someone-elses", "after": 0}"#,
            "forbidden",
        ),
        (
            r#"{"id": 11, "type": "hello", "protocol": 1, "token": "x"}"#,
            "hello_required",
        ),
    ];
    for (text, code) in cases {
        alice.send_text(text).await.unwrap();
        let f = alice.next_answer().await.unwrap();
        // `hello` again on a signed-in connection is answered like a reconnect summary.
        if code == "hello_required" {
            assert_eq!(f["type"], "welcome", "{f}");
            continue;
        }
        assert_eq!(f["type"], "error", "{text} → {f}");
        assert_eq!(f["code"], code, "{text} → {f}");
    }
    // Still connected, still working.
    assert_eq!(
        alice.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );

    // An oversized frame closes only that socket, with 1009.
    let huge = "x".repeat(70 * 1024);
    alice
        .send_text(json!({"type": "send", "conv": "c", "client_msg_id": "big", "body": huge, "client_ts": 1}).to_string())
        .await
        .unwrap();
    assert_eq!(alice.closed().await.unwrap(), 1009);
    assert_eq!(
        bob.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );

    // Rate limits answer with a retry hint.
    let mut limited = None;
    for n in 0..300 {
        bob.send_text(json!({"type": "ping", "id": 1000 + n}).to_string())
            .await
            .unwrap();
    }
    for _ in 0..300 {
        let f = bob.next_answer().await.unwrap();
        if f["code"] == "rate_limited" {
            limited = Some(f);
            break;
        }
    }
    let limited = limited.expect("a rate_limited error");
    assert!(limited["retry_after_ms"].as_u64().unwrap() >= 1);
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_are_checked_at_hello() {
    let t = two_edges().await;
    let addr = t.stack.edge_addr();

    // Requests before hello are refused until hello comes; no hello at all closes with 4003.
    let mut c = WsClient::connect(addr).await.unwrap();
    let f = c.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(f["code"], "hello_required");
    assert_eq!(c.closed().await.unwrap(), 4003);

    let forged = anchorage_edge::auth::mint_hs256(
        "some-other-secret-entirely",
        anchorage_schema::UserId::parse("alice").unwrap(),
        anchorage_schema::DeviceId::parse("d").unwrap(),
        60,
    )
    .unwrap();
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImRldmljZSI6ImQiLCJpYXQiOjEsImV4cCI6OTk5OTk5OTk5OX0.";
    for (tok, code) in [(forged.as_str(), 4001), (none, 4001), ("garbage", 4001)] {
        let mut c = WsClient::connect(addr).await.unwrap();
        c.send_text(json!({"type": "hello", "id": 1, "protocol": 1, "token": tok}).to_string())
            .await
            .unwrap();
        assert_eq!(c.closed().await.unwrap(), code, "{tok}");
    }
    // A token that expires during the connection closes it with 4002.
    let mut c = WsClient::connect(addr).await.unwrap();
    let w = c
        .request(json!({"type": "hello", "protocol": 1, "token": token("alice", "d", 1)}))
        .await
        .unwrap();
    assert_eq!(w["type"], "welcome");
    assert_eq!(c.closed().await.unwrap(), 4002);
    // An unknown protocol version.
    let mut c = WsClient::connect(addr).await.unwrap();
    let e = c
        .request(json!({"type": "hello", "protocol": 9, "token": token("alice", "d", 60)}))
        .await
        .unwrap();
    assert_eq!(e["code"], "unsupported_protocol");
    assert_eq!(c.closed().await.unwrap(), 4004);
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn a_revoked_session_is_closed_at_once_and_refused_after() {
    let t = two_edges().await;
    let (mut bob, _) = WsClient::signed_in(t.edge2.addr, "bob", "laptop")
        .await
        .unwrap();
    let (mut other, _) = WsClient::signed_in(t.edge2.addr, "bob", "phone")
        .await
        .unwrap();
    let revoked = anchorage_schema::Envelope::new(
        anchorage_schema::EventId::parse("revoke-1").unwrap(),
        1,
        anchorage_schema::Actor::System {
            source: anchorage_schema::SourceId::parse("admin").unwrap(),
        },
        anchorage_schema::event::SessionRevoked {
            user: anchorage_schema::UserId::parse("bob").unwrap(),
            device: anchorage_schema::DeviceId::parse("laptop").unwrap(),
        },
    );
    let bus = &t.stack.stack.bus;
    bus.publish_event("user.bob", &revoked, None).await.unwrap();
    assert_eq!(bob.closed().await.unwrap(), 4005);
    // Bob's other device is not affected.
    assert_eq!(
        other.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );
    // A fresh token for the revoked device is refused too.
    let store = &t.stack.stack.store;
    eventually(
        Duration::from_secs(10),
        "the revocation projected",
        || async { store.is_revoked("bob", "laptop").await.ok()?.then_some(()) },
    )
    .await
    .unwrap();
    let mut again = WsClient::connect(t.edge2.addr).await.unwrap();
    again
        .send_text(
            json!({"type": "hello", "id": 1, "protocol": 1, "token": token("bob", "laptop", 60)})
                .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(again.closed().await.unwrap(), 4005);
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn an_edge_at_capacity_refuses_new_sockets_with_a_retry_hint() {
    let t = two_edges().await;
    let mut config = t.stack.config.clone();
    config.edge.max_connections = 2;
    let small = TestEdge::start(&config).await.unwrap();
    let (_a, _) = WsClient::signed_in(small.addr, "alice", "a").await.unwrap();
    let (_b, _) = WsClient::signed_in(small.addr, "bob", "b").await.unwrap();
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", small.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=6).contains(&retry), "{retry}");
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    small.stop().await.unwrap();
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn an_edge_shutting_down_welcomes_no_one() {
    // A socket accepted just before the shutdown began says hello after it: it is told to go
    // away at once rather than welcomed and cut off in the middle of its resync.
    let t = two_edges().await;
    let leaving = TestEdge::start(&t.stack.config).await.unwrap();
    let mut late = WsClient::connect(leaving.addr).await.unwrap();
    leaving.begin_stop();
    late.send_text(
        json!({"type": "hello", "id": 1, "protocol": 1,
               "token": anchorage_tests::token("alice", "a", 3600)})
        .to_string(),
    )
    .await
    .unwrap();
    assert_eq!(late.closed().await.unwrap(), 1001);
    assert!(
        late.pending_pushes().is_empty(),
        "{:?}",
        late.pending_pushes()
    );
    leaving.stop().await.unwrap();
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_others_carry_on() {
    let t = two_edges().await;
    let mut config = t.stack.config.clone();
    config.edge.queue_frames = 16;
    let small = TestEdge::start(&config).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(t.stack.edge_addr(), "alice", "a")
        .await
        .unwrap();
    let (mut bob, _) = WsClient::signed_in(small.addr, "bob", "b").await.unwrap();
    // Carol shares bob's edge but not his group.
    let (mut carol, _) = WsClient::signed_in(small.addr, "carol", "c").await.unwrap();
    alice
        .request(
            json!({"type": "create_group", "group": "big", "title": "Big", "members": ["bob"]}),
        )
        .await
        .unwrap();
    bob.push(|f| f["type"] == "membership").await.unwrap();

    // Bob stops reading; a flood of large messages fills every buffer on the way to him.
    let body = "x".repeat(16 * 1024);
    let bus = &t.stack.stack.bus;
    let conv = anchorage_schema::ConversationId::parse("big").unwrap();
    let total = 1500;
    for n in 0..total {
        let env = anchorage_schema::Envelope::new(
            anchorage_schema::EventId::parse(format!("flood-{n}")).unwrap(),
            1,
            anchorage_schema::Actor::System {
                source: anchorage_schema::SourceId::parse("load").unwrap(),
            },
            anchorage_schema::event::SystemMessagePosted {
                conv: conv.clone(),
                body: json!(body),
            },
        );
        bus.publish_event("msg.big", &env, None).await.unwrap();
    }
    // Bob's connection was closed rather than skipped: draining what reached him ends in the
    // slow-consumer close (or the socket drop that follows it), before all messages.
    let mut received = 0;
    let end = loop {
        match bob.next_frame().await {
            Ok(f) if f["type"] == "message" => received += 1,
            Ok(_) => {}
            Err(e) => break e.to_string(),
        }
    };
    assert!(received < total, "bob got {received} of {total}");
    assert!(
        end.contains("4008") || end.contains("socket error") || end == "closed",
        "{end}"
    );
    // The edge and everyone else carry on (alice, who did not read either, was cut off too);
    // bob reconnects and resyncs from his anchor.
    assert_eq!(
        carol.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );
    let (mut bob, _) = WsClient::signed_in(t.edge2.addr, "bob", "b").await.unwrap();
    let page = bob
        .request(json!({"type": "sync", "conv": "big", "after": 0, "limit": 100}))
        .await
        .unwrap();
    // A page stops at 100 messages or 1 MiB of bodies, whichever comes first.
    let got = page["messages"].as_array().unwrap().len();
    assert_eq!(got, (1024 * 1024) / (16 * 1024 + 2), "{}", page["type"]);
    assert_eq!(page["more"], true);
    small.stop().await.unwrap();
    t.edge2.stop().await.unwrap();
}
