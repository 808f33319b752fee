//! What an attacker tries against a running stack, over real sockets, a real nats-server and
//! a real database: capturing other users' 1:1 conversations, colliding idempotency keys,
//! payloads no reader can decode, exhausting the edge's memory and connection slots, racing a
//! revocation, hostile tokens and frames.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anchorage_config::Config;
use anchorage_schema::event::{GroupCreated, MembersRemoved, RemovalReason};
use anchorage_schema::{
    Actor, ConversationId, DeviceId, Envelope, EventId, GroupId, SourceId, UserId, subjects,
};
use anchorage_tests::{
    TestEdge, TestNats, TestStack, WsClient, eventually, fresh_database, test_config, token, within,
};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

struct Setup {
    _nats: TestNats,
    stack: TestStack,
}

async fn setup(tune: impl FnOnce(&mut Config)) -> Setup {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    tune(&mut config);
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    Setup { _nats: nats, stack }
}

fn user(u: &str) -> UserId {
    UserId::parse(u).unwrap()
}

fn system() -> Actor {
    Actor::System {
        source: SourceId::parse("test").unwrap(),
    }
}

/// Stores a membership event as the system would (a state an attacker could have reached).
async fn store_membership(
    s: &Setup,
    group: &str,
    id: &str,
    event: impl Into<anchorage_schema::Event>,
) -> u64 {
    let g = GroupId::parse(group).unwrap();
    let env = Envelope::new(EventId::parse(id).unwrap(), 1, system(), event);
    s.stack
        .stack
        .bus
        .publish_event(&subjects::membership(&g), &env, None)
        .await
        .unwrap()
        .seq
        .0
}

async fn projected(s: &Setup, group: &str, version: u64) {
    let store = &s.stack.stack.store;
    eventually(Duration::from_secs(20), "the group projected", || async {
        (store.group_row(group).await.ok()??.version >= version).then_some(())
    })
    .await
    .unwrap();
}

fn send(conv: &str, id: &str, body: Value) -> Value {
    json!({"type": "send", "conv": conv, "client_msg_id": id, "body": body, "client_ts": 1})
}

/// A WebSocket from a chosen local address (the loopback range is all ours).
async fn connect_from(addr: SocketAddr, local: IpAddr) -> anyhow::Result<WsStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let tcp = socket.connect(addr).await?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp).await?;
    Ok(ws)
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The close code a raw socket ends with (0: closed without one), reading everything before.
async fn close_code<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, limit: Duration) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(limit, "the socket to close", async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(WsMessage::Close(f)) => return f.map_or(0, |f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return 0,
            }
        }
        0
    })
    .await
    .unwrap()
}

fn hello(user: &str, device: &str) -> String {
    json!({"type": "hello", "id": 1, "protocol": 1, "token": token(user, device, 3600)}).to_string()
}

// 1. 1:1 conversations cannot be captured, computed into, or probed.
#[tokio::test]
async fn direct_conversations_belong_to_their_two_users() {
    let s = setup(|_| {}).await;
    let addr = s.stack.edge_addr();
    // A conversation stored under the id of mallory's 1:1 with pat, but with alice and bob in
    // it: what a collision of ids (or a conversation created in advance) would give.
    let target = ConversationId::direct(&user("mallory"), &user("pat"));
    let v = store_membership(
        &s,
        target.as_str(),
        "forged-dm",
        GroupCreated {
            group: GroupId::parse(target.as_str()).unwrap(),
            owner: user("alice"),
            title: String::new(),
            members: vec![user("bob")],
            direct: true,
        },
    )
    .await;
    projected(&s, target.as_str(), v).await;
    let (mut mallory, _) = WsClient::signed_in(addr, "mallory", "d").await.unwrap();
    let opened = mallory
        .request(json!({"type": "open_direct", "peer": "pat"}))
        .await
        .unwrap();
    assert_eq!(opened["type"], "error", "never joined: {opened}");
    for probe in [
        json!({"type": "history", "conv": target.as_str()}),
        json!({"type": "sync", "conv": target.as_str(), "after": 0}),
        send(target.as_str(), "x", json!("hi")),
    ] {
        let answer = mallory.request(probe.clone()).await.unwrap();
        assert_eq!(answer["code"], "forbidden", "{probe} → {answer}");
    }
    // Whether two others have a 1:1 is not learned from group commands either.
    let (alice_bob, nobody) = (
        ConversationId::direct(&user("alice"), &user("bob")),
        ConversationId::direct(&user("carol"), &user("dave")),
    );
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let opened = alice
        .request(json!({"type": "open_direct", "peer": "bob"}))
        .await
        .unwrap();
    assert_eq!(opened["conv"], alice_bob.as_str(), "{opened}");
    for conv in [&alice_bob, &nobody] {
        let answer = mallory
            .request(json!({"type": "update_group", "group": conv.as_str(), "title": "x"}))
            .await
            .unwrap();
        assert_eq!(answer["code"], "not_found", "{conv}: {answer}");
    }
    // The namespace is reserved for them.
    let answer = mallory
        .request(json!({"type": "create_group", "group": nobody.as_str(), "title": "t"}))
        .await
        .unwrap();
    assert_eq!(answer["code"], "invalid_request", "{answer}");
    // A 1:1 cannot be left (its members are fixed) …
    let answer = alice
        .request(json!({"type": "leave", "group": alice_bob.as_str()}))
        .await
        .unwrap();
    assert_eq!(answer["code"], "forbidden", "{answer}");
}

// 1 (existing ids) and 10. A 1:1 under the id of the old scheme keeps working; a member who
// was removed from it comes back through an event, so the projection and every edge agree.
#[tokio::test]
async fn old_direct_ids_keep_working_and_rejoining_is_an_event() {
    let s = setup(|_| {}).await;
    let addr = s.stack.edge_addr();
    let legacy = ConversationId::legacy_direct(&user("alice"), &user("bob"));
    store_membership(
        &s,
        legacy.as_str(),
        "old-dm",
        GroupCreated {
            group: GroupId::parse(legacy.as_str()).unwrap(),
            owner: user("alice"),
            title: String::new(),
            members: vec![user("bob")],
            direct: true,
        },
    )
    .await;
    let v = store_membership(
        &s,
        legacy.as_str(),
        "old-dm-left",
        MembersRemoved {
            group: GroupId::parse(legacy.as_str()).unwrap(),
            members: vec![user("bob")],
            reason: RemovalReason::Left,
        },
    )
    .await;
    projected(&s, legacy.as_str(), v).await;
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    let denied = bob
        .request(json!({"type": "history", "conv": legacy.as_str()}))
        .await
        .unwrap();
    assert_eq!(denied["code"], "forbidden", "bob left: {denied}");
    let opened = bob
        .request(json!({"type": "open_direct", "peer": "alice"}))
        .await
        .unwrap();
    assert_eq!(opened["conv"], legacy.as_str(), "the existing id: {opened}");
    // The projection says so too, and bob can write at once.
    let store = &s.stack.stack.store;
    eventually(
        Duration::from_secs(10),
        "bob back in the projection",
        || async {
            store
                .member_role(legacy.as_str(), "bob")
                .await
                .ok()?
                .map(|_| ())
        },
    )
    .await
    .unwrap();
    let ack = bob
        .request(send(legacy.as_str(), "b1", json!("back")))
        .await
        .unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
}

// 3. The same client message id in two conversations is two messages.
#[tokio::test]
async fn a_client_message_id_is_scoped_to_its_conversation() {
    let s = setup(|_| {}).await;
    let (mut alice, _) = WsClient::signed_in(s.stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    for g in ["g1", "g2"] {
        let ok = alice
            .request(json!({"type": "create_group", "group": g, "title": g, "members": ["bob"]}))
            .await
            .unwrap();
        assert_eq!(ok["type"], "ok", "{ok}");
    }
    let a = alice
        .request(send("g1", "same", json!("one")))
        .await
        .unwrap();
    let b = alice
        .request(send("g2", "same", json!("two")))
        .await
        .unwrap();
    assert_eq!(
        (a["duplicate"].as_bool(), b["duplicate"].as_bool()),
        (Some(false), Some(false))
    );
    assert_ne!(a["seq"], b["seq"]);
    // A retry in g2 still finds g2's message, not g1's.
    let retry = alice
        .request(
            json!({"type": "send", "conv": "g2", "client_msg_id": "same", "body": "two",
                        "client_ts": 1, "retry": true}),
        )
        .await
        .unwrap();
    assert_eq!(retry["seq"], b["seq"], "{retry}");
    // Another device of the same user numbering its messages alike writes its own message,
    // and both can be read.
    let (mut phone, _) = WsClient::signed_in(s.stack.edge_addr(), "alice", "phone")
        .await
        .unwrap();
    let c = phone
        .request(send("g2", "same", json!("three")))
        .await
        .unwrap();
    assert_eq!(c["duplicate"], false, "{c}");
    assert_ne!(c["seq"], b["seq"]);
    let store = &s.stack.stack.store;
    let seq_c = c["seq"].as_u64().unwrap();
    anchorage_tests::projected(store, "messages", seq_c).await;
    let retry = phone
        .request(
            json!({"type": "send", "conv": "g2", "client_msg_id": "same", "body": "three",
                        "client_ts": 1, "retry": true}),
        )
        .await
        .unwrap();
    assert_eq!(
        retry["seq"], c["seq"],
        "the phone's retry finds the phone's message"
    );
    let page = alice
        .request(json!({"type": "sync", "conv": "g2", "after": 0}))
        .await
        .unwrap();
    let bodies: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["body"])
        .collect();
    assert_eq!(bodies, vec![&json!("two"), &json!("three")], "{page}");
    // Another user's message with the same id is theirs, not a repeat of alice's.
    let (mut bob, _) = WsClient::signed_in(s.stack.edge_addr(), "bob", "phone")
        .await
        .unwrap();
    let theirs = within(Duration::from_secs(10), "bob's send accepted", async {
        loop {
            let answer = bob
                .request(send("g2", "same", json!("bob's")))
                .await
                .unwrap();
            if answer["type"] == "ack" {
                return answer;
            }
            assert_eq!(answer["code"], "forbidden", "{answer}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(theirs["duplicate"], false, "{theirs}");
    assert!(
        ![&b["seq"], &c["seq"]].contains(&&theirs["seq"]),
        "{theirs}"
    );
}

// 4. Nothing is acknowledged that a reader cannot decode.
#[tokio::test]
async fn bodies_nested_past_the_limit_are_refused_not_lost() {
    let s = setup(|_| {}).await;
    let (mut alice, _) = WsClient::signed_in(s.stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice
        .request(json!({"type": "create_group", "group": "g", "title": "g"}))
        .await
        .unwrap();
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let deep = format!(
        r#"{{"type":"send","id":50,"conv":"g","client_msg_id":"deep","client_ts":1,"body":{}}}"#,
        nested(126)
    );
    alice.send_text(deep).await.unwrap();
    let refused = alice.next_answer().await.unwrap();
    assert_eq!(refused["code"], "invalid_request", "{refused}");
    assert_eq!(refused["id"], 50, "the refusal names its request");
    // Up to the limit it is stored and projected like any message.
    let ok = format!(
        r#"{{"type":"send","id":51,"conv":"g","client_msg_id":"ok","client_ts":1,"body":{}}}"#,
        nested(30)
    );
    alice.send_text(ok).await.unwrap();
    let ack = alice.next_answer().await.unwrap();
    assert_eq!(ack["type"], "ack", "{ack}");
    let page = alice
        .request(json!({"type": "sync", "conv": "g", "after": 0}))
        .await
        .unwrap();
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["messages"][0]["seq"], ack["seq"]);
}

// 5 and 16. A client that asks for a lot and does not read costs its byte bound, and is told
// 4008 — also when it reads, slowly, afterwards.
#[tokio::test]
async fn queued_bytes_are_bounded_and_slow_readers_get_4008() {
    let s = setup(|c| {
        c.edge.queue_bytes = 256 * 1024;
        c.edge.rate_burst = 1000;
        c.edge.rate_per_sec = 1000;
        c.edge.user_rate_per_sec = 1000;
    })
    .await;
    let addr = s.stack.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    alice
        .request(json!({"type": "create_group", "group": "g", "title": "g"}))
        .await
        .unwrap();
    let big = "x".repeat(60_000);
    for n in 0..20 {
        let ack = alice
            .request(send("g", &format!("m{n}"), json!(big)))
            .await
            .unwrap();
        assert_eq!(ack["type"], "ack");
    }
    // A reader with a small receive buffer asks for 30 pages of 1.2 MB and reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (mut hog, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    hog.send(WsMessage::Text(hello("bob", "d").into()))
        .await
        .unwrap();
    let welcome = hog.next().await.unwrap().unwrap();
    assert!(welcome.to_text().unwrap().contains("welcome"));
    // Bob joins so he may read.
    alice
        .request(json!({"type": "add_members", "group": "g", "members": ["bob"]}))
        .await
        .unwrap();
    // Until this edge has applied the addition, bob's requests about g are refused.
    let (mut probe, _) = WsClient::signed_in(addr, "bob", "probe").await.unwrap();
    within(
        Duration::from_secs(10),
        "bob a member on this edge",
        async {
            loop {
                let page = probe
                    .request(json!({"type": "sync", "conv": "g", "after": 0, "limit": 1}))
                    .await
                    .unwrap();
                if page["type"] == "messages" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        },
    )
    .await
    .unwrap();
    for i in 0..30 {
        let q = json!({"type": "sync", "id": 100 + i, "conv": "g", "after": 0, "limit": 500});
        hog.send(WsMessage::Text(q.to_string().into()))
            .await
            .unwrap();
    }
    // Now it reads, slowly: what the socket held, then the close.
    let mut received = 0usize;
    let code = within(Duration::from_secs(30), "the 4008", async {
        while let Some(m) = hog.next().await {
            match m {
                Ok(WsMessage::Close(f)) => return f.map_or(0, |f| u16::from(f.code)),
                Ok(m) => {
                    received += m.len();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => return 0,
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(code, 4008, "told to resync, after {received} bytes");
    assert!(
        received < 16 * 1024 * 1024,
        "{received} bytes were queued for it"
    );
    // The connection's bytes are given back.
    let (status, body) = anchorage_tests::http_get(addr, "/readyz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert!(
        ready["queued_bytes"].as_u64().unwrap() < 1024 * 1024,
        "{ready}"
    );
    // Everyone else carries on.
    assert_eq!(
        alice.request(json!({"type": "ping"})).await.unwrap()["type"],
        "pong"
    );
}

// 6. Silent and half-sent HTTP connections are closed, and idle keep-alive ones too.
#[tokio::test]
async fn silent_and_half_sent_http_connections_time_out() {
    let s = setup(|c| c.edge.http_header_timeout_ms = 500).await;
    let addr = s.stack.edge_addr();
    let closed_within = |mut tcp: tokio::net::TcpStream| async move {
        let start = std::time::Instant::now();
        let mut buf = vec![0u8; 4096];
        within(
            Duration::from_secs(5),
            "the edge to close the connection",
            async {
                loop {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            },
        )
        .await
        .unwrap();
        start.elapsed()
    };
    let silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (what, tcp) in [("silent", silent), ("half-sent", half), ("idle", idle)] {
        let took = closed_within(tcp).await;
        assert!(took < Duration::from_secs(3), "{what}: {took:?}");
    }
}

// 7. Sockets that never say hello take neither the signed-in places nor every pending one.
#[tokio::test]
async fn anonymous_sockets_cannot_lock_out_real_clients() {
    let s = setup(|c| {
        c.edge.max_connections = 3;
        c.edge.max_pending = 100;
        c.edge.max_pending_per_ip = 5;
        c.edge.hello_timeout_ms = 30_000;
    })
    .await;
    let addr = s.stack.edge_addr();
    let attacker: IpAddr = [127, 0, 0, 1].into();
    let mut anonymous = Vec::new();
    for _ in 0..5 {
        anonymous.push(connect_from(addr, attacker).await.unwrap());
    }
    let refused = connect_from(addr, attacker).await;
    assert!(
        refused
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("503")),
        "a sixth anonymous socket from one address is refused: {:?}",
        refused.map(|_| ())
    );
    // Real clients from elsewhere fill all three signed-in places meanwhile.
    let mut real = Vec::new();
    for (i, ip) in [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]]
        .into_iter()
        .enumerate()
    {
        let mut ws = connect_from(addr, ip.into()).await.unwrap();
        ws.send(WsMessage::Text(hello(&format!("u{i}"), "d").into()))
            .await
            .unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome}");
        real.push(ws);
    }
    drop(anonymous);
}

// 8. A device reconnecting while its session is revoked is never left connected.
#[tokio::test]
async fn a_revocation_that_returned_is_never_missed() {
    let s = setup(|_| {}).await;
    let addr = s.stack.edge_addr();
    let edge2 = TestEdge::start(&s.stack.config).await.unwrap();
    for trial in 0..5 {
        let device = format!("phone{trial}");
        let stop = tokio_util::sync::CancellationToken::new();
        // Reconnects as fast as it can on both edges, keeping every socket it was welcomed on.
        let storm = {
            let (stop, device) = (stop.clone(), device.clone());
            let addrs = [addr, edge2.addr];
            tokio::spawn(async move {
                let mut welcomed = Vec::new();
                let mut n = 0;
                while !stop.is_cancelled() {
                    n += 1;
                    let Ok((mut ws, _)) =
                        tokio_tungstenite::connect_async(format!("ws://{}/ws", addrs[n % 2])).await
                    else {
                        continue;
                    };
                    let _ = ws
                        .send(WsMessage::Text(hello("victim", &device).into()))
                        .await;
                    if let Some(Ok(WsMessage::Text(t))) = ws.next().await
                        && t.contains("welcome")
                    {
                        welcomed.push(ws);
                    }
                }
                welcomed
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let revoked = anchorage::revoke_session(
            &s.stack.config,
            &user("victim"),
            &DeviceId::parse(&device).unwrap(),
        )
        .await
        .unwrap();
        assert!(revoked.applied);
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        let welcomed = storm.await.unwrap();
        for (i, mut ws) in welcomed.into_iter().enumerate() {
            let code = close_code(&mut ws, Duration::from_secs(10)).await;
            assert_eq!(
                code, 4005,
                "trial {trial}: welcomed socket {i} ended with {code}"
            );
        }
        let mut again = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap()
            .0;
        again
            .send(WsMessage::Text(hello("victim", &device).into()))
            .await
            .unwrap();
        assert_eq!(close_code(&mut again, Duration::from_secs(10)).await, 4005);
    }
    edge2.stop().await.unwrap();
}

// 9, 11, 12, 13. Hostile tokens and frames get their documented answers, nothing panics.
#[tokio::test]
async fn hostile_tokens_and_frames_get_their_documented_codes() {
    let s = setup(|c| c.edge.max_frame_bytes = 4096).await;
    let addr = s.stack.edge_addr();
    let sign = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(anchorage_config::DEV_HMAC_SECRET.as_bytes()),
        )
        .unwrap()
    };
    // An expiry at the end of time, a token with an audience and no iat: welcomed, usable.
    for claims in [
        json!({"sub": "alice", "device": "d", "exp": u64::MAX - 1}),
        json!({"sub": "alice", "device": "d2", "exp": 4_000_000_000u64, "aud": "chat"}),
    ] {
        let mut c = WsClient::connect(addr).await.unwrap();
        let welcome = c
            .request(json!({"type": "hello", "protocol": 1, "token": sign(claims.clone())}))
            .await
            .unwrap();
        assert_eq!(welcome["type"], "welcome", "{claims}: {welcome}");
        assert_eq!(
            c.request(json!({"type": "ping"})).await.unwrap()["type"],
            "pong"
        );
    }
    // Not valid yet: refused.
    let mut c = WsClient::connect(addr).await.unwrap();
    let early = sign(
        json!({"sub": "alice", "device": "d", "exp": 4_000_000_000u64,
                            "nbf": 3_900_000_000u64}),
    );
    c.send_text(json!({"type": "hello", "id": 1, "protocol": 1, "token": early}).to_string())
        .await
        .unwrap();
    assert_eq!(c.closed().await.unwrap(), 4001);
    // A frame over the limit before hello: 1009.
    let mut c = WsClient::connect(addr).await.unwrap();
    c.send_text("x".repeat(5000)).await.unwrap();
    assert_eq!(c.closed().await.unwrap(), 1009);
    // Invalid UTF-8 in a text frame, before and after hello: 1007.
    for signed_in in [false, true] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        if signed_in {
            ws.send(WsMessage::Text(hello("alice", "d3").into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap();
        }
        let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            vec![0x7b, 0xff, 0xfe, 0x7d],
            tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
            ),
            true,
        );
        ws.send(WsMessage::Frame(frame)).await.unwrap();
        assert_eq!(
            close_code(&mut ws, Duration::from_secs(10)).await,
            1007,
            "signed in: {signed_in}"
        );
    }
}

// 14, 15. Out-of-range positions and a removed member's commands get the documented answers.
#[tokio::test]
async fn out_of_range_positions_and_removed_members_are_refused() {
    let s = setup(|_| {}).await;
    let addr = s.stack.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    alice
        .request(json!({"type": "create_group", "group": "g", "title": "g", "members": ["bob"]}))
        .await
        .unwrap();
    let first = alice.request(send("g", "m1", json!("one"))).await.unwrap();
    let seq = first["seq"].as_u64().unwrap();
    let huge = 1u64 << 63;
    for probe in [
        json!({"type": "sync", "conv": "g", "after": huge}),
        json!({"type": "history", "conv": "g", "before": u64::MAX}),
        json!({"type": "read", "conv": "g", "seq": seq + 1000}),
        json!({"type": "received", "conv": "g", "seq": seq + 1000}),
    ] {
        let answer = alice.request(probe.clone()).await.unwrap();
        assert_eq!(answer["code"], "invalid_request", "{probe} → {answer}");
    }
    // The device's summary still shows the conversation once something new arrives.
    let second = alice.request(send("g", "m2", json!("two"))).await.unwrap();
    let (_again, welcome) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let change = welcome["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conv"] == "g")
        .cloned();
    assert_eq!(
        change.map(|c| c["last_seq"].clone()),
        Some(second["seq"].clone())
    );
    // A removed member renaming themselves: forbidden, as documented.
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    let removed = alice
        .request(json!({"type": "remove_members", "group": "g", "members": ["bob"]}))
        .await
        .unwrap();
    assert_eq!(removed["type"], "ok", "{removed}");
    let store = &s.stack.stack.store;
    eventually(Duration::from_secs(10), "bob removed", || async {
        store
            .member_role("g", "bob")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    let answer = bob
        .request(json!({"type": "set_nickname", "group": "g", "member": "bob", "nickname": "b"}))
        .await
        .unwrap();
    assert_eq!(answer["code"], "forbidden", "{answer}");
}

// 17. Garbage counts against the rate limit, and a client that ignores it is disconnected.
#[tokio::test]
async fn garbage_is_rate_limited_and_ignoring_it_disconnects() {
    let s = setup(|c| {
        c.edge.rate_per_sec = 5;
        c.edge.rate_burst = 10;
    })
    .await;
    let addr = s.stack.edge_addr();
    let (mut c, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    for _ in 0..200 {
        if c.send_text("{garbage").await.is_err() {
            break;
        }
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    let close = loop {
        match c.next_frame().await {
            Ok(f) => {
                *codes
                    .entry(f["code"].as_str().unwrap_or("?").into())
                    .or_default() += 1
            }
            Err(e) => break e.to_string(),
        }
    };
    assert_eq!(close, "closed with code 4029", "{codes:?}");
    assert!(
        codes.get("bad_frame").copied().unwrap_or(0) <= 12,
        "{codes:?}"
    );
    assert!(
        codes.get("rate_limited").copied().unwrap_or(0) >= 10,
        "{codes:?}"
    );
    // Before hello, a handful of bad frames are answered, then the socket is closed.
    let mut c = WsClient::connect(addr).await.unwrap();
    for _ in 0..40 {
        if c.send_text("{garbage").await.is_err() {
            break;
        }
    }
    assert_eq!(c.closed().await.unwrap(), 4029);
    // WebSocket pings count like requests, before and after hello.
    for signed_in in [false, true] {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        if signed_in {
            ws.send(WsMessage::Text(hello("alice", "pinger").into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap();
        }
        for _ in 0..200 {
            if ws.send(WsMessage::Ping(vec![1].into())).await.is_err() {
                break;
            }
        }
        assert_eq!(
            close_code(&mut ws, Duration::from_secs(10)).await,
            4029,
            "pings, signed in: {signed_in}"
        );
    }
}
