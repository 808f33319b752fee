//! A 100,000-member group kept in line between the SDK's local store and the server through
//! every layer of member-list sync — the unchanged check, diffs, realignments (past the
//! horizon, another epoch), bucket repair of a damaged copy, live notifications with one lost —
//! and member search.

use std::time::{Duration, Instant};

use anchorage_protocol::request::{
    AddMembers, PresenceQuery, React, RemoveMembers, SetNickname, Typing, View,
};
use anchorage_protocol::{Push, RequestBody, ServerFrame};
use anchorage_schema::subjects::stream;
use anchorage_sdk::{ClientEvent, MemberSyncKind};
use anchorage_tests::{
    TestNats, TestStack, WsClient, fresh_database, group_id, test_config, user_id,
};
use tokio::sync::broadcast;

use crate::common::*;

/// Populating 100,000 members is the slow part on a loaded machine.
const POPULATE: Duration = Duration::from_secs(300);

struct Big {
    _nats: TestNats,
    stack: TestStack,
    dir: tempfile::TempDir,
    alice: WsClient,
}

async fn big() -> Big {
    let nats = TestNats::start().await.unwrap();
    let db = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db.path()).await.unwrap());
    config.projector.tombstone_horizon = HORIZON;
    let stack = TestStack::start_with(config, db).await.unwrap();
    let bus = &stack.stack.bus;
    let started = Instant::now();
    let last = create_group(bus, BIG, &["bob", "carol"], BIG_SIZE - 3).await;
    projected_within(&stack.stack.store, BIG, last, POPULATE).await;
    eprintln!("{BIG_SIZE} members projected in {:?}", started.elapsed());
    let (alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d1")
        .await
        .unwrap();
    Big {
        _nats: nats,
        dir: tempfile::tempdir().unwrap(),
        stack,
        alice,
    }
}

impl Big {
    async fn command(&mut self, request: impl Into<RequestBody>) -> u64 {
        let done = self.alice.ok(request).await.unwrap();
        let seq = done.seq.unwrap();
        projected(&self.stack.stack.store, BIG, seq).await;
        seq
    }

    async fn add(&mut self, members: &[String]) -> u64 {
        self.command(AddMembers {
            group: group_id(BIG),
            members: members.iter().map(|m| user_id(m)).collect(),
        })
        .await
    }

    async fn remove(&mut self, members: &[String]) -> u64 {
        self.command(RemoveMembers {
            group: group_id(BIG),
            members: members.iter().map(|m| user_id(m)).collect(),
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_member_group_stays_in_line_through_every_layer() {
    let mut b = big().await;
    let store = b.stack.stack.store.clone();
    let addr = b.stack.edge_addr();

    // First open: no copy → a realignment from snapshot pages.
    let bob = client(addr, b.dir.path(), "bob").await;
    let mut events = bob.subscribe();
    let started = Instant::now();
    bob.open_conversation(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Full).await;
    assert_in_line(&bob, &store, BIG).await;
    eprintln!(
        "full realignment of {BIG_SIZE} members: {:?}",
        started.elapsed()
    );

    // Unchanged: the next open moves no member list.
    bob.sync_members(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Unchanged).await;

    // 1 change and 1% churn while bob is away: each is a diff on the next open.
    bob.shutdown().await;
    b.add(&["late1".to_owned()]).await;
    let bob = client(addr, b.dir.path(), "bob").await;
    let mut events = bob.subscribe();
    bob.open_conversation(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Diff).await;
    assert_in_line(&bob, &store, BIG).await;
    bob.shutdown().await;
    let gone: Vec<String> = (0..500).map(|n| member(n * 7)).collect();
    let fresh: Vec<String> = (0..500).map(|n| format!("churn{n:04}")).collect();
    b.remove(&gone).await;
    b.add(&fresh).await;
    let bob = client(addr, b.dir.path(), "bob").await;
    let mut events = bob.subscribe();
    bob.open_conversation(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Diff).await;
    assert_in_line(&bob, &store, BIG).await;
    let l = bob.member_list(BIG).await.unwrap().unwrap();
    assert!(
        !bob.members(BIG)
            .await
            .unwrap()
            .iter()
            .any(|m| m.user.as_str() == member(7))
    );
    assert_eq!(l.digest.count, BIG_SIZE as u64 + 1);

    // Past the horizon: a removal's tombstone is purged while bob is away → realignment.
    bob.shutdown().await;
    b.remove(&[member(1)]).await;
    for n in 0..(HORIZON + 5) {
        b.command(SetNickname {
            group: group_id(BIG),
            member: user_id("alice"),
            nickname: Some(format!("boss{n}")),
        })
        .await;
    }
    let horizon = store.group_row(BIG).await.unwrap().unwrap().horizon;
    assert!(
        horizon > l.version,
        "tombstones before bob's copy were purged"
    );
    let bob = client(addr, b.dir.path(), "bob").await;
    let mut events = bob.subscribe();
    bob.open_conversation(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Full).await;
    assert_in_line(&bob, &store, BIG).await;
    let alice = bob
        .members(BIG)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.user.as_str() == "alice");
    assert_eq!(
        alice.and_then(|a| a.nickname).as_deref(),
        Some(format!("boss{}", HORIZON + 4).as_str()),
        "details travel with the snapshot"
    );

    // Another epoch (a copy from a recreated stream) → realignment.
    bob.relabel_member_epoch(BIG, "1").await.unwrap();
    bob.sync_members(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Full).await;
    assert_in_line(&bob, &store, BIG).await;

    // A damaged copy at the right version — members missing, and members the server never
    // had: a sketch of the differing buckets finds them, and only those come again.
    bob.damage_members(BIG, 40).await.unwrap();
    bob.add_phantom_members(BIG, 7).await.unwrap();
    assert_ne!(bob.member_digest(BIG).await.unwrap().count, BIG_SIZE as u64);
    bob.sync_members(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Sketch).await;
    assert_in_line(&bob, &store, BIG).await;

    // Damage too large for a sketch of the largest size to decode: the differing buckets'
    // members come again instead.
    bob.damage_members(BIG, 30_000).await.unwrap();
    bob.sync_members(BIG);
    synced_via(&mut events, BIG, MemberSyncKind::Buckets).await;
    assert_in_line(&bob, &store, BIG).await;

    // A burst of live changes with one notification lost: the rest apply as they come, the
    // gap costs one diff, and the copy ends equal.
    let next = b
        .stack
        .stack
        .bus
        .stream_state(stream::MEMBERSHIP)
        .await
        .unwrap()
        .last_seq
        .0
        + 1;
    bob.drop_member_notice(next + 2);
    let mut applied = 0;
    for n in 0..10 {
        b.add(&[format!("burst{n}")]).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut repaired = false;
    while tokio::time::Instant::now() < deadline && !(repaired && applied >= 2) {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Ok(ClientEvent::MembersChanged { .. })) => applied += 1,
            Ok(Ok(ClientEvent::MembersSynced {
                via: MemberSyncKind::Diff,
                ..
            })) => repaired = true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(repaired, "the lost notification was repaired by a diff");
    assert!(
        applied >= 2,
        "changes before the gap applied live: {applied}"
    );
    assert_in_line(&bob, &store, BIG).await;
    // In step again, every change applies live: no sync at all.
    for n in 0..5 {
        let version = b.add(&[format!("steady{n}")]).await;
        let got = tokio::time::timeout(WAIT, async {
            loop {
                match events.recv().await {
                    Ok(ClientEvent::MembersChanged { version: v, .. }) if v == version => {
                        return true;
                    }
                    Ok(ClientEvent::MembersSynced { via, .. })
                        if via != MemberSyncKind::Unchanged =>
                    {
                        return false;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
        .unwrap();
        assert!(got, "change {version} applied live, without a sync");
    }
    assert_in_line(&bob, &store, BIG).await;

    // Server-side search finds members the device does not need to hold.
    let found = bob.search_members_remote(BIG, "u0999", 20).await.unwrap();
    assert_eq!(found.len(), 20);
    assert!(found.iter().all(|m| m.user.as_str().starts_with("u0999")));
    let local = bob.search_members(BIG, "churn000", 50).await.unwrap();
    assert_eq!(local.len(), 10);
    bob.shutdown().await;

    // Reactions and typing in the 100,000-member group cost frames per flush and per viewer:
    // alice views the conversation, carol is online without viewing it, twenty members react
    // and type.
    let conv = anchorage_tests::conv_id(BIG);
    b.alice
        .ok(RequestBody::View(View { conv: conv.clone() }))
        .await
        .unwrap();
    let (mut carol, _) = WsClient::signed_in(addr, "carol", "d1").await.unwrap();
    let target = b
        .alice
        .ack(anchorage_tests::send_message(
            BIG,
            "post",
            serde_json::json!("react"),
        ))
        .await
        .unwrap()
        .seq;
    let mut members = Vec::new();
    for n in 0..20 {
        let (c, _) = WsClient::signed_in(addr, &format!("churn{n:04}"), "d1")
            .await
            .unwrap();
        members.push(c);
    }
    for c in members.iter_mut() {
        c.ok(React {
            conv: conv.clone(),
            seq: target,
            emoji: "👍".into(),
            remove: false,
        })
        .await
        .unwrap();
        c.ok(Typing {
            conv: conv.clone(),
            stop: false,
        })
        .await
        .unwrap();
    }
    let frames = |c: &mut WsClient| {
        let (mut reactions, mut typing, mut counted, mut presence) = (0, 0, 0i64, 0);
        c.take_pushes(|p| match p {
            Push::PresenceChanged(_) => {
                presence += 1;
                true
            }
            Push::Reactions(r) => {
                reactions += 1;
                counted += r.deltas.iter().map(|d| d.delta).sum::<i64>();
                true
            }
            Push::Typing(_) => {
                typing += 1;
                true
            }
            _ => false,
        });
        (reactions, typing, counted, presence)
    };
    let mut seen = Vec::new();
    for c in [&mut b.alice, &mut carol] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(f) = tokio::time::timeout_at(deadline, c.next_frame()).await {
            if let ServerFrame::Push(p) = f.unwrap() {
                c.keep_push(p);
            }
        }
        let (reactions, typing, counted, presence) = frames(c);
        eprintln!(
            "{reactions} reaction frames ({counted} reactions), {typing} typing frames, \
             {presence} presence frames"
        );
        assert_eq!(counted, 20, "every reaction is counted");
        assert!(reactions <= 8, "20 reactions in {reactions} frames");
        // Twenty members came online: no join flood to a group's members.
        assert_eq!(presence, 0, "presence goes to 1:1 peers only");
        seen.push(typing);
    }
    assert!(seen[0] >= 1, "alice views it: she sees who types");
    assert_eq!(seen[1], 0, "carol does not view it: no typing frame");
    // The group's presence is a count on request.
    let online = match b
        .alice
        .reply(PresenceQuery {
            users: Vec::new(),
            conv: Some(conv.clone()),
        })
        .await
        .unwrap()
    {
        anchorage_protocol::ReplyBody::Presence(p) => p.online.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(
        online >= 22,
        "alice, carol and the twenty are online: {online}"
    );
}
