//! Member lists against a real stack: budget-bounded batches over 500 groups, a removed member
//! who hears nothing more of the group, and group commands authorized by role. (The
//! 100,000-member group has its own test binary, `large_group.rs`, so it runs alone.)

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

mod common;

use std::collections::BTreeSet;

use anchorage_schema::event::{MembersAdded, MembersRemoved, RemovalReason, SystemMessagePosted};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Actor, ConversationId, Envelope, EventId, GroupId, Seq, SourceId, UserId};
use anchorage_tests::{TcpProxy, TestEdge, TestNats, TestStack, WsClient, eventually};
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_groups_sync_in_budget_bounded_batches() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let groups: Vec<String> = (0..500).map(|n| format!("team{n:03}")).collect();
    let mut last = 0;
    for g in &groups {
        last = create_group(bus, g, &["bob"], 0).await.max(last);
    }
    for g in &groups {
        projected(store, g, 0).await;
    }
    projected(store, groups.last().unwrap(), last).await;
    let dir = tempfile::tempdir().unwrap();
    let bob = client(stack.edge_addr(), dir.path(), "bob").await;
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();

    // The cheap call: every group's version, no member lists; all stale on a new device.
    let versions = eventually(WAIT, "group versions", || async {
        bob.group_versions().await.ok()
    })
    .await
    .unwrap();
    assert_eq!(versions.len(), 500);
    assert!(
        versions
            .iter()
            .all(|v| v.local_version.is_none() && v.members == 2)
    );

    // No copies yet: every group is marked for realignment, none silently dropped.
    let first = bob.sync_members_batch(&names, 8 * 1024).await.unwrap();
    assert_eq!(first.realign.len(), 500);
    assert!(
        first.rounds > 1,
        "an 8 KiB budget needs several answers: {first:?}"
    );
    for g in &groups {
        eventually(WAIT, "the realigned copies", || async {
            bob.member_list(g).await.ok()?.map(|_| ())
        })
        .await
        .unwrap();
    }
    bob.shutdown().await;

    // 50 groups change while bob is away; one batch pass brings all 500 in line.
    let mut seq = 0;
    for (n, g) in groups.iter().enumerate().filter(|(n, _)| n % 10 == 0) {
        seq = publish(
            bus,
            g,
            1000 + n as u64,
            MembersAdded {
                group: GroupId::parse(g.as_str()).unwrap(),
                members: vec![UserId::parse(format!("new{n}")).unwrap()],
            },
        )
        .await;
    }
    projected(store, groups.last().unwrap(), 0).await;
    eventually(WAIT, "the projection to catch up", || async {
        (store.checkpoint("membership").await.ok()??.last_seq >= seq).then_some(())
    })
    .await
    .unwrap();
    let bob = client(stack.edge_addr(), dir.path(), "bob").await;
    let report = eventually(WAIT, "a batch answer", || async {
        bob.sync_members_batch(&names, 8 * 1024).await.ok()
    })
    .await
    .unwrap();
    assert_eq!((report.diffs, report.unchanged), (50, 450), "{report:?}");
    assert!(report.realign.is_empty());
    assert!(report.rounds > 1, "{report:?}");
    for g in &groups {
        assert_in_line(&bob, store, g).await;
    }
    bob.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_hears_nothing_of_the_group_after_the_removal() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let last = create_group(&stack.stack.bus, "crew", &["bob", "carol"], 50).await;
    projected(&stack.stack.store, "crew", last).await;
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d1").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(addr, "carol", "d1").await.unwrap();
    // Bob stays a member on the same edge: what reaches him is handed to every local
    // recipient at the same moment, so once he has it, anything for carol is queued too.
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d1").await.unwrap();
    for c in [&mut carol, &mut bob] {
        let sync = c
            .request(json!({"type": "members_sync", "group": "crew"}))
            .await
            .unwrap();
        assert_eq!(sync["type"], "members_page", "{sync}");
    }

    let removed = alice
        .request(json!({"type": "remove_members", "group": "crew", "members": ["carol"]}))
        .await
        .unwrap();
    assert_eq!(removed["type"], "ok", "{removed}");
    let removal = removed["seq"].as_u64().unwrap();
    let left = carol
        .push(|f| f["type"] == "membership" && f["joined"] == false)
        .await
        .unwrap();
    assert_eq!(left["version"], removal);

    // After the removal: messages, member changes and reads of the group stay away.
    let sent = alice
        .request(
            json!({"type": "send", "conv": "crew", "client_msg_id": "after",
                        "body": "not for carol", "client_ts": 1}),
        )
        .await
        .unwrap();
    assert_eq!(sent["type"], "ack", "{sent}");
    let added = alice
        .request(json!({"type": "add_members", "group": "crew", "members": ["dave"]}))
        .await
        .unwrap();
    assert_eq!(added["type"], "ok", "{added}");
    bob.push(|f| f["type"] == "message" && f["message"]["client_msg_id"] == "after")
        .await
        .unwrap();
    bob.push(|f| f["type"] == "members_changed" && f["change"]["upserts"][0]["user"] == "dave")
        .await
        .unwrap();
    // Frames reach a socket in the order they were queued: the pong comes after any leak.
    let ping = carol.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(ping["type"], "pong");
    let leaked: Vec<&serde_json::Value> = carol
        .pending_pushes()
        .iter()
        .filter(|f| f["type"] == "message" || f["type"] == "members_changed")
        .collect();
    assert!(leaked.is_empty(), "carol heard: {leaked:?}");
    for frame in [
        json!({"type": "sync", "conv": "crew", "after": 0}),
        json!({"type": "history", "conv": "crew"}),
        json!({"type": "members_sync", "group": "crew"}),
        json!({"type": "members_search", "group": "crew", "query": "u"}),
    ] {
        let answer = carol.request(frame.clone()).await.unwrap();
        assert_eq!(answer["code"], "forbidden", "{frame} → {answer}");
    }
}

/// Publishes `user`'s removal from `group`; returns its MEMBERSHIP sequence.
async fn kick(bus: &anchorage_bus::Bus, group: &str, user: &str) -> u64 {
    publish(
        bus,
        group,
        1,
        MembersRemoved {
            group: GroupId::parse(group).unwrap(),
            members: vec![UserId::parse(user).unwrap()],
            reason: RemovalReason::Kicked,
        },
    )
    .await
}

/// Fails if `c` was pushed a message: a ping's answer comes after anything queued before it.
async fn assert_no_message(c: &mut WsClient) {
    let pong = c.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(pong["type"], "pong");
    let messages: Vec<&serde_json::Value> = c
        .pending_pushes()
        .iter()
        .filter(|f| f["type"] == "message")
        .collect();
    assert!(messages.is_empty(), "{messages:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_decided_after_a_removal_never_reaches_the_removed_member() {
    // Messages and membership travel on different streams, so a message can reach an edge
    // before a removal it was decided after. It carries the membership position it was
    // decided on, and waits there until the edge's view has caught up.
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (bus, addr) = (&stack.stack.bus, stack.edge_addr());
    let last = create_group(bus, "deck", &["bob", "carol"], 0).await;
    projected(&stack.stack.store, "deck", last).await;
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d1").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(addr, "carol", "d1").await.unwrap();

    // Decided on the next membership position, which is carol's removal.
    let removal_at = bus
        .stream_state(stream::MEMBERSHIP)
        .await
        .unwrap()
        .last_seq
        .0
        + 1;
    let conv = ConversationId::parse("deck").unwrap();
    let message = Envelope::new(
        EventId::parse("after-removal").unwrap(),
        anchorage_schema::now_ms(),
        Actor::System {
            source: SourceId::parse("test").unwrap(),
        },
        SystemMessagePosted {
            conv: conv.clone(),
            body: json!("not for carol"),
        },
    );
    bus.publish_event_pipelined(&subjects::message(&conv), &message, Some(Seq(removal_at)))
        .await
        .unwrap()
        .stored()
        .await
        .unwrap();
    // Its live copy reaches the edge now; it is held there until the removal is known.
    assert_eq!(kick(bus, "deck", "carol").await, removal_at);
    let got = bob
        .push(|f| f["type"] == "message" && f["message"]["body"] == "not for carol")
        .await
        .unwrap();
    assert_eq!(got["message"]["conv"], "deck");
    carol
        .push(|f| f["type"] == "membership" && f["joined"] == false)
        .await
        .unwrap();
    assert_no_message(&mut carol).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_lost_a_removal_finds_it_in_the_stream() {
    // The edge's NATS connection drops while carol is removed, so the live copy of the
    // removal never reaches it. Back online, it finds the event in the stream by itself.
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let bus = &stack.stack.bus;
    let target = nats.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = TcpProxy::start(target).await.unwrap();
    let mut config = stack.config.clone();
    config.nats.url = format!("nats://{}", proxy.addr);
    let edge = TestEdge::start(&config).await.unwrap();
    let last = create_group(bus, "reef", &["bob", "carol"], 0).await;
    projected(&stack.stack.store, "reef", last).await;
    let (mut bob, _) = WsClient::signed_in(edge.addr, "bob", "d1").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(edge.addr, "carol", "d1").await.unwrap();

    proxy.offline(true);
    proxy.cut();
    let removal = kick(bus, "reef", "carol").await;
    proxy.offline(false);
    let mut left = None;
    for _ in 0..3 {
        if let Ok(f) = carol
            .push(|f| f["type"] == "membership" && f["joined"] == false)
            .await
        {
            left = Some(f);
            break;
        }
    }
    let left = left.expect("carol told she left, once the edge found the removal");
    assert_eq!(left["version"], removal);

    // From then on the edge's view is the stream's: the group's messages reach bob only.
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d1")
        .await
        .unwrap();
    let sent = alice
        .request(
            json!({"type": "send", "conv": "reef", "client_msg_id": "m1",
                        "body": "bob only", "client_ts": 1}),
        )
        .await
        .unwrap();
    assert_eq!(sent["type"], "ack", "{sent}");
    bob.push(|f| f["type"] == "message" && f["message"]["client_msg_id"] == "m1")
        .await
        .unwrap();
    assert_no_message(&mut carol).await;
    edge.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commands_are_authorized_by_role() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let last = create_group(&stack.stack.bus, "club", &["bob", "carol", "dave"], 0).await;
    projected(&stack.stack.store, "club", last).await;
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d1").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d1").await.unwrap();
    let (mut carol, _) = WsClient::signed_in(addr, "carol", "d1").await.unwrap();
    let expect = async |c: &mut WsClient, frame: serde_json::Value, outcome: &str| {
        let answer = c.request(frame.clone()).await.unwrap();
        let got = answer["code"]
            .as_str()
            .unwrap_or(answer["type"].as_str().unwrap());
        assert_eq!(got, outcome, "{frame} → {answer}");
        if let Some(seq) = answer["seq"].as_u64() {
            projected(&stack.stack.store, "club", seq).await;
        }
    };
    let role =
        |m: &str, r: &str| json!({"type": "set_role", "group": "club", "member": m, "role": r});
    let mute = |m: &str| json!({"type": "mute_member", "group": "club", "member": m, "until": 4_000_000_000_000i64});
    expect(&mut bob, role("carol", "admin"), "forbidden").await;
    expect(&mut alice, role("bob", "owner"), "invalid_request").await;
    expect(&mut alice, role("nobody", "admin"), "not_found").await;
    expect(&mut alice, role("bob", "admin"), "ok").await;
    expect(&mut bob, mute("alice"), "forbidden").await;
    expect(&mut bob, mute("carol"), "ok").await;
    expect(&mut carol, mute("dave"), "forbidden").await;
    let muted = carol
        .request(
            json!({"type": "send", "conv": "club", "client_msg_id": "m1", "body": "hi",
                        "client_ts": 1}),
        )
        .await
        .unwrap();
    assert_eq!(
        muted["code"], "forbidden",
        "a muted member cannot send: {muted}"
    );
    expect(
        &mut bob,
        json!({"type": "remove_members", "group": "club", "members": ["alice"]}),
        "forbidden",
    )
    .await;
    expect(
        &mut carol,
        json!({"type": "set_nickname", "group": "club", "member": "carol", "nickname": "C"}),
        "ok",
    )
    .await;
    expect(
        &mut carol,
        json!({"type": "set_nickname", "group": "club", "member": "dave", "nickname": "D"}),
        "forbidden",
    )
    .await;
    expect(
        &mut bob,
        json!({"type": "update_group", "group": "club", "title": "Club"}),
        "ok",
    )
    .await;
    expect(
        &mut bob,
        json!({"type": "dismiss_group", "group": "club"}),
        "forbidden",
    )
    .await;
    expect(
        &mut alice,
        json!({"type": "leave", "group": "club"}),
        "forbidden",
    )
    .await;
    let list = alice
        .request(json!({"type": "members_sync", "group": "club"}))
        .await
        .unwrap();
    let details: BTreeSet<String> = list["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.to_string())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("\"bob\"") && d.contains("admin")),
        "{list}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("\"carol\"") && d.contains("muted_until") && d.contains("\"C\"")),
        "{list}"
    );
    expect(
        &mut alice,
        json!({"type": "dismiss_group", "group": "club"}),
        "ok",
    )
    .await;
    expect(
        &mut alice,
        json!({"type": "members_sync", "group": "club"}),
        "forbidden",
    )
    .await;
}
