//! `kill -9` of the projector — during live projection and during a replay — then a restart
//! ends in exactly the state of an uninterrupted run. Runs on SQLite, and on PostgreSQL when
//! the suite runs against it.

use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anchorage::cli::{Cli, run};
use anchorage_bus::{Bus, StreamSet};
use anchorage_schema::event::{
    GroupCreated, MembersAdded, MembersRemoved, MessageSent, ReadMarked, RemovalReason, UserCreated,
};
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, DeviceId, Envelope, Event, EventId, GroupId, SourceId,
    UserId, subjects,
};
use anchorage_store::{Store, StoreOptions};
use anchorage_tests::{TestNats, eventually, fresh_database, streams_dir, within};
use clap::Parser;

pub(crate) const MESSAGES: u32 = 1200;

fn id(s: String) -> EventId {
    EventId::parse(s).unwrap()
}

pub(crate) fn user(n: u32) -> UserId {
    UserId::parse(format!("u{n}")).unwrap()
}

pub(crate) fn env(event_id: String, event: impl Into<Event>) -> Envelope {
    Envelope::new(
        id(event_id),
        1_763_840_000_000,
        Actor::System {
            source: SourceId::parse("test").unwrap(),
        },
        event,
    )
}

/// Events from another system, as it would publish them (some of them invalid).
async fn external_events(bus: &Bus) {
    let ext = |type_name: &str, id: &str, payload: serde_json::Value| {
        let body = serde_json::json!({"id": id, "type": type_name, "v": 1,
                                      "occurred_at": 1_763_840_000_000u64, "payload": payload});
        (
            format!("ext.crm.{type_name}"),
            body.to_string().into_bytes(),
        )
    };
    let mut events = Vec::new();
    for n in 0..10 {
        events.push(ext(
            "user.created",
            &format!("x{n}"),
            serde_json::json!({"user": format!("x{n}"), "display_name": "X"}),
        ));
    }
    events.push(ext("group.created", "xg", serde_json::json!({"group": "xg", "owner": "x0", "title": "CRM", "members": ["x1", "x2", "x3"]})));
    events.push(ext(
        "group.members_added",
        "xg-a",
        serde_json::json!({"group": "xg", "members": ["x4"]}),
    ));
    events.push(ext(
        "message.system_posted",
        "xg-m",
        serde_json::json!({"conv": "xg", "body": "synced"}),
    ));
    events.push(ext(
        "group.members_added",
        "bad-1",
        serde_json::json!({"group": "nope", "members": ["x4"]}),
    ));
    events.push(("ext.crm.user.created".into(), b"{broken".to_vec()));
    for (subject, payload) in events {
        bus.publish_raw(&subject, None, payload).await.unwrap();
    }
}

/// Messages in 12 conversations, 4 groups with joins and leaves, read markers, users, and
/// events from another system.
async fn workload(bus: &Bus) {
    external_events(bus).await;
    for n in 0..40 {
        let e = env(
            format!("user-{n}"),
            UserCreated {
                user: user(n),
                display_name: format!("U{n}"),
            },
        );
        bus.publish_event(&subjects::user(&user(n)), &e, None)
            .await
            .unwrap();
    }
    for g in 0..4 {
        let group = GroupId::parse(format!("g{g}")).unwrap();
        let subject = subjects::membership(&group);
        let created = env(
            format!("g{g}-c"),
            GroupCreated {
                group: group.clone(),
                owner: user(g),
                title: format!("G{g}"),
                members: vec![],
                direct: false,
            },
        );
        bus.publish_event(&subject, &created, None).await.unwrap();
        for k in 0..10 {
            let added = env(
                format!("g{g}-a{k}"),
                MembersAdded {
                    group: group.clone(),
                    members: vec![user(10 + k), user(20 + k + g)],
                },
            );
            bus.publish_event(&subject, &added, None).await.unwrap();
        }
        let removed = env(
            format!("g{g}-r"),
            MembersRemoved {
                group: group.clone(),
                members: vec![user(12), user(13)],
                reason: RemovalReason::Left,
            },
        );
        bus.publish_event(&subject, &removed, None).await.unwrap();
    }
    for n in 0..MESSAGES {
        let conv = publish_message(bus, "m", n).await;
        if n % 10 == 0 {
            let reader = user(n % 5);
            let read = env(
                format!("r{n}"),
                ReadMarked {
                    user: reader.clone(),
                    conv: conv.clone(),
                    read_seq: u64::from(n),
                },
            );
            bus.publish_event(&subjects::read(&reader, &conv), &read, None)
                .await
                .unwrap();
        }
    }
}

/// Publishes message `n` of a series named `series`, from one of 7 users into one of 12
/// conversations; returns the conversation.
pub(crate) async fn publish_message(bus: &Bus, series: &str, n: u32) -> ConversationId {
    let conv = ConversationId::parse(format!("c{}", n % 12)).unwrap();
    let e = env(
        format!("d:{series}{n}"),
        MessageSent {
            conv: conv.clone(),
            sender: user(n % 7),
            device: DeviceId::parse("d").unwrap(),
            client_msg_id: ClientMsgId::parse(format!("{series}{n}")).unwrap(),
            body: serde_json::json!({"n": n}),
            client_ts: i64::from(n),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        },
    );
    bus.publish_event(&subjects::message(&conv), &e, None)
        .await
        .unwrap();
    conv
}

pub(crate) struct Setup {
    pub(crate) nats: TestNats,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) live_url: String,
    pub(crate) config_file: std::path::PathBuf,
    pub(crate) bus: Bus,
    /// Where `anchorage projector` serves `/metrics`.
    metrics: std::net::SocketAddr,
}

pub(crate) async fn setup() -> Setup {
    let nats = TestNats::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let live_url = fresh_database(&dir.path().join("live")).await.unwrap();
    std::fs::create_dir_all(dir.path().join("live")).unwrap();
    let config_file = dir.path().join("anchorage.toml");
    let metrics: std::net::SocketAddr =
        format!("127.0.0.1:{}", anchorage::natsd::free_ports(1).unwrap()[0])
            .parse()
            .unwrap();
    std::fs::write(
        &config_file,
        format!(
            "[nats]\nurl = \"{}\"\nuser = \"operator\"\npassword = \"{}\"\n[database]\nurl = \"{live_url}\"\n[streams]\ndir = \"{}\"\n\
             [projector]\nbatch_size = 2\nmetrics_listen = \"{metrics}\"\n",
            nats.url(),
            anchorage_tests::credentials().password("operator").unwrap(),
            streams_dir().display()
        ),
    )
    .unwrap();
    let config = anchorage_tests::operator_config(&nats.url());
    let bus = Bus::connect(&anchorage::bus_options(&config, false))
        .await
        .unwrap();
    bus.apply(&StreamSet::load(&streams_dir(), 1).unwrap())
        .await
        .unwrap();
    workload(&bus).await;
    Setup {
        metrics,
        nats,
        dir,
        live_url,
        config_file,
        bus,
    }
}

fn spawn(config_file: &Path, args: &[&str]) -> tokio::process::Child {
    spawn_with(config_file, args, &[])
}

/// Starts `anchorage <args>` with extra environment variables (configuration overrides).
pub(crate) fn spawn_with(
    config_file: &Path,
    args: &[&str],
    vars: &[(&str, String)],
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .arg("--config")
        .arg(config_file)
        .args(args)
        .env("ANCHORAGE_LOG", "error")
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Sends `signal` (`-TERM`, `-KILL`, …) to process `pid`.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// Waits (up to a minute) until checkpoint `name` is past `at`.
pub(crate) async fn checkpoint_passes(store: &Store, name: &str, at: u64) {
    eventually(
        Duration::from_secs(60),
        &format!("checkpoint {name} past {at}"),
        || async { (checkpoint(store, name).await > at).then_some(()) },
    )
    .await
    .unwrap();
}

pub(crate) async fn store(url: &str) -> Store {
    let store = Store::connect(&StoreOptions {
        url: url.to_owned(),
        max_connections: 2,
        sqlite_synchronous: "FULL",
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

pub(crate) async fn checkpoint(store: &Store, name: &str) -> u64 {
    store
        .checkpoint(name)
        .await
        .unwrap()
        .map_or(0, |c| c.last_seq)
}

/// Waits until the `messages` checkpoint is past `at`, then kills the process with SIGKILL,
/// asserting the kill came before the end.
async fn kill_midway(child: &mut tokio::process::Child, store: &Store, at: u64, end: u64) {
    checkpoint_passes(store, "messages", at).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let reached = checkpoint(store, "messages").await;
    assert!(
        reached < end,
        "the kill came too late ({reached} of {end}) to test a crash"
    );
}

pub(crate) async fn projected_everything(store: &Store, bus: &Bus) {
    // External events first: translating them publishes more native events.
    let ingest_end = bus.stream_state("INGEST").await.unwrap().last_seq.0;
    eventually(
        Duration::from_secs(120),
        "ingest at the end of its stream",
        || async { (checkpoint(store, "ingest").await >= ingest_end).then_some(()) },
    )
    .await
    .unwrap();
    let mut targets = Vec::new();
    for (name, stream) in [
        ("messages", "MESSAGES"),
        ("reads", "READS"),
        ("users", "USERS"),
        ("membership", "MEMBERSHIP"),
    ] {
        targets.push((name, bus.stream_state(stream).await.unwrap().last_seq.0));
    }
    eventually(
        Duration::from_secs(120),
        "every projection at the end of its stream",
        || async {
            for (name, last) in &targets {
                if checkpoint(store, name).await < *last {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
}

pub(crate) async fn cli(config_file: &Path, args: &[&str]) -> ExitCode {
    let mut argv = vec!["anchorage", "--config", config_file.to_str().unwrap()];
    argv.extend_from_slice(args);
    within(
        Duration::from_secs(120),
        "the command",
        run(Cli::parse_from(argv)),
    )
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn kill_9_during_live_projection_then_restart_loses_and_repeats_nothing() {
    let s = setup().await;
    let live = store(&s.live_url).await;
    let end = s.bus.stream_state("MESSAGES").await.unwrap().last_seq.0;

    let mut projector = spawn(&s.config_file, &["projector"]);
    kill_midway(&mut projector, &live, 50, end).await;
    let mut projector = spawn(&s.config_file, &["projector"]);
    projected_everything(&live, &s.bus).await;
    // A projector without an edge serves its own metrics.
    let (status, _) = anchorage_tests::http_get(s.metrics, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, body) = anchorage_tests::http_get(s.metrics, "/livez")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = anchorage_tests::http_get(s.metrics, "/readyz")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    projector.start_kill().unwrap();
    projector.wait().await.unwrap();

    let mut total = 0;
    for c in 0..12 {
        let conv = live.conversation(&format!("c{c}")).await.unwrap().unwrap();
        assert_eq!(conv.message_count, u64::from(MESSAGES / 12));
        let seqs: Vec<u64> = live
            .messages_after(&conv.conv, 0, 1000)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        total += conv.message_count;
    }
    assert_eq!(total, u64::from(MESSAGES));
    assert_eq!(live.member_ids("g1").await.unwrap().len(), 1 + 20 - 2);
    let crm = eventually(Duration::from_secs(30), "the external group", || async {
        let m = live.member_ids("xg").await.ok()?;
        (m.len() == 5).then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(crm, vec!["x0", "x1", "x2", "x3", "x4"]);
    eventually(
        Duration::from_secs(30),
        "the external system message",
        || async { live.conversation("xg").await.ok()? },
    )
    .await
    .unwrap();

    // The crashed-and-resumed state equals a clean rebuild from the streams.
    let rebuilt = fresh_database(&s.dir.path().join("rebuilt")).await.unwrap();
    std::fs::create_dir_all(s.dir.path().join("rebuilt")).unwrap();
    assert_eq!(
        cli(&s.config_file, &["replay", "--into", &rebuilt, "--verify"]).await,
        ExitCode::SUCCESS
    );
    drop(s.nats);
}

#[tokio::test]
async fn kill_9_during_replay_then_rerun_ends_equal_to_the_live_state() {
    let s = setup().await;
    let live = store(&s.live_url).await;
    let mut projector = spawn(&s.config_file, &["projector"]);
    projected_everything(&live, &s.bus).await;
    projector.start_kill().unwrap();
    projector.wait().await.unwrap();

    std::fs::create_dir_all(s.dir.path().join("rebuilt")).unwrap();
    let rebuilt_url = fresh_database(&s.dir.path().join("rebuilt")).await.unwrap();
    let end = s.bus.stream_state("MESSAGES").await.unwrap().last_seq.0;
    let mut replay = spawn(
        &s.config_file,
        &["replay", "--into", &rebuilt_url, "--batch", "100"],
    );
    let rebuilt = eventually(
        Duration::from_secs(60),
        "the replay to create its database",
        || async {
            let store = Store::connect(&StoreOptions {
                url: rebuilt_url.clone(),
                max_connections: 2,
                sqlite_synchronous: "FULL",
            })
            .await
            .ok()?;
            (store.schema_version().await.ok()? > 0).then_some(store)
        },
    )
    .await
    .unwrap();
    kill_midway(&mut replay, &rebuilt, 50, end).await;

    // Running it again resumes, and the result is verified against the live projections.
    assert_eq!(
        cli(
            &s.config_file,
            &["replay", "--into", &rebuilt_url, "--verify"]
        )
        .await,
        ExitCode::SUCCESS
    );
    let a = live.fingerprint().await.unwrap();
    let b = rebuilt.fingerprint().await.unwrap();
    assert_eq!(a.conversations, b.conversations);
    assert_eq!(a.groups, b.groups);
    assert_eq!(a.read_markers, b.read_markers);
    assert_eq!(a.counts, b.counts);

    assert_eq!(a.contents, b.contents);

    // Damage the live projection, one change at a time — the first two touch no count,
    // version or digest, only what a row says: verify notices each and fails.
    let raw = sqlx::AnyPool::connect(&s.live_url).await.unwrap();
    for (damage, undo) in [
        (
            "UPDATE messages SET body = '\"forged\"' WHERE seq = (SELECT MIN(seq) FROM messages)",
            None,
        ),
        (
            "UPDATE group_members SET role = 'admin' WHERE user_id = (SELECT MIN(user_id) \
             FROM group_members WHERE role = 'member')",
            None,
        ),
        (
            "UPDATE groups SET member_count = member_count + 1 WHERE group_id = 'g2'",
            Some("UPDATE groups SET member_count = member_count - 1 WHERE group_id = 'g2'"),
        ),
    ] {
        let before = live.fingerprint().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(damage))
            .execute(&raw)
            .await
            .unwrap();
        let after = live.fingerprint().await.unwrap();
        assert_ne!(
            before.contents, after.contents,
            "{damage}: seen in the contents"
        );
        assert_eq!(
            cli(
                &s.config_file,
                &["replay", "--into", &rebuilt_url, "--verify"]
            )
            .await,
            ExitCode::FAILURE,
            "{damage}"
        );
        if let Some(undo) = undo {
            sqlx::query(sqlx::AssertSqlSafe(undo))
                .execute(&raw)
                .await
                .unwrap();
        }
    }
    raw.close().await;
    drop(s.nats);
}
