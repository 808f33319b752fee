//! What an attacker tries against a running stack, over real sockets, a real nats-server and
//! a real database: capturing other users' 1:1 conversations, colliding idempotency keys,
//! payloads no reader can decode, exhausting the edge's memory and connection slots, racing a
//! revocation, hostile tokens and frames.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anchorage_config::Config;
use anchorage_protocol::request::{
    self, AddMembers, History, Leave, MarkRead, MarkReceived, OpenDirect, RemoveMembers,
    SendMessage, SetNickname, UpdateGroup,
};
use anchorage_protocol::{ErrorCode, Reply, ReplyBody, Request, RequestBody, ServerFrame};
use anchorage_schema::event::{GroupCreated, MembersRemoved, RemovalReason};
use anchorage_schema::{
    Actor, ConversationId, DeviceId, Envelope, EventId, GroupId, SourceId, UserId, subjects,
};
use anchorage_tests::{
    TestEdge, TestNats, TestStack, WsClient, conv_id, create_group, eventually, fresh_database,
    group_id, hello, send_message, sync, test_config, token, user_ids, within,
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

/// The text of `hello` (request 1) with a fresh token, for raw sockets.
fn hello_text(user: &str, device: &str) -> String {
    Request::encode(1, &hello(token(user, device, 3600)).into())
}

/// Whether a raw socket's message is a `welcome`.
fn is_welcome(m: &WsMessage) -> bool {
    m.to_text()
        .ok()
        .and_then(|t| serde_json::from_str::<ServerFrame>(t).ok())
        .is_some_and(|f| {
            matches!(
                f,
                ServerFrame::Reply(Reply {
                    body: ReplyBody::Welcome(_),
                    ..
                })
            )
        })
}

fn history(conv: &str) -> History {
    History {
        conv: conv_id(conv),
        before: 0,
        limit: None,
    }
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
        .request(OpenDirect { peer: user("pat") })
        .await
        .unwrap();
    assert!(
        matches!(opened, ServerFrame::Error(_)),
        "never joined: {opened:?}"
    );
    for probe in [
        RequestBody::from(history(target.as_str())),
        sync(target.as_str(), 0).into(),
        send_message(target.as_str(), "x", json!("hi")).into(),
    ] {
        let answer = mallory.refused(probe.clone()).await.unwrap();
        assert_eq!(answer.code, ErrorCode::Forbidden, "{probe:?} → {answer:?}");
    }
    // Whether two others have a 1:1 is not learned from group commands either.
    let (alice_bob, nobody) = (
        ConversationId::direct(&user("alice"), &user("bob")),
        ConversationId::direct(&user("carol"), &user("dave")),
    );
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let opened = alice.ok(OpenDirect { peer: user("bob") }).await.unwrap();
    assert_eq!(opened.conv.as_ref(), Some(&alice_bob), "{opened:?}");
    for conv in [&alice_bob, &nobody] {
        let answer = mallory
            .refused(UpdateGroup {
                group: group_id(conv.as_str()),
                title: Some("x".into()),
                avatar: None,
            })
            .await
            .unwrap();
        assert_eq!(answer.code, ErrorCode::NotFound, "{conv}: {answer:?}");
    }
    // The namespace is reserved for them.
    let answer = mallory
        .refused(create_group(nobody.as_str(), "t", &[]))
        .await
        .unwrap();
    assert_eq!(answer.code, ErrorCode::InvalidRequest, "{answer:?}");
    // A 1:1 cannot be left (its members are fixed) …
    let answer = alice
        .refused(Leave {
            group: group_id(alice_bob.as_str()),
        })
        .await
        .unwrap();
    assert_eq!(answer.code, ErrorCode::Forbidden, "{answer:?}");
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
    let denied = bob.refused(history(legacy.as_str())).await.unwrap();
    assert_eq!(denied.code, ErrorCode::Forbidden, "bob left: {denied:?}");
    let opened = bob
        .ok(OpenDirect {
            peer: user("alice"),
        })
        .await
        .unwrap();
    assert_eq!(
        opened.conv.as_ref(),
        Some(&legacy),
        "the existing id: {opened:?}"
    );
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
    bob.ack(send_message(legacy.as_str(), "b1", json!("back")))
        .await
        .unwrap();
}

// 3. The same client message id in two conversations is two messages.
#[tokio::test]
async fn a_client_message_id_is_scoped_to_its_conversation() {
    let s = setup(|_| {}).await;
    let (mut alice, _) = WsClient::signed_in(s.stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    for g in ["g1", "g2"] {
        alice.ok(create_group(g, g, &["bob"])).await.unwrap();
    }
    let a = alice
        .ack(send_message("g1", "same", json!("one")))
        .await
        .unwrap();
    let b = alice
        .ack(send_message("g2", "same", json!("two")))
        .await
        .unwrap();
    assert_eq!((a.duplicate, b.duplicate), (false, false));
    assert_ne!(a.seq, b.seq);
    // A retry in g2 still finds g2's message, not g1's.
    let retry = alice
        .ack(SendMessage {
            retry: true,
            ..send_message("g2", "same", json!("two"))
        })
        .await
        .unwrap();
    assert_eq!(retry.seq, b.seq, "{retry:?}");
    // Another device of the same user numbering its messages alike writes its own message,
    // and both can be read.
    let (mut phone, _) = WsClient::signed_in(s.stack.edge_addr(), "alice", "phone")
        .await
        .unwrap();
    let c = phone
        .ack(send_message("g2", "same", json!("three")))
        .await
        .unwrap();
    assert!(!c.duplicate, "{c:?}");
    assert_ne!(c.seq, b.seq);
    let store = &s.stack.stack.store;
    anchorage_tests::projected(store, "messages", c.seq).await;
    let retry = phone
        .ack(SendMessage {
            retry: true,
            ..send_message("g2", "same", json!("three"))
        })
        .await
        .unwrap();
    assert_eq!(
        retry.seq, c.seq,
        "the phone's retry finds the phone's message"
    );
    let page = alice.messages(sync("g2", 0)).await.unwrap();
    let bodies: Vec<&Value> = page.messages.iter().map(|m| &m.body).collect();
    assert_eq!(bodies, vec![&json!("two"), &json!("three")], "{page:?}");
    // Another user's message with the same id is theirs, not a repeat of alice's.
    let (mut bob, _) = WsClient::signed_in(s.stack.edge_addr(), "bob", "phone")
        .await
        .unwrap();
    let theirs = within(Duration::from_secs(10), "bob's send accepted", async {
        loop {
            let answer = bob
                .request(send_message("g2", "same", json!("bob's")))
                .await
                .unwrap();
            match answer {
                ServerFrame::Reply(Reply {
                    body: ReplyBody::Ack(ack),
                    ..
                }) => return ack,
                ServerFrame::Error(e) if e.code == ErrorCode::Forbidden => {}
                other => panic!("{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .unwrap();
    assert!(!theirs.duplicate, "{theirs:?}");
    assert!(![b.seq, c.seq].contains(&theirs.seq), "{theirs:?}");
}

// 4. Nothing is acknowledged that a reader cannot decode.
#[tokio::test]
async fn bodies_nested_past_the_limit_are_refused_not_lost() {
    let s = setup(|_| {}).await;
    let (mut alice, _) = WsClient::signed_in(s.stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.request(create_group("g", "g", &[])).await.unwrap();
    let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let deep = format!(
        r#"{{"type":"send","id":50,"conv":"g","client_msg_id":"deep","client_ts":1,"body":{}}}"#,
        nested(126)
    );
    alice.send_text(deep).await.unwrap();
    let refused = alice.next_answer().await.unwrap();
    let ServerFrame::Error(e) = &refused else {
        panic!("not refused: {refused:?}")
    };
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{refused:?}");
    assert_eq!(e.id, Some(50), "the refusal names its request");
    // Up to the limit it is stored and projected like any message.
    let body: Value = serde_json::from_str(&nested(30)).unwrap();
    alice
        .send_request(51, send_message("g", "ok", body))
        .await
        .unwrap();
    let ack = alice.next_answer().await.unwrap();
    let ServerFrame::Reply(Reply {
        body: ReplyBody::Ack(ack),
        ..
    }) = ack
    else {
        panic!("not acknowledged: {ack:?}")
    };
    let page = alice.messages(sync("g", 0)).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![ack.seq], "{page:?}");
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
    alice.request(create_group("g", "g", &[])).await.unwrap();
    let big = "x".repeat(60_000);
    for n in 0..20 {
        alice
            .ack(send_message("g", &format!("m{n}"), json!(big)))
            .await
            .unwrap();
    }
    // A reader with a small receive buffer asks for 30 pages of 1.2 MB and reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (mut hog, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .unwrap();
    hog.send(WsMessage::Text(hello_text("bob", "d").into()))
        .await
        .unwrap();
    let welcome = hog.next().await.unwrap().unwrap();
    assert!(is_welcome(&welcome), "{welcome}");
    // Bob joins so he may read.
    alice
        .request(AddMembers {
            group: group_id("g"),
            members: user_ids(&["bob"]),
        })
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
                    .request(request::Sync {
                        limit: Some(1),
                        ..sync("g", 0)
                    })
                    .await
                    .unwrap();
                if matches!(
                    page,
                    ServerFrame::Reply(Reply {
                        body: ReplyBody::Messages(_),
                        ..
                    })
                ) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        },
    )
    .await
    .unwrap();
    for i in 0..30 {
        let q = request::Sync {
            limit: Some(500),
            ..sync("g", 0)
        };
        hog.send(WsMessage::Text(Request::encode(100 + i, &q.into()).into()))
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
    let metrics = anchorage_tests::scrape(addr).await;
    assert!(
        anchorage_tests::metric(&metrics, "anchorage_slow_consumer_closes_total", &[]) >= 1.0,
        "the 4008 is counted"
    );
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
    alice.ping().await.unwrap();
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
        ws.send(WsMessage::Text(hello_text(&format!("u{i}"), "d").into()))
            .await
            .unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(is_welcome(&welcome), "{welcome}");
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
                        .send(WsMessage::Text(hello_text("victim", &device).into()))
                        .await;
                    if let Some(Ok(m)) = ws.next().await
                        && is_welcome(&m)
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
            .send(WsMessage::Text(hello_text("victim", &device).into()))
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
        let welcome = c.request(hello(sign(claims.clone()))).await.unwrap();
        assert!(
            matches!(
                welcome,
                ServerFrame::Reply(Reply {
                    body: ReplyBody::Welcome(_),
                    ..
                })
            ),
            "{claims}: {welcome:?}"
        );
        c.ping().await.unwrap();
    }
    // Not valid yet: refused.
    let mut c = WsClient::connect(addr).await.unwrap();
    let early = sign(
        json!({"sub": "alice", "device": "d", "exp": 4_000_000_000u64,
                            "nbf": 3_900_000_000u64}),
    );
    c.send_request(1, hello(early)).await.unwrap();
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
            ws.send(WsMessage::Text(hello_text("alice", "d3").into()))
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
        .request(create_group("g", "g", &["bob"]))
        .await
        .unwrap();
    let first = alice
        .ack(send_message("g", "m1", json!("one")))
        .await
        .unwrap();
    let seq = first.seq;
    let huge = 1u64 << 63;
    for probe in [
        RequestBody::from(sync("g", huge)),
        History {
            before: u64::MAX,
            ..history("g")
        }
        .into(),
        MarkRead {
            conv: conv_id("g"),
            seq: seq + 1000,
        }
        .into(),
        MarkReceived {
            conv: conv_id("g"),
            seq: seq + 1000,
        }
        .into(),
    ] {
        let answer = alice.refused(probe.clone()).await.unwrap();
        assert_eq!(
            answer.code,
            ErrorCode::InvalidRequest,
            "{probe:?} → {answer:?}"
        );
    }
    // The device's summary still shows the conversation once something new arrives.
    let second = alice
        .ack(send_message("g", "m2", json!("two")))
        .await
        .unwrap();
    let (_again, welcome) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    let change = welcome.changes.iter().find(|c| c.conv.as_str() == "g");
    assert_eq!(change.map(|c| c.last_seq), Some(second.seq));
    // A removed member renaming themselves: forbidden, as documented.
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d").await.unwrap();
    alice
        .ok(RemoveMembers {
            group: group_id("g"),
            members: user_ids(&["bob"]),
        })
        .await
        .unwrap();
    let store = &s.stack.stack.store;
    anchorage_tests::membership_ended(store, "g", "bob").await;
    let answer = bob
        .refused(SetNickname {
            group: group_id("g"),
            member: user("bob"),
            nickname: Some("b".into()),
        })
        .await
        .unwrap();
    assert_eq!(answer.code, ErrorCode::Forbidden, "{answer:?}");
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
    // Twice the burst plus a pipelining window of refusals are allowed; this goes past both.
    for _ in 0..300 {
        if c.send_text("{garbage").await.is_err() {
            break;
        }
    }
    // Frames by error code (`None`: not an error).
    let mut codes = std::collections::HashMap::<Option<ErrorCode>, usize>::new();
    let close = loop {
        match c.next_frame().await {
            Ok(ServerFrame::Error(e)) => *codes.entry(Some(e.code)).or_default() += 1,
            Ok(_) => *codes.entry(None).or_default() += 1,
            Err(e) => break e.to_string(),
        }
    };
    assert_eq!(close, "closed with code 4029", "{codes:?}");
    assert!(
        codes.get(&Some(ErrorCode::BadFrame)).copied().unwrap_or(0) <= 12,
        "{codes:?}"
    );
    assert!(
        codes
            .get(&Some(ErrorCode::RateLimited))
            .copied()
            .unwrap_or(0)
            >= 10,
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
            ws.send(WsMessage::Text(hello_text("alice", "pinger").into()))
                .await
                .unwrap();
            ws.next().await.unwrap().unwrap();
        }
        // Just past what is allowed: writing far beyond the close would reset the socket.
        let pings = if signed_in { 300 } else { 40 };
        for _ in 0..pings {
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
