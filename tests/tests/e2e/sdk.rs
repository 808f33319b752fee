//! The Rust client SDK against a real stack: outbox retries across cut connections, order
//! across reconnects, gap repair, the offline queue, catch-up on reconnect; and against a
//! scripted edge, what it asks and takes of positional member-list diffs.

use std::sync::Arc;
use std::time::Duration;

use anchorage_sdk::{Client, ClientEvent, ClientOptions, OutboxState, Refs};
use anchorage_tests::{TcpProxy, TestEdge, TestNats, TestStack, eventually, token};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

async fn client(
    addr: std::net::SocketAddr,
    dir: &std::path::Path,
    user: &str,
    device: &str,
) -> Client {
    let (u, d) = (user.to_owned(), device.to_owned());
    Client::start(ClientOptions {
        url: format!("ws://{addr}/ws"),
        token: Arc::new(move || token(&u, &d, 3600)),
        store_path: dir.join(format!("{user}-{device}.db")),
    })
    .await
    .unwrap()
}

async fn acked(c: &Client, id: &str) -> u64 {
    eventually(WAIT, "the send to be acknowledged", || async {
        let e = c.outbox(id).await.ok()??;
        (e.state == OutboxState::Acked).then_some(e.seq?)
    })
    .await
    .unwrap()
}

async fn has_messages(c: &Client, conv: &str, n: usize) -> Vec<u64> {
    let found = eventually(WAIT, "the messages to arrive", || async {
        let m = c.messages(conv).await.ok()?;
        let seqs: Vec<u64> = m.iter().filter_map(|m| m.seq).collect();
        (seqs.len() >= n).then_some(seqs)
    })
    .await;
    match found {
        Ok(seqs) => seqs,
        Err(err) => panic!(
            "{err}: anchor {:?}, messages {:?}",
            c.anchor(conv).await,
            c.messages(conv).await
        ),
    }
}

struct Setup {
    _nats: TestNats,
    stack: TestStack,
    edge2: TestEdge,
    dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let edge2 = TestEdge::start(&stack.config).await.unwrap();
    Setup {
        _nats: nats,
        stack,
        edge2,
        dir: tempfile::tempdir().unwrap(),
    }
}

#[tokio::test]
async fn a_send_cut_between_publish_and_ack_is_stored_once_and_acknowledged() {
    let s = setup().await;
    let proxy = TcpProxy::start(s.stack.edge_addr()).await.unwrap();
    let alice = client(proxy.addr, s.dir.path(), "alice", "phone").await;
    let bob = client(s.edge2.addr, s.dir.path(), "bob", "laptop").await;
    alice.create_group("team", "Team", &["bob"]).await.unwrap();
    let first = alice.send("team", json!("before")).await.unwrap();
    let first_seq = acked(&alice, &first).await;
    // Let the engine go quiet: a queued command's answer is the last thing in flight, and the
    // device has acknowledged receiving its own message (an acknowledgement whose answer is
    // lost would hold the next send back until the engine gives the connection up).
    alice.mark_read("team", first_seq).await.unwrap();
    let store = &s.stack.stack.store;
    eventually(WAIT, "the queue to drain", || async {
        let delivered = store
            .conversation_states("alice", "phone", "", 10)
            .await
            .ok()?
            .into_iter()
            .find(|c| c.conv == "team")?
            .delivered_seq;
        (alice.pending_commands().await.ok()? == 0 && delivered >= first_seq).then_some(())
    })
    .await
    .unwrap();

    // The server's answers on this connection are lost; the message still reaches the
    // server. (Should the engine have had another request in flight, it gives the connection
    // up after its answer wait and sends on a new one: stored once all the same.)
    proxy.blackhole_down_open();
    let id = alice.send("team", json!("the one")).await.unwrap();
    let stored = eventually(WAIT, "the message stored on the server", || async {
        let rows = store.messages_after("team", 0, 100).await.ok()?;
        rows.iter().find(|m| m.client_msg_id == id).map(|m| m.seq)
    })
    .await
    .unwrap();
    if alice.outbox(&id).await.unwrap().unwrap().state == OutboxState::Sending {
        // Cut before the ack got through; the SDK reconnects and retries under the same id.
        proxy.cut();
    }
    assert_eq!(
        acked(&alice, &id).await,
        stored,
        "the retry got the original seq"
    );
    let copies = store
        .messages_after("team", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.client_msg_id == id)
        .count();
    assert_eq!(copies, 1);
    let local = alice.messages("team").await.unwrap();
    assert_eq!(local.iter().filter(|m| m.client_msg_id == id).count(), 1);
    let bob_seqs = has_messages(&bob, "team", 2).await;
    assert_eq!(bob_seqs.iter().filter(|s| **s == stored).count(), 1);
    alice.shutdown().await;
    bob.shutdown().await;
    s.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn a_senders_order_holds_across_reconnects() {
    let s = setup().await;
    let proxy = TcpProxy::start(s.stack.edge_addr()).await.unwrap();
    let alice = client(proxy.addr, s.dir.path(), "alice", "phone").await;
    let bob = client(s.edge2.addr, s.dir.path(), "bob", "laptop").await;
    alice.create_group("team", "Team", &["bob"]).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..30 {
        ids.push(alice.send("team", json!(n)).await.unwrap());
        if n % 7 == 3 {
            proxy.cut();
        }
    }
    let mut seqs = Vec::new();
    for id in &ids {
        seqs.push(acked(&alice, id).await);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "acked in send order: {seqs:?}"
    );
    // Bob sees them in the same order, each once.
    let bob_seqs = has_messages(&bob, "team", 30).await;
    assert_eq!(bob_seqs, seqs);
    let bodies: Vec<i64> = bob
        .messages("team")
        .await
        .unwrap()
        .iter()
        .map(|m| m.body.as_i64().unwrap())
        .collect();
    assert_eq!(bodies, (0..30).collect::<Vec<_>>());
    alice.shutdown().await;
    bob.shutdown().await;
    s.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn a_dropped_push_is_repaired_by_gap_detection() {
    let s = setup().await;
    let alice = client(s.stack.edge_addr(), s.dir.path(), "alice", "phone").await;
    let bob = client(s.edge2.addr, s.dir.path(), "bob", "laptop").await;
    let mut events = bob.subscribe();
    alice.create_group("team", "Team", &["bob"]).await.unwrap();
    let id = alice.send("team", json!("zero")).await.unwrap();
    let s0 = acked(&alice, &id).await;
    has_messages(&bob, "team", 1).await;
    assert_eq!(bob.anchor("team").await.unwrap(), s0);

    // The next message of the stream is the one lost on its way to bob.
    bob.drop_push(s0 + 1);
    let a = alice.send("team", json!("lost in transit")).await.unwrap();
    let b = alice.send("team", json!("after")).await.unwrap();
    let (sa, sb) = (acked(&alice, &a).await, acked(&alice, &b).await);
    let seqs = has_messages(&bob, "team", 3).await;
    assert_eq!(seqs, vec![s0, sa, sb]);
    assert_eq!(bob.anchor("team").await.unwrap(), sb);
    // The live copy of `sa` really was lost: bob holds it only through a sync.
    assert!(bob.push_dropped());
    // Usually the next push revealed the gap; a sync already under way may have got there
    // first, in which case no gap was ever seen.
    while let Ok(e) = events.try_recv() {
        if let ClientEvent::GapRepaired { conv, from, to } = e {
            assert_eq!((conv.as_str(), from, to), ("team", s0, sb));
        }
    }
    alice.shutdown().await;
    bob.shutdown().await;
    s.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn offline_actions_flush_in_order_and_reads_reach_other_devices() {
    let s = setup().await;
    let proxy = TcpProxy::start(s.stack.edge_addr()).await.unwrap();
    proxy.offline(true);
    let alice = client(proxy.addr, s.dir.path(), "alice", "phone").await;
    let mut alice_events = alice.subscribe();
    let bob_phone = client(s.stack.edge_addr(), s.dir.path(), "bob", "phone").await;
    let bob_laptop = client(s.edge2.addr, s.dir.path(), "bob", "laptop").await;

    // All of this happens offline: a group, messages into it, a 1:1 and a message there.
    alice.create_group("trip", "Trip", &["bob"]).await.unwrap();
    let m1 = alice.send("trip", json!("first")).await.unwrap();
    let dm = alice.open_direct("alice", "bob").await.unwrap();
    let m2 = alice.send(&dm, json!("psst")).await.unwrap();
    let m3 = alice.send("trip", json!("second")).await.unwrap();
    // A connection attempt fails while all of it is queued: nothing has left.
    tokio::time::timeout(WAIT, async {
        while !matches!(
            alice_events.recv().await,
            Ok(ClientEvent::Disconnected { .. })
        ) {}
    })
    .await
    .unwrap();
    assert_eq!(
        alice.outbox(&m1).await.unwrap().unwrap().state,
        OutboxState::Pending
    );
    let pending: Vec<_> = alice
        .messages("trip")
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(
        pending,
        vec![None, None],
        "shown as pending, by client time"
    );

    proxy.offline(false);
    let (s1, s2, s3) = (
        acked(&alice, &m1).await,
        acked(&alice, &m2).await,
        acked(&alice, &m3).await,
    );
    assert!(s1 < s3);
    assert_eq!(alice.pending_commands().await.unwrap(), 0);
    assert_eq!(has_messages(&bob_laptop, "trip", 2).await, vec![s1, s3]);
    assert_eq!(has_messages(&bob_laptop, &dm, 1).await, vec![s2]);

    // Bob reads on his phone; the laptop learns of it.
    has_messages(&bob_phone, "trip", 2).await;
    bob_phone.mark_read("trip", s3).await.unwrap();
    eventually(WAIT, "the read marker on bob's laptop", || async {
        (bob_laptop.read_marker("trip").await.ok()? == s3).then_some(())
    })
    .await
    .unwrap();
    alice.shutdown().await;
    bob_phone.shutdown().await;
    bob_laptop.shutdown().await;
    s.edge2.stop().await.unwrap();
}

#[tokio::test]
async fn a_device_catches_up_on_reconnect_after_a_restart() {
    let s = setup().await;
    let alice = client(s.stack.edge_addr(), s.dir.path(), "alice", "phone").await;
    let bob = client(s.edge2.addr, s.dir.path(), "bob", "laptop").await;
    alice.create_group("team", "Team", &["bob"]).await.unwrap();
    let id = alice.send("team", json!(0)).await.unwrap();
    acked(&alice, &id).await;
    has_messages(&bob, "team", 1).await;
    bob.shutdown().await;

    let mut last = 0;
    for n in 1..=12 {
        last = acked(&alice, &alice.send("team", json!(n)).await.unwrap()).await;
    }
    // Bob's app starts again with the same local store: it catches up from its anchor.
    let bob = client(s.edge2.addr, s.dir.path(), "bob", "laptop").await;
    let seqs = has_messages(&bob, "team", 13).await;
    assert_eq!(seqs.len(), 13);
    assert_eq!(*seqs.last().unwrap(), last);
    assert_eq!(bob.anchor("team").await.unwrap(), last);
    alice.shutdown().await;
    bob.shutdown().await;
    s.edge2.stop().await.unwrap();
}

// The outbox pipelines, and keeps its order through refusals: a burst well past the edge's
// rate limit is stored in the order it was written, each message once, on one connection (a
// pipelined window of refusals is not mistaken for a client ignoring them).
#[tokio::test]
async fn a_pipelined_outbox_keeps_its_order_through_refusals() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = anchorage_tests::test_config(
        &nats.url(),
        &anchorage_tests::fresh_database(db_dir.path())
            .await
            .unwrap(),
    );
    config.edge.rate_per_sec = 20;
    config.edge.rate_burst = 10;
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let alice = client(stack.edge_addr(), dir.path(), "alice", "phone").await;
    alice.create_group("burst", "Burst", &[]).await.unwrap();
    let mut events = alice.subscribe();
    let mut ids = Vec::new();
    for n in 0..60 {
        ids.push(alice.send("burst", json!(n)).await.unwrap());
    }
    let mut seqs = Vec::new();
    for id in &ids {
        seqs.push(acked(&alice, id).await);
    }
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stored in the order written: {seqs:?}"
    );
    let store = &stack.stack.store;
    let rows = eventually(WAIT, "all sixty in the history", || async {
        let rows = store.messages_after("burst", 0, 100).await.ok()?;
        (rows.len() == 60).then_some(rows)
    })
    .await
    .unwrap();
    let bodies: Vec<String> = rows.iter().map(|r| r.body.clone()).collect();
    let written: Vec<String> = (0..60).map(|n| n.to_string()).collect();
    assert_eq!(bodies, written, "each once, in order");
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, ClientEvent::Disconnected { .. }),
            "the burst stays on its connection: {event:?}"
        );
    }
    alice.shutdown().await;
}

// The local store follows every change to a message: edits, reactions (coalesced frames),
// pins, replies and revokes; a change lost in transit is noticed at the next entry and
// repaired by a sync.
#[tokio::test]
async fn changes_to_messages_reach_the_local_store_and_a_lost_one_is_repaired() {
    let s = setup().await;
    let alice = client(s.stack.edge_addr(), s.dir.path(), "alice", "phone").await;
    let bob = client(s.edge2.addr, s.dir.path(), "bob", "laptop").await;
    alice.create_group("team", "Team", &["bob"]).await.unwrap();
    let first = acked(&alice, &alice.send("team", json!("v1")).await.unwrap()).await;
    has_messages(&bob, "team", 1).await;
    let local = |c: &Client, seq: u64| {
        let c = c.clone();
        async move {
            c.messages("team")
                .await
                .ok()?
                .into_iter()
                .find(|m| m.seq == Some(seq))
        }
    };

    // Bob's copy of the edit is lost on the way; the next message shows the gap.
    bob.drop_push(first + 1);
    alice.edit("team", first, json!("v2")).await.unwrap();
    let second = acked(
        &alice,
        &alice
            .send_with(
                "team",
                json!("see above"),
                Refs {
                    reply_to: Some(first),
                    mentions: vec!["bob".into()],
                    mention_all: false,
                    attachments: Vec::new(),
                },
            )
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(second, first + 2, "the edit took the seq in between");
    assert!(bob.push_dropped());
    eventually(WAIT, "bob to see the edit", || async {
        let m = local(&bob, first).await?;
        (m.body == json!("v2") && m.edits == 1).then_some(())
    })
    .await
    .unwrap();
    let reply = eventually(WAIT, "bob to hold the reply", || local(&bob, second))
        .await
        .unwrap();
    assert_eq!(reply.refs.reply_to, Some(first));
    assert_eq!(reply.refs.mentions, vec!["bob".to_owned()]);

    // Reactions arrive as coalesced counts; each side knows its own.
    bob.react("team", first, "👍", false).await.unwrap();
    alice.react("team", first, "👍", false).await.unwrap();
    bob.react("team", first, "👀", false).await.unwrap();
    bob.react("team", first, "👀", true).await.unwrap();
    for (c, who) in [(&alice, "alice"), (&bob, "bob")] {
        eventually(WAIT, "the reactions in the local store", || async {
            let m = local(c, first).await?;
            let r = &m.reactions;
            (r.len() == 1 && r[0].emoji == "👍" && r[0].count == 2 && r[0].mine).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{who}: {e}"));
    }

    // A pin, then the revoke: every device keeps a tombstone in its place.
    alice.pin("team", second, false).await.unwrap();
    eventually(WAIT, "bob to see the pin", || async {
        local(&bob, second).await?.pinned.then_some(())
    })
    .await
    .unwrap();
    alice.revoke("team", first).await.unwrap();
    for c in [&alice, &bob] {
        let m = eventually(WAIT, "the tombstone", || async {
            local(c, first).await.filter(|m| m.revoked)
        })
        .await
        .unwrap();
        assert!(m.body.is_null() && m.reactions.is_empty(), "{m:?}");
    }
    let edits = bob.edits("team", first).await.unwrap();
    assert!(edits.is_empty(), "{edits:?}");
    // Only the sender or a group's staff revokes: bob's attempt is refused, his store keeps
    // the message.
    bob.revoke("team", second).await.unwrap();
    eventually(WAIT, "the refused revoke to be settled", || async {
        (bob.pending_commands().await.ok()? == 0).then_some(())
    })
    .await
    .unwrap();
    assert!(!local(&bob, second).await.unwrap().revoked);
    alice.shutdown().await;
    bob.shutdown().await;
    s.edge2.stop().await.unwrap();
}

// A user's own state — how each conversation looks to them, the messages they deleted for
// themselves, their privacy — is the same on every device: live, after a restart, and after a
// change lost on the way.
#[tokio::test]
async fn a_users_own_state_follows_them_to_every_device() {
    let s = setup().await;
    let phone = client(s.stack.edge_addr(), s.dir.path(), "alice", "phone").await;
    let laptop = client(s.edge2.addr, s.dir.path(), "alice", "laptop").await;
    let bob = client(s.edge2.addr, s.dir.path(), "bob", "phone").await;
    phone.create_group("team", "Team", &["bob"]).await.unwrap();
    let first = acked(&phone, &phone.send("team", json!("oops")).await.unwrap()).await;
    let second = acked(&phone, &phone.send("team", json!("fine")).await.unwrap()).await;
    has_messages(&laptop, "team", 2).await;
    has_messages(&bob, "team", 2).await;

    phone
        .set_prefs(anchorage_sdk::SetPrefs {
            conv: anchorage_tests::conv_id("team"),
            pinned: Some(true),
            archived: None,
            muted_until: None,
            draft: Some("half a thought".into()),
            notify: None,
        })
        .await
        .unwrap();
    eventually(WAIT, "the laptop to see the pin and the draft", || async {
        let p = laptop.prefs("team").await.ok()?;
        (p.pinned && p.draft.as_deref() == Some("half a thought")).then_some(())
    })
    .await
    .unwrap();

    // Deleted for alice, on all her devices; bob keeps it.
    phone.hide("team", &[first]).await.unwrap();
    for c in [&phone, &laptop] {
        eventually(WAIT, "the message gone for alice", || async {
            let seqs: Vec<u64> = c
                .messages("team")
                .await
                .ok()?
                .iter()
                .filter_map(|m| m.seq)
                .collect();
            (!seqs.contains(&first) && seqs.contains(&second)).then_some(())
        })
        .await
        .unwrap();
    }
    assert_eq!(has_messages(&bob, "team", 2).await.len(), 2);
    let page = s
        .stack
        .stack
        .store
        .messages_after_for("team", 0, 10, "alice")
        .await
        .unwrap();
    assert!(
        page.iter().all(|m| m.seq != first),
        "the server leaves it out too"
    );

    // While the laptop is off: archived, muted, receipts off; it catches up at sign-in.
    laptop.shutdown().await;
    phone
        .set_prefs(anchorage_sdk::SetPrefs {
            conv: anchorage_tests::conv_id("team"),
            pinned: None,
            archived: Some(true),
            muted_until: Some(4_102_444_800_000),
            draft: Some(String::new()),
            notify: None,
        })
        .await
        .unwrap();
    phone.set_privacy(Some(false), None).await.unwrap();
    let laptop = client(s.edge2.addr, s.dir.path(), "alice", "laptop").await;
    eventually(WAIT, "the laptop to catch up on its state", || async {
        let p = laptop.prefs("team").await.ok()?;
        let privacy = laptop.privacy().await.ok()?;
        (p.pinned
            && p.archived
            && p.muted_until == Some(4_102_444_800_000)
            && p.draft.is_none()
            && privacy == (false, true))
            .then_some(())
    })
    .await
    .unwrap();

    // A change lost on the way to the laptop is noticed at the next one and fetched.
    let users = s.stack.stack.bus.stream_state("USERS").await.unwrap();
    laptop.drop_push(users.last_seq.0 + 1);
    phone
        .set_prefs(anchorage_sdk::SetPrefs {
            conv: anchorage_tests::conv_id("team"),
            pinned: Some(false),
            archived: None,
            muted_until: None,
            draft: None,
            notify: None,
        })
        .await
        .unwrap();
    phone.set_privacy(None, Some(false)).await.unwrap();
    eventually(WAIT, "the laptop to repair the lost change", || async {
        let p = laptop.prefs("team").await.ok()?;
        let privacy = laptop.privacy().await.ok()?;
        (!p.pinned && privacy == (false, false)).then_some(())
    })
    .await
    .unwrap();
    assert!(laptop.push_dropped());
    phone.shutdown().await;
    laptop.shutdown().await;
    bob.shutdown().await;
    s.edge2.stop().await.unwrap();
}

/// How the scripted edge answers a `members_sync` that carries a copy.
#[derive(Clone, Copy)]
enum DiffAnswer {
    /// The diff to version 7 as an object.
    Object,
    /// The diff to version 7 as an array, whether asked for or not.
    Array,
    /// An array that does not move the copy forward (version 5).
    Backward,
}

/// A scripted edge on `listener`: answers each client frame with what `answer` makes of it
/// (one frame, as JSON), and the `hello` of the user alice (device d1) with a welcome listing
/// `changes`. Returns its address and the count of connections.
async fn scripted_edge(
    listener: tokio::net::TcpListener,
    changes: serde_json::Value,
    compact: bool,
    answer: impl Fn(&serde_json::Value) -> serde_json::Value + Send + Sync + 'static,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = connections.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (answer, changes) = (answer.clone(), changes.clone());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(Message::Text(text))) = ws.next().await {
                    let f: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let reply = match f["type"].as_str() {
                        Some("hello") => json!({"type": "welcome", "id": f["id"],
                            "protocol": 1, "user": "alice", "device": "d1",
                            "max_frame_bytes": 65536, "changes": changes, "compact": compact}),
                        _ => answer(&f),
                    };
                    if ws
                        .send(Message::Text(reply.to_string().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A scripted edge for the SDK's member-list sync: a welcome offering positional diffs or not,
/// a realignment to `{a, b}` at version 5 for a sync without a copy, `answer` for a sync with
/// one, `ok` to anything else. Returns its address, the `compact` of each sync with a copy, and
/// the count of connections.
async fn member_edge(
    offer: bool,
    answer: DiffAnswer,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<Option<bool>>>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    let (addr, connections) = scripted_edge(listener().await, json!([]), offer, move |f| {
        let id = f["id"].clone();
        match (f["type"].as_str(), f.get("epoch")) {
            (Some("members_sync"), None) => json!({"type": "members_page",
                "id": id, "group": "g", "epoch": "e1", "anchor": 5,
                "members": ["a", "b"]}),
            (Some("members_sync"), Some(_)) => {
                seen.lock().unwrap().push(f["compact"].as_bool());
                let digest = anchorage_digest::SetDigest::of(["a", "b", "c"]);
                match answer {
                    DiffAnswer::Object => json!({"type": "members_diff", "id": id,
                        "group": "g", "epoch": "e1", "version": 7,
                        "digest": digest.to_wire(), "upserts": [{"user": "c"}],
                        "removed": [], "more": false}),
                    DiffAnswer::Array => json!([id, 7, digest.to_wire(), ["c"], [], 0]),
                    DiffAnswer::Backward => json!([id, 5, null, ["c"], [], 0]),
                }
            }
            _ => json!({"type": "ok", "id": id}),
        }
    })
    .await;
    (addr, asked, connections)
}

/// An edge whose projection catches up (`sync` answered `overloaded`) is asked again on the
/// same connection at the pace it sets; one that stays overloaded costs the connection after
/// a few asks, and the next connection asks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_answer_is_asked_again_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    let changes = json!([{"conv": "ops", "last_seq": 1, "unread": 1, "read_seq": 0}]);
    for (refusals, reconnects) in [(2, false), (usize::MAX, true)] {
        let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let asked = syncs.clone();
        let (addr, connections) =
            scripted_edge(listener().await, changes.clone(), false, move |f| {
                let id = f["id"].clone();
                if f["type"] != "sync" {
                    return json!({"type": "ok", "id": id});
                }
                if asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < refusals {
                    return json!({"type": "error", "id": id, "code": "overloaded",
                    "message": "catching up", "retry_after_ms": 50});
                }
                json!({"type": "messages", "id": id, "conv": "ops", "more": false,
                "messages": [{"conv": "ops", "seq": 1, "sender": "eve", "device": "x",
                    "client_msg_id": "c1", "body": "hi", "client_ts": 1, "server_ts": 1}]})
            })
            .await;
        let c = client(addr, dir.path(), &format!("alice{refusals}"), "d1").await;
        let connected = || connections.load(std::sync::atomic::Ordering::SeqCst);
        let asks = || syncs.load(std::sync::atomic::Ordering::SeqCst);
        if reconnects {
            eventually(WAIT, "a second connection", || async {
                (connected() >= 2).then_some(())
            })
            .await
            .unwrap();
            // Asked six times on the first connection, at the pace it set.
            assert!(asks() >= 6, "{} syncs", asks());
            assert!(c.messages("ops").await.unwrap().is_empty());
        } else {
            assert_eq!(has_messages(&c, "ops", 1).await, [1]);
            assert_eq!(asks(), 3);
            assert_eq!(connected(), 1, "asked again, not reconnected");
        }
        c.shutdown().await;
    }
}

/// A listener on a free port of loopback.
async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Sends refused as `overloaded` (an edge whose copy of the memberships is behind, right
/// after a group was created) go again on the same connection once the wait the edge asked
/// for is over, in their order, however often it says so: many clients reconnecting at once
/// would only add to the load. A wait of 0 is taken as the least wait, not as a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_sends_go_again_on_the_same_connection() {
    let dir = tempfile::tempdir().unwrap();
    // Queued before the edge answers, the four go out as one window.
    let listener = listener().await;
    let c = client(listener.local_addr().unwrap(), dir.path(), "alice", "d1").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(c.send("ops", json!(n)).await.unwrap());
    }
    const REFUSED: usize = 10;
    let sends = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = sends.clone();
    let started = std::time::Instant::now();
    let (_, connections) = scripted_edge(listener, json!([]), false, move |f| {
        let id = f["id"].clone();
        if f["type"] != "send" {
            return json!({"type": "ok", "id": id});
        }
        let mut seen = seen.lock().unwrap();
        seen.push(f["client_msg_id"].as_str().unwrap().to_owned());
        match seen.len() {
            1 => json!({"type": "error", "id": id, "code": "overloaded",
                "message": "catching up with the members", "retry_after_ms": 0}),
            2..=4 => json!({"type": "error", "id": id, "code": "out_of_order",
                "message": "a send before it was refused"}),
            n if n <= REFUSED => json!({"type": "error", "id": id, "code": "overloaded",
                "message": "catching up with the members", "retry_after_ms": 0}),
            n => json!({"type": "ack", "id": id, "client_msg_id": f["client_msg_id"],
                "seq": n - REFUSED, "server_ts": 1, "duplicate": false}),
        }
    })
    .await;
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(acked(&c, id).await, n as u64 + 1, "in their order");
    }
    let sent = sends.lock().unwrap().clone();
    assert_eq!(sent[..4], ids[..], "one window");
    assert!(
        sent[4..REFUSED].iter().all(|s| *s == ids[0]),
        "then the first alone while it is refused: {sent:?}"
    );
    assert_eq!(sent[REFUSED..], ids[..], "then all of them in order");
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "sent again, not reconnected"
    );
    // Seven refused rounds, each waiting at least the least wait.
    assert!(
        started.elapsed() >= Duration::from_millis(7 * 50),
        "{:?}",
        started.elapsed()
    );
    c.shutdown().await;
}

/// The app's own request gets an `overloaded` refusal at once: it is the app's to decide
/// whether to ask again, and the engine's other work does not wait behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_request_is_answered_overloaded_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = scripted_edge(listener().await, json!([]), false, |f| {
        let id = f["id"].clone();
        match f["type"].as_str() {
            Some("presence") => json!({"type": "error", "id": id, "code": "overloaded",
                "message": "catching up", "retry_after_ms": 8000}),
            Some("send") => json!({"type": "ack", "id": id,
                "client_msg_id": f["client_msg_id"], "seq": 1, "server_ts": 1,
                "duplicate": false}),
            _ => json!({"type": "ok", "id": id}),
        }
    })
    .await;
    let c = client(addr, dir.path(), "alice", "d1").await;
    let started = std::time::Instant::now();
    let answer = c.presence(&["bob"]).await;
    assert!(answer.is_err(), "{answer:?}");
    let id = c.send("ops", json!("hi")).await.unwrap();
    assert_eq!(acked(&c, &id).await, 1);
    // The refusal and then the send, both long before the 8 s the edge named.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    c.shutdown().await;
}

/// The SDK asks for positional diffs only of an edge that offers them, takes an array only
/// as the answer to a sync that asked, and never a diff that does not move its copy forward:
/// a server that breaks either rule costs it the connection, not its member list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positional_diffs_are_asked_only_where_offered_and_taken_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // An older edge: never asked, its object diff applied.
        (false, DiffAnswer::Object, Some(7)),
        // An edge that offers it: asked, its array applied.
        (true, DiffAnswer::Array, Some(7)),
        // An array to a sync that did not ask, a diff that goes backwards: not applied.
        (false, DiffAnswer::Array, None),
        (true, DiffAnswer::Backward, None),
    ];
    for (n, (offer, answer, applied)) in cases.into_iter().enumerate() {
        let (addr, asked, connections) = member_edge(offer, answer).await;
        let c = client(addr, dir.path(), &format!("alice{n}"), "d1").await;
        c.sync_members("g");
        eventually(WAIT, "a sync with a copy", || async {
            (!asked.lock().unwrap().is_empty()).then_some(())
        })
        .await
        .unwrap();
        let version = || async { c.member_list("g").await.unwrap().map(|l| l.version) };
        match applied {
            Some(v) => {
                eventually(WAIT, "the diff applied", || async {
                    (version().await == Some(v)).then_some(())
                })
                .await
                .unwrap();
                let members: Vec<String> = c
                    .members("g")
                    .await
                    .unwrap()
                    .iter()
                    .map(|m| m.user.to_string())
                    .collect();
                assert_eq!(members, ["a", "b", "c"], "case {n}");
            }
            None => {
                eventually(WAIT, "the connection dropped", || async {
                    (connections.load(std::sync::atomic::Ordering::SeqCst) > 1).then_some(())
                })
                .await
                .unwrap();
                assert_eq!(
                    version().await,
                    Some(5),
                    "case {n}: the copy stays where it was"
                );
            }
        }
        let compact = asked.lock().unwrap().clone();
        let expected = if offer { Some(true) } else { None };
        assert!(
            compact.iter().all(|c| *c == expected),
            "case {n}: {compact:?}"
        );
        c.shutdown().await;
    }
}
