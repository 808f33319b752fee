//! Changes to messages over real sockets, across two edges: edits, revokes (with the text
//! erased from the stream and every table), reactions (coalesced into few frames), pins,
//! replies and mentions — who may do what, and what every device sees.

use std::time::Duration;

use crate::common::{TwoEdges, two_edges_with};
use anchorage_protocol::request::{
    Edit, Edits, History, Pin, React, ReactorsQuery, ReceiptsQuery, Revoke, Typing, View,
};
use anchorage_protocol::{
    ConvAnchor, EntryKind, ErrorCode, LiveMessage, Message, Push, ReactionsChanged, Receipts,
    ReplyBody, RequestBody, ServerFrame, TypingNow,
};
use anchorage_schema::subjects::stream;
use anchorage_tests::{
    TestEdge, WsClient, conv_id, create_group, eventually, hello, send_message, sync, token,
    user_ids,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

async fn two_edges() -> TwoEdges {
    two_edges_with(|c| c.messages.reaction_flush_ms = 300).await
}

fn edit(conv: &str, seq: u64, body: serde_json::Value) -> Edit {
    Edit {
        conv: conv_id(conv),
        seq,
        body,
    }
}

fn react(conv: &str, seq: u64, emoji: &str, remove: bool) -> React {
    React {
        conv: conv_id(conv),
        seq,
        emoji: emoji.into(),
        remove,
    }
}

fn history(conv: &str) -> History {
    History {
        conv: conv_id(conv),
        before: 0,
        limit: None,
    }
}

/// The message `seq` as `history` shows it now.
async fn current(c: &mut WsClient, conv: &str, seq: u64) -> Message {
    let page = c.messages(history(conv)).await.unwrap();
    page.messages
        .into_iter()
        .find(|m| m.seq == seq)
        .unwrap_or_else(|| panic!("message {seq} is not in the history of {conv}"))
}

/// The next live entry of `conv` of the given kind.
async fn entry(c: &mut WsClient, conv: &str, kind: EntryKind) -> LiveMessage {
    c.pushed(|m: &LiveMessage| m.message.conv.as_str() == conv && m.message.kind == kind)
        .await
        .unwrap()
}

#[tokio::test]
async fn edits_revokes_reactions_and_pins_reach_every_device_in_their_place() {
    let t = two_edges().await;
    let (e1, e2) = (t.stack.edge_addr(), t.edge2.addr);
    let (mut alice, _) = WsClient::signed_in(e1, "alice", "laptop").await.unwrap();
    let (mut phone, _) = WsClient::signed_in(e2, "alice", "phone").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(e2, "bob", "phone").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(e1, "carol", "laptop").await.unwrap();
    alice
        .ok(create_group("ops", "Ops", &["bob", "carol"]))
        .await
        .unwrap();
    for c in [&mut bob, &mut carol] {
        c.pushed(|m: &anchorage_protocol::MembershipChanged| m.joined)
            .await
            .unwrap();
    }

    // A message mentioning bob; bob replies mentioning alice. Plain members do not mention
    // everyone, and a reply names a message of the conversation.
    let first = alice
        .ack(anchorage_protocol::request::SendMessage {
            mentions: user_ids(&["bob"]),
            ..send_message("ops", "m1", json!("deploy at 5?"))
        })
        .await
        .unwrap()
        .seq;
    let everyone = bob
        .request(anchorage_protocol::request::SendMessage {
            mention_all: true,
            ..send_message("ops", "b0", json!("@all"))
        })
        .await
        .unwrap();
    assert!(
        matches!(&everyone, ServerFrame::Error(e) if e.code == ErrorCode::Forbidden),
        "{everyone:?}"
    );
    let nowhere = bob
        .request(anchorage_protocol::request::SendMessage {
            reply_to: Some(first + 1000),
            ..send_message("ops", "b1", json!("?"))
        })
        .await
        .unwrap();
    assert!(
        matches!(&nowhere, ServerFrame::Error(e) if e.code == ErrorCode::NotFound),
        "{nowhere:?}"
    );
    let reply = bob
        .ack(anchorage_protocol::request::SendMessage {
            reply_to: Some(first),
            mentions: user_ids(&["alice"]),
            ..send_message("ops", "b2", json!("yes"))
        })
        .await
        .unwrap()
        .seq;
    let live = entry(&mut phone, "ops", EntryKind::Message).await;
    assert_eq!(live.message.seq, first);
    let live = entry(&mut phone, "ops", EntryKind::Message).await;
    assert_eq!(
        (live.message.seq, live.message.reply_to, live.prev),
        (reply, Some(first), first)
    );
    assert_eq!(live.message.mentions, vec!["alice".to_owned()]);

    // Only the sender edits; an edit is an entry of its own in the chain.
    let refused = bob
        .refused(edit("ops", first, json!("mine now")))
        .await
        .unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden, "{refused:?}");
    let missing = alice
        .refused(edit("ops", 999_999, json!("?")))
        .await
        .unwrap();
    assert_eq!(missing.code, ErrorCode::NotFound, "{missing:?}");
    let edited = alice
        .ok(edit("ops", first, json!("deploy at 6?")))
        .await
        .unwrap()
        .seq
        .unwrap();
    for c in [&mut bob, &mut phone] {
        let e = entry(c, "ops", EntryKind::Edit).await;
        assert_eq!(
            (e.prev, e.message.seq, e.message.target, &e.message.body),
            (reply, edited, Some(first), &json!("deploy at 6?"))
        );
    }
    // The same edit again is the same entry.
    let again = alice
        .ok(edit("ops", first, json!("deploy at 6?")))
        .await
        .unwrap();
    assert_eq!(again.seq, Some(edited));

    // Reactions: counted per emoji, pushed together, each user's own marked for them.
    alice.ok(react("ops", first, "👍", false)).await.unwrap();
    let thumb = bob.ok(react("ops", first, "👍", false)).await.unwrap().seq;
    carol.ok(react("ops", first, "🎉", false)).await.unwrap();
    carol.ok(react("ops", first, "🎉", true)).await.unwrap();
    // Adding what is there already stores nothing new: nothing at all once the first is
    // applied, the first entry itself before.
    let again = bob.ok(react("ops", first, "👍", false)).await.unwrap();
    assert!(again.seq.is_none() || again.seq == thumb, "{again:?}");
    let bad = bob
        .refused(react("ops", first, "a b", false))
        .await
        .unwrap();
    assert_eq!(bad.code, ErrorCode::InvalidRequest);
    let long = bob
        .refused(react("ops", first, &"x".repeat(33), false))
        .await
        .unwrap();
    assert_eq!(long.code, ErrorCode::InvalidRequest);
    // What the phone saw: four reaction entries in few frames, applied in the chain.
    let mut at = edited;
    let mut frames = 0;
    let mut thumbs = 0i64;
    let mut party = 0i64;
    let mut mine = Vec::new();
    while at < edited + 4 {
        let r: ReactionsChanged = match phone.pushed(|_| true).await {
            Ok(r) => r,
            Err(e) => panic!("{e}: at {at}, pending {:?}", phone.pending_pushes()),
        };
        assert_eq!(r.prev, at, "the frames continue the chain");
        at = r.seq;
        frames += 1;
        for d in &r.deltas {
            assert_eq!(d.target, first);
            match d.emoji.as_str() {
                "👍" => thumbs += d.delta,
                "🎉" => party += d.delta,
                other => panic!("{other}"),
            }
        }
        mine.extend(r.mine);
    }
    assert_eq!((thumbs, party), (2, 0));
    assert!(frames < 4, "{frames} frames for 4 reactions");
    assert_eq!(
        mine.len(),
        1,
        "alice's own reaction, from her laptop: {mine:?}"
    );
    let m = current(&mut bob, "ops", first).await;
    assert_eq!((m.edits, &m.body), (1, &json!("deploy at 6?")));
    assert_eq!(m.reactions.len(), 1, "{:?}", m.reactions);
    assert_eq!((m.reactions[0].count, m.reactions[0].mine), (2, true));
    assert!(m.version.unwrap() > edited);
    let page = bob
        .reply(ReactorsQuery {
            conv: conv_id("ops"),
            seq: first,
            emoji: "👍".into(),
            after: None,
            limit: Some(1),
        })
        .await
        .unwrap();
    let ReplyBody::Reactors(page) = page else {
        panic!("{page:?}")
    };
    assert_eq!(page.users, vec!["alice".to_owned()]);
    let rest = bob
        .reply(ReactorsQuery {
            conv: conv_id("ops"),
            seq: first,
            emoji: "👍".into(),
            after: page.cursor,
            limit: Some(1),
        })
        .await
        .unwrap();
    let ReplyBody::Reactors(rest) = rest else {
        panic!("{rest:?}")
    };
    assert_eq!((rest.users, rest.cursor), (vec!["bob".to_owned()], None));

    // Pins: owners and admins of a group.
    let pin = |seq, unpin| Pin {
        conv: conv_id("ops"),
        seq,
        unpin,
    };
    let refused = bob.refused(pin(reply, false)).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden);
    alice.ok(pin(reply, false)).await.unwrap();
    let p = entry(&mut bob, "ops", EntryKind::Pin).await;
    assert_eq!((p.message.target, p.message.pinned), (Some(reply), true));
    assert!(current(&mut carol, "ops", reply).await.pinned);

    // Revoke: the sender or an owner/admin; everyone gets the tombstone entry.
    let refused = carol.refused(Revoke {
        conv: conv_id("ops"),
        seq: first,
    });
    assert_eq!(refused.await.unwrap().code, ErrorCode::Forbidden);
    let revoked = alice
        .ok(Revoke {
            conv: conv_id("ops"),
            seq: first,
        })
        .await
        .unwrap()
        .seq
        .unwrap();
    for c in [&mut bob, &mut phone, &mut carol] {
        let r = entry(c, "ops", EntryKind::Revoke).await;
        assert_eq!((r.message.seq, r.message.target), (revoked, Some(first)));
        assert_eq!(r.message.body, json!(null));
    }
    let m = current(&mut carol, "ops", first).await;
    assert!(m.revoked && m.body.is_null() && m.reactions.is_empty() && m.edits == 0);
    assert_eq!(
        (m.sender.as_str(), m.client_msg_id.as_str()),
        ("alice", "m1")
    );
    // Nothing more changes a revoked message.
    for refused in [
        alice
            .refused(edit("ops", first, json!("back")))
            .await
            .unwrap(),
        bob.refused(react("ops", first, "👍", false)).await.unwrap(),
    ] {
        assert_eq!(refused.code, ErrorCode::NotFound, "{refused:?}");
    }
    let edits = alice
        .messages(Edits {
            conv: conv_id("ops"),
            seq: first,
        })
        .await
        .unwrap();
    assert!(edits.messages.is_empty(), "{edits:?}");
    // An admin revokes someone else's message.
    alice
        .ok(anchorage_protocol::request::SetRole {
            group: anchorage_tests::group_id("ops"),
            member: anchorage_tests::user_id("carol"),
            role: anchorage_schema::event::Role::Admin,
        })
        .await
        .unwrap();
    eventually(WAIT, "carol to be an admin", || async {
        let role = t
            .stack
            .stack
            .store
            .member_role("ops", "carol")
            .await
            .ok()??;
        (role == anchorage_schema::event::Role::Admin).then_some(())
    })
    .await
    .unwrap();
    carol
        .ok(Revoke {
            conv: conv_id("ops"),
            seq: reply,
        })
        .await
        .unwrap();

    // A device that catches up by `sync` gets every entry in order: messages in their
    // current state, then the changes.
    let page = carol.messages(sync("ops", 0)).await.unwrap();
    let kinds: Vec<EntryKind> = page.messages.iter().map(|m| m.kind).collect();
    assert!(kinds.contains(&EntryKind::Reaction) && kinds.contains(&EntryKind::Pin));
    assert!(
        !kinds.contains(&EntryKind::Edit),
        "a revoked message's edits are gone"
    );
    assert!(page.messages.windows(2).all(|w| w[0].seq < w[1].seq));

    // Unread mentions in the welcome: bob's reply mentioned alice, but it is revoked now; a
    // fresh one counts.
    bob.ack(anchorage_protocol::request::SendMessage {
        mentions: user_ids(&["alice"]),
        ..send_message("ops", "b3", json!("@alice ping"))
    })
    .await
    .unwrap();
    let store = &t.stack.stack.store;
    eventually(WAIT, "the mention in the history", || async {
        let n = store.mentions_after("ops", "alice", 0, 10).await.ok()?;
        (n == 1).then_some(())
    })
    .await
    .unwrap();
    let mut tablet = WsClient::connect(e2).await.unwrap();
    let mut h = hello(token("alice", "tablet", 3600));
    h.anchors = vec![ConvAnchor {
        conv: conv_id("ops"),
        seq: 0,
        read: None,
    }];
    let ReplyBody::Welcome(welcome) = tablet.reply(h).await.unwrap() else {
        panic!("no welcome")
    };
    let change = welcome
        .changes
        .iter()
        .find(|c| c.conv.as_str() == "ops")
        .unwrap();
    assert_eq!(change.mentions, 1, "{change:?}");
    assert!(change.unread >= 1);
    drop(t.nats);
}

#[tokio::test]
async fn a_revoked_text_is_gone_from_the_stream_the_store_and_a_rebuild() {
    let t = two_edges().await;
    let (mut alice, _) = WsClient::signed_in(t.stack.edge_addr(), "alice", "laptop")
        .await
        .unwrap();
    alice
        .ok(create_group("vault", "Vault", &["bob"]))
        .await
        .unwrap();
    let secret = format!("launch-code-{}", std::process::id());
    let amended = format!("{secret}-amended");
    let seq = alice
        .ack(send_message("vault", "s1", json!({"text": secret})))
        .await
        .unwrap()
        .seq;
    alice
        .ok(edit("vault", seq, json!({"text": amended})))
        .await
        .unwrap();
    alice.ok(react("vault", seq, "🔥", false)).await.unwrap();
    let keep = alice
        .ack(send_message("vault", "s2", json!("still here")))
        .await
        .unwrap()
        .seq;
    let store = &t.stack.stack.store;
    eventually(WAIT, "the edit in the history", || async {
        let m = store.message("vault", seq).await.ok()??;
        (m.edits == 1).then_some(())
    })
    .await
    .unwrap();
    assert!(!store.columns_containing(&secret).await.unwrap().is_empty());

    let revoked = alice
        .ok(Revoke {
            conv: conv_id("vault"),
            seq,
        })
        .await
        .unwrap()
        .seq
        .unwrap();
    eventually(WAIT, "the tombstone in the history", || async {
        store
            .message("vault", seq)
            .await
            .ok()?
            .filter(|m| m.revoked)
    })
    .await
    .unwrap();
    // No table holds the text, the original or the edit.
    assert_eq!(
        store.columns_containing(&secret).await.unwrap(),
        Vec::<String>::new()
    );
    // No event on any stream holds it; the sequences stay as they were.
    let bus = &t.stack.stack.bus;
    let state = bus.stream_state(stream::MESSAGES).await.unwrap();
    let mut reader = bus
        .read_stream(stream::MESSAGES, anchorage_schema::Seq(1))
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let e = reader.next().await.unwrap();
        let text = String::from_utf8_lossy(&e.payload).into_owned();
        assert!(
            !text.contains(&secret),
            "event {} holds the text: {text}",
            e.seq
        );
        seen.push(e.seq.0);
        if e.seq.0 >= state.last_seq.0 {
            break;
        }
    }
    assert!(!seen.contains(&seq), "the message's event is erased");
    assert!(seen.contains(&keep) && seen.contains(&revoked));
    for s in [stream::INGEST, stream::DEADLETTER] {
        let st = bus.stream_state(s).await.unwrap();
        assert_eq!(st.last_seq.0, 0, "{s} holds nothing of it");
    }
    // Nor do the server's files: JetStream overwrote the erased records; SQLite overwrote the
    // rows (`secure_delete`) and emptied its log.
    let mut files = vec![t.nats.dir.path().to_path_buf()];
    if t.stack.config.database.url.starts_with("sqlite") {
        files.push(t.stack.db_dir.path().to_path_buf());
    }
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            for text in [&secret, &amended] {
                let found = bytes.windows(text.len()).any(|w| w == text.as_bytes());
                assert!(!found, "{} holds {text}", path.display());
            }
        }
    }

    // A rebuild from the streams has the tombstone, in its place, and no text.
    let (_dir, rebuilt, _) = anchorage_tests::rebuilt(&t.stack.config, bus, 64).await;
    let tomb = rebuilt.message("vault", seq).await.unwrap().unwrap();
    assert!(tomb.revoked && tomb.body == "null");
    assert_eq!(
        (tomb.sender.as_str(), tomb.client_msg_id.as_str()),
        ("alice", "s1")
    );
    assert_eq!(
        rebuilt.columns_containing(&secret).await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        anchorage_tests::rebuild_differences(store, &rebuilt).await,
        Vec::<String>::new()
    );

    // A retry of the revoked send long after still gets its seq, never a second copy.
    let retry = alice
        .ack(anchorage_protocol::request::SendMessage {
            retry: true,
            ..send_message("vault", "s1", json!({"text": secret}))
        })
        .await
        .unwrap();
    assert_eq!((retry.seq, retry.duplicate), (seq, true));
}

#[tokio::test]
async fn reactions_in_a_busy_group_cost_frames_per_flush_not_per_reaction() {
    let t = two_edges().await;
    let members: Vec<String> = (0..40).map(|n| format!("m{n:02}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let (mut owner, _) = WsClient::signed_in(t.stack.edge_addr(), "owner", "d")
        .await
        .unwrap();
    owner.ok(create_group("big", "Big", &names)).await.unwrap();
    let target = owner
        .ack(send_message("big", "post", json!("react to me")))
        .await
        .unwrap()
        .seq;
    let mut clients = Vec::new();
    for (n, m) in members.iter().enumerate() {
        let edge = if n % 2 == 0 {
            t.stack.edge_addr()
        } else {
            t.edge2.addr
        };
        let (c, _) = WsClient::signed_in(edge, m, "d").await.unwrap();
        clients.push(c);
    }
    // Every member reacts at once.
    for c in clients.iter_mut() {
        c.send_request(1, react("big", target, "👍", false))
            .await
            .unwrap();
    }
    for c in clients.iter_mut() {
        match c.next_answer().await.unwrap() {
            ServerFrame::Reply(r) => assert!(matches!(r.body, ReplyBody::Ok(_))),
            other => panic!("{other:?}"),
        }
    }
    // The owner watches: 40 reactions come in a handful of frames whose counts add up.
    let mut at = target;
    let mut frames = 0;
    let mut count = 0i64;
    while count < 40 {
        let r: ReactionsChanged = owner.pushed(|_| true).await.unwrap();
        assert_eq!(r.prev, at);
        at = r.seq;
        frames += 1;
        count += r.deltas.iter().map(|d| d.delta).sum::<i64>();
        assert!(r.mine.is_empty(), "the owner did not react");
    }
    assert_eq!(count, 40);
    assert!(frames <= 10, "{frames} frames for 40 reactions");
    // Nothing more comes: what arrives in the next half second is read, not left unread.
    keep_frames(&mut owner, Duration::from_millis(500)).await;
    let extra: Vec<&Push> = owner
        .pending_pushes()
        .iter()
        .filter(|p| matches!(p, Push::Reactions(_)))
        .collect();
    assert!(extra.is_empty(), "{extra:?}");
    let m = current(&mut owner, "big", target).await;
    assert_eq!(m.reactions[0].count, 40);
}

fn view(conv: &str) -> RequestBody {
    RequestBody::View(View {
        conv: conv_id(conv),
    })
}

fn typing(conv: &str, stop: bool) -> Typing {
    Typing {
        conv: conv_id(conv),
        stop,
    }
}

/// Reads what `c` gets for `wait`, keeping the pushes.
async fn keep_frames(c: &mut WsClient, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(frame) = tokio::time::timeout_at(deadline, c.next_frame()).await {
        match frame.unwrap() {
            ServerFrame::Push(p) => c.keep_push(p),
            other => panic!("{other:?}"),
        }
    }
}

/// Every `typing` frame `c` got so far, after `wait`.
async fn typing_frames(c: &mut WsClient, wait: Duration) -> Vec<TypingNow> {
    keep_frames(c, wait).await;
    let mut out = Vec::new();
    c.take_pushes(|p| match p {
        Push::Typing(t) => {
            out.push(t.clone());
            true
        }
        _ => false,
    });
    out
}

#[tokio::test]
async fn typing_reaches_only_the_connections_viewing_the_conversation() {
    let t = two_edges().await;
    let members: Vec<String> = (0..30).map(|n| format!("u{n:02}")).collect();
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let (mut owner, _) = WsClient::signed_in(t.stack.edge_addr(), "owner", "d")
        .await
        .unwrap();
    owner
        .ok(create_group("room", "Room", &names))
        .await
        .unwrap();
    let mut online = Vec::new();
    for (n, m) in members.iter().enumerate() {
        let edge = if n % 2 == 0 {
            t.stack.edge_addr()
        } else {
            t.edge2.addr
        };
        online.push(WsClient::signed_in(edge, m, "d").await.unwrap().0);
    }
    // Three members have the conversation open, one on each edge and the owner; a stranger
    // may not view it.
    for c in online[0..2].iter_mut().chain([&mut owner]) {
        c.ok(view("room")).await.unwrap();
    }
    let (mut stranger, _) = WsClient::signed_in(t.edge2.addr, "stranger", "d")
        .await
        .unwrap();
    let refused = stranger.refused(view("room")).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden);
    let refused = stranger.refused(typing("room", false)).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden);

    // Ten members type, each many times: the viewers see them named (a few) and counted.
    for c in online[10..20].iter_mut() {
        for _ in 0..5 {
            c.ok(typing("room", false)).await.unwrap();
        }
    }
    let seen = typing_frames(&mut owner, Duration::from_millis(1500)).await;
    let last = seen.last().expect("the owner saw typing");
    assert_eq!((last.count, last.users.len()), (10, 3), "{last:?}");
    assert!(seen.len() <= 6, "{} frames for 50 signals", seen.len());
    for viewer in online[0..2].iter_mut() {
        let seen = typing_frames(viewer, Duration::from_millis(300)).await;
        assert_eq!(seen.last().map(|t| t.count), Some(10), "{seen:?}");
    }
    // Nobody else got a typing frame: it cost the viewers, not the members.
    for c in online[2..].iter_mut() {
        let seen = typing_frames(c, Duration::from_millis(50)).await;
        assert!(seen.is_empty(), "{seen:?}");
    }
    // Stopping shows at once; the rest expire on their own.
    online[10].ok(typing("room", true)).await.unwrap();
    let seen = typing_frames(&mut owner, Duration::from_millis(800)).await;
    assert_eq!(seen.last().map(|t| t.count), Some(9), "{seen:?}");
    let seen = typing_frames(&mut owner, Duration::from_secs(7)).await;
    assert_eq!(seen.last().map(|t| t.count), Some(0), "{seen:?}");
    // A connection that stops viewing hears no more.
    owner
        .ok(RequestBody::Unview(View {
            conv: conv_id("room"),
        }))
        .await
        .unwrap();
    online[12].ok(typing("room", false)).await.unwrap();
    let seen = typing_frames(&mut online[0], Duration::from_millis(800)).await;
    assert_eq!(seen.last().map(|t| t.count), Some(1));
    assert!(
        typing_frames(&mut owner, Duration::from_millis(300))
            .await
            .is_empty()
    );
}

fn read(conv: &str, seq: u64) -> anchorage_protocol::request::MarkRead {
    anchorage_protocol::request::MarkRead {
        conv: conv_id(conv),
        seq,
    }
}

async fn receipts(c: &mut WsClient, conv: &str, seq: Option<u64>) -> Receipts {
    match c
        .reply(ReceiptsQuery {
            conv: conv_id(conv),
            seq,
        })
        .await
        .unwrap()
    {
        ReplyBody::Receipts(r) => r,
        other => panic!("{other:?}"),
    }
}

/// The receipts of `conv` once `count` others read `seq`.
async fn receipts_counting(c: &mut WsClient, conv: &str, seq: u64, count: u64) -> Receipts {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = receipts(c, conv, Some(seq)).await;
        if r.count == Some(count) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn read_receipts_show_who_read_how_far_unless_they_hide_them() {
    let TwoEdges {
        nats: _nats,
        stack,
        edge2,
    } = two_edges_with(|c| c.messages.receipts_max_members = 3).await;
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    let (mut bob, _) = WsClient::signed_in(edge2.addr, "bob", "d").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(edge2.addr, "carol", "d").await.unwrap();
    alice
        .ok(create_group("trio", "Trio", &["bob", "carol"]))
        .await
        .unwrap();
    alice
        .ok(create_group("crowd", "Crowd", &["bob", "carol", "dave"]))
        .await
        .unwrap();
    let m1 = alice
        .ack(send_message("trio", "t1", json!("one")))
        .await
        .unwrap()
        .seq;
    let m2 = alice
        .ack(send_message("trio", "t2", json!("two")))
        .await
        .unwrap()
        .seq;
    let big = alice
        .ack(send_message("crowd", "c1", json!("all")))
        .await
        .unwrap()
        .seq;
    eventually(WAIT, "the messages in the history", || async {
        stack.stack.store.message("crowd", big).await.ok()?
    })
    .await
    .unwrap();

    // Bob reads: alice and carol see it live; the receipts say who read how far.
    bob.ok(read("trio", m2)).await.unwrap();
    for c in [&mut alice, &mut carol] {
        let r: anchorage_protocol::Receipt = c
            .pushed(|r: &anchorage_protocol::Receipt| r.user == "bob")
            .await
            .unwrap();
        assert_eq!((r.conv.as_str(), r.seq), ("trio", m2));
    }
    let seen = receipts_counting(&mut alice, "trio", m2, 1).await;
    let readers: Vec<(&str, u64)> = seen
        .readers
        .iter()
        .map(|r| (r.user.as_str(), r.seq))
        .collect();
    assert_eq!(
        readers,
        vec![("bob", m2), ("carol", 0)],
        "everyone but the asker"
    );

    // Carol hides her receipts: her reads are not shown, not counted, not pushed.
    carol
        .ok(anchorage_protocol::request::SetPrivacy {
            receipts: Some(false),
            presence: None,
        })
        .await
        .unwrap();
    eventually(WAIT, "carol's privacy in the projection", || async {
        let (shown, _) = stack.stack.store.privacy_of("carol").await.ok()?;
        (!shown).then_some(())
    })
    .await
    .unwrap();
    carol.ok(read("trio", m1)).await.unwrap();
    bob.ok(read("trio", m2)).await.unwrap();
    // Her read is in the projection: leaving it out is the privacy setting, not a lag.
    eventually(WAIT, "carol's read in the projection", || async {
        let at = stack.stack.store.read_seq("carol", "trio").await.ok()??;
        (at >= m1).then_some(())
    })
    .await
    .unwrap();
    let r = receipts(&mut alice, "trio", Some(m1)).await;
    assert_eq!(r.count, Some(1), "carol is not counted: {r:?}");
    assert!(r.readers.iter().all(|r| r.user != "carol"), "{r:?}");
    while let Ok(Ok(frame)) =
        tokio::time::timeout(Duration::from_millis(300), alice.next_frame()).await
    {
        if let ServerFrame::Push(Push::Receipt(r)) = frame {
            assert_ne!(r.user, "carol", "carol's read was pushed");
        }
    }
    assert!(
        alice
            .pending_pushes()
            .iter()
            .all(|p| !matches!(p, Push::Receipt(r) if r.user == "carol"))
    );

    // A group past the size limit: no per-member positions, no pushes, only counts.
    bob.ok(read("crowd", big)).await.unwrap();
    let r = receipts_counting(&mut alice, "crowd", big, 1).await;
    assert!(r.readers.is_empty(), "{r:?}");
    while let Ok(Ok(frame)) =
        tokio::time::timeout(Duration::from_millis(300), alice.next_frame()).await
    {
        if let ServerFrame::Push(Push::Receipt(r)) = frame {
            assert_ne!(r.conv.as_str(), "crowd", "a large group's read was pushed");
        }
    }
    // Strangers see nothing.
    let (mut eve, _) = WsClient::signed_in(edge2.addr, "eve", "d").await.unwrap();
    let refused = eve
        .refused(ReceiptsQuery {
            conv: conv_id("trio"),
            seq: None,
        })
        .await
        .unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden);
}

async fn presence(
    c: &mut WsClient,
    users: &[&str],
    conv: Option<&str>,
) -> anchorage_protocol::PresenceAnswer {
    let query = anchorage_protocol::request::PresenceQuery {
        users: user_ids(users),
        conv: conv.map(conv_id),
    };
    match c.reply(query).await.unwrap() {
        ReplyBody::Presence(p) => p,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn presence_reaches_1to1_peers_counts_groups_and_survives_an_edge_crash_by_expiry() {
    let TwoEdges {
        nats: _nats,
        stack,
        edge2,
    } = two_edges_with(|c| c.edge.presence_ttl_secs = 3).await;
    let (e1, e2) = (stack.edge_addr(), edge2.addr);
    // The 1:1s exist before bob connects: his peers are looked up when he does.
    for peer in ["alice", "ghost"] {
        let (mut c, _) = WsClient::signed_in(e1, peer, "d").await.unwrap();
        c.ok(anchorage_protocol::request::OpenDirect {
            peer: anchorage_tests::user_id("bob"),
        })
        .await
        .unwrap();
    }
    let (mut dave, _) = WsClient::signed_in(e1, "dave", "d").await.unwrap();
    dave.ok(create_group("team", "Team", &["alice", "bob"]))
        .await
        .unwrap();
    drop(dave);
    // Alice's first connection closed with the loop above; wait until that is recorded.
    eventually(WAIT, "alice's last seen", || async {
        stack.stack.store.last_seen("alice").await.ok()?
    })
    .await
    .unwrap();
    let (mut bob, _) = WsClient::signed_in(e2, "bob", "d").await.unwrap();

    // Alice comes online on the other edge: bob, her 1:1 peer, hears it; then she leaves.
    let (alice, _) = WsClient::signed_in(e1, "alice", "d").await.unwrap();
    let on: anchorage_protocol::PresenceInfo = bob
        .pushed(|p: &anchorage_protocol::PresenceInfo| p.user == "alice" && p.online)
        .await
        .unwrap();
    assert_eq!(on.last_seen, None);
    let p = presence(&mut bob, &["alice", "dave", "stranger"], Some("team")).await;
    let states: Vec<(&str, bool, bool)> = p
        .users
        .iter()
        .map(|u| (u.user.as_str(), u.online, u.hidden))
        .collect();
    assert_eq!(
        states,
        vec![
            ("alice", true, false),
            ("dave", false, false),
            // No conversation in common: nothing said, not even whether they exist.
            ("stranger", false, true),
        ]
    );
    assert!(p.users[1].last_seen.is_some(), "dave was seen: {p:?}");
    assert_eq!(p.online, Some(2), "alice and bob of team are online");
    // An edge started now — as the edge NATS user, with records stored — knows who is online.
    let edge3 = TestEdge::start(&stack.config).await.unwrap();
    let (mut dave, _) = WsClient::signed_in(edge3.addr, "dave", "d").await.unwrap();
    let p = presence(&mut dave, &["alice"], None).await;
    assert!(p.users[0].online, "{p:?}");
    // A 1:1 made while both are connected: they hear of each other from then on.
    dave.ok(anchorage_protocol::request::OpenDirect {
        peer: anchorage_tests::user_id("bob"),
    })
    .await
    .unwrap();
    drop(dave);
    let off: anchorage_protocol::PresenceInfo = bob
        .pushed(|p: &anchorage_protocol::PresenceInfo| p.user == "dave" && !p.online)
        .await
        .unwrap();
    assert!(off.last_seen.is_some());
    drop(alice);
    let off: anchorage_protocol::PresenceInfo = bob
        .pushed(|p: &anchorage_protocol::PresenceInfo| p.user == "alice" && !p.online)
        .await
        .unwrap();
    assert!(off.last_seen.is_some());

    // An edge that crashed stops refreshing its records: its users go offline by expiry.
    let record = json!({"devices": 1, "at": anchorage_schema::now_ms()});
    stack
        .stack
        .bus
        .publish_raw(
            "presence.ghost.crashed00",
            None,
            record.to_string().into_bytes(),
        )
        .await
        .unwrap();
    bob.pushed(|p: &anchorage_protocol::PresenceInfo| p.user == "ghost" && p.online)
        .await
        .unwrap();
    let gone = tokio::time::Instant::now();
    let off: anchorage_protocol::PresenceInfo = bob
        .pushed(|p: &anchorage_protocol::PresenceInfo| p.user == "ghost" && !p.online)
        .await
        .unwrap();
    assert!(
        gone.elapsed() <= Duration::from_secs(5),
        "{:?}",
        gone.elapsed()
    );
    assert!(off.last_seen.is_some());

    // Alice hides her presence: bob hears nothing more and asking says `hidden`.
    let (mut alice, _) = WsClient::signed_in(e1, "alice", "d").await.unwrap();
    bob.pushed(|p: &anchorage_protocol::PresenceInfo| p.user == "alice" && p.online)
        .await
        .unwrap();
    alice
        .ok(anchorage_protocol::request::SetPrivacy {
            receipts: None,
            presence: Some(false),
        })
        .await
        .unwrap();
    // Her peers stop showing her online at once.
    let hidden: anchorage_protocol::PresenceInfo = bob
        .pushed(|p: &anchorage_protocol::PresenceInfo| p.user == "alice" && p.hidden)
        .await
        .unwrap();
    assert!(!hidden.online && hidden.last_seen.is_none());
    eventually(WAIT, "alice's privacy in the projection", || async {
        let (_, shown) = stack.stack.store.privacy_of("alice").await.ok()?;
        (!shown).then_some(())
    })
    .await
    .unwrap();
    let p = presence(&mut bob, &["alice"], Some("team")).await;
    assert!(p.users[0].hidden && !p.users[0].online, "{p:?}");
    assert_eq!(p.online, Some(1), "hidden members are not counted");
    drop(alice);
    tokio::time::sleep(Duration::from_millis(800)).await;
    while let Ok(Ok(frame)) =
        tokio::time::timeout(Duration::from_millis(200), bob.next_frame()).await
    {
        if let ServerFrame::Push(Push::PresenceChanged(p)) = frame {
            assert_ne!(p.user, "alice", "a hidden user's presence was pushed");
        }
    }
    let refused = bob
        .refused(anchorage_protocol::request::PresenceQuery {
            users: Vec::new(),
            conv: None,
        })
        .await
        .unwrap();
    assert_eq!(refused.code, ErrorCode::InvalidRequest);
}

// An edit decided just before a revoke can be stored just after it (two devices racing):
// nobody is shown it, the projector erases it, and the tombstone stays a tombstone.
#[tokio::test]
async fn an_edit_stored_after_the_revoke_is_never_shown_and_is_erased() {
    let t = two_edges().await;
    let (mut alice, _) = WsClient::signed_in(t.stack.edge_addr(), "alice", "d1")
        .await
        .unwrap();
    let (mut bob, _) = WsClient::signed_in(t.edge2.addr, "bob", "d").await.unwrap();
    alice
        .ok(create_group("race", "Race", &["bob"]))
        .await
        .unwrap();
    let seq = alice
        .ack(send_message("race", "r1", json!("first words")))
        .await
        .unwrap()
        .seq;
    let revoked = alice
        .ok(Revoke {
            conv: conv_id("race"),
            seq,
        })
        .await
        .unwrap()
        .seq
        .unwrap();
    entry(&mut bob, "race", EntryKind::Revoke).await;
    // The losing edit, as the other device's edge published it.
    let late = anchorage_schema::Envelope::new(
        anchorage_schema::EventId::parse("alice:d2:edit:race:late").unwrap(),
        anchorage_schema::now_ms(),
        anchorage_schema::Actor::User {
            user: anchorage_tests::user_id("alice"),
            device: anchorage_schema::DeviceId::parse("d2").unwrap(),
        },
        anchorage_schema::event::MessageEdited {
            conv: conv_id("race"),
            target: seq,
            editor: anchorage_tests::user_id("alice"),
            device: anchorage_schema::DeviceId::parse("d2").unwrap(),
            body: json!("LATE-EDIT-TEXT"),
        },
    );
    let bus = &t.stack.stack.bus;
    let stored = bus
        .publish_event(
            &anchorage_schema::subjects::message(&conv_id("race")),
            &late,
            None,
        )
        .await
        .unwrap()
        .seq;
    let after = alice
        .ack(send_message("race", "r2", json!("later")))
        .await
        .unwrap()
        .seq;
    // Bob gets the next message (its `prev` shows the hole: he syncs), never the edit.
    let next: LiveMessage = bob
        .pushed(|m: &LiveMessage| m.message.seq == after)
        .await
        .unwrap();
    assert_eq!(next.prev, stored.0);
    assert!(
        bob.pending_pushes().iter().all(|p| !matches!(p,
            Push::Message(m) if m.message.kind == EntryKind::Edit)),
        "{:?}",
        bob.pending_pushes()
    );
    let store = &t.stack.stack.store;
    eventually(WAIT, "the late edit erased", || async {
        bus.stored_event_if_any(stream::MESSAGES, stored)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    let page = bob.messages(sync("race", revoked)).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![after], "the sync skips the erased edit");
    let m = store.message("race", seq).await.unwrap().unwrap();
    assert!(m.revoked && m.body == "null" && m.edits == 0, "{m:?}");
    assert_eq!(
        store.columns_containing("LATE-EDIT-TEXT").await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn the_users_own_state_refuses_what_is_not_theirs_to_state() {
    let t = two_edges().await;
    let (mut alice, _) = WsClient::signed_in(t.stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.ok(create_group("one", "One", &[])).await.unwrap();
    alice.ok(create_group("two", "Two", &[])).await.unwrap();
    let in_one = alice
        .ack(send_message("one", "m1", json!("x")))
        .await
        .unwrap()
        .seq;
    let in_two = alice
        .ack(send_message("two", "m2", json!("y")))
        .await
        .unwrap()
        .seq;
    let edited = alice
        .ok(edit("two", in_two, json!("y!")))
        .await
        .unwrap()
        .seq
        .unwrap();
    let hide = |seqs: Vec<u64>| anchorage_protocol::request::Hide {
        conv: conv_id("two"),
        seqs,
    };
    // A message of another conversation, a change entry, nothing at all: not messages here.
    for seqs in [
        vec![in_one],
        vec![edited],
        vec![0],
        vec![in_two, edited + 100],
    ] {
        let refused = alice.refused(hide(seqs.clone())).await.unwrap();
        assert_eq!(refused.code, ErrorCode::NotFound, "{seqs:?}: {refused:?}");
    }
    alice.ok(hide(vec![in_two, in_two])).await.unwrap();
    let store = &t.stack.stack.store;
    eventually(WAIT, "the hidden message in the projection", || async {
        let s = store.user_state_since("alice", 0, 10).await.ok()?;
        (!s.hidden.is_empty()).then_some(())
    })
    .await
    .unwrap();
    // The state's version is the server's, whatever the client claims to hold.
    let claimed = i64::MAX as u64;
    let real = match alice
        .reply(anchorage_protocol::request::UserStateQuery { after: claimed })
        .await
        .unwrap()
    {
        ReplyBody::UserState(s) => s.version,
        other => panic!("{other:?}"),
    };
    assert!(real > 0 && real < claimed, "{real}");
    // Receipts of a seq past the end are refused like reads past it.
    let refused = alice
        .refused(ReceiptsQuery {
            conv: conv_id("two"),
            seq: Some(1_000_000_000_000),
        })
        .await
        .unwrap();
    assert_eq!(refused.code, ErrorCode::InvalidRequest);
}

// Going back to an earlier body is an edit of its own (B, C, then B again: three entries),
// while the same edit sent again once it is stored stores nothing new.
#[tokio::test]
async fn editing_back_to_an_earlier_body_is_an_edit_of_its_own() {
    let t = two_edges().await;
    let (mut alice, _) = WsClient::signed_in(t.stack.edge_addr(), "alice", "laptop")
        .await
        .unwrap();
    alice.ok(create_group("ed", "Ed", &["bob"])).await.unwrap();
    let first = alice
        .ack(send_message("ed", "m1", json!("A")))
        .await
        .unwrap()
        .seq;
    let mut seqs = Vec::new();
    for body in ["B", "C", "B"] {
        // Each edit is decided on the message as stored with the one before it.
        let deadline = std::time::Instant::now() + WAIT;
        let seq = loop {
            match alice.request(edit("ed", first, json!(body))).await.unwrap() {
                ServerFrame::Reply(r) => match r.body {
                    anchorage_protocol::ReplyBody::Ok(d) => break d.seq.unwrap(),
                    other => panic!("{other:?}"),
                },
                other => assert!(std::time::Instant::now() < deadline, "{other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        seqs.push(seq);
        while current(&mut alice, "ed", first).await.body != json!(body) {
            assert!(
                std::time::Instant::now() < deadline,
                "edit {body} not stored"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(seqs[0] < seqs[1] && seqs[1] < seqs[2], "{seqs:?}");
    let again = alice.ok(edit("ed", first, json!("B"))).await.unwrap();
    assert_eq!(again.seq, Some(seqs[2]));
}
