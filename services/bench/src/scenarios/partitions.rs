//! `bench partitions`: the messages projection on PostgreSQL in 1, 2 and 4 partitions, each
//! building a fresh database from the same stream in the same run, next to a raw consumer
//! reading that stream.
//!
//! The partitions run as workers of one projector process here (each with its own consumer,
//! checkpoint, lease and database connection), as they would spread over processes. The
//! database is the one `ANCHORAGE_BENCH_POSTGRES_URL` names (an admin URL: one database per
//! layout is created on it), or a throwaway server started with `deploy/postgres.sh`.

use std::time::{Duration, Instant};

use anchorage_projector::{Projection, ProjectorOptions};
use anchorage_store::{Store, StoreOptions};
use anyhow::Context;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::env::{BenchEnv, Postgres, Sizes, progress, publish_messages, rate, unix_ms};
use crate::raw;

/// The layouts measured.
const LAYOUTS: [u16; 3] = [1, 2, 4];
/// Conversations the messages are spread over.
const CONVERSATIONS: usize = 1000;

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let server = Postgres::start().await?;
    let result = measure(env, s, &server.url).await;
    server.stop().await;
    result
}

async fn measure(env: &BenchEnv, s: Sizes, admin_url: &str) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress(&format!(
        "publishing {} messages in {CONVERSATIONS} conversations",
        s.events
    ));
    publish_messages(&bus, s.events, CONVERSATIONS).await?;
    let end = bus.stream_state("MESSAGES").await?.last_seq.0;
    progress("raw consume (baseline)");
    let baseline = raw::consume(&bus, "MESSAGES", s.events).await?;

    let mut ours = serde_json::Map::new();
    let mut rates = Vec::new();
    for count in LAYOUTS {
        progress(&format!("projecting in {count} partition(s)"));
        // A database of its own, never one an earlier run filled.
        let name = format!("bench_partitions_{count}_{}", unix_ms());
        let url = anchorage_store::database_named(admin_url, &name)?;
        anchorage_store::ensure_database(&url).await?;
        let store = Store::connect(&StoreOptions {
            url,
            max_connections: u32::from(count) + 4,
            sqlite_synchronous: "FULL",
        })
        .await?;
        store.migrate().await?;
        let mut options = ProjectorOptions::from_config(&env.config.projector);
        options.projections = vec![Projection::Messages];
        options.ingest = false;
        options.message_partitions = count;
        let stop = CancellationToken::new();
        let start = Instant::now();
        let projector = tokio::spawn(anchorage_projector::run(
            bus.clone(),
            store.clone(),
            options,
            stop.clone(),
        ));
        loop {
            let at = store
                .checkpoint("messages")
                .await?
                .map_or(0, |c| c.last_seq);
            if at >= end {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(600),
                "{count} partition(s) reached {at} of {end} in 10 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = start.elapsed();
        stop.cancel();
        projector.await??;
        let projected: u64 = store
            .fingerprint()
            .await
            .context("counting what was projected")?
            .conversations
            .values()
            .map(|(_, count)| count)
            .sum();
        anyhow::ensure!(
            projected == s.events as u64,
            "{count} partition(s) projected {projected} of {} messages",
            s.events
        );
        store.close().await;
        let r = rate(s.events, elapsed);
        rates.push(r);
        ours.insert(
            format!("partitions_{count}_events_per_sec"),
            json!(r.round()),
        );
        ours.insert(
            format!("partitions_{count}_seconds"),
            json!((elapsed.as_secs_f64() * 100.0).round() / 100.0),
        );
    }
    bus.close().await;
    ours.insert("events".into(), json!(s.events));
    ours.insert("database".into(), json!("postgresql"));
    Ok(json!({
        "ours": ours,
        "baseline": {"jetstream_consume_msgs_per_sec": baseline.round()},
        "ratio": {
            "one_partition_vs_raw_consume": rates[0] / baseline,
            "two_vs_one": rates[1] / rates[0],
            "four_vs_one": rates[2] / rates[0],
        },
        "target": "N partitions project N x faster on PostgreSQL (as cores and disks allow)",
    }))
}
