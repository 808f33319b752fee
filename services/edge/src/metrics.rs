//! Metrics in the Prometheus text format, served at `GET /metrics`.
//!
//! Counted as they happen: connections, requests by type and code, send-to-ack latency,
//! slow-consumer closes (4008), sign-ins with uncovered memberships, server API requests,
//! dead letters by code, NATS reconnects, webhook deliveries, before-send hook latency. Read
//! at each scrape: bytes queued for sockets, each projection's lag behind its stream and each
//! projector consumer's pending messages.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::EdgeState;

/// Latency buckets, in seconds: 1 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's metrics recorder: installed once, on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows only its own");
        }
        handle
    })
}

/// One signed-in connection, counted in `anchorage_connections` while it lives.
#[derive(Debug)]
pub struct Connected(());

impl Connected {
    /// Counts a connection until the value is dropped.
    pub fn count() -> Self {
        metrics::gauge!("anchorage_connections").increment(1.0);
        Connected(())
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics::gauge!("anchorage_connections").decrement(1.0);
    }
}

/// Counts a WebSocket request by type and answer code (`ok` or the error code); both are
/// static, so counting allocates nothing.
pub fn request(kind: &'static str, code: &'static str) {
    metrics::counter!("anchorage_requests_total", "type" => kind, "code" => code).increment(1);
}

/// Counts a device signed in with memberships the projection and the edge's view did not
/// bring together in time.
pub fn uncovered_memberships() {
    metrics::counter!("anchorage_edge_uncovered_memberships_total").increment(1);
}

/// Counts a send by its answer, and its time from arrival to acknowledgement.
pub fn sent(answer: &anchorage_protocol::ServerFrame, started: Instant) {
    match answer {
        anchorage_protocol::ServerFrame::Error(e) => request("send", e.code.as_str()),
        _ => {
            request("send", "ok");
            metrics::histogram!("anchorage_send_ack_seconds")
                .record(started.elapsed().as_secs_f64());
        }
    }
}

/// Counts a server API request by route and status, with its duration.
pub async fn api(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Only the methods the API serves name a series: anything else is `other`, so requests
    // cannot make up series.
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m,
        _ => "other",
    }
    .to_owned();
    let started = Instant::now();
    let span = tracing::debug_span!("api", method = %method, route = %route, status = tracing::field::Empty);
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("status", response.status().as_u16());
    if route.starts_with("/v1/") || route == "unmatched" {
        let status = response.status().as_u16().to_string();
        metrics::counter!(
            "anchorage_api_requests_total",
            "method" => method.clone(),
            "route" => route.clone(),
            "status" => status
        )
        .increment(1);
        metrics::histogram!("anchorage_api_request_seconds", "method" => method, "route" => route)
            .record(started.elapsed().as_secs_f64());
    }
    response
}

/// `GET /metrics`: the gauges read at scrape time, then everything recorded.
pub async fn scrape(State(state): State<EdgeState>) -> impl IntoResponse {
    metrics::gauge!("anchorage_queued_bytes").set(state.queue_budget.queued() as f64);
    let lags = tokio::time::timeout(crate::CHECK_TIMEOUT, crate::projection_lag(&state))
        .await
        .unwrap_or_default();
    for (projection, lag) in lags {
        metrics::gauge!("anchorage_projection_lag", "projection" => projection)
            .set(lag.behind as f64);
    }
    for (projection, stream) in crate::PROJECTIONS {
        let consumer = format!("projector_{projection}");
        let pending = tokio::time::timeout(
            crate::CHECK_TIMEOUT,
            state.bus.consumer_pending(stream, &consumer),
        )
        .await;
        if let Ok(Ok((pending, ack_pending))) = pending {
            metrics::gauge!("anchorage_consumer_pending", "stream" => *stream, "consumer" => consumer.clone())
                .set(pending as f64);
            metrics::gauge!("anchorage_consumer_ack_pending", "stream" => *stream, "consumer" => consumer)
                .set(ack_pending as f64);
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle().render(),
    )
}
