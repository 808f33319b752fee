//! Large-group member-list sync against a real stack: a 100,000-member group kept in line
//! between the SDK's local store and the server through every layer — the unchanged check,
//! diffs, realignments (past the horizon, another epoch), bucket repair of a damaged copy,
//! budget-bounded batches over 500 groups, live notifications with one lost — and a removed
//! member who hears nothing more of the group.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchorage_bus::Bus;
use anchorage_schema::event::{GroupCreated, MembersAdded};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Actor, Envelope, Event, EventId, GroupId, SourceId, UserId};
use anchorage_sdk::{Client, ClientEvent, ClientOptions, MemberSyncKind};
use anchorage_store::Store;
use anchorage_tests::{
    TestNats, TestStack, WsClient, eventually, fresh_database, test_config, token,
};
use serde_json::json;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(60);
const BIG: &str = "big";
const BIG_SIZE: usize = 100_000;
/// Small, so a test can push a copy past it.
const HORIZON: u64 = 40;

fn member(n: usize) -> String {
    format!("u{n:06}")
}

async fn publish(bus: &Bus, group: &str, n: u64, event: impl Into<Event>) -> u64 {
    let g = GroupId::parse(group).unwrap();
    let env = Envelope::new(
        EventId::parse(format!("test:{group}:{n}")).unwrap(),
        anchorage_schema::now_ms(),
        Actor::System {
            source: SourceId::parse("test").unwrap(),
        },
        event,
    );
    bus.publish_event(&subjects::membership(&g), &env, None)
        .await
        .unwrap()
        .seq
        .0
}

/// A group owned by alice with bob and carol, plus `extra` numbered members.
async fn create_group(bus: &Bus, group: &str, others: &[&str], extra: usize) -> u64 {
    let mut last = publish(
        bus,
        group,
        0,
        GroupCreated {
            group: GroupId::parse(group).unwrap(),
            owner: UserId::parse("alice").unwrap(),
            title: group.to_owned(),
            members: others.iter().map(|u| UserId::parse(*u).unwrap()).collect(),
            direct: false,
        },
    )
    .await;
    for (i, chunk) in (0..extra).collect::<Vec<_>>().chunks(1000).enumerate() {
        last = publish(
            bus,
            group,
            i as u64 + 1,
            MembersAdded {
                group: GroupId::parse(group).unwrap(),
                members: chunk
                    .iter()
                    .map(|n| UserId::parse(member(*n)).unwrap())
                    .collect(),
            },
        )
        .await;
    }
    last
}

async fn projected(store: &Store, group: &str, version: u64) {
    eventually(WAIT, "the membership projection to catch up", || async {
        let g = store.group_row(group).await.ok()??;
        (g.version >= version).then_some(())
    })
    .await
    .unwrap();
}

async fn client(addr: std::net::SocketAddr, dir: &std::path::Path, user: &str) -> Client {
    let u = user.to_owned();
    Client::start(ClientOptions {
        url: format!("ws://{addr}/ws"),
        token: Arc::new(move || token(&u, "d1", 3600)),
        store_path: dir.join(format!("{user}.db")),
    })
    .await
    .unwrap()
}

/// Waits for a member-list sync of `group` by `via` to land.
async fn synced_via(
    events: &mut broadcast::Receiver<ClientEvent>,
    group: &str,
    via: MemberSyncKind,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::MembersSynced {
                    group: g, via: v, ..
                }) if g == group && v == via => {
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {via:?} sync of {group}"));
}

/// The client's copy equals the server's list: same digest, same members, same version.
async fn assert_in_line(c: &Client, store: &Store, group: &str) {
    let server = store.group_row(group).await.unwrap().unwrap();
    let ok = eventually(WAIT, "the copy to reach the server's version", || async {
        let l = c.member_list(group).await.ok()??;
        (l.version == server.version).then_some(l)
    })
    .await;
    let local = ok.unwrap_or_else(|e| panic!("{group}: {e}"));
    let digest = c.member_digest(group).await.unwrap();
    assert_eq!(
        (digest.sum, digest.count),
        (server.digest_sum, server.member_count),
        "{group}: the digest of the stored members equals the server's"
    );
    assert_eq!(
        local.digest, digest,
        "{group}: the maintained digest agrees"
    );
    let mine: Vec<String> = c
        .members(group)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.user.to_string())
        .collect();
    assert_eq!(
        mine,
        store.member_ids(group).await.unwrap(),
        "{group}: member by member"
    );
}

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
    projected(&stack.stack.store, BIG, last).await;
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
    async fn command(&mut self, frame: serde_json::Value) -> u64 {
        let answer = self.alice.request(frame).await.unwrap();
        assert_eq!(answer["type"], "ok", "{answer}");
        let seq = answer["seq"].as_u64().unwrap();
        projected(&self.stack.stack.store, BIG, seq).await;
        seq
    }

    async fn add(&mut self, members: &[String]) -> u64 {
        self.command(json!({"type": "add_members", "group": BIG, "members": members}))
            .await
    }

    async fn remove(&mut self, members: &[String]) -> u64 {
        self.command(json!({"type": "remove_members", "group": BIG, "members": members}))
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
        b.command(
            json!({"type": "set_nickname", "group": BIG, "member": "alice",
                         "nickname": format!("boss{n}")}),
        )
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

    // A damaged copy at the right version: only the differing buckets come again.
    bob.damage_members(BIG, 40).await.unwrap();
    assert_ne!(bob.member_digest(BIG).await.unwrap().count, BIG_SIZE as u64);
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
}

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
    let sync = carol
        .request(json!({"type": "members_sync", "group": "crew"}))
        .await
        .unwrap();
    assert_eq!(sync["type"], "members_page", "{sync}");

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
    let ping = carol.request(json!({"type": "ping"})).await.unwrap();
    assert_eq!(ping["type"], "pong");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = carol.request(json!({"type": "ping"})).await.unwrap();
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
