//! The JetStream bus: the only code in Anchorage that talks to NATS.
//!
//! Services get a [`Bus`] and speak in Anchorage terms (streams from `streams/`, events,
//! anchors); nothing else imports `async_nats`. The bus owns:
//!
//! - the connection, with full-jitter reconnect backoff, short pings (so a half-open TCP
//!   connection is noticed) and explicit request timeouts — see `connect`;
//! - the stream and consumer definitions loaded from `streams/` ([`definitions`]) and their
//!   idempotent application and drift check ([`apply`]);
//! - stream lifetimes ([`Bus::stream_state`]): the epoch half of every anchor.

#![warn(missing_docs)]

pub mod apply;
pub mod consume;
pub mod definitions;
pub mod lease;
pub mod live;
pub mod publish;

use std::path::PathBuf;
use std::time::Duration;

use anchorage_schema::{Epoch, Seq};
use async_nats::jetstream;

pub use apply::{ApplyReport, Change, Drift, Outcome};
pub use consume::{ConsumerStart, Delivery, PullConsumer, StoredEvent, StreamReader};
pub use definitions::{ConsumerDef, DefinitionError, StreamDef, StreamSet};
pub use lease::{HeldLease, Holder, LeaseClock, LeaseRecord};
pub use live::{LiveEvent, LiveSubscription, Notices};
pub use publish::{PendingAck, PublishError, Published};

/// Reply subjects of a NATS identity start with this and its name (`_INBOX_edge.…`), so
/// that no identity can read another's replies.
pub const INBOX_PREFIX_BASE: &str = "_INBOX_";

/// How to reach NATS.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Comma-separated server URLs.
    pub url: String,
    /// Client name shown in the server's monitoring.
    pub name: String,
    /// Optional `.creds` file.
    pub credentials: Option<PathBuf>,
    /// User and password of this process's NATS identity.
    pub user: Option<(String, String)>,
    /// Prefix of reply subjects (each NATS identity may use only its own).
    pub inbox_prefix: Option<String>,
    /// TLS: the CA file that signed the servers' certificates (TLS required when set).
    pub tls_ca: Option<PathBuf>,
    /// TLS: a client certificate and its key, for servers that verify clients.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Timeout for JetStream requests.
    pub request_timeout: Duration,
    /// Keep trying in the background if the first connect fails (long-running services), or
    /// fail at once (one-shot commands).
    pub retry_on_initial_connect: bool,
}

#[derive(Debug, thiserror::Error)]
/// Why talking to NATS failed.
#[allow(missing_docs)] // each variant's message says what it is
pub enum BusError {
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("stream {stream} does not exist; run `anchorage streams apply`")]
    StreamMissing { stream: String },
    #[error("JetStream request about {subject} failed: {message}")]
    JetStream { subject: String, message: String },
}

impl BusError {
    fn jetstream(subject: impl Into<String>, err: impl std::fmt::Display) -> Self {
        BusError::JetStream {
            subject: subject.into(),
            message: err.to_string(),
        }
    }
}

/// What a stream holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's lifetime (its creation time): sequences of another epoch do not compare.
    pub epoch: Epoch,
    /// Oldest retained sequence (0 if the stream is empty and never held anything).
    pub first_seq: Seq,
    /// Newest sequence.
    pub last_seq: Seq,
    /// Messages held.
    pub messages: u64,
}

/// A connection to NATS with its JetStream context.
#[derive(Debug, Clone)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// Full-jitter exponential backoff for reconnects: a random delay in `[0, min(cap, base·2^n)]`,
/// so a fleet of services that lost the same server does not return in lockstep.
fn reconnect_delay(attempt: usize) -> Duration {
    const RECONNECT: anchorage_schema::backoff::Backoff =
        anchorage_schema::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    RECONNECT.delay(u32::try_from(attempt).unwrap_or(u32::MAX), None)
}

/// Logs a connection event and counts reconnections (`anchorage_nats_reconnects_total`).
fn on_event(disconnected: &std::sync::atomic::AtomicBool, event: async_nats::Event) {
    use std::sync::atomic::Ordering;
    match event {
        async_nats::Event::Connected => {
            if disconnected.swap(false, Ordering::Relaxed) {
                metrics::counter!("anchorage_nats_reconnects_total").increment(1);
                tracing::info!("NATS connection restored");
            }
        }
        async_nats::Event::Disconnected => {
            disconnected.store(true, Ordering::Relaxed);
            tracing::warn!("NATS connection lost; reconnecting");
        }
        async_nats::Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
        async_nats::Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
        other => tracing::debug!(event = %other, "NATS"),
    }
}

impl Bus {
    /// The number of messages `consumer` of `stream` has not delivered yet, and of those
    /// delivered but not acknowledged.
    pub async fn consumer_pending(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<(u64, u64), BusError> {
        let handle = self.stream_handle(stream).await?;
        let info = handle
            .consumer_info(consumer)
            .await
            .map_err(|e| BusError::jetstream(consumer, e))?;
        Ok((info.num_pending, info.num_ack_pending as u64))
    }

    /// Connects to NATS.
    pub async fn connect(options: &BusOptions) -> Result<Bus, BusError> {
        let mut connect = match &options.credentials {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|source| BusError::Credentials {
                    path: path.clone(),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some((user, password)) = &options.user {
            connect = connect.user_and_password(user.clone(), password.clone());
        }
        if let Some(prefix) = &options.inbox_prefix {
            connect = connect.custom_inbox_prefix(prefix);
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &options.tls_client {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        connect = connect
            .name(&options.name)
            .ping_interval(Duration::from_secs(15))
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(options.request_timeout))
            .reconnect_delay_callback(reconnect_delay)
            .event_callback({
                let disconnected = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                move |event| {
                    let disconnected = disconnected.clone();
                    async move { on_event(&disconnected, event) }
                }
            });
        if options.retry_on_initial_connect {
            connect = connect.retry_on_initial_connect();
        }
        let servers = options
            .url
            .split(',')
            .map(|s| s.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| BusError::Connect {
                url: options.url.clone(),
                source: source.into(),
            })?;
        let client = connect
            .connect(servers)
            .await
            .map_err(|source| BusError::Connect {
                url: options.url.clone(),
                source,
            })?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.request_timeout);
        Ok(Bus { client, js })
    }

    /// Messages and bytes this connection has received from NATS so far (payloads and
    /// headers, without protocol overhead).
    pub fn received(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering;
        let stats = self.client.statistics();
        (
            stats.in_messages.load(Ordering::Relaxed),
            stats.in_bytes.load(Ordering::Relaxed),
        )
    }

    /// Whether the connection to NATS is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The lifetime and range of a stream.
    pub async fn stream_state(&self, stream: &str) -> Result<StreamState, BusError> {
        let handle = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| stream_error(stream, e))?;
        // Looking the stream up fetched its info: one request.
        let info = handle.cached_info();
        Ok(StreamState {
            epoch: epoch_of(info),
            first_seq: Seq(info.state.first_sequence),
            last_seq: Seq(info.state.last_sequence),
            messages: info.state.messages,
        })
    }

    /// Flushes pending publishes and closes the connection.
    pub async fn close(&self) {
        if let Err(err) = self.client.drain().await {
            tracing::debug!(error = %err, "draining the NATS connection");
        }
    }

    pub(crate) fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub(crate) fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

fn epoch_of(info: &jetstream::stream::Info) -> Epoch {
    Epoch(u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0))
}

fn is_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// A message read from a stream, or `None` if none is stored there — told apart from a
/// failure to ask (named after `what`).
fn stored_or_none(
    what: &str,
    read: Result<jetstream::message::StreamMessage, jetstream::stream::RawMessageError>,
) -> Result<Option<jetstream::message::StreamMessage>, BusError> {
    match read {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(BusError::jetstream(what, e)),
    }
}

fn stream_error(stream: &str, err: jetstream::context::GetStreamError) -> BusError {
    if is_not_found(&err) {
        BusError::StreamMissing {
            stream: stream.to_owned(),
        }
    } else {
        BusError::jetstream(stream, err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delays_are_jittered_and_capped() {
        for attempt in 0..40 {
            let d = reconnect_delay(attempt);
            assert!(d <= Duration::from_millis(5_000), "{attempt}: {d:?}");
        }
        let early: Vec<_> = (0..50).map(|_| reconnect_delay(1)).collect();
        assert!(early.iter().all(|d| *d <= Duration::from_millis(200)));
        let late: std::collections::HashSet<_> = (0..50).map(|_| reconnect_delay(10)).collect();
        assert!(late.len() > 10, "delays must spread out: {late:?}");
    }
}
