//! The `anchorage` command as a library: every subcommand, the in-process stack and the
//! nats-server child management, so tests and `anchorage dev` run exactly the code production
//! runs.

pub mod bench;
pub mod bench_clients;
pub mod cli;
pub mod natsd;
pub mod replay;
pub mod stack;

use std::path::Path;
use std::time::Duration;

use anchorage_bus::{BusOptions, StreamSet};
use anchorage_config::Config;
use anchorage_store::StoreOptions;
use anyhow::Context;

/// How the services reach NATS, from the configuration.
pub fn bus_options(config: &Config, retry_on_initial_connect: bool) -> BusOptions {
    BusOptions {
        url: config.nats.url.clone(),
        name: config.nats.name.clone(),
        credentials: config.nats.credentials.clone(),
        user: config
            .nats
            .user
            .clone()
            .map(|u| (u, config.nats.password.clone().unwrap_or_default())),
        inbox_prefix: config.nats.inbox_prefix.clone().or_else(|| {
            config
                .nats
                .user
                .as_ref()
                .map(|u| format!("{}{u}", anchorage_bus::INBOX_PREFIX_BASE))
        }),
        tls_ca: config.nats.tls_ca.clone(),
        tls_client: config.nats.tls_cert.clone().zip(config.nats.tls_key.clone()),
        request_timeout: Duration::from_millis(config.nats.request_timeout_ms),
        retry_on_initial_connect,
    }
}

/// How the services reach the database, from the configuration.
pub fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        url: config.database.url.clone(),
        max_connections: config.database.max_connections,
        sqlite_synchronous: config.database.sqlite_synchronous.as_pragma(),
    }
}

/// The stream definitions named by the configuration.
pub fn load_streams(config: &Config) -> anyhow::Result<StreamSet> {
    load_streams_from(&config.streams.dir, config.streams.replicas)
}

pub fn load_streams_from(dir: &Path, replicas: usize) -> anyhow::Result<StreamSet> {
    StreamSet::load(dir, replicas)
        .with_context(|| format!("loading stream definitions from {}", dir.display()))
}

/// An edge over `bus` and `store` as the configuration says, expecting `streams` on the server.
pub async fn edge_state(
    config: &Config,
    bus: anchorage_bus::Bus,
    store: anchorage_store::Store,
    streams: StreamSet,
) -> anyhow::Result<anchorage_edge::EdgeState> {
    anchorage_edge::EdgeState::start(
        bus,
        store,
        std::sync::Arc::new(streams),
        config.edge.clone(),
        config.members.clone(),
        &config.auth,
    )
    .await
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; Ok("SIGINT") }
        _ = term.recv() => Ok("SIGTERM"),
    }
}
