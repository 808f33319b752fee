//! Logs and traces: how the process writes its log lines, and where it exports its spans.
//!
//! - `log.format = "text"` writes one line per event for people, coloured only when stderr is
//!   a terminal; `"json"` writes one JSON object per line (with the fields of the spans it
//!   happened in: connection, user, device, request id).
//! - `log.otlp_endpoint` exports every span (requests, server API calls, webhook deliveries)
//!   with OTLP over HTTP in its JSON encoding to `<endpoint>/v1/traces`, batched in the
//!   background; a collector that is slow or away costs dropped spans (counted in
//!   `anchorage_otlp_dropped_spans_total`), never a slower request.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anchorage_config::{LogConfig, LogFormat};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Spans waiting for export before new ones are dropped.
const QUEUE: usize = 8192;
/// Most spans in one export.
const BATCH: usize = 512;
/// Longest a finished span waits for its export.
const FLUSH: Duration = Duration::from_secs(1);

/// Installs the process's logging (and span export, when configured). Log levels come from
/// `ANCHORAGE_LOG` (default `info`).
pub fn init(config: &LogConfig) {
    let filter =
        || EnvFilter::try_from_env("ANCHORAGE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match config.format {
        LogFormat::Json => fmt
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    let otlp = config.otlp_endpoint.as_ref().map(|endpoint| {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export(endpoint.clone(), config.service_name.clone(), rx));
        // Spans of Anchorage's own crates, down to the per-request ones.
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("anchorage", Level::DEBUG)
            .with_target("anchorage_edge", Level::DEBUG)
            .with_target("anchorage_projector", Level::DEBUG)
            .with_target("anchorage_webhooks", Level::DEBUG);
        Exporter { tx }.with_filter(targets)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter()))
        .with(otlp)
        .init();
}

/// A finished span.
#[derive(Debug)]
struct Finished {
    trace: [u8; 16],
    span: [u8; 8],
    parent: Option<[u8; 8]>,
    name: &'static str,
    start: u128,
    end: u128,
    attributes: Vec<(String, Value)>,
}

/// A span in progress (kept in the span's extensions).
#[derive(Debug)]
struct Open {
    trace: [u8; 16],
    span: [u8; 8],
    parent: Option<[u8; 8]>,
    start: u128,
    attributes: Vec<(String, Value)>,
}

struct Fields<'a>(&'a mut Vec<(String, Value)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .push((field.name().to_owned(), json!(format!("{value:?}"))));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), json!(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name().to_owned(), json!(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name().to_owned(), json!(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name().to_owned(), json!(value)));
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::fill(&mut b).is_err() {
        let r = anchorage_schema::backoff::random().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = r[i % 8] ^ (i as u8);
        }
    }
    b
}

/// The layer that hands finished spans to the exporter.
struct Exporter {
    tx: mpsc::Sender<Finished>,
}

impl<S> Layer<S> for Exporter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<Open>().map(|o| (o.trace, o.span)));
        let mut attributes = Vec::new();
        attrs.record(&mut Fields(&mut attributes));
        let open = Open {
            trace: parent.map_or_else(random, |(t, _)| t),
            span: random(),
            parent: parent.map(|(_, s)| s),
            start: now_nanos(),
            attributes,
        };
        span.extensions_mut().insert(open);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(open) = span.extensions_mut().get_mut::<Open>()
        {
            values.record(&mut Fields(&mut open.attributes));
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(open) = span.extensions_mut().remove::<Open>() else {
            return;
        };
        let finished = Finished {
            trace: open.trace,
            span: open.span,
            parent: open.parent,
            name: span.name(),
            start: open.start,
            end: now_nanos(),
            attributes: open.attributes,
        };
        if self.tx.try_send(finished).is_err() {
            metrics::counter!("anchorage_otlp_dropped_spans_total").increment(1);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(key: &str, value: &Value) -> Value {
    let v = match value {
        Value::Bool(b) => json!({"boolValue": b}),
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({"intValue": n.to_string()}),
        Value::Number(n) => json!({"doubleValue": n.as_f64()}),
        Value::String(s) => json!({"stringValue": s}),
        other => json!({"stringValue": other.to_string()}),
    };
    json!({"key": key, "value": v})
}

/// The OTLP/HTTP JSON body of `spans`.
fn encode(service: &str, spans: &[Finished]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut span = json!({
                "traceId": hex(&s.trace),
                "spanId": hex(&s.span),
                "name": s.name,
                "kind": 1,
                "startTimeUnixNano": s.start.to_string(),
                "endTimeUnixNano": s.end.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| attribute(k, v)).collect::<Vec<_>>(),
            });
            if let Some(p) = s.parent {
                span["parentSpanId"] = json!(hex(&p));
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": {"attributes": [attribute("service.name", &json!(service))]},
            "scopeSpans": [{
                "scope": {"name": "anchorage", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
}

/// Sends batches of finished spans to `<endpoint>/v1/traces`.
async fn export(endpoint: String, service: String, mut rx: mpsc::Receiver<Finished>) {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("OTLP export disabled: {e}");
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&service, &batch);
        let sent = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            // Logged without the span machinery: a failing export must not produce spans.
            Ok(r) => eprintln!("OTLP export to {url}: HTTP {}", r.status()),
            Err(e) => eprintln!("OTLP export to {url}: {e}"),
        }
        batch.clear();
    }
}

/// Reads `[log]` for a command line before anything else runs; a configuration that does not
/// load logs as text (the command then reports the error).
pub fn log_config(path: Option<&std::path::Path>) -> LogConfig {
    anchorage_config::Config::load(path)
        .map(|c| c.log)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_encode_as_otlp_json() {
        let span = Finished {
            trace: [1; 16],
            span: [2; 8],
            parent: Some([3; 8]),
            name: "request",
            start: 10,
            end: 20,
            attributes: vec![
                ("user".into(), json!("alice")),
                ("request".into(), json!(7)),
            ],
        };
        let body = encode("svc", &[span]);
        let s = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01010101010101010101010101010101");
        assert_eq!(s["spanId"], "0202020202020202");
        assert_eq!(s["parentSpanId"], "0303030303030303");
        assert_eq!(s["startTimeUnixNano"], "10");
        assert_eq!(
            s["attributes"][0],
            json!({"key": "user", "value": {"stringValue": "alice"}})
        );
        assert_eq!(
            s["attributes"][1],
            json!({"key": "request", "value": {"intValue": "7"}})
        );
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "svc"
        );
    }
}
