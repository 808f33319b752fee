//! The chat itself over real WebSockets, across two edges, with a real nats-server and a real
//! database: groups and 1:1s, sends and retries, live push with `prev`, sync and history,
//! read markers across devices, reconnect summaries, authorization, bad input.

use std::time::Duration;

use anchorage_protocol::request::{
    self, AddMembers, ConvAnchor, Hello, History, MarkRead, MarkReceived, OpenDirect, SendMessage,
};
use anchorage_protocol::{
    ErrorCode, LiveMessage, MembershipChanged, Push, ReadMoved, ReplyBody, Request, RequestBody,
    ServerFrame,
};
use anchorage_tests::{
    TestEdge, WsClient, conv_id, create_group, eventually, group_id, hello, send_message, sync,
    token, user_id, user_ids,
};
use serde_json::json;

use crate::common::{TwoEdges, two_edges_with};

async fn two_edges() -> TwoEdges {
    two_edges_with(|c| c.edge.hello_timeout_ms = 500).await
}

fn is_message(conv: &str) -> impl Fn(&LiveMessage) -> bool + '_ {
    move |m: &LiveMessage| m.message.conv.as_str() == conv
}

#[tokio::test]
async fn a_group_chat_across_two_edges() {
    let t = two_edges().await;
    let (e1, e2) = (t.stack.edge_addr(), t.edge2.addr);
    let (mut alice, welcome) = WsClient::signed_in(e1, "alice", "laptop").await.unwrap();
    assert_eq!(welcome.user.as_str(), "alice");
    assert_eq!(welcome.changes, vec![]);
    let (mut bob, _) = WsClient::signed_in(e2, "bob", "phone").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(e2, "carol", "phone").await.unwrap();

    alice
        .ok(create_group("ops", "Ops", &["bob"]))
        .await
        .unwrap();
    let joined: MembershipChanged = bob.pushed(|_| true).await.unwrap();
    assert_eq!((joined.conv.as_str(), joined.joined), ("ops", true));
    // Creating it again is a conflict.
    let again = alice
        .refused(create_group("ops", "Ops", &[]))
        .await
        .unwrap();
    assert_eq!(again.code, ErrorCode::Conflict);

    // Alice sends three messages; bob, on the other edge, gets each with the previous seq.
    let mut seqs = Vec::new();
    for n in 0..3 {
        let ack = alice
            .ack(SendMessage {
                client_ts: 1000 + n,
                ..send_message("ops", &format!("m{n}"), json!({"text": format!("hi {n}")}))
            })
            .await
            .unwrap();
        assert!(!ack.duplicate);
        seqs.push(ack.seq);
    }
    let mut prev = 0;
    for (n, seq) in seqs.iter().enumerate() {
        let m = bob.pushed(is_message("ops")).await.unwrap();
        assert_eq!(m.message.seq, *seq);
        assert_eq!(m.prev, prev, "{m:?}");
        assert_eq!(m.message.body["text"], format!("hi {n}"));
        assert_eq!(m.message.sender, "alice");
        prev = *seq;
    }
    // The sender's other sessions and the sender itself see the same stream.
    let own = alice.pushed(is_message("ops")).await.unwrap();
    assert_eq!(own.message.seq, seqs[0]);

    // A retry with the same client id gets the same seq and stores nothing new.
    let retry = alice
        .ack(SendMessage {
            client_ts: 1001,
            ..send_message("ops", "m1", json!({"text": "hi 1"}))
        })
        .await
        .unwrap();
    assert_eq!((retry.seq, retry.duplicate), (seqs[1], true));
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
        .ack(SendMessage {
            client_ts: 1002,
            retry: true,
            ..send_message("ops", "m2", json!({"text": "hi 2"}))
        })
        .await
        .unwrap();
    assert_eq!((late.seq, late.duplicate), (seqs[2], true));

    // Sync and history, bounded.
    let page = bob
        .messages(request::Sync {
            limit: Some(2),
            ..sync("ops", 0)
        })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 2);
    assert!(page.more);
    let rest = bob
        .messages(request::Sync {
            limit: Some(2),
            ..sync("ops", page.messages[1].seq)
        })
        .await
        .unwrap();
    assert_eq!(rest.messages[0].seq, seqs[2]);
    assert!(!rest.more);
    let hist = bob
        .messages(History {
            conv: conv_id("ops"),
            before: 0,
            limit: Some(2),
        })
        .await
        .unwrap();
    let hist_seqs: Vec<u64> = hist.messages.iter().map(|m| m.seq).collect();
    assert_eq!(hist_seqs, vec![seqs[2], seqs[1]]);

    // Carol is not a member: she can neither read nor send, and receives nothing.
    for req in [
        RequestBody::from(sync("ops", 0)),
        History {
            conv: conv_id("ops"),
            before: 0,
            limit: None,
        }
        .into(),
        send_message("ops", "x", json!("let me in")).into(),
        MarkRead {
            conv: conv_id("ops"),
            seq: 1,
        }
        .into(),
        AddMembers {
            group: group_id("ops"),
            members: user_ids(&["carol"]),
        }
        .into(),
    ] {
        let answer = carol.refused(req.clone()).await.unwrap();
        assert_eq!(answer.code, ErrorCode::Forbidden, "{req:?} → {answer:?}");
    }
    assert!(
        carol
            .pending_pushes()
            .iter()
            .all(|p| !matches!(p, Push::Message(_)))
    );
    // Bob is a member but not an admin: he cannot add anyone.
    let denied = bob
        .refused(AddMembers {
            group: group_id("ops"),
            members: user_ids(&["carol"]),
        })
        .await
        .unwrap();
    assert_eq!(denied.code, ErrorCode::Forbidden);

    // Alice adds carol: from now on carol gets the group's messages live.
    alice
        .ok(AddMembers {
            group: group_id("ops"),
            members: user_ids(&["carol"]),
        })
        .await
        .unwrap();
    carol
        .pushed(|m: &MembershipChanged| m.conv.as_str() == "ops")
        .await
        .unwrap();
    let ack = alice
        .ack(send_message("ops", "m3", json!("welcome carol")))
        .await
        .unwrap();
    let m = carol.pushed(is_message("ops")).await.unwrap();
    assert_eq!(m.message.seq, ack.seq);
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
        .ok(OpenDirect {
            peer: user_id("bob"),
        })
        .await
        .unwrap();
    let conv = opened.conv.unwrap().as_str().to_owned();
    assert!(conv.starts_with("dm-"));
    let from_bob = bob_phone
        .ok(OpenDirect {
            peer: user_id("alice"),
        })
        .await
        .unwrap();
    assert_eq!(
        from_bob.conv.as_ref().map(|c| c.as_str()),
        Some(conv.as_str()),
        "the same conversation from both sides"
    );
    let self_chat = alice
        .refused(OpenDirect {
            peer: user_id("alice"),
        })
        .await
        .unwrap();
    assert_eq!(self_chat.code, ErrorCode::InvalidRequest);
    // The laptop's edge hears of the new conversation live; what is sent before that is
    // synced, not pushed, so the live part of the test starts once it is told.
    bob_laptop
        .pushed(|m: &MembershipChanged| m.conv.as_str() == conv)
        .await
        .unwrap();

    let mut last = 0;
    for n in 0..5 {
        let ack = alice
            .ack(SendMessage {
                client_ts: n,
                ..send_message(&conv, &format!("d{n}"), json!(n))
            })
            .await
            .unwrap();
        last = ack.seq;
    }
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let mut got = Vec::new();
        while got.len() < 5 {
            got.push(bob.pushed(is_message(&conv)).await.unwrap().message.seq);
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
    bob_phone
        .ok(MarkRead {
            conv: conv_id(&conv),
            seq: third,
        })
        .await
        .unwrap();
    let read: ReadMoved = bob_laptop.pushed(|_| true).await.unwrap();
    assert_eq!((read.conv.as_str(), read.seq), (conv.as_str(), third));

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
    let change = &welcome.changes[0];
    assert_eq!(change.conv.as_str(), conv, "{welcome:?}");
    assert_eq!(change.last_seq, last);
    assert_eq!(change.unread, 2);
    assert_eq!(
        change.last_message.as_ref().map(|m| &m.body),
        Some(&json!(4))
    );

    // The phone acknowledges receipt; its next reconnect has nothing to offer.
    bob_phone
        .ok(MarkReceived {
            conv: conv_id(&conv),
            seq: last,
        })
        .await
        .unwrap();
    drop(bob_phone);
    let (_, welcome) = WsClient::signed_in(e1, "bob", "phone").await.unwrap();
    assert_eq!(welcome.changes, vec![], "{welcome:?}");
    // Someone else's conversation named in an anchor (a direct chat's id can be computed)
    // tells nothing: not even its read marker.
    let other = alice
        .ok(OpenDirect {
            peer: user_id("carol"),
        })
        .await
        .unwrap()
        .conv
        .unwrap();
    let seen = alice
        .ack(send_message(other.as_str(), "to-carol", json!("hi")))
        .await
        .unwrap()
        .seq;
    alice
        .ok(MarkRead {
            conv: other.clone(),
            seq: seen,
        })
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "alice's marker projected",
        || async { (store.read_seq("alice", other.as_str()).await.ok()?? == seen).then_some(()) },
    )
    .await
    .unwrap();
    let mut c = WsClient::connect(e2).await.unwrap();
    let w = c
        .reply(Hello {
            anchors: vec![ConvAnchor {
                conv: other.clone(),
                seq: 0,
                read: Some(0),
            }],
            ..hello(token("bob", "tablet", 60))
        })
        .await
        .unwrap();
    let ReplyBody::Welcome(w) = w else {
        panic!("no welcome: {w:?}")
    };
    assert!(w.changes.iter().all(|c| c.conv != other), "{w:?}");
    // A client that says which seq it has gets only what is newer. One that also says which
    // read marker it holds hears of a marker moved past it (read on another device while it
    // was away), with no new message; of its own, nothing.
    for (held, listed) in [(None, false), (Some(0), true), (Some(third), false)] {
        let mut c = WsClient::connect(e2).await.unwrap();
        let w = c
            .reply(Hello {
                anchors: vec![ConvAnchor {
                    conv: conv_id(&conv),
                    seq: last,
                    read: held,
                }],
                ..hello(token("bob", "tablet", 60))
            })
            .await
            .unwrap();
        let ReplyBody::Welcome(w) = w else {
            panic!("no welcome: {w:?}")
        };
        let read: Vec<_> = w
            .changes
            .iter()
            .map(|c| (c.conv.as_str(), c.read_seq))
            .collect();
        let expected = if listed {
            vec![(conv.as_str(), third)]
        } else {
            vec![]
        };
        assert_eq!(read, expected, "holding read marker {held:?}: {w:?}");
    }
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_precise_errors_and_the_connection_carries_on() {
    let t = two_edges().await;
    let addr = t.stack.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "laptop").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "phone").await.unwrap();
    alice
        .request(OpenDirect {
            peer: user_id("bob"),
        })
        .await
        .unwrap();

    let cases = [
        ("{not json".to_owned(), ErrorCode::BadFrame),
        (
            r#"{"id": 7, "type": "teleport"}"#.to_owned(),
            ErrorCode::UnknownType,
        ),
        (
            r#"{"id": 8, "type": "send", "conv": "c"}"#.to_owned(),
            ErrorCode::InvalidRequest,
        ),
        (
            r#"{"id": 9, "type": "sync", "conv": "no.dots", "after": 0}"#.to_owned(),
            ErrorCode::InvalidRequest,
        ),
        (
            Request::encode(10, &sync("someone-elses", 0).into()),
            ErrorCode::Forbidden,
        ),
        // `hello` again on a signed-in connection must still sign in as the same device.
        (
            Request::encode(11, &hello("x").into()),
            ErrorCode::Forbidden,
        ),
        (
            Request::encode(12, &hello(token("bob", "phone", 60)).into()),
            ErrorCode::Forbidden,
        ),
        (
            Request::encode(
                13,
                &Hello {
                    protocol: 2,
                    ..hello(token("alice", "laptop", 60))
                }
                .into(),
            ),
            ErrorCode::UnsupportedProtocol,
        ),
    ];
    for (text, code) in cases {
        alice.send_text(text.as_str()).await.unwrap();
        let f = alice.next_answer().await.unwrap();
        let ServerFrame::Error(e) = &f else {
            panic!("{text} → {f:?}")
        };
        assert_eq!(e.code, code, "{text} → {f:?}");
    }
    // JSON the parser cannot represent is refused, naming the request when it can.
    for text in [
        r#"{"type":"send","id":30,"conv":"c","client_msg_id":"m","body":{"n":1e400},"client_ts":1}"#,
        r#"{"type":"send","id":31,"conv":"c","client_msg_id":"m","body":"\ud800","client_ts":1}"#,
    ] {
        alice.send_text(text).await.unwrap();
        let f = alice.next_answer().await.unwrap();
        let ServerFrame::Error(e) = &f else {
            panic!("{text} → {f:?}")
        };
        assert_eq!(e.code, ErrorCode::BadFrame, "{text} → {f:?}");
        assert!(matches!(e.id, Some(30 | 31)), "{text} → {f:?}");
    }
    // Still connected, still working; `hello` with the device's own token is answered like
    // a reconnect summary, as the same user.
    alice.ping().await.unwrap();
    let again = alice
        .reply(hello(token("alice", "laptop", 60)))
        .await
        .unwrap();
    assert!(
        matches!(&again, ReplyBody::Welcome(w) if w.user.as_str() == "alice"),
        "{again:?}"
    );

    // An oversized frame closes only that socket, with 1009.
    let huge = "x".repeat(70 * 1024);
    alice
        .send_request(1000, send_message("c", "big", json!(huge)))
        .await
        .unwrap();
    assert_eq!(alice.closed().await.unwrap(), 1009);
    bob.ping().await.unwrap();

    // Rate limits answer with a retry hint.
    let mut limited = None;
    for n in 0..300 {
        bob.send_request(1000 + n, RequestBody::Ping {})
            .await
            .unwrap();
    }
    for _ in 0..300 {
        if let ServerFrame::Error(e) = bob.next_answer().await.unwrap()
            && e.code == ErrorCode::RateLimited
        {
            limited = Some(e);
            break;
        }
    }
    let limited = limited.expect("a rate_limited error");
    assert!(limited.retry_after_ms.unwrap() >= 1);
    t.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_are_checked_at_hello() {
    let t = two_edges().await;
    let addr = t.stack.edge_addr();

    // Requests before hello are refused until hello comes; no hello at all closes with 4003.
    let mut c = WsClient::connect(addr).await.unwrap();
    let f = c.refused(RequestBody::Ping {}).await.unwrap();
    assert_eq!(f.code, ErrorCode::HelloRequired);
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
        c.send_request(1, hello(tok)).await.unwrap();
        assert_eq!(c.closed().await.unwrap(), code, "{tok}");
    }
    // A token that expires during the connection closes it with 4002.
    let mut c = WsClient::connect(addr).await.unwrap();
    let w = c.reply(hello(token("alice", "d", 1))).await.unwrap();
    assert!(matches!(w, ReplyBody::Welcome(_)), "{w:?}");
    assert_eq!(c.closed().await.unwrap(), 4002);
    // An unknown protocol version.
    let mut c = WsClient::connect(addr).await.unwrap();
    let e = c
        .refused(Hello {
            protocol: 9,
            ..hello(token("alice", "d", 60))
        })
        .await
        .unwrap();
    assert_eq!(e.code, ErrorCode::UnsupportedProtocol);
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
    other.ping().await.unwrap();
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
        .send_request(1, hello(token("bob", "laptop", 60)))
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
    late.send_request(1, hello(token("alice", "a", 3600)))
        .await
        .unwrap();
    assert_eq!(late.closed().await.unwrap(), 1001);
    assert!(
        late.pending_pushes().is_empty() && late.pending_answers().is_empty(),
        "{:?} {:?}",
        late.pending_pushes(),
        late.pending_answers()
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
        .request(create_group("big", "Big", &["bob"]))
        .await
        .unwrap();
    bob.pushed(|_: &MembershipChanged| true).await.unwrap();

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
            Ok(ServerFrame::Push(Push::Message(_))) => received += 1,
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
    carol.ping().await.unwrap();
    let (mut bob, _) = WsClient::signed_in(t.edge2.addr, "bob", "b").await.unwrap();
    let page = bob
        .messages(request::Sync {
            limit: Some(100),
            ..sync("big", 0)
        })
        .await
        .unwrap();
    // A page stops at 100 messages or 1 MiB of bodies, whichever comes first.
    let got = page.messages.len();
    assert_eq!(got, (1024 * 1024) / (16 * 1024 + 2));
    assert!(page.more);
    small.stop().await.unwrap();
    t.edge2.stop().await.unwrap();
}
