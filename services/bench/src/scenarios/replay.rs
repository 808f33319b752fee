//! `bench replay`: rebuilding the projections from the streams into a fresh SQLite database
//! and a fresh PostgreSQL database, next to a raw ordered consumer reading the same stream.

use std::time::Instant;

use serde_json::{Value, json};

use crate::env::{BenchEnv, Postgres, Sizes, progress, publish_messages, rate, unix_ms};
use crate::raw;

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress("publishing events to replay");
    publish_messages(&bus, s.events, 100).await?;
    progress("raw consume (baseline)");
    let baseline = raw::consume(&bus, "MESSAGES", s.events).await?;
    progress("replay into a fresh SQLite database");
    let sqlite = replay_into(
        &bus,
        &format!("sqlite://{}/replay.db", env.dir.path().display()),
    )
    .await?;
    progress("replay into a fresh PostgreSQL database");
    let server = Postgres::start().await?;
    let name = format!("bench_replay_{}", unix_ms());
    let postgres = match anchorage_store::database_named(&server.url, &name) {
        Ok(url) => replay_into(&bus, &url).await,
        Err(err) => Err(err.into()),
    };
    server.stop().await;
    let postgres = postgres?;
    bus.close().await;
    Ok(json!({
        "ours": {
            "replay_events_per_sec": sqlite.0.round(),
            "events": sqlite.1,
            "database": "sqlite",
            "postgresql_replay_events_per_sec": postgres.0.round(),
        },
        "baseline": {"jetstream_consume_msgs_per_sec": baseline.round()},
        "ratio": sqlite.0 / baseline,
        "ratio_postgresql": postgres.0 / baseline,
        "target": ">= 0.3 x raw consume (SQLite and PostgreSQL)",
    }))
}

/// Rebuilds the projections into the fresh database at `url`: events per second, events.
async fn replay_into(bus: &anchorage_bus::Bus, url: &str) -> anyhow::Result<(f64, usize)> {
    let (store, rate, replayed) = rebuild(bus, url).await?;
    store.close().await;
    Ok((rate, replayed))
}

/// Rebuilds the projections into the fresh database at `url`, as `anchorage replay` does:
/// the store, events per second, events.
pub(crate) async fn rebuild(
    bus: &anchorage_bus::Bus,
    url: &str,
) -> anyhow::Result<(anchorage_store::Store, f64, usize)> {
    anchorage_store::ensure_database(url).await?;
    let store = anchorage_store::Store::connect(&anchorage_store::StoreOptions {
        url: url.to_owned(),
        max_connections: 4,
        // As `anchorage replay` opens its target.
        sqlite_synchronous: "NORMAL",
    })
    .await?;
    store.migrate().await?;
    let options = anchorage_projector::replay::ReplayOptions {
        batch_size: anchorage_projector::replay::BATCH,
        batch_bytes: anchorage_projector::replay::BATCH_BYTES,
        upto: Default::default(),
        membership: Default::default(),
    };
    let start = Instant::now();
    let summary = anchorage_projector::replay::replay(bus, &store, &options, |_| {}).await?;
    let elapsed = start.elapsed();
    let replayed = (summary.applied + summary.rejected) as usize;
    Ok((store, rate(replayed, elapsed), replayed))
}
