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
use anchorage_schema::{ConversationId, subjects};
use anchorage_store::{Store, StoreOptions};
use anyhow::Context;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::env::{BenchEnv, Sizes, message_event, progress, rate, unix_ms};
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
    let convs: Vec<ConversationId> = (0..CONVERSATIONS)
        .map(|i| ConversationId::parse(format!("c{i}")))
        .collect::<Result<_, _>>()?;
    let mut pending = futures::stream::FuturesUnordered::new();
    for n in 0..s.events {
        let conv = &convs[n % convs.len()];
        let event = message_event(n, conv, 200)?;
        let subject = subjects::message(conv);
        let bus = bus.clone();
        pending.push(async move { bus.publish_event(&subject, &event, None).await });
        while pending.len() > 256 {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    let end = bus.stream_state("MESSAGES").await?.last_seq.0;
    progress("raw consume (baseline)");
    let baseline = raw::consume(&bus, "MESSAGES", s.events).await?;

    let mut ours = serde_json::Map::new();
    let mut rates = Vec::new();
    for count in LAYOUTS {
        progress(&format!("projecting in {count} partition(s)"));
        // A database of its own, never one an earlier run filled.
        let name = format!("bench_partitions_{count}_{}", unix_ms());
        let url = database_url(admin_url, &name)?;
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

/// `admin_url` with its database replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let (server, _) = base
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("://"))
        .context("the PostgreSQL URL names no database")?;
    Ok(match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    })
}

/// The PostgreSQL server the scenario writes to.
struct Postgres {
    url: String,
    /// Set when this run started it (and stops it).
    started: Option<tempfile::TempDir>,
}

impl Postgres {
    async fn start() -> anyhow::Result<Postgres> {
        if let Ok(url) = std::env::var("ANCHORAGE_BENCH_POSTGRES_URL") {
            return Ok(Postgres { url, started: None });
        }
        progress("starting PostgreSQL (deploy/postgres.sh)");
        let dir = tempfile::tempdir()?;
        // The server runs as the postgres user, who must be able to enter the folder.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let out = tokio::process::Command::new("deploy/postgres.sh")
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .await
            .context("running deploy/postgres.sh (from the repository root)")?;
        anyhow::ensure!(
            out.status.success(),
            "deploy/postgres.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout)?.trim().to_owned();
        Ok(Postgres {
            url,
            started: Some(dir),
        })
    }

    async fn stop(self) {
        if let Some(dir) = self.started {
            let _ = tokio::process::Command::new("deploy/postgres.sh")
                .arg("stop")
                .arg(dir.path().join("pg"))
                .output()
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_keeps_the_server_and_the_options() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h:5/db?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert!(database_url("nonsense", "x").is_err());
    }
}
