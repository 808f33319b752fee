//! The Anchorage edge: the HTTP and WebSocket front of the system.
//!
//! An edge is stateless: it holds sockets and caches, nothing that cannot be rebuilt from the
//! streams and the projections, so any number of edges can run behind any load balancer.
//! [`run`] serves one listener until the shutdown token fires, then stops accepting, lets
//! in-flight requests finish and returns.
//!
//! Health:
//! - `GET /livez` — the process is up and serving (no dependencies checked);
//! - `GET /readyz` — ready for traffic: NATS connected, the database answers and the streams on
//!   the server match their definitions in `streams/`. Answers `503` with the failing checks
//!   otherwise, so a load balancer keeps traffic away until all three hold. The answer also
//!   shows how far each projection is behind its stream, and the bytes queued for sockets;
//! - `GET /metrics` — Prometheus metrics ([`metrics`]).

mod api;
pub mod auth;
mod blobs;
mod hook;
mod limits;
pub mod live;
pub mod metrics;
pub use api::openapi_json;
mod outbox;
mod progress;
mod requests;
mod web;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use anchorage_bus::{Bus, StreamSet};
use anchorage_schema::subjects::stream;
use anchorage_store::Store;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What every request handler shares: one allocation per edge, a pointer per connection.
#[derive(Debug, Clone)]
pub struct EdgeState(Arc<Shared>);

impl std::ops::Deref for EdgeState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of an edge its connections share.
#[derive(Debug, Clone)]
pub struct Shared {
    pub bus: Bus,
    pub store: Store,
    /// The stream definitions this edge expects on the server.
    pub streams: Arc<StreamSet>,
    pub config: Arc<anchorage_config::EdgeConfig>,
    /// How member lists are synchronized.
    pub members: Arc<anchorage_config::MembersConfig>,
    /// What may change about a message once sent.
    pub messages: Arc<anchorage_config::MessagesConfig>,
    /// Checks device tokens.
    pub verifier: Arc<auth::Verifier>,
    /// How device tokens are minted (server API).
    pub auth: Arc<anchorage_config::AuthConfig>,
    /// Which push providers are configured, and the push services Web Push may call.
    pub push: Arc<anchorage_config::PushConfig>,
    /// Where attachments are stored; `None` when they are off.
    pub blobs: Option<Arc<anchorage_blobs::Blobs>>,
    /// The rates of the server API's keys.
    api_limits: Arc<api::KeyLimits>,
    /// The before-send hook, if configured.
    before_send: Option<Arc<hook::BeforeSend>>,
    /// Connections, memberships and live subscriptions.
    pub hub: Arc<live::Hub>,
    /// How far the projections have got.
    progress: Arc<progress::Progress>,
    /// One permit per signed-in WebSocket connection.
    admission: Arc<tokio::sync::Semaphore>,
    /// Places of upgraded sockets that have not signed in yet.
    pending: Arc<limits::PendingLimits>,
    /// Bytes queued for the connections' sockets.
    queue_budget: Arc<outbox::QueueBudget>,
    /// A send whose `client_ts` is at most this old (ms) cannot be a repeat from beyond the
    /// MESSAGES stream's duplicate window: half of that window, for clocks that differ.
    fresh_send_ms: i64,
    user_limits: Arc<limits::UserLimits>,
    /// Fires when the edge shuts down; connections close with 1001.
    shutdown: CancellationToken,
}

impl EdgeState {
    /// Prepares an edge: starts following membership changes. Of `config` it takes the
    /// `edge`, `members`, `messages`, `auth` and `hooks` sections.
    pub async fn start(
        bus: Bus,
        store: Store,
        streams: Arc<StreamSet>,
        config: &anchorage_config::Config,
    ) -> anyhow::Result<EdgeState> {
        let anchorage_config::Config {
            members,
            messages,
            auth,
            hooks,
            push,
            attachments,
            ..
        } = config;
        let blobs =
            anchorage_blobs::Blobs::from_config(attachments, &auth.hmac_secret)?.map(Arc::new);
        let (members, messages) = (members.clone(), messages.clone());
        let config = config.edge.clone();
        let before_send = match &hooks.before_send {
            Some(h) => Some(Arc::new(hook::BeforeSend::from_config(
                h,
                config.max_frame_bytes as usize,
            )?)),
            None => None,
        };
        let flush = Duration::from_millis(messages.reaction_flush_ms);
        let hub = live::Hub::start(
            bus.clone(),
            store.clone(),
            flush,
            messages.receipts_max_members,
            Duration::from_secs(config.presence_ttl_secs.clamp(1, 90)),
        )
        .await?;
        let progress = progress::Progress::start(&bus, store.clone()).await?;
        let window = streams
            .streams
            .iter()
            .find(|s| s.config.name == stream::MESSAGES)
            .map_or(Duration::from_secs(120), |s| s.config.duplicate_window);
        let fresh_send_ms = i64::try_from(window.as_millis() / 2).unwrap_or(i64::MAX);
        Ok(EdgeState(Arc::new(Shared {
            admission: Arc::new(tokio::sync::Semaphore::new(config.max_connections as usize)),
            pending: Arc::new(limits::PendingLimits::new(
                config.max_pending,
                config.max_pending_per_ip,
            )),
            fresh_send_ms,
            queue_budget: Arc::new(outbox::QueueBudget::new(
                usize::try_from(config.queue_bytes).unwrap_or(usize::MAX),
                usize::try_from(config.queue_bytes_per_user).unwrap_or(usize::MAX),
                usize::try_from(config.queued_bytes_total).unwrap_or(usize::MAX),
            )),
            user_limits: Arc::new(limits::UserLimits::new(config.user_rate_per_sec)),
            verifier: Arc::new(auth::Verifier::from_config(auth)?),
            auth: Arc::new(auth.clone()),
            push: Arc::new(push.clone()),
            blobs,
            api_limits: Arc::new(api::KeyLimits::default()),
            before_send,
            bus,
            store,
            streams,
            config: Arc::new(config),
            members: Arc::new(members),
            messages: Arc::new(messages),
            hub,
            progress,
            shutdown: CancellationToken::new(),
        })))
    }
}

/// The address of the client at the other end of an HTTP connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// Serves the edge on `listener` until `shutdown` is cancelled; then closes every WebSocket
/// with 1001 (clients reconnect elsewhere) and waits for in-flight requests.
///
/// Every HTTP connection must send its request headers within `edge.http_header_timeout_ms`,
/// and an idle keep-alive connection is closed after as long; connections not yet upgraded
/// to WebSockets are at most `max_connections + max_pending` (past that, new ones are
/// closed at once), so silent or half-sent connections cannot pile up.
pub async fn run(
    listener: TcpListener,
    state: EdgeState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let state = EdgeState(Arc::new(Shared {
        shutdown: shutdown.clone(),
        ..Shared::clone(&state)
    }));
    let hub = state.hub.clone();
    let progress = state.progress.clone();
    let header_timeout = Duration::from_millis(state.config.http_header_timeout_ms);
    let http_slots = Arc::new(tokio::sync::Semaphore::new(
        (state.config.max_connections as usize).saturating_add(state.config.max_pending as usize),
    ));
    metrics::handle();
    let app = router(state);
    let connections = tokio_util::task::TaskTracker::new();
    tracing::info!(%addr, "edge listening");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // Out of file descriptors, most likely: let some connections finish.
                    tracing::warn!(error = %err, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = http_slots.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        // Frames are small and latency matters: no Nagle delay.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY");
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(
                move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(PeerAddr(peer));
                    tower_service::Service::call(&mut app.clone(), request)
                },
            );
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(err) = served {
                        tracing::debug!(error = %err, %peer, "HTTP connection");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    connections.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), connections.wait()).await;
    hub.shutdown();
    progress.shutdown();
    tracing::info!(%addr, "edge stopped");
    Ok(())
}

/// The edge's routes.
pub fn router(state: EdgeState) -> Router {
    let page = if state.config.chat_page {
        web::router()
    } else {
        Router::new()
    };
    Router::new()
        .merge(page)
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/ws", get(ws::upgrade))
        .route("/metrics", get(metrics::scrape))
        .merge(api::router().layer(axum::middleware::from_fn(metrics::api)))
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_frame_bytes as usize,
        ))
        // Files of the `fs` attachment backend: a body as large as the signed size (the
        // handler counts it), not the frame limit.
        .route(
            "/v1/blobs/{object}",
            get(blobs::get)
                .put(blobs::put)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        // A body that stalls is cut, as headers that stall are: no request holds its
        // connection by sending nothing.
        .layer(axum::middleware::map_request_with_state(
            Duration::from_millis(state.config.http_header_timeout_ms),
            cut_stalled_bodies,
        ))
        .with_state(state)
}

async fn cut_stalled_bodies(
    axum::extract::State(idle): axum::extract::State<Duration>,
    request: axum::extract::Request,
) -> axum::extract::Request {
    request.map(|body| axum::body::Body::from_stream(idle_cut(body, idle)))
}

/// A body's chunks, ending with an error when none comes for `idle`: a stalled request gives
/// its connection back.
fn idle_cut(
    body: axum::body::Body,
    idle: Duration,
) -> impl futures::Stream<Item = Result<axum::body::Bytes, String>> {
    use futures::StreamExt;
    futures::stream::unfold(Some(body.into_data_stream()), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(err))) => Some((Err(err.to_string()), None)),
            Ok(None) => None,
            Err(_) => Some((Err(format!("nothing came for {idle:?}")), None)),
        }
    })
}

async fn livez() -> &'static str {
    "ok\n"
}

/// The result of one readiness check.
#[derive(Debug, Serialize)]
struct Check {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Check {
    fn from_result(r: Result<(), String>) -> Self {
        match r {
            Ok(()) => Check {
                ok: true,
                error: None,
            },
            Err(e) => Check {
                ok: false,
                error: Some(e),
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct Readiness {
    ready: bool,
    nats: Check,
    database: Check,
    streams: Check,
    /// Bytes waiting in connection queues for their sockets (bounded by
    /// `edge.queued_bytes_total`).
    queued_bytes: usize,
    /// How far each projection is behind its stream (informational: an edge serves while the
    /// projector catches up, and says so in its answers).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    projections: std::collections::BTreeMap<&'static str, Lag>,
}

/// A projection's position against its stream.
#[derive(Debug, Serialize)]
pub(crate) struct Lag {
    checkpoint: u64,
    stream: u64,
    pub(crate) behind: u64,
}

/// The projections and the streams they follow.
pub(crate) const PROJECTIONS: &[(&str, &str)] = &[
    ("messages", stream::MESSAGES),
    ("membership", stream::MEMBERSHIP),
    ("reads", stream::READS),
    ("users", stream::USERS),
    ("ingest", stream::INGEST),
];

/// Each projection's lag, as far as NATS and the database answer.
pub(crate) async fn projection_lag(
    state: &EdgeState,
) -> std::collections::BTreeMap<&'static str, Lag> {
    let mut lags = std::collections::BTreeMap::new();
    for (name, stream) in PROJECTIONS {
        let (Ok(s), Ok(cp)) = (
            state.bus.stream_state(stream).await,
            state.store.checkpoint(name).await,
        ) else {
            continue;
        };
        let checkpoint = cp.map_or(0, |c| c.last_seq);
        lags.insert(
            *name,
            Lag {
                checkpoint,
                stream: s.last_seq.0,
                behind: s.last_seq.0.saturating_sub(checkpoint),
            },
        );
    }
    lags
}

/// Bound on each readiness check, so a hung dependency makes the probe fail, not hang.
pub(crate) const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn readyz(State(state): State<EdgeState>) -> impl IntoResponse {
    let nats = Check::from_result(if state.bus.is_connected() {
        Ok(())
    } else {
        Err("not connected".into())
    });
    let database = Check::from_result(
        match tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        },
    );
    let streams = Check::from_result(if nats.ok {
        match tokio::time::timeout(CHECK_TIMEOUT, state.bus.check(&state.streams)).await {
            Ok(Ok(report)) if report.in_sync() => Ok(()),
            Ok(Ok(report)) => Err(format!(
                "streams differ from their definitions; run `anchorage streams apply --check`: {}",
                report.to_string().trim_end().replace('\n', "; ")
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        }
    } else {
        Err("NATS is not connected".into())
    });
    let ready = nats.ok && database.ok && streams.ok;
    let projections = if ready {
        tokio::time::timeout(CHECK_TIMEOUT, projection_lag(&state))
            .await
            .unwrap_or_default()
    } else {
        Default::default()
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            nats,
            database,
            streams,
            queued_bytes: state.queue_budget.queued(),
            projections,
        }),
    )
}
