//! Delivery under faults, against a real nats-server and database: a consumer that skips
//! events, a retry after the duplicate window while the projector is down, NATS going away in
//! the middle of sends. Nothing acknowledged is lost or stored twice; every refusal says
//! whether to retry.

use std::time::Duration;

use anchorage::nats_auth::OPERATOR;
use anchorage_protocol::request::{
    AddMembers, ConvAnchor, Hello, History, MarkRead, OpenDirect, RemoveMembers, SendMessage,
    SetRole, UpdateGroup,
};
use anchorage_protocol::{Ack, ErrorCode, Reply, ReplyBody, RequestBody, ServerFrame};
use anchorage_schema::event::Role;
use anchorage_tests::{
    TestEdge, TestNats, TestStack, WsClient, conv_id, create_group, eventually, fresh_database,
    group_id, hello, http_get, nats_client, send_message, sync, test_config, token, user_id,
    user_ids,
};
use serde_json::{Value, json};

use crate::common::{projector, short_window_config};

fn send(conv: &str, id: &str, retry: bool) -> SendMessage {
    SendMessage {
        retry,
        ..send_message(conv, id, json!(id))
    }
}

/// The ack in `answer`, if it is one.
fn ack_of(answer: ServerFrame) -> Option<Ack> {
    match answer {
        ServerFrame::Reply(Reply {
            body: ReplyBody::Ack(ack),
            ..
        }) => Some(ack),
        _ => None,
    }
}

async fn sync_seqs(c: &mut WsClient, conv: &str) -> Vec<u64> {
    let page = c.messages(sync(conv, 0)).await.unwrap();
    page.messages.iter().map(|m| m.seq).collect()
}

// A consumer that delivers past events it never delivered (as after a leader change in the
// middle of a batch) does not make the projection skip them.
#[tokio::test]
async fn a_consumer_that_skips_events_does_not_make_the_projection_skip_them() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.request(create_group("g", "G", &[])).await.unwrap();
    let mut seqs = Vec::new();
    for n in 0..3 {
        let ack = alice.ack(send("g", &format!("a{n}"), false)).await.unwrap();
        seqs.push(ack.seq);
    }
    let store = &stack.stack.store;
    let projected = |seq: u64| anchorage_tests::projected(store, "messages", seq);
    projected(*seqs.last().unwrap()).await;
    // The consumer is moved two events ahead behind the projector's back.
    let operator = async_nats::jetstream::new(nats_client(&nats.url(), OPERATOR).await.unwrap());
    let messages = operator.get_stream_no_info("MESSAGES").await.unwrap();
    let last = *seqs.last().unwrap();
    messages
        .reset_consumer("projector_messages", Some(last + 3))
        .await
        .unwrap();
    for n in 3..6 {
        let ack = alice.ack(send("g", &format!("a{n}"), false)).await.unwrap();
        seqs.push(ack.seq);
    }
    projected(*seqs.last().unwrap()).await;
    assert_eq!(
        sync_seqs(&mut alice, "g").await,
        seqs,
        "every message, once, in order"
    );
    stack.stack.stop().await.unwrap();
}

/// A stack whose projector applied group g and its first message `a0`, then stopped; its
/// edge stays up, with alice connected.
struct ProjectorStopped {
    config: anchorage_config::Config,
    edge: TestEdge,
    alice: WsClient,
    /// The sequence of `a0`.
    first: u64,
    /// The database's folder.
    _db_dir: tempfile::TempDir,
}

impl ProjectorStopped {
    async fn start(nats: &TestNats, tune: impl FnOnce(&mut anchorage_config::Config)) -> Self {
        let db_dir = tempfile::tempdir().unwrap();
        let database = fresh_database(db_dir.path()).await.unwrap();
        let mut config = test_config(&nats.url(), &database);
        tune(&mut config);
        let stack = TestStack::start_with(config.clone(), db_dir).await.unwrap();
        let edge = TestEdge::start(&config).await.unwrap();
        let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
        alice.request(create_group("g", "G", &[])).await.unwrap();
        let first = alice.ack(send("g", "a0", false)).await.unwrap().seq;
        anchorage_tests::projected(&stack.stack.store, "messages", first).await;
        let TestStack { stack, db_dir, .. } = stack;
        stack.stop().await.unwrap();
        Self {
            config,
            edge,
            alice,
            first,
            _db_dir: db_dir,
        }
    }

    /// Sends `a1` up to `a{count - 1}` while the projector is down; the sequences of all
    /// `count` messages, `a0`'s first.
    async fn backlog(&mut self, count: usize) -> Vec<u64> {
        let mut seqs = vec![self.first];
        for n in 1..count {
            let id = format!("a{n}");
            seqs.push(self.alice.ack(send("g", &id, false)).await.unwrap().seq);
        }
        seqs
    }

    /// Starts a projector again and waits until the messages projection reaches `seq`;
    /// returns a store to look at what it applied, and the projector to stop.
    async fn project_up_to(&self, seq: u64) -> (anchorage_store::Store, Restarted) {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let projector = projector(&self.config, shutdown.clone()).await;
        let store = anchorage_store::Store::connect(&anchorage::store_options(&self.config))
            .await
            .unwrap();
        anchorage_tests::projected(&store, "messages", seq).await;
        (
            store,
            Restarted {
                shutdown,
                projector,
            },
        )
    }

    /// Stops the restarted projector (it must end cleanly), then the edge.
    async fn stop(self, restarted: Restarted) {
        restarted.shutdown.cancel();
        restarted.projector.await.unwrap().unwrap();
        self.edge.stop().await.unwrap();
    }
}

/// A projector started again by [`ProjectorStopped::project_up_to`].
struct Restarted {
    shutdown: tokio_util::sync::CancellationToken,
    projector: tokio::task::JoinHandle<anyhow::Result<()>>,
}

// Events erased from the stream before the projector read them (a run of them, between
// others) leave holes its consumer delivers across: they are passed, everything around them
// is applied once, in order.
#[tokio::test]
async fn holes_erased_before_the_projector_read_them_are_passed() {
    let nats = TestNats::start().await.unwrap();
    let mut s = ProjectorStopped::start(&nats, |_| {}).await;
    let seqs = s.backlog(7).await;
    let operator = async_nats::jetstream::new(nats_client(&nats.url(), OPERATOR).await.unwrap());
    let messages = operator.get_stream_no_info("MESSAGES").await.unwrap();
    // a1, then a3 to a5: one hole alone, and a run of three.
    for at in [1, 3, 4, 5] {
        assert!(messages.delete_message(seqs[at]).await.unwrap());
    }
    let kept: Vec<u64> = [0, 2, 6].iter().map(|&at| seqs[at]).collect();

    let (_store, restarted) = s.project_up_to(seqs[6]).await;
    assert_eq!(
        sync_seqs(&mut s.alice, "g").await,
        kept,
        "the rest, once, in order"
    );
    s.stop(restarted).await;
}

// A batch size above what a consumer lets be unacknowledged (the configuration allows up to
// 10,000; the consumers let 1,024 be) does not stall a backlog larger than that limit on a
// pull the server holds back: every pull stays within the limit.
#[tokio::test]
async fn a_batch_size_above_the_consumers_pending_limit_drains_a_backlog() {
    let nats = TestNats::start().await.unwrap();
    let mut s = ProjectorStopped::start(&nats, |config| {
        config.projector.batch_size = 4_000;
        config.edge.rate_per_sec = 100_000;
        config.edge.rate_burst = 100_000;
        config.edge.user_rate_per_sec = 100_000;
    })
    .await;
    let backlog = 1_500;
    let last = *s.backlog(backlog).await.last().unwrap();
    let (store, restarted) = s.project_up_to(last).await;
    let conv = store.conversation("g").await.unwrap().unwrap();
    assert_eq!(conv.message_count, backlog as u64, "every message, once");
    s.stop(restarted).await;
}

// A retry that comes after the duplicate window while the projector is down gets the
// original seq once the projector is back — never a second copy.
#[tokio::test]
async fn a_late_retry_while_the_projector_is_down_is_never_stored_twice() {
    let nats = TestNats::start().await.unwrap();
    let (config, db_dir, _streams) = short_window_config(&nats.url(), "MESSAGES").await;
    // The projector runs for the group to exist, then stops.
    let stack = TestStack::start_with(config.clone(), db_dir).await.unwrap();
    let store = stack.stack.store.clone();
    let edge = TestEdge::start(&config).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
    alice.request(create_group("g", "G", &[])).await.unwrap();
    eventually(Duration::from_secs(20), "the group projected", || async {
        store.group_row("g").await.ok()?.map(|_| ())
    })
    .await
    .unwrap();
    stack.stack.stop().await.unwrap();

    let first = alice.ack(send("g", "m1", false)).await.unwrap();
    // Past the duplicate window, the projector still down: no answer it cannot stand by.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let early = alice.refused(send("g", "m1", true)).await.unwrap();
    assert_eq!(early.code, ErrorCode::Overloaded, "{early:?}");
    assert!(early.retry_after_ms.is_some(), "{early:?}");

    // The projector comes back; the same retry now finds the original.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let projector = projector(&config, shutdown.clone()).await;
    let retried = eventually(Duration::from_secs(20), "the retry answered", || async {
        let mut c = WsClient::signed_in(edge.addr, "alice", "d").await.ok()?.0;
        let answer = c.request(send("g", "m1", true)).await.ok()?;
        ack_of(answer)
    })
    .await
    .unwrap();
    assert_eq!(retried.seq, first.seq, "{retried:?}");
    assert!(retried.duplicate);
    // A repeat after the window that does not even say it is a retry: still the original.
    let again = alice.ack(send("g", "m1", false)).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true), "{again:?}");
    // A message stamped when it was written, repeated past the window with that stamp (as an
    // outbox does) and without `retry`: the original too.
    let stamped = SendMessage {
        client_ts: anchorage_schema::now_ms(),
        ..send_message("g", "m2", json!("m2"))
    };
    let original = alice.ack(stamped.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let repeated = alice.ack(stamped).await.unwrap();
    assert_eq!(
        (repeated.seq, repeated.duplicate),
        (original.seq, true),
        "{repeated:?}"
    );
    let (mut reader, _) = WsClient::signed_in(edge.addr, "alice", "d2").await.unwrap();
    assert_eq!(
        sync_seqs(&mut reader, "g").await,
        vec![first.seq, original.seq],
        "one copy each"
    );
    shutdown.cancel();
    projector.await.unwrap().unwrap();
    edge.stop().await.unwrap();
}

// A group creation asked again after the duplicate window (an answer lost, a retry a while
// later) is still its creator's same answer — found from the group's first event, not a
// `conflict` — and still a `conflict` for anyone else.
#[tokio::test]
async fn a_creation_retried_after_the_duplicate_window_gets_the_same_answer() {
    let nats = TestNats::start().await.unwrap();
    let (config, db_dir, _streams) = short_window_config(&nats.url(), "MEMBERSHIP").await;
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    let (mut mallory, _) = WsClient::signed_in(stack.edge_addr(), "mallory", "d")
        .await
        .unwrap();
    let first = alice.ok(create_group("g", "G", &["bob"])).await.unwrap();
    // Past the window: the stream no longer recognizes the event id.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = alice.ok(create_group("g", "G", &["bob"])).await.unwrap();
    assert_eq!(again, first);
    let taken = mallory.refused(create_group("g", "M", &[])).await.unwrap();
    assert_eq!(taken.code, ErrorCode::Conflict, "{taken:?}");
    stack.stack.stop().await.unwrap();
}

// While NATS is away, sends are refused as `overloaded` with a time to come back — not
// `internal` with a misleading reason — and the same send succeeds once it is back.
#[tokio::test]
async fn sends_during_a_nats_outage_are_overloaded_and_retryable() {
    let mut nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.request(create_group("g", "G", &[])).await.unwrap();
    let (status, body) = http_get(stack.edge_addr(), "/readyz").await.unwrap();
    assert_eq!(status, 200);
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert!(
        ready["projections"]["messages"]["behind"].is_u64(),
        "{ready}"
    );

    nats.server.stop(Duration::from_secs(5)).await.unwrap();
    for request in [
        RequestBody::from(send("g", "m1", false)),
        sync("g", 0).into(),
        MarkRead {
            conv: conv_id("g"),
            seq: 1,
        }
        .into(),
        AddMembers {
            group: group_id("g"),
            members: user_ids(&["bob"]),
        }
        .into(),
    ] {
        let refused = alice.refused(request.clone()).await.unwrap();
        assert_eq!(
            refused.code,
            ErrorCode::Overloaded,
            "{request:?} → {refused:?}"
        );
        assert!(refused.retry_after_ms.is_some(), "{refused:?}");
    }
    nats.server.restart().await.unwrap();
    let acked = eventually(
        Duration::from_secs(30),
        "the send accepted again",
        || async {
            let mut c = WsClient::signed_in(stack.edge_addr(), "alice", "d")
                .await
                .ok()?
                .0;
            let answer = c.request(send("g", "m1", true)).await.ok()?;
            ack_of(answer)
        },
    )
    .await
    .unwrap();
    assert!(acked.seq > 0);
    stack.stack.stop().await.unwrap();
}

/// Publishes an event of another system through JetStream, as `INTEGRATION.md` shows.
async fn ext_event(
    js: &async_nats::jetstream::Context,
    source: &str,
    kind: &str,
    id: &str,
    payload: Value,
    msg_id: bool,
) {
    let event = json!({"id": id, "type": kind, "v": 1, "occurred_at": 1763840000000u64,
                       "payload": payload});
    let mut headers = async_nats::HeaderMap::new();
    if msg_id {
        headers.insert("Nats-Msg-Id", format!("{source}:{id}").as_str());
    }
    js.publish_with_headers(
        format!("ext.{source}.{kind}"),
        headers,
        event.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// As the integration `crm`: users alice (`u-1`) and bob (`u-2`), and the group `support`
/// (`g-1`) owned by alice with `members`.
async fn alice_bob_and_support(crm: &async_nats::jetstream::Context, members: &[&str]) {
    let user = |u: &str, name: &str| json!({"user": u, "display_name": name});
    ext_event(
        crm,
        "crm",
        "user.created",
        "u-1",
        user("alice", "Alice"),
        true,
    )
    .await;
    ext_event(crm, "crm", "user.created", "u-2", user("bob", "Bob"), true).await;
    let group = json!({"group": "support", "owner": "alice", "title": "Support",
                       "members": members});
    ext_event(crm, "crm", "group.created", "g-1", group, true).await;
}

// Other systems' events apply once per (source, id), durably: a retry long after the
// duplicate window changes nothing, and two sources may use the same ids.
#[tokio::test]
async fn events_of_other_systems_apply_once_however_late_the_retry() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let crm = async_nats::jetstream::new(nats_client(&nats.url(), "ext_crm").await.unwrap());
    let user = |u: &str, name: &str| json!({"user": u, "display_name": name});
    alice_bob_and_support(&crm, &[]).await;
    ext_event(
        &crm,
        "crm",
        "group.members_added",
        "m-1",
        json!({"group": "support", "members": ["bob"]}),
        true,
    )
    .await;
    ext_event(
        &crm,
        "crm",
        "group.members_removed",
        "m-2",
        json!({"group": "support", "members": ["bob"]}),
        true,
    )
    .await;
    ext_event(
        &crm,
        "crm",
        "user.updated",
        "u-3",
        user("alice", "Alice B."),
        true,
    )
    .await;
    ext_event(
        &crm,
        "crm",
        "user.deleted",
        "u-4",
        json!({"user": "bob"}),
        true,
    )
    .await;
    // Another system uses the same ids for its own events.
    let operator = async_nats::jetstream::new(nats_client(&nats.url(), OPERATOR).await.unwrap());
    ext_event(
        &operator,
        "hr",
        "user.created",
        "u-1",
        user("carol", "Carol"),
        true,
    )
    .await;
    eventually(Duration::from_secs(30), "every event applied", || async {
        let carol = store.display_name("carol").await.ok()??;
        let bob_gone = !store.user_active("bob").await.ok()?;
        (carol == "Carol" && bob_gone).then_some(())
    })
    .await
    .unwrap();
    // The same events again, as a retry after the duplicate window would store them.
    for (kind, id, payload) in [
        ("user.created", "u-1", user("alice", "Alice")),
        ("user.created", "u-2", user("bob", "Bob")),
        (
            "group.created",
            "g-1",
            json!({"group": "support", "owner": "alice", "title": "S"}),
        ),
        (
            "group.members_added",
            "m-1",
            json!({"group": "support", "members": ["bob"]}),
        ),
    ] {
        ext_event(&crm, "crm", kind, id, payload, false).await;
    }
    // A new event after them, to know they were all taken in.
    ext_event(
        &crm,
        "crm",
        "user.created",
        "u-5",
        user("dave", "Dave"),
        true,
    )
    .await;
    eventually(Duration::from_secs(30), "the retries taken in", || async {
        store.user_active("dave").await.ok()?.then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        store.display_name("alice").await.unwrap().as_deref(),
        Some("Alice B."),
        "a retried user.created reverts nothing"
    );
    assert!(
        !store.user_active("bob").await.unwrap(),
        "a deleted user stays deleted"
    );
    assert_eq!(
        store.member_role("support", "bob").await.unwrap(),
        None,
        "bob stays removed"
    );
    let dead = anchorage_tests::dead_letters(&nats.url()).await.unwrap();
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
    stack.stack.stop().await.unwrap();
}

/// An edge whose NATS connection goes through a proxy that can lose what the edge sends, with
/// `tune` applied to its configuration.
async fn edge_behind_a_lossy_proxy(
    stack: &TestStack,
    nats: &TestNats,
    tune: impl FnOnce(&mut anchorage_config::Config),
) -> (anchorage_tests::TcpProxy, TestEdge) {
    let target = nats.url().trim_start_matches("nats://").parse().unwrap();
    let proxy = anchorage_tests::TcpProxy::start(target).await.unwrap();
    let mut config = stack.config.clone();
    config.nats.url = format!("nats://{}", proxy.addr);
    config.nats.request_timeout_ms = 1_000;
    tune(&mut config);
    let edge = TestEdge::start(&config).await.unwrap();
    (proxy, edge)
}

/// Sends `id` (as request 1) into a connection to NATS that loses it, then cuts that
/// connection: the edge reconnects, and what it sends next reaches the stream.
async fn lose_on_the_way(proxy: &anchorage_tests::TcpProxy, client: &mut WsClient, id: &str) {
    proxy.blackhole_up(true);
    let before = proxy.swallowed_up();
    client.send_request(1, send("g", id, false)).await.unwrap();
    eventually(Duration::from_secs(5), "the send lost", || async {
        (proxy.swallowed_up() > before).then_some(())
    })
    .await
    .unwrap();
    proxy.cut();
    proxy.blackhole_up(false);
}

/// The client ids of group g's history, oldest first, once it holds `count` messages.
async fn history_of_g(store: &anchorage_store::Store, count: usize) -> Vec<String> {
    let rows = eventually(Duration::from_secs(20), "the history", || async {
        let rows = store.messages_after("g", 0, 100).await.ok()?;
        (rows.len() == count).then_some(rows)
    })
    .await
    .unwrap();
    rows.into_iter().map(|r| r.client_msg_id).collect()
}

/// Sends `id` to `conv` again (`retry`) until it is stored, waiting as told; never
/// `out_of_order`.
async fn send_again_until_stored(client: &mut WsClient, conv: &str, id: &str) -> Ack {
    for _ in 0..100 {
        match client.request(send(conv, id, true)).await.unwrap() {
            ServerFrame::Error(e) => {
                assert_ne!(e.code, ErrorCode::OutOfOrder, "{id}: {e:?}");
                let wait = e.retry_after_ms.unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            other => return ack_of(other).expect("an ack"),
        }
    }
    panic!("{id} never stored");
}

// An edge that has not heard of a membership yet (its NATS connection loses what the server
// sends, so the new group's events do not reach it) cannot tell a new member from a stranger:
// the send is `overloaded`, to retry, never a final-looking `forbidden` that would let the
// sends after it overtake; once the edge hears again, the send is stored.
#[tokio::test]
async fn a_send_before_the_edge_heard_of_the_membership_is_retried_not_forbidden() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (proxy, edge) = edge_behind_a_lossy_proxy(&stack, &nats, |_| {}).await;
    let (mut bob, _) = WsClient::signed_in(edge.addr, "bob", "d").await.unwrap();
    proxy.blackhole_down(true);
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice
        .request(create_group("g", "G", &["bob"]))
        .await
        .unwrap();
    let refused = bob.refused(send("g", "b1", false)).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Overloaded, "{refused:?}");
    assert!(refused.retry_after_ms.is_some(), "{refused:?}");
    // The edge hears again; the next membership event makes it fetch what it missed.
    proxy.blackhole_down(false);
    proxy.cut();
    alice
        .request(AddMembers {
            group: group_id("g"),
            members: user_ids(&["carol"]),
        })
        .await
        .unwrap();
    let stored = send_again_until_stored(&mut bob, "g", "b1").await;
    assert!(stored.seq > 0);
    edge.stop().await.unwrap();
    stack.stack.stop().await.unwrap();
}

// Membership events this edge missed and an operator then purged from the stream are gone
// for good, whether the purge took the stream's start or one group's subject from its
// middle: the edge moves past them and applies what follows (a "no message" answer is never
// taken for a purge unless the stream shows one).
#[tokio::test]
async fn membership_events_purged_before_the_edge_fetched_them_are_moved_past() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (proxy, edge) = edge_behind_a_lossy_proxy(&stack, &nats, |_| {}).await;
    let (mut bob, _) = WsClient::signed_in(edge.addr, "bob", "d").await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    let operator = async_nats::jetstream::new(nats_client(&nats.url(), OPERATOR).await.unwrap());
    let mut membership = operator.get_stream("MEMBERSHIP").await.unwrap();
    for (round, purge_subject) in [(0, false), (1, true)] {
        proxy.blackhole_down(true);
        let before = format!("before{round}");
        let old = format!("old{round}");
        let g = format!("g{round}");
        alice
            .request(create_group(&before, "B", &["bob"]))
            .await
            .unwrap();
        alice
            .request(create_group(&old, "O", &["bob"]))
            .await
            .unwrap();
        let purged = membership.info().await.unwrap().state.last_sequence;
        anchorage_tests::projected(&stack.stack.store, "membership", purged).await;
        if purge_subject {
            // A hole in the middle: `before` stays, `old` goes.
            membership
                .purge()
                .filter(format!("grp.{old}"))
                .await
                .unwrap();
        } else {
            membership.purge().sequence(purged + 1).await.unwrap();
        }
        alice
            .request(create_group(&g, "G", &["bob"]))
            .await
            .unwrap();
        proxy.blackhole_down(false);
        proxy.cut();
        alice
            .request(AddMembers {
                group: group_id(&g),
                members: user_ids(&["carol"]),
            })
            .await
            .unwrap();
        let stored = send_again_until_stored(&mut bob, &g, "b1").await;
        assert!(stored.seq > 0);
    }
    edge.stop().await.unwrap();
    stack.stack.stop().await.unwrap();
}

// A send whose acknowledgement fails is known to be refused only after a later send may have
// been refused already (here by the rate limit): the client is told to start again from the
// earlier one, and starting from it gets everything stored in the order written.
#[tokio::test]
async fn the_first_refused_send_is_the_one_to_send_again() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    // Five frames at once (hello, the group, m1, m2, m3): the later sends find the bucket
    // empty.
    let (proxy, edge) = edge_behind_a_lossy_proxy(&stack, &nats, |config| {
        config.edge.rate_per_sec = 1;
        config.edge.rate_burst = 5;
    })
    .await;
    let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
    alice.request(create_group("g", "G", &[])).await.unwrap();
    lose_on_the_way(&proxy, &mut alice, "m1").await;
    let ids = ["m1", "m2", "m3", "m4", "m5", "m6"];
    for (n, id) in (2..).zip(&ids[1..]) {
        alice.send_request(n, send("g", id, false)).await.unwrap();
    }
    let mut codes = Vec::new();
    for id in 1..=ids.len() as u64 {
        let answer = alice.next_answer().await.unwrap();
        assert_eq!(answer.id(), Some(id), "answers in order: {answer:?}");
        match answer {
            ServerFrame::Error(e) => codes.push(e.code),
            other => panic!("m{id} stored: {other:?}"),
        }
    }
    assert!(
        codes[1..]
            .iter()
            .all(|c| matches!(c, ErrorCode::OutOfOrder | ErrorCode::RateLimited))
            && codes.contains(&ErrorCode::RateLimited),
        "{codes:?}"
    );
    // Sent again in order from the first refused one: none of them is out of order.
    let mut seqs = Vec::new();
    for id in ids {
        seqs.push(send_again_until_stored(&mut alice, "g", id).await.seq);
    }
    assert!(seqs.is_sorted(), "{seqs:?}");
    edge.stop().await.unwrap();
    stack.stack.stop().await.unwrap();
}

// A send lost on the way to NATS (the edge's connection died with it in the socket) while the
// sends after it in the same conversation would reach the stream once the edge reconnects:
// those wait for it, are answered `out_of_order` when it fails, and a client that retries in
// order stores everything in the order written. A repeat among sends that wait for each other
// does not hold the others back.
#[tokio::test]
async fn a_send_lost_on_the_way_to_nats_holds_back_the_sends_after_it() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let (proxy, edge) = edge_behind_a_lossy_proxy(&stack, &nats, |_| {}).await;
    let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
    alice.request(create_group("g", "G", &[])).await.unwrap();
    let first = alice.request(send("g", "m0", false)).await.unwrap();
    let m0_seq = ack_of(first).expect("m0 stored").seq;

    // m1 is written to a connection that loses it; the connection is cut, and m2 and m3
    // come while the edge reconnects.
    lose_on_the_way(&proxy, &mut alice, "m1").await;
    alice.send_request(2, send("g", "m2", false)).await.unwrap();
    alice.send_request(3, send("g", "m3", false)).await.unwrap();
    let mut codes = Vec::new();
    for id in 1..=3 {
        let answer = alice.next_answer().await.unwrap();
        assert_eq!(answer.id(), Some(id), "answers in order: {answer:?}");
        match answer {
            ServerFrame::Error(e) => codes.push(e.code),
            other => panic!("m{id} was lost or held back, not stored: {other:?}"),
        }
    }
    assert!(
        matches!(codes[0], ErrorCode::Overloaded | ErrorCode::Internal),
        "{codes:?}"
    );
    assert_eq!(codes[1..], [ErrorCode::OutOfOrder, ErrorCode::OutOfOrder]);

    // Retried in order, each until it is stored.
    let mut seqs = Vec::new();
    for id in ["m1", "m2", "m3"] {
        seqs.push(send_again_until_stored(&mut alice, "g", id).await.seq);
    }
    assert!(
        seqs.is_sorted(),
        "acknowledged in the order written: {seqs:?}"
    );
    let store = &stack.stack.store;
    assert_eq!(
        history_of_g(store, 4).await,
        ["m0", "m1", "m2", "m3"],
        "stored in the order written"
    );

    // A pipelined burst holding a repeat (m0 again, not marked as a retry): the repeat is
    // acknowledged with the stored seq, the others are stored in order.
    let burst = ["n0", "n1", "m0", "n2", "n3"];
    for (n, id) in burst.iter().enumerate() {
        alice
            .send_request(10 + n as u64, send("g", id, false))
            .await
            .unwrap();
    }
    let mut acks = Vec::new();
    for n in 0..burst.len() {
        let answer = alice.next_answer().await.unwrap();
        assert_eq!(answer.id(), Some(10 + n as u64), "answers in order");
        acks.push(ack_of(answer).expect("every send of the burst acknowledged"));
    }
    assert!(acks[2].duplicate && acks[2].seq == m0_seq, "{acks:?}");
    let fresh: Vec<u64> = [0, 1, 3, 4].iter().map(|&n| acks[n].seq).collect();
    assert!(fresh.is_sorted() && fresh[0] > seqs[2], "{acks:?}");
    assert_eq!(
        history_of_g(store, 8).await,
        ["m0", "m1", "m2", "m3", "n0", "n1", "n2", "n3"]
    );
    edge.stop().await.unwrap();
    stack.stack.stop().await.unwrap();
}

// Pipelined sends keep the sender's order through refusals: once one is refused, the ones
// after it are refused too until it is sent again, so a client that retries in order stores
// everything in the order it was written.
#[tokio::test]
async fn pipelined_sends_keep_their_order_through_refusals() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    config.edge.rate_per_sec = 5;
    config.edge.rate_burst = 10;
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.request(create_group("g", "G", &[])).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 40 sends in a pipe, faster than the rate allows: tokens come back while it is full.
    let ids: Vec<String> = (0..40).map(|n| format!("m{n:02}")).collect();
    for (n, id) in ids.iter().enumerate() {
        alice
            .send_request(1000 + n as u64, send("g", id, false))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut refused = Vec::new();
    let mut codes = std::collections::HashMap::<ErrorCode, usize>::new();
    for expected in 0..ids.len() {
        let answer = alice.next_answer().await.unwrap();
        let n = answer.id().unwrap() as usize - 1000;
        assert_eq!(n, expected, "answers in the order of the sends: {answer:?}");
        match answer {
            ServerFrame::Reply(Reply {
                body: ReplyBody::Ack(_),
                ..
            }) => {}
            ServerFrame::Error(e) => {
                *codes.entry(e.code).or_default() += 1;
                refused.push(n);
            }
            other => panic!("neither an ack nor an error: {other:?}"),
        }
    }
    assert!(codes.contains_key(&ErrorCode::RateLimited), "{codes:?}");
    assert!(codes.contains_key(&ErrorCode::OutOfOrder), "{codes:?}");
    // Retried in order, each until it is stored.
    for n in refused {
        loop {
            let wait = match alice.request(send("g", &ids[n], true)).await.unwrap() {
                ServerFrame::Reply(Reply {
                    body: ReplyBody::Ack(_),
                    ..
                }) => break,
                ServerFrame::Error(e) => e.retry_after_ms.unwrap_or(100),
                _ => 100,
            };
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }
    assert_eq!(
        history_of_g(&stack.stack.store, ids.len()).await,
        ids,
        "stored in the order written"
    );
    stack.stack.stop().await.unwrap();
}

// While the projector is down, `welcome` still names every conversation with new messages,
// with its last seq from the stream.
#[tokio::test]
async fn welcome_tells_the_truth_while_the_projector_is_down() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    let stack = TestStack::start_with(config.clone(), db_dir).await.unwrap();
    let store = stack.stack.store.clone();
    let edge = TestEdge::start(&config).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
    alice
        .request(create_group("g", "G", &["bob"]))
        .await
        .unwrap();
    let first = alice.ack(send("g", "m1", false)).await.unwrap();
    let seq = first.seq;
    anchorage_tests::projected(&store, "messages", seq).await;
    stack.stack.stop().await.unwrap();
    // The projector is gone; alice writes on.
    let second = alice.ack(send("g", "m2", false)).await.unwrap();
    let (_bob, welcome) = WsClient::signed_in(edge.addr, "bob", "d").await.unwrap();
    let g = welcome.changes.iter().find(|c| c.conv.as_str() == "g");
    assert_eq!(g.map(|c| c.last_seq), Some(second.seq), "{welcome:?}");
    // A conversation bob joins while the projector is down is announced too, and its history
    // says when to come back rather than answering an empty page.
    alice.ok(create_group("new", "N", &["bob"])).await.unwrap();
    let posted = alice.ack(send("new", "n1", false)).await.unwrap();
    let (mut bob3, welcome) = WsClient::signed_in(edge.addr, "bob", "d3").await.unwrap();
    let announced = welcome
        .changes
        .iter()
        .find(|c| c.conv.as_str() == "new")
        .map(|c| c.last_seq);
    assert_eq!(announced, Some(posted.seq), "{welcome:?}");
    let page = bob3.refused(sync("new", 0)).await.unwrap();
    assert_eq!(page.code, ErrorCode::Overloaded, "{page:?}");
    // Bob's anchor at the first message: the change is still announced.
    let mut bob2 = WsClient::connect(edge.addr).await.unwrap();
    let welcome = bob2
        .reply(Hello {
            anchors: vec![ConvAnchor {
                conv: conv_id("g"),
                seq,
                read: None,
            }],
            ..hello(token("bob", "d2", 60))
        })
        .await
        .unwrap();
    let ReplyBody::Welcome(welcome) = welcome else {
        panic!("no welcome: {welcome:?}")
    };
    assert!(
        welcome.changes.iter().any(|c| c.conv.as_str() == "g"),
        "{welcome:?}"
    );
    edge.stop().await.unwrap();
}

// While the projector is behind, nobody acts on a group as it was: a command whose group has
// changes the projection does not hold yet is refused as `overloaded` (a demoted admin never
// acts as an admin), a member removed meanwhile hears nothing more of the group, and the
// latest history says when to come back rather than leaving the newest messages out.
#[tokio::test]
async fn while_the_projector_is_behind_nobody_acts_on_a_stale_group() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    let stack = TestStack::start_with(config.clone(), db_dir).await.unwrap();
    let store = stack.stack.store.clone();
    let edge = TestEdge::start(&config).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
    let (mut bob, _) = WsClient::signed_in(edge.addr, "bob", "d").await.unwrap();
    alice
        .ok(create_group("st", "S", &["bob", "carol"]))
        .await
        .unwrap();
    alice
        .ok(create_group("st2", "S2", &["carol"]))
        .await
        .unwrap();
    let promoted = alice
        .ok(SetRole {
            group: group_id("st"),
            member: user_id("bob"),
            role: Role::Admin,
        })
        .await
        .unwrap();
    let first = alice.ack(send("st2", "m1", false)).await.unwrap();
    anchorage_tests::projected(&store, "membership", promoted.seq.unwrap()).await;
    anchorage_tests::projected(&store, "messages", first.seq).await;
    stack.stack.stop().await.unwrap();

    // The projection holds st as it is: alice demotes bob.
    alice
        .ok(SetRole {
            group: group_id("st"),
            member: user_id("bob"),
            role: Role::Member,
        })
        .await
        .unwrap();
    // Bob is no admin any more, but the projection does not know yet: nothing is decided.
    let add = AddMembers {
        group: group_id("st"),
        members: user_ids(&["dave"]),
    };
    let refused = bob.refused(add.clone()).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Overloaded, "{refused:?}");
    assert!(refused.retry_after_ms.is_some(), "{refused:?}");
    let profile = UpdateGroup {
        group: group_id("st"),
        title: Some("taken".into()),
        avatar: None,
    };
    let refused = bob.refused(profile.clone()).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Overloaded, "{refused:?}");

    // Carol leaves st2 (its state is projected) and alice writes on.
    alice
        .ok(RemoveMembers {
            group: group_id("st2"),
            members: user_ids(&["carol"]),
        })
        .await
        .unwrap();
    alice.ack(send("st2", "after", false)).await.unwrap();
    let (_carol, welcome) = WsClient::signed_in(edge.addr, "carol", "new")
        .await
        .unwrap();
    assert!(
        welcome.changes.iter().all(|c| c.conv.as_str() != "st2"),
        "a removed member's summary names the group: {welcome:?}"
    );
    // The newest messages of st2 are not projected: the latest page says to come back.
    let history = History {
        conv: conv_id("st2"),
        before: 0,
        limit: None,
    };
    let refused = alice.refused(history.clone()).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Overloaded, "{refused:?}");

    // The projector is back: bob is refused as the member he is, the history is whole.
    let shutdown = tokio_util::sync::CancellationToken::new();
    let projector = projector(&config, shutdown.clone()).await;
    // As a client does: come back after the time the refusal names.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let code = loop {
        let e = bob.refused(add.clone()).await.unwrap();
        if e.code != ErrorCode::Overloaded || tokio::time::Instant::now() > deadline {
            break e.code;
        }
        let wait = e.retry_after_ms.expect("overloaded says when to retry");
        tokio::time::sleep(Duration::from_millis(wait)).await;
    };
    assert_eq!(code, ErrorCode::Forbidden);
    let refused = bob.refused(profile).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden, "{refused:?}");
    let page = alice.messages(history).await.unwrap();
    let ids: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.client_msg_id.as_str())
        .collect();
    assert_eq!(ids, ["after", "m1"], "{page:?}");
    shutdown.cancel();
    projector.await.unwrap().unwrap();
    edge.stop().await.unwrap();
}

// Shutdown is prompt while events from other systems are being applied, and loses none: an
// event that cannot apply yet is applied after the restart, never set aside.
#[tokio::test]
async fn shutdown_in_the_middle_of_ingest_is_prompt_and_loses_nothing() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    let stack = TestStack::start_with(config.clone(), db_dir).await.unwrap();
    let store = stack.stack.store.clone();
    let crm = async_nats::jetstream::new(nats_client(&nats.url(), "ext_crm").await.unwrap());
    alice_bob_and_support(&crm, &[]).await;
    eventually(Duration::from_secs(20), "the group", || async {
        store.group_row("support").await.ok()?.map(|_| ())
    })
    .await
    .unwrap();
    stack.stack.stop().await.unwrap();
    let store = anchorage_store::Store::connect(&anchorage::store_options(&config))
        .await
        .unwrap();

    let posts = 300;
    for n in 0..posts {
        ext_event(
            &crm,
            "crm",
            "message.system_posted",
            &format!("p-{n}"),
            json!({"conv": "support", "body": format!("post {n}")}),
            true,
        )
        .await;
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = projector(&config, shutdown.clone()).await;
    eventually(Duration::from_secs(20), "some posts applied", || async {
        (store.messages_after("support", 0, 500).await.ok()?.len() >= 5).then_some(())
    })
    .await
    .unwrap();
    let asked = std::time::Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the projector stops within seconds")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(10));

    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = projector(&config, shutdown.clone()).await;
    let all = eventually(Duration::from_secs(60), "every post applied", || async {
        let rows = store.messages_after("support", 0, 1000).await.ok()?;
        (rows.len() >= posts).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(all.len(), posts, "each once");
    let dead = anchorage_tests::dead_letters(&nats.url()).await.unwrap();
    assert!(dead.is_empty(), "nothing set aside: {dead:?}");
    shutdown.cancel();
    running.await.unwrap().unwrap();
}

// Deleting a user (from another system) ends every session and every membership, and the id
// is never taken again by accident.
#[tokio::test]
async fn a_deleted_user_is_signed_out_removed_everywhere_and_not_recreated() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let crm = async_nats::jetstream::new(nats_client(&nats.url(), "ext_crm").await.unwrap());
    let user = |u: &str, name: &str| json!({"user": u, "display_name": name});
    alice_bob_and_support(&crm, &["bob"]).await;
    eventually(Duration::from_secs(20), "bob in the group", || async {
        store.member_role("support", "bob").await.ok()?.map(|_| ())
    })
    .await
    .unwrap();
    let (mut bob, _) = WsClient::signed_in(stack.edge_addr(), "bob", "phone")
        .await
        .unwrap();
    let dm = bob
        .ok(OpenDirect {
            peer: user_id("alice"),
        })
        .await
        .unwrap();
    let dm = dm.conv.unwrap().as_str().to_owned();

    ext_event(
        &crm,
        "crm",
        "user.deleted",
        "u-3",
        json!({"user": "bob"}),
        true,
    )
    .await;
    assert_eq!(bob.closed().await.unwrap(), 4005, "signed out at once");
    let mut again = WsClient::connect(stack.edge_addr()).await.unwrap();
    again
        .send_request(1, hello(token("bob", "laptop", 60)))
        .await
        .unwrap();
    assert_eq!(
        again.closed().await.unwrap(),
        4005,
        "no device signs in again"
    );
    for group in ["support", dm.as_str()] {
        anchorage_tests::membership_ended(store, group, "bob").await;
    }
    // A new user.created for the id is refused, not a resurrection.
    ext_event(
        &crm,
        "crm",
        "user.created",
        "u-4",
        user("bob", "Bob 2"),
        true,
    )
    .await;
    let dead = eventually(Duration::from_secs(20), "the refusal", || async {
        let dead = anchorage_tests::dead_letters(&nats.url()).await.ok()?;
        (!dead.is_empty()).then_some(dead)
    })
    .await
    .unwrap();
    assert_eq!(
        dead[0].get("Anchorage-Dlq-Code").map(String::as_str),
        Some("user_deleted")
    );
    assert!(!store.user_active("bob").await.unwrap());
    stack.stack.stop().await.unwrap();
}

// An edge brings a connecting user's memberships from the projection up to the stream with
// the membership events it keeps. While the projector is down, the dismissal of a group bob
// is in and a new group with him in it are on the stream only: an edge that was up meanwhile,
// and one started afterwards, both let him send to the new group and refuse the dismissed one.
#[tokio::test]
async fn memberships_the_projection_lacks_are_brought_in_for_a_user_who_connects() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let database = fresh_database(db_dir.path()).await.unwrap();
    let config = test_config(&nats.url(), &database);
    let stack = TestStack::start_with(config.clone(), db_dir).await.unwrap();
    let store = stack.stack.store.clone();
    let edge = TestEdge::start(&config).await.unwrap();
    let (mut alice, _) = WsClient::signed_in(edge.addr, "alice", "d").await.unwrap();
    alice
        .request(create_group("old", "Old", &["bob"]))
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "bob in old", || async {
        store.member_role("old", "bob").await.ok().flatten()
    })
    .await
    .unwrap();
    let TestStack { stack, db_dir, .. } = stack;
    stack.stop().await.unwrap();
    alice
        .ok(anchorage_protocol::request::DismissGroup {
            group: group_id("old"),
        })
        .await
        .unwrap();
    alice
        .request(create_group("new", "New", &["bob"]))
        .await
        .unwrap();
    let later = TestEdge::start(&config).await.unwrap();
    for (at, device) in [(edge.addr, "d1"), (later.addr, "d2")] {
        let (mut bob, _) = WsClient::signed_in(at, "bob", device).await.unwrap();
        // Taken once this edge's view holds the new group (until then: `overloaded`, to try
        // again) — and so the dismissal before it.
        let mut tries = 0;
        let ack = loop {
            match bob.request(send("new", device, false)).await.unwrap() {
                ServerFrame::Error(e) if e.code == ErrorCode::Overloaded && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                answer => break ack_of(answer).unwrap_or_else(|| panic!("no ack at {device}")),
            }
        };
        assert!(!ack.duplicate);
        let refused = bob.refused(send("old", device, false)).await.unwrap();
        assert_eq!(refused.code, ErrorCode::Forbidden, "{refused:?}");
    }
    later.stop().await.unwrap();
    edge.stop().await.unwrap();
    drop(db_dir);
}

// An event as large as its stream takes that a projection refuses: its dead letter carries it
// cut to fit (the whole of it stays in its stream, where the headers point), and what follows
// it is applied. Whole, it would not fit in the dead-letter stream beside its headers, and
// setting it aside would fail every time, holding up everything after it.
#[tokio::test]
async fn an_event_too_large_to_set_aside_whole_is_set_aside_cut() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let store = &stack.stack.store;
    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "d")
        .await
        .unwrap();
    alice.ok(create_group("big", "Big", &[])).await.unwrap();
    let js = async_nats::jetstream::new(nats_client(&nats.url(), OPERATOR).await.unwrap());
    // Not an event, and as large as the stream takes.
    let size = 1_048_576 - 64;
    let stored = js
        .publish("msg.big", vec![b'x'; size].into())
        .await
        .unwrap()
        .await
        .unwrap();
    alice
        .ack(send_message("big", "m1", json!("after it")))
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "the message after it", || async {
        let rows = store.messages_after("big", 0, 10).await.ok()?;
        (rows.len() == 1).then_some(())
    })
    .await
    .unwrap();
    let dead = anchorage_tests::dead_letters(&nats.url()).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    assert_eq!(
        entry.get("Anchorage-Dlq-Seq").map(String::as_str),
        Some(stored.sequence.to_string().as_str())
    );
    assert_eq!(
        entry.get("Anchorage-Dlq-Truncated").map(String::as_str),
        Some(size.to_string().as_str()),
        "{entry:?}"
    );
    stack.stack.stop().await.unwrap();
}
