//! Rebuilding the projections from the streams (`anchorage replay`): events that can never
//! apply anywhere in a batch, entries erased at and before the target, a sender's ids reused on
//! the edges of an insert's chunks, NATS going away in the middle.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{system_event, user};
use anchorage_bus::Bus;
use anchorage_projector::Projection;
use anchorage_projector::replay::{ReplayOptions, replay};
use anchorage_schema::event::{
    MessageEdited, MessageRevoked, MessageSent, ReactionChanged, ReadMarked, UserCreated,
};
use anchorage_schema::subjects;
use anchorage_schema::{ClientMsgId, ConversationId, DeviceId, Envelope, Event, GroupId, UserId};
use anchorage_tests::{
    TestNats, TestStack, dead_letters, eventually, rebuild_differences, rebuild_target,
    replay_options,
};

const WAIT: Duration = Duration::from_secs(30);

fn sent(conv: &ConversationId, id: &str, n: u32, mentions: Vec<UserId>) -> Envelope {
    system_event(
        &format!("ev-{id}-{n}"),
        MessageSent {
            conv: conv.clone(),
            sender: user("alice"),
            device: DeviceId::parse("d1").unwrap(),
            client_msg_id: ClientMsgId::parse(id).unwrap(),
            body: serde_json::json!({"text": format!("hello {n} word{}", n % 7)}),
            client_ts: 1_763_839_999_000 + i64::from(n),
            reply_to: None,
            mentions,
            mention_all: false,
            attachments: Vec::new(),
        },
    )
}

fn edited(conv: &ConversationId, target: u64, n: u32) -> Envelope {
    system_event(
        &format!("ev-edit-{n}"),
        MessageEdited {
            conv: conv.clone(),
            target,
            editor: user("alice"),
            device: DeviceId::parse("d1").unwrap(),
            body: serde_json::json!({"text": format!("edited {n}")}),
        },
    )
}

fn revoked(conv: &ConversationId, target: u64, cmid: &str, n: u32, client_ts: i64) -> Envelope {
    system_event(
        &format!("ev-revoke-{n}"),
        MessageRevoked {
            conv: conv.clone(),
            target,
            sender: "alice".into(),
            device: "d1".into(),
            client_msg_id: cmid.into(),
            client_ts,
            sent_at: 1_763_840_000_000,
        },
    )
}

fn reacted(conv: &ConversationId, target: u64, n: u32, added: bool) -> Envelope {
    system_event(
        &format!("ev-react-{n}"),
        ReactionChanged {
            conv: conv.clone(),
            target,
            user: user("bob"),
            emoji: "👍".into(),
            added,
        },
    )
}

/// A nats-server and a stack of their own: the tests read and erase the streams' sequences,
/// and one kills the server.
async fn own_stack() -> (TestNats, TestStack) {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    (nats, stack)
}

async fn live_at_end(bus: &Bus, store: &anchorage_store::Store) {
    for p in Projection::ALL {
        let end = bus.stream_state(p.stream()).await.unwrap().last_seq.0;
        if end == 0 {
            continue;
        }
        eventually(WAIT, "the live projection to reach the end", || async {
            let at = store.checkpoint(p.name()).await.ok()??;
            (at.last_seq >= end).then_some(())
        })
        .await
        .unwrap();
    }
}

/// Stores `events` in `conv`, pipelined, once each is acknowledged.
async fn store_pipelined(bus: &Bus, conv: &ConversationId, events: impl Iterator<Item = Envelope>) {
    let subject = subjects::message(conv);
    let mut pending = Vec::new();
    for e in events {
        pending.push(
            bus.publish_event_pipelined(&subject, &e, None)
                .await
                .unwrap(),
        );
    }
    for ack in pending {
        ack.stored().await.unwrap();
    }
}

/// Message 1 revoked (at 3), then an edit of it (at 4) decided before the revoke: the live
/// projector erases the edit, so the last sequence of MESSAGES is a hole. A replay's target
/// is that hole.
async fn stream_ending_in_a_hole(bus: &Bus, conv: &ConversationId) {
    let a = bus
        .publish_event(&subjects::message(conv), &sent(conv, "h1", 1, vec![]), None)
        .await
        .unwrap();
    bus.publish_event(&subjects::message(conv), &sent(conv, "h2", 2, vec![]), None)
        .await
        .unwrap();
    bus.publish_event(
        &subjects::message(conv),
        &revoked(conv, a.seq.0, "h1", 3, 1_763_839_999_001),
        None,
    )
    .await
    .unwrap();
    bus.publish_event(&subjects::message(conv), &edited(conv, a.seq.0, 4), None)
        .await
        .unwrap();
}

// The last sequence of MESSAGES was erased by the live projector (an edit that came after a
// revoke). A rebuild must finish, at that sequence.
#[tokio::test]
async fn a_rebuild_finishes_when_the_last_message_sequence_was_erased() {
    let (_nats, stack) = own_stack().await;
    let bus: &Bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let conv = ConversationId::parse("h").unwrap();
    stream_ending_in_a_hole(bus, &conv).await;
    live_at_end(bus, store).await;
    let state = bus.stream_state(subjects::stream::MESSAGES).await.unwrap();
    assert_eq!(state.last_seq.0, 4);
    assert_eq!(state.messages, 2, "1 and 4 erased: {state:?}");

    let (_dir, rebuilt) = rebuild_target(&stack.config).await;
    let options = replay_options(&stack.config, anchorage_projector::replay::BATCH);
    let done = tokio::time::timeout(
        Duration::from_secs(20),
        replay(bus, &rebuilt, &options, |_| {}),
    )
    .await;
    assert!(
        done.is_ok(),
        "the replay hangs: its target (MESSAGES last_seq 4) was erased and nothing comes after \
         it; rebuilt messages checkpoint = {:?}",
        rebuilt.checkpoint("messages").await.unwrap()
    );
    done.unwrap().unwrap();
    assert_eq!(
        rebuild_differences(store, &rebuilt).await,
        Vec::<String>::new()
    );
    stack.stack.stop().await.unwrap();
}

// The same hole as the target of a replay that has events after it (as `--verify` sets
// `upto` to the live checkpoint): the rebuild must end at the target.
#[tokio::test]
async fn a_rebuild_up_to_an_erased_sequence_ends_at_it() {
    let (_nats, stack) = own_stack().await;
    let bus: &Bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let conv = ConversationId::parse("h").unwrap();
    stream_ending_in_a_hole(bus, &conv).await;
    live_at_end(bus, store).await;
    bus.publish_event(
        &subjects::message(&conv),
        &sent(&conv, "h5", 5, vec![]),
        None,
    )
    .await
    .unwrap();
    live_at_end(bus, store).await;

    for batch in [1, 2, 10_000] {
        let (_dir, rebuilt) = rebuild_target(&stack.config).await;
        let options = ReplayOptions {
            upto: BTreeMap::from([(Projection::Messages, 4)]),
            ..replay_options(&stack.config, batch)
        };
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            replay(bus, &rebuilt, &options, |_| {}),
        )
        .await
        .expect("the replay finishes");
        let at = rebuilt.checkpoint("messages").await.unwrap();
        assert!(
            result.is_ok() && at.map(|c| c.last_seq) == Some(4),
            "batch {batch}: replay upto 4 (erased) returned {result:?}, checkpoint {at:?}; \
             the live projection passed 4 with its checkpoint at 4"
        );
    }
    stack.stack.stop().await.unwrap();
}

// Poison at many positions (runs longer than a batch, first, last, on edges), in every
// stream, with edits/revokes/reactions around batch edges and duplicate client ids: every
// batch size rebuilds the live state exactly and rejects exactly the dead letters.
#[tokio::test]
async fn poison_anywhere_in_any_stream_is_set_aside_at_every_batch_size() {
    let (nats, stack) = own_stack().await;
    let bus: &Bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let convs: Vec<ConversationId> = (0..3)
        .map(|i| ConversationId::parse(format!("p{i}")).unwrap())
        .collect();
    let mut junk = 0u32;
    let mut poison = |bus: &'static str| {
        junk += 1;
        (format!("junk-{bus}-{junk}"), b"{not json".to_vec())
    };
    let mut stored: Vec<(ConversationId, u64, String, i64)> = Vec::new();
    let mut n = 0u32;
    for i in 1..=260u32 {
        let conv = &convs[i as usize % convs.len()];
        let subject = subjects::message(conv);
        let is_poison = i <= 2 || (40..=52).contains(&i) || i % 17 == 0 || i == 128 || i == 129;
        if is_poison {
            let (id, body) = poison("m");
            bus.publish_raw(&subject, Some(&id), body).await.unwrap();
            continue;
        }
        n += 1;
        let e = match i % 9 {
            // An edit / reaction / revoke of an earlier message of the conversation.
            3 | 5 | 7 if !stored.iter().any(|(c, _, _, _)| c == conv) => {
                sent(conv, &format!("c{n}"), n, vec![])
            }
            3 => {
                let (_, t, _, _) = stored.iter().rev().find(|(c, _, _, _)| c == conv).unwrap();
                edited(conv, *t, n)
            }
            5 => {
                let (_, t, _, _) = stored.iter().rev().find(|(c, _, _, _)| c == conv).unwrap();
                reacted(conv, *t, n, n.is_multiple_of(2))
            }
            7 => {
                let (_, t, id, ts) = stored
                    .iter()
                    .find(|(c, _, _, _)| c == conv)
                    .unwrap()
                    .clone();
                stored.retain(|(_, s, _, _)| *s != t);
                revoked(conv, t, &id, n, ts)
            }
            // A client id reused (a duplicate send that must not count twice).
            8 if n > 10 => sent(conv, &format!("c{}", n - 9), n, vec![user("bob")]),
            _ => sent(conv, &format!("c{n}"), n, vec![user("bob"), user("carol")]),
        };
        let p = bus.publish_event(&subject, &e, None).await.unwrap();
        // A reused id is not a message of its own.
        if let Event::MessageSent(m) = &e.event
            && !(p.duplicate || i % 9 == 8 && n > 10)
        {
            stored.push((
                conv.clone(),
                p.seq.0,
                m.client_msg_id.to_string(),
                m.client_ts,
            ));
        }
    }
    // A normal message last (the target must not be a hole here).
    let last = sent(&convs[0], "last", 9999, vec![]);
    bus.publish_event(&subjects::message(&convs[0]), &last, None)
        .await
        .unwrap();

    // USERS: users with poison around; READS: markers with poison; MEMBERSHIP: only poison.
    for i in 1..=30u32 {
        let u = user(&format!("u{i}"));
        if i % 4 == 0 || i == 1 || i == 30 {
            let (id, body) = poison("u");
            bus.publish_raw(&subjects::user(&u), Some(&id), body)
                .await
                .unwrap();
        } else {
            let e = system_event(
                &format!("ev-user-{i}"),
                UserCreated {
                    user: u.clone(),
                    display_name: format!("U {i}"),
                },
            );
            bus.publish_event(&subjects::user(&u), &e, None)
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            let (id, body) = poison("r");
            bus.publish_raw(&subjects::read(&u, &convs[0]), Some(&id), body)
                .await
                .unwrap();
        } else {
            let e = system_event(
                &format!("ev-read-{i}"),
                ReadMarked {
                    user: u.clone(),
                    conv: convs[0].clone(),
                    read_seq: u64::from(i),
                },
            );
            bus.publish_event(&subjects::read(&u, &convs[0]), &e, None)
                .await
                .unwrap();
        }
        if i <= 5 {
            let (id, body) = poison("g");
            let g = GroupId::parse(format!("g{i}")).unwrap();
            bus.publish_raw(&subjects::membership(&g), Some(&id), body)
                .await
                .unwrap();
        }
    }
    live_at_end(bus, store).await;
    let dead = dead_letters(&nats.url()).await.unwrap().len() as u64;
    let mut failures = Vec::new();
    for batch in [1, 2, 3, 5, 8, 13, 64, 1000, 10_000] {
        let (_dir, rebuilt, summary) = anchorage_tests::rebuilt(&stack.config, bus, batch).await;
        let d = rebuild_differences(store, &rebuilt).await;
        if summary.rejected != dead || !d.is_empty() {
            failures.push(format!(
                "batch {batch}: rejected {} (dead letters {dead}), differences {d:?}",
                summary.rejected
            ));
        }
    }
    assert_eq!(failures, Vec::<String>::new());
    stack.stack.stop().await.unwrap();
}

// 2,500 messages of one conversation in one replay batch (chunks of 1000 rows), with client
// ids reused at chunk edges (first and last row of a chunk, the last row of all), mentions on
// every message: the chunks holding a duplicate fall back to RETURNING; the rebuild equals
// the live projection (rows, counts, mentions, search documents).
#[tokio::test]
async fn ids_reused_on_the_edges_of_insert_chunks_count_once() {
    let (_nats, stack) = own_stack().await;
    let bus: &Bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let conv = ConversationId::parse("big").unwrap();
    let dup_at = [2u32, 1000, 1001, 1002, 1999, 2000, 2001, 2500];
    let events = (1..=2500u32).map(|n| {
        let id = if dup_at.contains(&n) {
            format!("c{}", n / 2)
        } else {
            format!("c{n}")
        };
        sent(
            &conv,
            &id,
            n,
            vec![user("bob"), user(&format!("u{}", n % 5))],
        )
    });
    store_pipelined(bus, &conv, events).await;
    live_at_end(bus, store).await;
    for batch in [10_000, 999, 1000] {
        let (_dir, rebuilt, summary) = anchorage_tests::rebuilt(&stack.config, bus, batch).await;
        assert_eq!((summary.applied, summary.rejected), (2500, 0));
        let d = rebuild_differences(store, &rebuilt).await;
        assert_eq!(d, Vec::<String>::new(), "batch {batch}");
        let c = rebuilt.conversation("big").await.unwrap().unwrap();
        assert_eq!(
            (c.message_count, c.last_seq),
            (2493, 2499),
            "batch {batch}: 7 reused ids (c1000 at n=2000 is new), n=2500 a duplicate"
        );
    }
    stack.stack.stop().await.unwrap();
}

// NATS goes away in the middle of a replay: the replay must fail, not finish early.
#[tokio::test]
async fn a_rebuild_fails_when_nats_goes_away_in_the_middle() {
    let (nats, stack) = own_stack().await;
    let bus: &Bus = &stack.stack.bus;
    let store = &stack.stack.store;
    let conv = ConversationId::parse("k").unwrap();
    let events = (1..=3000u32).map(|n| sent(&conv, &format!("k{n}"), n, vec![]));
    store_pipelined(bus, &conv, events).await;
    live_at_end(bus, store).await;
    let (_dir, rebuilt) = rebuild_target(&stack.config).await;
    let options = replay_options(&stack.config, 50);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut nats = nats;
    let killer = async move {
        rx.recv().await;
        nats.server.kill().await.unwrap();
        nats
    };
    let run = replay(bus, &rebuilt, &options, move |p| {
        if p.done >= 100 {
            let _ = tx.send(());
        }
    });
    let (result, _nats) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(run, killer) })
            .await
            .expect("the replay returns once NATS went away");
    let at = rebuilt.checkpoint("messages").await.unwrap();
    assert!(
        result.is_err() || at.map(|c| c.last_seq) == Some(3000),
        "replay returned Ok while the messages checkpoint is {at:?} of 3000"
    );
}
