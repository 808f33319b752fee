//! The webhook worker: one durable JetStream consumer per endpoint and stream.
//!
//! - **At least once, in order.** A consumer hands over one event at a time (its
//!   `max_ack_pending` is 1) in stream order, so an endpoint sees a conversation's events in
//!   their order; the event is acknowledged only once the endpoint answered 2xx, or once it
//!   went to the dead-letter stream. A crash redelivers what was not acknowledged.
//! - **Retries.** A failed attempt (no answer, timeout, any non-2xx) is retried with full-jitter
//!   backoff up to `webhooks.max_backoff_ms`, for `webhooks.retry_for_secs`; then the event goes
//!   to `DEADLETTER` with code `webhook_failed`, the endpoint and its last status, and the
//!   next event is delivered.
//! - **Isolation.** Each endpoint and stream is its own task and consumer: a slow or dead
//!   endpoint holds back only its own deliveries, never messaging or other endpoints. Its
//!   backlog is the consumer's pending count (`anchorage_webhook_backlog`, and the API).
//! - **Endpoints** come from `webhooks.endpoints` and from `admin.webhook.<name>` records (the
//!   server API), read again every few seconds. A record's `redeliver` restarts its consumers
//!   from a sequence or a time; deleting it deletes them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anchorage_bus::{Bus, ConsumerStart, Delivery};
use anchorage_config::WebhooksConfig;
use anchorage_schema::Event;
use anchorage_schema::admin::{Redeliver, WebhookRecord, type_matches};
use anchorage_schema::backoff::Backoff;
use anchorage_schema::subjects::{self, header, stream};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Poster, Secret};

/// How often the endpoint records are read again.
const REFRESH: Duration = Duration::from_secs(2);
/// How long one pull waits for an event.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// The streams whose events webhooks carry.
pub const STREAMS: &[&str] = &[
    stream::MESSAGES,
    stream::MEMBERSHIP,
    stream::USERS,
    stream::READS,
];

/// The durable consumer of endpoint `name` on each of its streams.
pub fn consumer_name(name: &str) -> String {
    format!("webhook_{name}")
}

/// The stream an event type is stored on, if webhooks carry it: devices' push addresses stay
/// inside (the server API lists which devices have a target, without the address).
pub fn stream_of(type_name: &str) -> Option<&'static str> {
    match type_name {
        // A user's own view of conversations goes with the user.
        "message.hidden" | "conversation.prefs_changed" => Some(stream::USERS),
        t if t.starts_with("device.") => None,
        t if t.starts_with("message.") => Some(stream::MESSAGES),
        t if t.starts_with("group.") => Some(stream::MEMBERSHIP),
        t if t.starts_with("user.") || t.starts_with("session.") => Some(stream::USERS),
        t if t.starts_with("read.") => Some(stream::READS),
        _ => None,
    }
}

/// Whether `filter` selects event type `t`. A user's deletions for themselves are stored with
/// the user: `message.*` is the conversations' messages, and `message.hidden` is selected by
/// its name (or by `*`).
pub fn selects(filter: &[String], t: &str) -> bool {
    if t == "message.hidden" {
        filter.is_empty() || filter.iter().any(|f| f == "*" || f == t)
    } else {
        type_matches(filter, t)
    }
}

/// The streams storing the event types `filter` selects (none: it selects nothing a webhook
/// carries).
pub fn streams_for(filter: &[String]) -> Vec<&'static str> {
    STREAMS
        .iter()
        .copied()
        .filter(|s| {
            Event::TYPES
                .iter()
                .any(|(t, _)| stream_of(t) == Some(*s) && selects(filter, t))
        })
        .collect()
}

/// One endpoint as the worker runs it.
#[derive(Debug, Clone, PartialEq)]
struct Endpoint {
    name: String,
    url: String,
    secret: String,
    events: Vec<String>,
    start: ConsumerStart,
    /// Changes when the consumers must start over.
    generation: String,
}

impl Endpoint {
    fn from_record(r: WebhookRecord) -> Endpoint {
        let start = match r.redeliver {
            Some(Redeliver::FromSeq(s)) => ConsumerStart::FromSeq(s),
            Some(Redeliver::FromTime(t)) => ConsumerStart::FromTime(t),
            None => ConsumerStart::FromTime(r.created_at),
        };
        Endpoint {
            generation: format!("{}:{:?}:{:?}", r.created_at, r.redeliver, r.redeliver_at),
            name: r.name,
            url: r.url,
            secret: r.secret,
            events: r.events,
            start,
        }
    }
}

/// The endpoints now: configuration's, then the records (a record does not replace a
/// configured endpoint of the same name).
async fn endpoints(bus: &Bus, config: &WebhooksConfig) -> anyhow::Result<Vec<(Endpoint, bool)>> {
    let mut out: Vec<(Endpoint, bool)> = config
        .endpoints
        .iter()
        .map(|e| {
            (
                Endpoint {
                    name: e.name.clone(),
                    url: e.url.clone(),
                    secret: e.secret.clone(),
                    events: e.events.clone(),
                    start: ConsumerStart::New,
                    generation: "config".into(),
                },
                false,
            )
        })
        .collect();
    for subject in bus.subjects(stream::ADMIN, subjects::WEBHOOKS_ALL).await? {
        let Some((_, bytes)) = bus.last_subject_payload(stream::ADMIN, &subject).await? else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<WebhookRecord>(&bytes) else {
            tracing::warn!(%subject, "an unreadable webhook record is ignored");
            continue;
        };
        if out.iter().any(|(e, _)| e.name == record.name) {
            continue;
        }
        let deleted = record.deleted;
        out.push((Endpoint::from_record(record), deleted));
    }
    Ok(out)
}

/// Runs every endpoint's deliveries until `shutdown`.
pub async fn run(
    bus: Bus,
    config: WebhooksConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let poster = Poster::new(Duration::from_millis(config.timeout_ms))?;
    let mut running: HashMap<String, (Endpoint, CancellationToken)> = HashMap::new();
    // Deleted endpoints whose consumers are gone (cleaned once per run of the worker).
    let mut cleaned: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut tasks = JoinSet::new();
    loop {
        match endpoints(&bus, &config).await {
            Ok(list) => {
                for (endpoint, deleted) in list {
                    let current = running.get(&endpoint.name).map(|(e, _)| e).cloned();
                    if deleted {
                        // Stopped this round: its consumers are deleted now and once more
                        // next round (a task stopping meanwhile may have just made one).
                        let was_running = match running.remove(&endpoint.name) {
                            Some((_, stop)) => {
                                stop.cancel();
                                true
                            }
                            None => false,
                        };
                        if !was_running && cleaned.contains(&endpoint.name) {
                            continue;
                        }
                        let mut all = true;
                        for s in STREAMS {
                            if let Err(e) =
                                bus.delete_consumer(s, &consumer_name(&endpoint.name)).await
                            {
                                all = false;
                                tracing::warn!(error = %e, endpoint = %endpoint.name, "deleting a webhook consumer");
                            }
                        }
                        if all && !was_running {
                            cleaned.insert(endpoint.name.clone());
                        }
                        continue;
                    }
                    if current.as_ref() == Some(&endpoint) {
                        continue;
                    }
                    cleaned.remove(&endpoint.name);
                    if let Some((_, stop)) = running.remove(&endpoint.name) {
                        stop.cancel();
                    }
                    let stop = shutdown.child_token();
                    let secret = match Secret::parse(&endpoint.secret) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(endpoint = %endpoint.name, error = %e, "webhook endpoint skipped");
                            continue;
                        }
                    };
                    tracing::info!(endpoint = %endpoint.name, url = %crate::shown_url(&endpoint.url), "webhook endpoint running");
                    for s in streams_for(&endpoint.events) {
                        tasks.spawn(deliver(
                            bus.clone(),
                            poster.clone(),
                            config.clone(),
                            endpoint.clone(),
                            secret.clone(),
                            s,
                            stop.clone(),
                        ));
                    }
                    running.insert(endpoint.name.clone(), (endpoint, stop));
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading the webhook endpoints"),
        }
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a webhook task ended");
            }
        }
        if shutdown
            .run_until_cancelled(tokio::time::sleep(REFRESH))
            .await
            .is_none()
        {
            break;
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// Delivers one endpoint's events of one stream, in order, until `stop`.
async fn deliver(
    bus: Bus,
    poster: Poster,
    config: WebhooksConfig,
    endpoint: Endpoint,
    secret: Secret,
    stream: &'static str,
    stop: CancellationToken,
) {
    let name = consumer_name(&endpoint.name);
    let outage = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut failures = 0u32;
    'bound: while !stop.is_cancelled() {
        let consumer = match bus
            .ensure_consumer(stream, &name, endpoint.start, &endpoint.generation)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, endpoint = %endpoint.name, stream, "webhook consumer");
                failures += 1;
                let _ = stop
                    .run_until_cancelled(tokio::time::sleep(outage.delay(failures, None)))
                    .await;
                continue;
            }
        };
        loop {
            let batch = match stop
                .run_until_cancelled(consumer.next_batch(1, PULL_WAIT))
                .await
            {
                None => return,
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, endpoint = %endpoint.name, stream, "webhook pull");
                    break;
                }
            };
            failures = 0;
            for d in batch {
                metrics::gauge!(
                    "anchorage_webhook_backlog",
                    "endpoint" => endpoint.name.clone(),
                    "stream" => stream
                )
                .set(d.pending as f64);
                match handle(
                    &bus, &poster, &config, &endpoint, &secret, stream, &name, &d, &stop,
                )
                .await
                {
                    Handled::Settled => {}
                    Handled::Stopped => return,
                    // Not settled: after a pause (NATS is restarting, or electing a leader)
                    // the consumer is bound again and the event comes again — at once if
                    // NATS takes the request for it, else once its ack wait is over.
                    Handled::Unsettled => {
                        failures += 1;
                        let _ = stop
                            .run_until_cancelled(tokio::time::sleep(outage.delay(failures, None)))
                            .await;
                        let _ = d.again().await;
                        continue 'bound;
                    }
                }
            }
        }
    }
}

/// What became of one delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Delivered or dead-lettered, and acknowledged.
    Settled,
    /// Stopped before it was settled: it stays unacknowledged.
    Stopped,
    /// Delivered or dead-lettered, but NATS refused the acknowledgement: it stays
    /// unacknowledged and comes again.
    Unsettled,
}

/// An acknowledgement as a [`Handled`].
async fn settle(d: &Delivery) -> Handled {
    match d.ack().await {
        Ok(()) => Handled::Settled,
        Err(e) => {
            tracing::warn!(error = %e, seq = d.seq.0, "acknowledging a webhook event");
            Handled::Unsettled
        }
    }
}

/// The body delivered for a stored event: its envelope, with the stream and sequence it was
/// stored at; `None` for what is not an event of the endpoint's types.
fn payload(d: &Delivery, stream: &str, events: &[String]) -> Option<(String, Vec<u8>)> {
    let type_name = d.header(header::EVENT_TYPE)?;
    if stream_of(type_name) != Some(stream) || !selects(events, type_name) {
        return None;
    }
    let mut envelope: Value = serde_json::from_slice(d.payload()).ok()?;
    let object = envelope.as_object_mut()?;
    // Event ids are unique within a stream: with the stream, within everything delivered.
    let id = format!("{stream}:{}", object.get("id")?.as_str()?);
    if object.get("type").and_then(Value::as_str) != Some(type_name) {
        return None;
    }
    object.insert("stream".into(), Value::from(stream));
    object.insert("seq".into(), Value::from(d.seq.0));
    Some((id, serde_json::to_vec(&envelope).ok()?))
}

/// Delivers one event with retries, or dead-letters it; acknowledges it either way.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(level = "debug", name = "webhook", skip_all, fields(
    endpoint = %endpoint.name,
    stream,
    seq = d.seq.0,
))]
async fn handle(
    bus: &Bus,
    poster: &Poster,
    config: &WebhooksConfig,
    endpoint: &Endpoint,
    secret: &Secret,
    stream: &str,
    consumer: &str,
    d: &Delivery,
    stop: &CancellationToken,
) -> Handled {
    let Some((id, body)) = payload(d, stream, &endpoint.events) else {
        // Not one of its types (or not an event: the projector dead-letters those).
        return settle(d).await;
    };
    let backoff = Backoff::new(
        Duration::from_millis(500),
        Duration::from_millis(config.max_backoff_ms.max(500)),
    );
    let give_up = Instant::now() + Duration::from_secs(config.retry_for_secs);
    let labels = |result: &'static str| {
        [
            ("endpoint", endpoint.name.clone()),
            ("result", result.to_owned()),
        ]
    };
    for attempt in 0u32.. {
        if attempt > 0 {
            // The attempt may take all of `timeout_ms`: its ack wait starts now.
            let _ = d.in_progress().await;
        }
        let started = Instant::now();
        let outcome = poster.post(&endpoint.url, secret, &id, body.clone()).await;
        metrics::histogram!("anchorage_webhook_delivery_seconds", "endpoint" => endpoint.name.clone())
            .record(started.elapsed().as_secs_f64());
        if outcome.accepted() {
            metrics::counter!("anchorage_webhook_deliveries_total", &labels("delivered"))
                .increment(1);
            return settle(d).await;
        }
        metrics::counter!("anchorage_webhook_deliveries_total", &labels("failed")).increment(1);
        tracing::debug!(endpoint = %endpoint.name, %id, %outcome, attempt, "webhook attempt failed");
        if Instant::now() >= give_up {
            let reason = format!(
                "endpoint {} ({}): {outcome} after {} attempts",
                endpoint.name,
                crate::shown_url(&endpoint.url),
                attempt + 1
            );
            tracing::warn!(%reason, %id, "webhook event dead-lettered");
            // Set aside it must be: a dead letter NATS refuses (restarting, electing a leader)
            // is asked again, not the endpoint — its retry period is over.
            let outage = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
            let mut refused = 0u32;
            while let Err(e) = bus
                .dead_letter(stream, consumer, d, "webhook_failed", &reason)
                .await
            {
                tracing::warn!(error = %e, %id, "dead-lettering a webhook event");
                refused += 1;
                let _ = d.in_progress().await;
                if stop
                    .run_until_cancelled(tokio::time::sleep(outage.delay(refused, None)))
                    .await
                    .is_none()
                {
                    return Handled::Stopped;
                }
            }
            metrics::counter!(
                "anchorage_webhook_deliveries_total",
                &labels("dead_lettered")
            )
            .increment(1);
            return settle(d).await;
        }
        // Wait, telling the server the event is still being worked on.
        let wait = backoff
            .delay(attempt, None)
            .min(give_up.saturating_duration_since(Instant::now()));
        let until = Instant::now() + wait;
        while Instant::now() < until {
            let _ = d.in_progress().await;
            let step = until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(10));
            if stop
                .run_until_cancelled(tokio::time::sleep(step))
                .await
                .is_none()
            {
                return Handled::Stopped;
            }
        }
    }
    Handled::Stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_choose_streams() {
        let f = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(streams_for(&[]).len(), 4);
        assert_eq!(streams_for(&f(&["*"])).len(), 4);
        // A user's own deletions and conversation settings are stored with the user, and named
        // on their own: `message.*` is the conversations' messages.
        assert_eq!(streams_for(&f(&["message.*"])), vec![stream::MESSAGES]);
        assert_eq!(
            streams_for(&f(&["message.*", "message.hidden"])),
            vec![stream::MESSAGES, stream::USERS]
        );
        assert_eq!(streams_for(&f(&["message.hidden"])), vec![stream::USERS]);
        assert_eq!(
            streams_for(&f(&["conversation.prefs_changed"])),
            vec![stream::USERS]
        );
        assert_eq!(
            streams_for(&f(&["message.sent", "group.created"])),
            vec![stream::MESSAGES, stream::MEMBERSHIP]
        );
        assert_eq!(streams_for(&f(&["session.revoked"])), vec![stream::USERS]);
        assert!(streams_for(&f(&["nothing.here"])).is_empty());
        assert!(streams_for(&f(&["device.*"])).is_empty());
        assert!(streams_for(&f(&["device.push_set"])).is_empty());
    }

    /// Every event type a webhook may carry has a stream, and only devices' push addresses
    /// have none.
    #[test]
    fn every_event_type_has_its_stream() {
        for (t, _) in Event::TYPES {
            assert_eq!(stream_of(t).is_none(), t.starts_with("device."), "{t}");
        }
    }
}
