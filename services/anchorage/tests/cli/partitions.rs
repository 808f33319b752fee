//! The messages projection split into partitions over several projector processes: the holder
//! of the partitions killed under load, then two of three partitions gone ahead alone and the
//! partition count changed under load, end in
//! exactly the state of a rebuild from the streams — no entry skipped or applied twice (every
//! message is edited once, and an edit applied twice would show). A process started with
//! another partition count while one runs refuses to apply. Runs on SQLite, and on PostgreSQL
//! when the suite runs against it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_schema::event::MessageEdited;
use anchorage_schema::{DeviceId, UserId, subjects};

use crate::crash::{
    MESSAGES, checkpoint, checkpoint_passes, cli, env, projected_everything, publish_message,
    setup, signal, spawn_with, store,
};

/// Messages published (and edited) in each phase.
const DURING: u32 = 600;
const CONVERSATIONS: u32 = 12;
/// Messages published after the count-2 process is killed.
const LAST: u32 = 60;

/// `anchorage projector` with the messages projection in `count` partitions.
fn projector(config_file: &Path, count: u16) -> tokio::process::Child {
    projector_of(config_file, count, "[]")
}

/// `anchorage projector` applying only `partitions` (a TOML list) of `count`, as the
/// projector's own NATS user (which makes the partitions' consumers and reads the leases).
fn projector_of(config_file: &Path, count: u16, partitions: &str) -> tokio::process::Child {
    let metrics = format!("127.0.0.1:{}", anchorage::natsd::free_ports(1).unwrap()[0]);
    let password = anchorage_tests::credentials()
        .password("projector")
        .unwrap()
        .to_owned();
    spawn_with(
        config_file,
        &["projector"],
        &[
            ("ANCHORAGE_NATS__USER", "projector".to_owned()),
            ("ANCHORAGE_NATS__PASSWORD", password),
            ("ANCHORAGE_PROJECTOR__MESSAGE_PARTITIONS", count.to_string()),
            ("ANCHORAGE_PROJECTOR__PARTITIONS", partitions.to_owned()),
            ("ANCHORAGE_PROJECTOR__METRICS_LISTEN", metrics),
        ],
    )
}

/// Publishes `DURING` messages of `series`, each followed by an edit of it, at a steady pace.
async fn publish_and_edit(bus: Bus, series: &'static str) {
    for n in 0..DURING {
        let conv = publish_message(&bus, series, n).await;
        let target = bus.stream_state("MESSAGES").await.unwrap().last_seq.0;
        let edit = env(
            format!("d:{series}e{n}"),
            MessageEdited {
                conv: conv.clone(),
                target,
                editor: UserId::parse(format!("u{}", n % 7)).unwrap(),
                device: DeviceId::parse("d").unwrap(),
                body: serde_json::json!({"n": n, "edited": true}),
            },
        );
        bus.publish_event(&subjects::message(&conv), &edit, None)
            .await
            .unwrap();
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

async fn stop(child: &mut tokio::process::Child, how: &str) {
    signal(child.id().unwrap(), how);
    child.wait().await.unwrap();
}

#[tokio::test]
async fn partitions_apply_every_entry_once_across_a_crash_and_a_change_of_count() {
    let s = setup().await;
    let live = store(&s.live_url).await;

    // Three partitions; the first process takes them, the second stands by and takes over
    // when the first is killed.
    let load = tokio::spawn(publish_and_edit(s.bus.clone(), "p"));
    let mut a = projector(&s.config_file, 3);
    let mut b = projector(&s.config_file, 3);
    checkpoint_passes(&live, "messages", 300).await;
    stop(&mut a, "-KILL").await;
    load.await.unwrap();
    projected_everything(&live, &s.bus).await;
    let end = s.bus.stream_state("MESSAGES").await.unwrap().last_seq.0;
    for i in 0..3 {
        let at = checkpoint(&live, &format!("messages-{i}-of-3")).await;
        assert!(at >= end, "partition {i} of 3 is at {at} of {end}");
    }

    // Partitions 0 and 1 go on alone: the whole projection stays where partition 2 is.
    stop(&mut b, "-TERM").await;
    let load = tokio::spawn(publish_and_edit(s.bus.clone(), "q"));
    let mut b = projector_of(&s.config_file, 3, "[0,1]");
    load.await.unwrap();
    // Entries these partitions pass without storing a row: an edit whose id repeats an
    // earlier one's (stored by the stream, refused by the history) and events that cannot
    // apply (set aside). The next count must not apply or set them aside again.
    let conv = (0..CONVERSATIONS)
        .map(|n| format!("c{n}"))
        .find(|c| anchorage_projector::Partition::of(c, 3) != 2)
        .unwrap();
    let subject = format!("msg.{conv}");
    let target = s.bus.stream_state("MESSAGES").await.unwrap().last_seq.0;
    let message = env(
        "d:dup-target".into(),
        anchorage_schema::event::MessageSent {
            conv: anchorage_schema::ConversationId::parse(conv.clone()).unwrap(),
            sender: UserId::parse("u1").unwrap(),
            device: DeviceId::parse("d").unwrap(),
            client_msg_id: anchorage_schema::ClientMsgId::parse("dup-target").unwrap(),
            body: serde_json::json!({"n": 0}),
            client_ts: 0,
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        },
    );
    s.bus.publish_event(&subject, &message, None).await.unwrap();
    let edit = |text: &str| {
        env(
            "d:dup-edit".into(),
            MessageEdited {
                conv: anchorage_schema::ConversationId::parse(conv.clone()).unwrap(),
                target: target + 1,
                editor: UserId::parse("u1").unwrap(),
                device: DeviceId::parse("d").unwrap(),
                body: serde_json::json!({"text": text}),
            },
        )
        .to_json()
    };
    for text in ["B", "C", "B"] {
        s.bus.publish_raw(&subject, None, edit(text)).await.unwrap();
    }
    s.bus
        .publish_raw(&subject, None, b"{not json".to_vec())
        .await
        .unwrap();
    let ahead = s.bus.stream_state("MESSAGES").await.unwrap().last_seq.0;
    for i in 0..2 {
        checkpoint_passes(&live, &format!("messages-{i}-of-3"), ahead - 1).await;
    }
    stop(&mut b, "-TERM").await;
    assert_eq!(checkpoint(&live, "messages").await, end);
    let set_aside = s.bus.stream_state("DEADLETTER").await.unwrap().messages;
    assert!(set_aside > 0);

    // Two partitions instead, under load: they start where the whole projection stands and
    // skip the entries partitions 0 and 1 of 3 had applied beyond it.
    let load = tokio::spawn(publish_and_edit(s.bus.clone(), "r"));
    let mut c = projector(&s.config_file, 2);
    checkpoint_passes(&live, "messages-1-of-2", 0).await;
    // A process with another count while that one runs: it must not apply.
    let stale = checkpoint(&live, "messages-2-of-3").await;
    let mut d = projector(&s.config_file, 3);
    load.await.unwrap();
    projected_everything(&live, &s.bus).await;
    assert_eq!(
        checkpoint(&live, "messages-2-of-3").await,
        stale,
        "a process with another partition count applied while the count-2 one ran"
    );
    // It stands by without taking a lease.
    let lease = s.bus.lease("messages-2-of-3").await.unwrap();
    assert!(lease.as_ref().is_none_or(|(_, r)| r.released), "{lease:?}");

    // The count-2 process dies and comes back while the stray one waits: the projection goes
    // on under one count or the other, never both, never stuck.
    stop(&mut c, "-KILL").await;
    let mut c = projector(&s.config_file, 2);
    for n in 0..LAST {
        publish_message(&s.bus, "s", n).await;
    }
    projected_everything(&live, &s.bus).await;
    stop(&mut d, "-KILL").await;
    stop(&mut c, "-TERM").await;
    assert_eq!(
        s.bus.stream_state("DEADLETTER").await.unwrap().messages,
        set_aside,
        "an event set aside under one partition count was set aside again under the next"
    );

    let mut total = 0;
    for n in 0..CONVERSATIONS {
        let name = format!("c{n}");
        let row = live.conversation(&name).await.unwrap().unwrap();
        assert_eq!(
            row.message_count,
            u64::from((MESSAGES + 3 * DURING + LAST) / CONVERSATIONS) + u64::from(name == conv)
        );
        total += row.message_count;
    }
    assert_eq!(total, u64::from(MESSAGES + 3 * DURING + LAST) + 1);
    let rebuilt = anchorage_tests::fresh_database(&s.dir.path().join("rebuilt"))
        .await
        .unwrap();
    std::fs::create_dir_all(s.dir.path().join("rebuilt")).unwrap();
    assert_eq!(
        cli(&s.config_file, &["replay", "--into", &rebuilt, "--verify"]).await,
        ExitCode::SUCCESS
    );
    drop(s.nats);
}
