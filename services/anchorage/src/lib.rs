//! The `anchorage` command as a library: every subcommand, the in-process stack and the
//! nats-server child management, so tests and `anchorage dev` run exactly the code production
//! runs.

pub mod apikey;
pub mod cli;
pub mod nats_auth;
pub mod natsd;
pub mod replay;
pub mod stack;
pub mod telemetry;

use std::path::Path;
use std::time::Duration;

use anchorage_bus::{Bus, BusOptions, StreamSet};
use anchorage_config::Config;
use anchorage_store::{Store, StoreOptions};
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
        tls_client: config
            .nats
            .tls_cert
            .clone()
            .zip(config.nats.tls_key.clone()),
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
    anchorage_edge::EdgeState::start(bus, store, std::sync::Arc::new(streams), config).await
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

/// A session revocation, once stored.
#[derive(Debug, Clone, Copy)]
pub struct Revoked {
    /// Its USERS stream sequence.
    pub seq: anchorage_schema::Seq,
    /// Whether the projector applied it within 30 s (edges refuse the device from then on;
    /// connected ones were closed as soon as the event was stored).
    pub applied: bool,
}

/// Revokes a device's session: every edge closes its connections at once, and once this
/// returns with `applied`, no edge welcomes it again.
pub async fn revoke_session(
    config: &Config,
    user: &anchorage_schema::UserId,
    device: &anchorage_schema::DeviceId,
) -> anyhow::Result<Revoked> {
    use anchorage_schema::event::SessionRevoked;
    use anchorage_schema::{Actor, Envelope, EventId, SourceId, subjects};
    let bus = anchorage_bus::Bus::connect(&bus_options(config, false)).await?;
    let now = anchorage_schema::now_ms();
    let event = Envelope::new(
        EventId::parse(format!("revoke:{user}:{device}:{now}"))?,
        now,
        Actor::System {
            source: SourceId::parse("anchorage")?,
        },
        SessionRevoked {
            user: user.clone(),
            device: device.clone(),
        },
    );
    let stored = bus
        .publish_event(&subjects::user(user), &event, None)
        .await?;
    bus.close().await;
    // Edges refuse a device from the projection once the projector applied the revocation
    // (and from what they heard live before that): wait for it, so a device reconnecting
    // after this returns is refused on every edge.
    let store = anchorage_store::Store::connect(&store_options(config)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let applied = loop {
        let at = store.checkpoint("users").await?.map_or(0, |c| c.last_seq);
        if at >= stored.seq.0 {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    store.close().await;
    Ok(Revoked {
        seq: stored.seq,
        applied,
    })
}

/// Serves `GET /metrics` (Prometheus), `/livez` (the process is up) and `/readyz` (NATS is
/// connected and the database answers) on `listener` until `shutdown`: for processes without
/// an edge (`anchorage projector`). A standby projector is ready: it takes over the moment
/// the holder of a lease goes away.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    bus: Bus,
    store: Store,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let handle = anchorage_edge::metrics::handle();
    let readyz = move || async move {
        if !bus.is_connected() {
            return (StatusCode::SERVICE_UNAVAILABLE, "nats: not connected\n");
        }
        match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(Ok(())) => (StatusCode::OK, "ok\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "database: not answering\n"),
        }
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || async move { handle.render() }),
        )
        .route("/livez", axum::routing::get(|| async { "ok\n" }))
        .route("/readyz", axum::routing::get(readyz));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// The worker deleting the objects of revoked messages, if attachments are on.
pub(crate) fn attachment_reaper(
    config: &Config,
    store: Store,
    bus: Bus,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<impl Future<Output = anyhow::Result<()>> + use<>>> {
    let blobs = anchorage_blobs::Blobs::from_config(&config.attachments, &config.auth.hmac_secret)?;
    // From its check to the stream, a send waits at most for the before-send hook and a
    // publish (its own, or the one before it in its conversation).
    let hook = config
        .hooks
        .before_send
        .as_ref()
        .map_or(0, |h| h.timeout_ms);
    let send_takes = Duration::from_millis(hook + 2 * config.nats.request_timeout_ms);
    Ok(blobs
        .map(|b| anchorage_blobs::reap(store, std::sync::Arc::new(b), bus, send_takes, shutdown)))
}
