//! Several `anchorage projector` processes against one database: one applies each projection
//! at a time; `kill -9` of it under load hands its projections to a standby within 5 s, a clean
//! stop hands them over at once, and a holder whose lease was taken stops applying — with
//! nothing skipped or applied twice (the end state equals a rebuild from the streams). Runs on
//! SQLite, and on PostgreSQL when the suite runs against it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anchorage_bus::{Bus, LeaseRecord};
use anchorage_schema::subjects;
use anchorage_tests::eventually;

use crate::crash::{
    MESSAGES, checkpoint, checkpoint_passes, cli, projected_everything, publish_message, setup,
    signal, spawn_with, store,
};

/// Every lease a projector process takes: its projections and the ingest worker.
const LEASES: &[&str] = &["messages", "reads", "users", "membership", "ingest"];
/// Messages published while the projectors fail over.
const DURING: u32 = 1200;
/// The conversations `publish_message` spreads messages over.
const CONVERSATIONS: u32 = 12;

struct Projector {
    child: tokio::process::Child,
    pid: u32,
    metrics: std::net::SocketAddr,
}

fn start(config_file: &std::path::Path) -> Projector {
    let metrics: std::net::SocketAddr =
        format!("127.0.0.1:{}", anchorage::natsd::free_ports(1).unwrap()[0])
            .parse()
            .unwrap();
    let child = spawn_with(
        config_file,
        &["projector"],
        &[("ANCHORAGE_PROJECTOR__METRICS_LISTEN", metrics.to_string())],
    );
    let pid = child.id().unwrap();
    Projector {
        child,
        pid,
        metrics,
    }
}

async fn holder(bus: &Bus, lease: &str) -> Option<LeaseRecord> {
    bus.lease(lease).await.unwrap().map(|(_, r)| r)
}

/// Waits until process `pid` holds every lease; how long that took.
async fn holds_all(bus: &Bus, pid: u32, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    eventually(within, what, || async {
        for lease in LEASES {
            let r = holder(bus, lease).await?;
            if r.pid != pid || r.released {
                return None;
            }
        }
        Some(())
    })
    .await
    .unwrap();
    start.elapsed()
}

/// Whether a projector says it applies `projection` (its `/metrics`).
async fn active(p: &Projector, projection: &str) -> Option<bool> {
    let (status, body) = anchorage_tests::http_get(p.metrics, "/metrics")
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let line = format!("anchorage_projection_active{{projection=\"{projection}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map(|v| v.trim() == "1")
}

/// Publishes `DURING` more messages at a steady pace: the load the failover happens under.
async fn publish_under_load(bus: Bus) {
    for n in 0..DURING {
        publish_message(&bus, "f", n).await;
        if n % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
}

#[tokio::test]
async fn projectors_fail_over_within_seconds_and_apply_everything_exactly_once() {
    let s = setup().await;
    let live = store(&s.live_url).await;
    let load = tokio::spawn(publish_under_load(s.bus.clone()));

    // The first one takes every lease; a second one stands by.
    let mut a = start(&s.config_file);
    holds_all(
        &s.bus,
        a.pid,
        Duration::from_secs(30),
        "the first projector",
    )
    .await;
    let mut b = start(&s.config_file);
    eventually(Duration::from_secs(30), "the standby's metrics", || async {
        active(&b, "messages").await
    })
    .await
    .unwrap();
    for lease in LEASES {
        assert_eq!(holder(&s.bus, lease).await.unwrap().pid, a.pid, "{lease}");
    }
    // The gauge follows the lease record by a moment.
    eventually(Duration::from_secs(5), "the holder's gauge", || async {
        (active(&a, "messages").await == Some(true)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(active(&b, "messages").await, Some(false));

    // kill -9 of the holder in the middle of the messages: the standby takes over in time
    // and carries on from the checkpoint.
    checkpoint_passes(&live, "messages", 50).await;
    a.child.start_kill().unwrap();
    a.child.wait().await.unwrap();
    let killed = Instant::now();
    let at_kill = checkpoint(&live, "messages").await;
    let end = s.bus.stream_state("MESSAGES").await.unwrap().last_seq.0;
    assert!(at_kill < end, "the kill came too late to test a failover");
    holds_all(
        &s.bus,
        b.pid,
        Duration::from_secs(5),
        "the standby to take over",
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the standby to apply past the checkpoint",
        || async { (checkpoint(&live, "messages").await > at_kill).then_some(()) },
    )
    .await
    .unwrap();
    let took_over = killed.elapsed();
    assert!(took_over < Duration::from_secs(5), "{took_over:?}");
    assert_eq!(active(&b, "messages").await, Some(true));

    // A holder whose lease another process wrote over stops applying at its next renewal.
    let mut c = start(&s.config_file);
    let (seq, _) = s.bus.lease("reads").await.unwrap().unwrap();
    let intruder = serde_json::to_vec(&LeaseRecord {
        holder: "intruder".into(),
        host: "elsewhere".into(),
        pid: 0,
        since_ms: 0,
        released: false,
    })
    .unwrap();
    s.bus
        .publish_record(&subjects::lease("reads"), intruder, seq)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the holder to stop", || async {
        (active(&b, "reads").await == Some(false)).then_some(())
    })
    .await
    .unwrap();
    // The intruder never renews: its record expires and a projector takes the lease again.
    eventually(
        Duration::from_secs(10),
        "the lease to be taken again",
        || async {
            let r = holder(&s.bus, "reads").await?;
            (r.pid == b.pid || r.pid == c.pid).then_some(())
        },
    )
    .await
    .unwrap();

    // A clean stop gives every lease back: the other standby takes them without waiting for
    // an expiry.
    eventually(
        Duration::from_secs(30),
        "the third one's metrics",
        || async { active(&c, "messages").await },
    )
    .await
    .unwrap();
    signal(b.pid, "-TERM");
    let stopped = Instant::now();
    b.child.wait().await.unwrap();
    holds_all(&s.bus, c.pid, Duration::from_secs(5), "the handover").await;
    let handed_over = stopped.elapsed();
    assert!(
        handed_over < Duration::from_secs(2),
        "a released lease is taken at the next poll: {handed_over:?}"
    );

    load.await.unwrap();
    projected_everything(&live, &s.bus).await;
    c.child.start_kill().unwrap();
    c.child.wait().await.unwrap();

    // Nothing skipped, nothing twice: every conversation holds exactly its messages, in
    // order, and the state equals a rebuild from the streams.
    let mut total = 0;
    for n in 0..CONVERSATIONS {
        let conv = live.conversation(&format!("c{n}")).await.unwrap().unwrap();
        assert_eq!(
            conv.message_count,
            u64::from((MESSAGES + DURING) / CONVERSATIONS)
        );
        total += conv.message_count;
    }
    assert_eq!(total, u64::from(MESSAGES + DURING));
    let rebuilt = anchorage_tests::fresh_database(&s.dir.path().join("rebuilt"))
        .await
        .unwrap();
    std::fs::create_dir_all(s.dir.path().join("rebuilt")).unwrap();
    assert_eq!(
        cli(&s.config_file, &["replay", "--into", &rebuilt, "--verify"]).await,
        ExitCode::SUCCESS
    );
    eprintln!(
        "failover: standby applying {took_over:?} after kill -9; handover on a clean stop {handed_over:?}"
    );
    drop(s.nats);
}

// Projectors started together on a fresh database take turns migrating it: none fails.
#[tokio::test]
async fn processes_starting_together_migrate_a_fresh_database_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = anchorage_tests::fresh_database(dir.path()).await.unwrap();
    let open = || async {
        anchorage_store::Store::connect(&anchorage_store::StoreOptions {
            url: url.clone(),
            max_connections: 2,
            sqlite_synchronous: "FULL",
        })
        .await
        .unwrap()
    };
    let stores = [open().await, open().await, open().await];
    let (a, b, c) = tokio::join!(
        stores[0].migrate(),
        stores[1].migrate(),
        stores[2].migrate()
    );
    let total = a.unwrap() + b.unwrap() + c.unwrap();
    assert_eq!(
        total,
        anchorage_store::MIGRATIONS.len(),
        "each migration once"
    );
    for s in stores {
        s.close().await;
    }
}
