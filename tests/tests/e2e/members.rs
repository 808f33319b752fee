//! Member lists against a real stack: budget-bounded batches over 500 groups, a removed member
//! who hears nothing more of the group, and group commands authorized by role. (The
//! 100,000-member group is in `large_group.rs`.)

use anchorage_digest::{BucketedDigest, SetDigest, Sketch, bucket_of, member_hash};
use anchorage_protocol::request::{
    DismissGroup, History, Leave, MembersFetch, MembersSearch, MembersSketch, MembersSync,
    MuteMember, RemoveMembers, SetNickname, SetRole, UpdateGroup,
};
use anchorage_protocol::{
    ErrorCode, LiveMessage, MembersChanged, MembershipChanged, Push, Reply, ReplyBody, RequestBody,
    ServerFrame,
};
use anchorage_schema::event::{
    MembersAdded, MembersRemoved, RemovalReason, Role, SystemMessagePosted,
};
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Actor, ConversationId, Envelope, EventId, GroupId, Seq, SourceId, UserId};
use anchorage_tests::{
    TcpProxy, TestEdge, TestNats, TestStack, WsClient, conv_id, eventually, group_id, send_message,
    sync, user_id, user_ids,
};
use serde_json::json;

use crate::common::*;

/// `members_sketch` of `buckets` of group `big` at `anchor` of `epoch`.
fn big_sketch(epoch: &str, anchor: u64, buckets: Vec<u8>, cells: u32) -> MembersSketch {
    MembersSketch {
        group: group_id("big"),
        epoch: epoch.to_owned(),
        anchor,
        buckets,
        cells,
    }
}

/// `members_fetch` of the members of group `big` with `hashes` at `anchor` of `epoch`.
fn big_fetch(epoch: &str, anchor: u64, hashes: Vec<String>) -> MembersFetch {
    MembersFetch {
        group: group_id("big"),
        epoch: epoch.to_owned(),
        anchor,
        cursor: None,
        buckets: None,
        hashes: Some(hashes),
    }
}

/// `members_sync` of `group` without a copy.
fn members_sync(group: &str) -> MembersSync {
    MembersSync {
        group: group_id(group),
        epoch: None,
        version: 0,
        digest: None,
        compact: false,
    }
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
    // Bob stays a member on the same edge: what reaches him is handed to every local
    // recipient at the same moment, so once he has it, anything for carol is queued too.
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d1").await.unwrap();
    for c in [&mut carol, &mut bob] {
        let sync = c.reply(members_sync("crew")).await.unwrap();
        assert!(matches!(sync, ReplyBody::MembersPage(_)), "{sync:?}");
    }

    let removed = alice
        .ok(RemoveMembers {
            group: group_id("crew"),
            members: user_ids(&["carol"]),
        })
        .await
        .unwrap();
    let removal = removed.seq.unwrap();
    let left = carol
        .pushed(|m: &MembershipChanged| !m.joined)
        .await
        .unwrap();
    assert_eq!(left.version, removal);

    // After the removal: messages, member changes and reads of the group stay away.
    alice
        .ack(send_message("crew", "after", json!("not for carol")))
        .await
        .unwrap();
    alice
        .ok(anchorage_protocol::request::AddMembers {
            group: group_id("crew"),
            members: user_ids(&["dave"]),
        })
        .await
        .unwrap();
    bob.pushed(|m: &LiveMessage| m.message.client_msg_id == "after")
        .await
        .unwrap();
    bob.pushed(|c: &MembersChanged| {
        c.change
            .upserts
            .first()
            .is_some_and(|m| m.user.as_str() == "dave")
    })
    .await
    .unwrap();
    // Frames reach a socket in the order they were queued: the pong comes after any leak.
    carol.ping().await.unwrap();
    let leaked: Vec<&Push> = carol
        .pending_pushes()
        .iter()
        .filter(|p| matches!(p, Push::Message(_) | Push::MembersChanged(_)))
        .collect();
    assert!(leaked.is_empty(), "carol heard: {leaked:?}");
    for request in [
        RequestBody::from(sync("crew", 0)),
        History {
            conv: conv_id("crew"),
            before: 0,
            limit: None,
        }
        .into(),
        members_sync("crew").into(),
        MembersSearch {
            group: group_id("crew"),
            query: "u".into(),
            limit: None,
        }
        .into(),
    ] {
        let answer = carol.refused(request.clone()).await.unwrap();
        assert_eq!(
            answer.code,
            ErrorCode::Forbidden,
            "{request:?} → {answer:?}"
        );
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
    c.ping().await.unwrap();
    let messages: Vec<&Push> = c
        .pending_pushes()
        .iter()
        .filter(|p| matches!(p, Push::Message(_)))
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
        .pushed(|m: &LiveMessage| m.message.body == "not for carol")
        .await
        .unwrap();
    assert_eq!(got.message.conv.as_str(), "deck");
    carol
        .pushed(|m: &MembershipChanged| !m.joined)
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
        if let Ok(f) = carol.pushed(|m: &MembershipChanged| !m.joined).await {
            left = Some(f);
            break;
        }
    }
    let left = left.expect("carol told she left, once the edge found the removal");
    assert_eq!(left.version, removal);

    // From then on the edge's view is the stream's: the group's messages reach bob only.
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d1")
        .await
        .unwrap();
    alice
        .ack(send_message("reef", "m1", json!("bob only")))
        .await
        .unwrap();
    bob.pushed(|m: &LiveMessage| m.message.client_msg_id == "m1")
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
    // The outcome of each command: `None` for `ok`, or the code it is refused with.
    let expect = async |c: &mut WsClient, request: RequestBody, outcome: Option<ErrorCode>| {
        let answer = c.request(request.clone()).await.unwrap();
        match (&answer, outcome) {
            (
                ServerFrame::Reply(Reply {
                    body: ReplyBody::Ok(done),
                    ..
                }),
                None,
            ) => {
                if let Some(seq) = done.seq {
                    projected(&stack.stack.store, "club", seq).await;
                }
            }
            (ServerFrame::Error(e), Some(code)) if e.code == code => {}
            _ => panic!("{request:?} → {answer:?}, expected {outcome:?}"),
        }
    };
    let role = |m: &str, role: Role| -> RequestBody {
        SetRole {
            group: group_id("club"),
            member: user_id(m),
            role,
        }
        .into()
    };
    let mute = |m: &str| -> RequestBody {
        MuteMember {
            group: group_id("club"),
            member: user_id(m),
            until: Some(4_000_000_000_000),
        }
        .into()
    };
    let forbidden = Some(ErrorCode::Forbidden);
    expect(&mut bob, role("carol", Role::Admin), forbidden).await;
    expect(
        &mut alice,
        role("bob", Role::Owner),
        Some(ErrorCode::InvalidRequest),
    )
    .await;
    expect(
        &mut alice,
        role("nobody", Role::Admin),
        Some(ErrorCode::NotFound),
    )
    .await;
    expect(&mut alice, role("bob", Role::Admin), None).await;
    expect(&mut bob, mute("alice"), forbidden).await;
    expect(&mut bob, mute("carol"), None).await;
    expect(&mut carol, mute("dave"), forbidden).await;
    let muted = carol
        .refused(send_message("club", "m1", json!("hi")))
        .await
        .unwrap();
    assert_eq!(
        muted.code,
        ErrorCode::Forbidden,
        "a muted member cannot send: {muted:?}"
    );
    expect(
        &mut bob,
        RemoveMembers {
            group: group_id("club"),
            members: user_ids(&["alice"]),
        }
        .into(),
        forbidden,
    )
    .await;
    let nickname = |m: &str, nickname: &str| -> RequestBody {
        SetNickname {
            group: group_id("club"),
            member: user_id(m),
            nickname: Some(nickname.to_owned()),
        }
        .into()
    };
    expect(&mut carol, nickname("carol", "C"), None).await;
    expect(&mut carol, nickname("dave", "D"), forbidden).await;
    expect(
        &mut bob,
        UpdateGroup {
            group: group_id("club"),
            title: Some("Club".into()),
            avatar: None,
        }
        .into(),
        None,
    )
    .await;
    let dismiss = || -> RequestBody {
        DismissGroup {
            group: group_id("club"),
        }
        .into()
    };
    expect(&mut bob, dismiss(), forbidden).await;
    expect(
        &mut alice,
        Leave {
            group: group_id("club"),
        }
        .into(),
        forbidden,
    )
    .await;
    let list = alice.reply(members_sync("club")).await.unwrap();
    let ReplyBody::MembersPage(page) = &list else {
        panic!("not a members page: {list:?}")
    };
    assert!(
        page.details
            .iter()
            .any(|d| d.user.as_str() == "bob" && d.role == Role::Admin),
        "{list:?}"
    );
    assert!(
        page.details.iter().any(|d| d.user.as_str() == "carol"
            && d.muted_until.is_some()
            && d.nickname.as_deref() == Some("C")),
        "{list:?}"
    );
    expect(&mut alice, dismiss(), None).await;
    expect(&mut alice, members_sync("club").into(), forbidden).await;
}

/// Member search means one thing everywhere: the server's projection (SQLite, or PostgreSQL
/// when the suite runs on it) and the client's local store give the same members in the same
/// order — ASCII case ignored, other characters exact, `_` and `%` literal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_search_answers_alike_on_the_server_and_the_client() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let bus = &stack.stack.bus;
    let users = ["bob", "BOBBY", "b_x", "bx", "carol", "dora"];
    create_group(bus, "finders", &users, 0).await;
    let nicknames = [("bx", "Émile"), ("carol", "bobcat"), ("dora", "50%off")];
    let mut last = 0;
    for (n, (user, nickname)) in nicknames.iter().enumerate() {
        let change = anchorage_schema::event::MemberProfileChanged {
            group: group_id("finders"),
            member: user_id(user),
            nickname: Some((*nickname).to_owned()),
        };
        last = publish(bus, "finders", 10 + n as u64, change).await;
    }
    projected(&stack.stack.store, "finders", last).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = client(stack.edge_addr(), dir.path(), "alice").await;
    alice.sync_members("finders");
    assert_in_line(&alice, &stack.stack.store, "finders").await;

    let cases: [(&str, &[&str]); 7] = [
        ("bo", &["BOBBY", "bob", "carol"]),
        ("BO", &["BOBBY", "bob", "carol"]),
        ("b_", &["b_x"]),
        ("É", &["bx"]),
        ("é", &[]),
        ("50%", &["dora"]),
        ("%", &[]),
    ];
    for (query, expected) in cases {
        let remote = alice
            .search_members_remote("finders", query, 50)
            .await
            .unwrap();
        let local = alice.search_members("finders", query, 50).await.unwrap();
        let ids = |found: &[anchorage_sdk::MemberInfo]| -> Vec<String> {
            found.iter().map(|m| m.user.to_string()).collect()
        };
        assert_eq!(ids(&remote), expected, "server, {query:?}");
        assert_eq!(ids(&local), expected, "client, {query:?}");
    }
    alice.shutdown().await;
}

/// Creating a group is idempotent for its creator: asked again (an answer lost on the way), it
/// is the same `ok` with the same seq, never a refusal of what was done. Anyone else asking for
/// the same id gets `conflict`, and the group stays the creator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_group_again_is_the_same_answer_for_its_creator_only() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    let (mut mallory, _) = WsClient::signed_in(stack.edge_addr(), "mallory", "d")
        .await
        .unwrap();
    let first = alice
        .ok(anchorage_tests::create_group("crew", "Crew", &["bob"]))
        .await
        .unwrap();
    let again = alice
        .ok(anchorage_tests::create_group("crew", "Crew", &["bob"]))
        .await
        .unwrap();
    assert_eq!(again, first, "the same answer for the same creation");
    let taken = mallory
        .refused(anchorage_tests::create_group("crew", "Mine", &["mallory"]))
        .await
        .unwrap();
    assert_eq!(taken.code, ErrorCode::Conflict, "{taken:?}");
    // Another group of alice's is another creation.
    let other = alice
        .ok(anchorage_tests::create_group("crew2", "Crew 2", &[]))
        .await
        .unwrap();
    assert_ne!(other.seq, first.seq);
    projected(&stack.stack.store, "crew", first.seq.unwrap()).await;
    let row = stack.stack.store.group_row("crew").await.unwrap().unwrap();
    assert_eq!((row.owner.as_str(), row.title.as_str()), ("alice", "Crew"));
}

/// The second level of a repair, as a client without the SDK sees it: bucket digests, a
/// sketch of the differing buckets that decodes to exactly the members missing and extra, the
/// missing ones fetched by hash — and a precise refusal for every malformed or foreign ask.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sketch_finds_the_members_that_differ_and_refuses_what_it_cannot_answer() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let bus = &stack.stack.bus;
    let last = create_group(bus, "big", &["bob"], 3000).await;
    projected(&stack.stack.store, "big", last).await;
    create_group(bus, "other", &["carol"], 0).await;
    let (mut bob, _) = WsClient::signed_in(addr, "bob", "d1").await.unwrap();
    let (mut mallory, _) = WsClient::signed_in(addr, "mallory", "d1").await.unwrap();

    // A full copy, then damage: 25 members lost, 3 that were never members.
    let ReplyBody::MembersPage(page) = bob.reply(members_sync("big")).await.unwrap() else {
        panic!("expected a realignment");
    };
    assert!(page.cursor.is_none(), "one page");
    let (epoch, anchor) = (page.epoch.clone(), page.anchor);
    let server: Vec<String> = page
        .members
        .iter()
        .map(|u| u.to_string())
        .chain(page.details.iter().map(|d| d.user.to_string()))
        .collect();
    let lost: Vec<String> = server.iter().step_by(120).take(25).cloned().collect();
    let phantoms = ["ghost1", "ghost2", "ghost3"];
    let copy: Vec<String> = server
        .iter()
        .filter(|u| !lost.contains(u))
        .cloned()
        .chain(phantoms.iter().map(|p| p.to_string()))
        .collect();
    let sync = MembersSync {
        group: group_id("big"),
        epoch: Some(epoch.clone()),
        version: anchor,
        digest: Some(SetDigest::of(copy.iter().map(String::as_str)).to_wire()),
        compact: false,
    };
    let ReplyBody::MembersBuckets(b) = bob.reply(sync).await.unwrap() else {
        panic!("expected bucket digests");
    };
    let theirs = BucketedDigest::from_wire(&b.digests).unwrap();
    assert_eq!(
        theirs,
        BucketedDigest::of(server.iter().map(String::as_str))
    );
    let ours = BucketedDigest::of(copy.iter().map(String::as_str));
    let differing = ours.differing(theirs.buckets());
    let mut expected: Vec<u8> = lost
        .iter()
        .map(String::as_str)
        .chain(phantoms)
        .map(bucket_of)
        .collect();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(differing, expected);

    let sketch = |buckets: Vec<u8>, cells: u32| big_sketch(&epoch, anchor, buckets, cells);
    let cells = Sketch::cells_for(28);
    let ReplyBody::MembersSketch(answer) = bob
        .reply(sketch(differing.clone(), cells as u32))
        .await
        .unwrap()
    else {
        panic!("expected a sketch");
    };
    let mut mine = Sketch::new(cells);
    for u in copy.iter().filter(|u| differing.contains(&bucket_of(u))) {
        mine.insert(member_hash(u));
    }
    let diff = Sketch::from_wire(&answer.sketch, cells)
        .and_then(|t| t.subtract(&mine))
        .and_then(Sketch::decode)
        .expect("decodes");
    let hashes = |ids: &mut dyn Iterator<Item = &str>| {
        let mut h: Vec<u64> = ids.map(member_hash).collect();
        h.sort_unstable();
        h
    };
    assert_eq!(
        diff.only_there,
        hashes(&mut lost.iter().map(String::as_str))
    );
    assert_eq!(diff.only_here, hashes(&mut phantoms.into_iter()));

    let fetch = |hashes: Vec<String>| big_fetch(&epoch, anchor, hashes);
    let hex = |h: &u64| format!("{h:016x}");
    // A hash nobody has is simply not found.
    let mut asked: Vec<String> = diff.only_there.iter().map(hex).collect();
    asked.push(hex(&member_hash("nobody")));
    let ReplyBody::MembersPage(found) = bob.reply(fetch(asked)).await.unwrap() else {
        panic!("expected the missing members");
    };
    let mut got: Vec<String> = found
        .members
        .iter()
        .map(|u| u.to_string())
        .chain(found.details.iter().map(|d| d.user.to_string()))
        .collect();
    got.sort();
    let mut want = lost.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(found.cursor.is_none());

    // Refusals, each precise; the connection carries on after every one.
    let invalid = Some(ErrorCode::InvalidRequest);
    let refused: Vec<(RequestBody, Option<ErrorCode>)> = vec![
        (sketch(differing.clone(), 0).into(), invalid),
        (sketch(differing.clone(), 30).into(), invalid),
        (sketch(differing.clone(), 6148).into(), invalid),
        (sketch(Vec::new(), 24).into(), invalid),
        (
            MembersSketch {
                anchor: anchor + 1,
                ..sketch(differing.clone(), 24)
            }
            .into(),
            invalid,
        ),
        (
            MembersSketch {
                epoch: "1".into(),
                ..sketch(differing.clone(), 24)
            }
            .into(),
            Some(ErrorCode::Conflict),
        ),
        (fetch(Vec::new()).into(), invalid),
        (fetch(vec!["xyz".into()]).into(), invalid),
        (fetch(vec!["+000000000000001".into()]).into(), invalid),
        (fetch(vec!["00".repeat(8); 1001]).into(), invalid),
        (
            MembersFetch {
                cursor: Some("u1".into()),
                ..fetch(vec![hex(&1)])
            }
            .into(),
            invalid,
        ),
        (
            MembersFetch {
                buckets: Some(vec![1]),
                ..fetch(vec![hex(&1)])
            }
            .into(),
            invalid,
        ),
    ];
    for (request, code) in refused {
        let answer = bob.request(request.clone()).await.unwrap();
        match answer {
            ServerFrame::Error(e) if Some(e.code) == code => {}
            other => panic!("{request:?} → {other:?}, expected {code:?}"),
        }
    }
    // Someone else's group: neither its sketch nor its members by hash.
    for request in [
        RequestBody::from(sketch(differing.clone(), 24)),
        fetch(vec![hex(&member_hash("bob"))]).into(),
    ] {
        match mallory.request(request).await.unwrap() {
            ServerFrame::Error(e) if e.code == ErrorCode::Forbidden => {}
            other => panic!("a stranger got {other:?}"),
        }
    }
    assert!(matches!(
        bob.reply(sketch(vec![0, 0, 1], 24)).await.unwrap(),
        ReplyBody::MembersSketch(_)
    ));
}

// A sketch or a fetch by hash reads at most two snapshot pages of members: asking for the
// buckets of a whole large group is refused with a precise error (and bucket pages serve it),
// after reading no more than that; a few buckets are answered.
#[tokio::test]
async fn a_sketch_or_fetch_by_hash_over_too_many_members_is_refused_after_a_bounded_read() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let url = anchorage_tests::fresh_database(db_dir.path())
        .await
        .unwrap();
    let mut config = anchorage_tests::test_config(&nats.url(), &url);
    config.members.page_members = 1000;
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let bus = &stack.stack.bus;
    let last = create_group(bus, "big", &["bob"], 2600).await;
    projected(&stack.stack.store, "big", last).await;
    let (mut bob, _) = WsClient::signed_in(stack.edge_addr(), "bob", "d1")
        .await
        .unwrap();
    let ReplyBody::MembersPage(page) = bob.reply(members_sync("big")).await.unwrap() else {
        panic!("expected a realignment");
    };
    let (epoch, anchor) = (page.epoch.clone(), page.anchor);
    let sketch = |buckets: Vec<u8>| big_sketch(&epoch, anchor, buckets, 24);
    let all: Vec<u8> = (0..=255).collect();
    let refused = bob.request(sketch(all.clone())).await.unwrap();
    let ServerFrame::Error(e) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(
        e.message.contains("more than 2000 members"),
        "{}",
        e.message
    );
    let hashes: Vec<String> = all
        .iter()
        .map(|b| format!("{b:02x}00000000000000"))
        .collect();
    let fetch = big_fetch(&epoch, anchor, hashes);
    let ServerFrame::Error(e) = bob.request(fetch).await.unwrap() else {
        panic!("expected a refusal");
    };
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    // A few buckets are answered, on the same connection.
    let ReplyBody::MembersSketch(answer) = bob.reply(sketch(vec![1, 2, 3])).await.unwrap() else {
        panic!("expected a sketch");
    };
    assert_eq!(answer.cells, 24);
}

/// An edge says in `welcome` that it answers diffs in their positional form; a `members_sync`
/// with `compact` then gets a diff as an array holding exactly the changes of the object a
/// sync without it gets; every other answer (realignment, unchanged, errors) keeps its object
/// form, and a batch refuses `compact` precisely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diff_comes_in_its_positional_form_only_when_asked() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let bus = &stack.stack.bus;
    // Large enough that three changes are a diff, not a realignment.
    let created = create_group(bus, "crew", &["bob", "carol"], 20).await;
    projected(&stack.stack.store, "crew", created).await;
    let (mut alice, welcome) = WsClient::signed_in(stack.edge_addr(), "alice", "d1")
        .await
        .unwrap();
    assert!(welcome.compact, "the edge says it can");

    let compact_sync = |copy: &MembersSync| MembersSync {
        compact: true,
        ..copy.clone()
    };
    let no_copy = compact_sync(&members_sync("crew"));
    let ReplyBody::MembersPage(page) = alice.reply(no_copy).await.unwrap() else {
        panic!("a copy-less sync is a realignment, as an object");
    };
    let mut members: Vec<String> = page.members.iter().map(ToString::to_string).collect();
    members.extend(page.details.iter().map(|m| m.user.to_string()));
    let copy = MembersSync {
        group: group_id("crew"),
        epoch: Some(page.epoch.clone()),
        version: page.anchor,
        digest: Some(SetDigest::of(members.iter().map(String::as_str)).to_wire()),
        compact: false,
    };
    assert_eq!(
        alice.reply(compact_sync(&copy)).await.unwrap(),
        ReplyBody::MembersUnchanged
    );

    publish(
        bus,
        "crew",
        101,
        MembersAdded {
            group: group_id("crew"),
            members: user_ids(&["dave"]),
        },
    )
    .await;
    publish(
        bus,
        "crew",
        102,
        MembersRemoved {
            group: group_id("crew"),
            members: user_ids(&["bob"]),
            reason: RemovalReason::Removed,
        },
    )
    .await;
    let changed = publish(
        bus,
        "crew",
        103,
        anchorage_schema::event::MemberRoleChanged {
            group: group_id("crew"),
            member: user_id("carol"),
            role: Role::Admin,
        },
    )
    .await;
    projected(&stack.stack.store, "crew", changed).await;

    let ServerFrame::Delta(delta) = alice.request(compact_sync(&copy)).await.unwrap() else {
        panic!("a diff in its positional form");
    };
    let ReplyBody::MembersDiff(object) = alice.reply(copy.clone()).await.unwrap() else {
        panic!("a diff as an object to a sync that did not ask");
    };
    assert_eq!(delta.version, changed);
    assert!(!delta.more);
    assert_eq!(
        delta.into_diff(group_id("crew"), page.epoch.clone()),
        object
    );
    assert!(object.upserts.iter().any(|m| m.user.as_str() == "dave"));
    assert!(
        object
            .upserts
            .iter()
            .any(|m| m.user.as_str() == "carol" && m.role == Role::Admin)
    );
    assert_eq!(object.removed, user_ids(&["bob"]));

    // Another epoch is a realignment, a stranger's group a refusal: objects both.
    let other_epoch = MembersSync {
        epoch: Some("1".into()),
        ..compact_sync(&copy)
    };
    assert!(matches!(
        alice.reply(other_epoch).await.unwrap(),
        ReplyBody::MembersPage(_)
    ));
    let (mut eve, _) = WsClient::signed_in(stack.edge_addr(), "eve", "d")
        .await
        .unwrap();
    assert!(matches!(
        eve.request(compact_sync(&copy)).await.unwrap(),
        ServerFrame::Error(_)
    ));

    // A batch answers in one object: `compact` in it is refused, naming the group.
    let batch = |sync: MembersSync| anchorage_protocol::request::MembersSyncBatch {
        groups: vec![sync],
        budget_bytes: None,
        cursor: None,
    };
    let refused = alice.refused(batch(compact_sync(&copy))).await.unwrap();
    assert_eq!(refused.code, ErrorCode::InvalidRequest);
    assert!(refused.message.contains("crew"), "{refused:?}");
    let ReplyBody::MembersBatch(b) = alice.reply(batch(copy.clone())).await.unwrap() else {
        panic!("a batch as an object");
    };
    assert!(matches!(
        b.results.as_slice(),
        [anchorage_protocol::GroupSyncResult::Diff { .. }]
    ));
}
