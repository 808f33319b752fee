//! Durable pull consumers, as the projector uses them.
//!
//! A projection's position is its SQL checkpoint, not the consumer's ack floor: on start (and
//! after any error) the worker calls [`PullConsumer::reset_to`] with the sequence after its
//! checkpoint (JetStream consumer reset, ADR-60, nats-server ≥ 2.14), so deliveries resume in
//! stream order from exactly there. Without it, redeliveries of messages left unacknowledged by
//! a crash would arrive after newer messages, and a projection that skips what is below its
//! checkpoint would lose them.
//!
//! [`PullConsumer::next_batch`] waits for the first message (bounded), then takes whatever else
//! is ready without waiting, so a projection applies big batches under load and single events
//! with no added latency when idle.

use std::time::Duration;

use anchorage_schema::subjects::header;
use anchorage_schema::{Seq, subjects};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer as JsPullConsumer};
use bytes::Bytes;
use futures::StreamExt;

use crate::{Bus, BusError};

/// One delivered message.
#[derive(Debug)]
pub struct Delivery {
    message: jetstream::Message,
    /// Its sequence in the stream: the version it names.
    pub seq: Seq,
    /// How many times it has been delivered (1 on first delivery).
    pub delivered: i64,
    /// Messages still pending for the consumer after this one.
    pub pending: u64,
}

impl Delivery {
    /// The subject it was stored on.
    pub fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    /// The stored bytes.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The MEMBERSHIP position it was decided on ([`header::MEMBERSHIP_SEQ`]), if it says.
    pub fn membership(&self) -> Option<u64> {
        self.header(header::MEMBERSHIP_SEQ)
            .and_then(|v| v.parse().ok())
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
    }

    /// Acknowledges the message: it will not be delivered again.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.message
            .ack()
            .await
            .map_err(|e| BusError::jetstream(self.subject(), e))
    }

    /// Asks for the message again now rather than once its ack wait is over.
    pub async fn again(&self) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(|e| BusError::jetstream(self.subject(), e))
    }

    /// Tells the server work on the message is ongoing (extends its ack wait).
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| BusError::jetstream(self.subject(), e))
    }
}

/// Where a consumer made by [`Bus::ensure_consumer`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerStart {
    /// With the next message stored.
    New,
    /// At this stream sequence.
    FromSeq(u64),
    /// With the first message stored at or after this time (Unix milliseconds).
    FromTime(i64),
}

/// A durable pull consumer defined in `streams/`.
#[derive(Debug)]
pub struct PullConsumer {
    stream: jetstream::stream::Stream<()>,
    consumer: JsPullConsumer,
    name: String,
    max_deliver: i64,
    max_ack_pending: i64,
}

impl Bus {
    /// Stream `stream`, without asking the server about it first.
    pub(crate) async fn stream_handle(
        &self,
        stream: &str,
    ) -> Result<jetstream::stream::Stream<()>, BusError> {
        self.jetstream()
            .get_stream_no_info(stream)
            .await
            .map_err(|e| crate::stream_error(stream, e))
    }

    /// Binds to an existing durable consumer (`streams apply` creates them).
    pub async fn pull_consumer(&self, stream: &str, name: &str) -> Result<PullConsumer, BusError> {
        let handle = self.stream_handle(stream).await?;
        let consumer: JsPullConsumer = handle
            .get_consumer(name)
            .await
            .map_err(|e| BusError::jetstream(format!("{stream}/{name}"), e))?;
        let config = &consumer.cached_info().config;
        let (max_deliver, max_ack_pending) = (config.max_deliver, config.max_ack_pending);
        Ok(PullConsumer {
            stream: handle,
            consumer,
            name: name.to_owned(),
            max_deliver,
            max_ack_pending,
        })
    }

    /// Binds to durable consumer `name` of `stream`, first making it as a copy of consumer
    /// `like` (same delivery, redelivery and pending limits) if it does not exist: the
    /// consumer of one partition of a projection, made from the projection's own. It is
    /// acknowledged cumulatively (`AckPolicy::All`): a partition passes over most events, and
    /// acknowledging the last one it moved past acknowledges all before it.
    pub async fn consumer_like(
        &self,
        stream: &str,
        like: &str,
        name: &str,
    ) -> Result<PullConsumer, BusError> {
        let handle = self.stream_handle(stream).await?;
        if handle.consumer_info(name).await.is_err() {
            let what = || format!("{stream}/{like}");
            let base = handle
                .consumer_info(like)
                .await
                .map_err(|e| BusError::jetstream(what(), e))?
                .config
                .clone();
            let config = jetstream::consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                description: base.description,
                deliver_policy: base.deliver_policy,
                ack_policy: jetstream::consumer::AckPolicy::All,
                ack_wait: base.ack_wait,
                max_deliver: base.max_deliver,
                max_ack_pending: base.max_ack_pending,
                max_waiting: base.max_waiting,
                replay_policy: base.replay_policy,
                ..Default::default()
            };
            // Another process making it at the same moment makes the same one.
            if let Err(err) = handle.create_consumer(config).await
                && handle.consumer_info(name).await.is_err()
            {
                return Err(BusError::jetstream(format!("{stream}/{name}"), err));
            }
        }
        self.pull_consumer(stream, name).await
    }

    /// Binds to durable consumer `name` of `stream`, delivering one message at a time in
    /// stream order from `start`; creates it (again, if its `generation` differs: a new start
    /// was asked for) when needed. Deliveries are retried by the caller, never dropped by the
    /// server (no delivery limit).
    pub async fn ensure_consumer(
        &self,
        stream: &str,
        name: &str,
        start: ConsumerStart,
        generation: &str,
    ) -> Result<PullConsumer, BusError> {
        let handle = self.stream_handle(stream).await?;
        let what = || format!("{stream}/{name}");
        if let Ok(existing) = handle.consumer_info(name).await {
            if existing
                .config
                .metadata
                .get("generation")
                .map(String::as_str)
                == Some(generation)
            {
                return self.pull_consumer(stream, name).await;
            }
            handle
                .delete_consumer(name)
                .await
                .map_err(|e| BusError::jetstream(what(), e))?;
        }
        let deliver_policy = match start {
            ConsumerStart::New => jetstream::consumer::DeliverPolicy::New,
            ConsumerStart::FromSeq(seq) => jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq.max(1),
            },
            // A time past what can be named starts past everything stored (never before it).
            ConsumerStart::FromTime(ms) => jetstream::consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(ms) * 1_000_000,
                )
                .unwrap_or(if ms < 0 {
                    time::OffsetDateTime::UNIX_EPOCH
                } else {
                    time::PrimitiveDateTime::MAX.assume_utc()
                }),
            },
        };
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            deliver_policy,
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 1,
            metadata: [("generation".to_owned(), generation.to_owned())].into(),
            ..Default::default()
        };
        handle
            .create_consumer(config)
            .await
            .map_err(|e| BusError::jetstream(what(), e))?;
        self.pull_consumer(stream, name).await
    }

    /// Deletes durable consumer `name` of `stream`, if it exists.
    pub async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), BusError> {
        let handle = self.stream_handle(stream).await?;
        if handle.consumer_info(name).await.is_ok() {
            handle
                .delete_consumer(name)
                .await
                .map_err(|e| BusError::jetstream(format!("{stream}/{name}"), e))?;
        }
        Ok(())
    }

    /// Sets an event aside on the dead-letter stream with the reason and its origin in headers,
    /// deduplicated by origin so a retry after a crash stores it once.
    pub async fn dead_letter(
        &self,
        stream: &str,
        consumer: &str,
        delivery: &Delivery,
        code: &str,
        reason: &str,
    ) -> Result<Seq, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::MSG_ID,
            format!("dlq:{stream}:{consumer}:{}", delivery.seq).as_str(),
        );
        headers.insert(header::DLQ_CODE, code);
        headers.insert(header::DLQ_REASON, single_line(reason).as_str());
        headers.insert(header::DLQ_STREAM, stream);
        headers.insert(header::DLQ_SEQ, delivery.seq.to_string().as_str());
        headers.insert(header::DLQ_SUBJECT, delivery.subject());
        headers.insert(header::DLQ_CONSUMER, consumer);
        // An event as large as its stream allows, with these headers, would not fit in the
        // dead-letter stream: setting it aside would fail every time and hold up everything
        // after it. Its copy is cut to fit; the whole of it stays where the headers say.
        let mut payload = delivery.payload().clone();
        if payload.len() > DEAD_LETTER_COPY {
            headers.insert(header::DLQ_TRUNCATED, payload.len().to_string().as_str());
            payload.truncate(DEAD_LETTER_COPY);
        }
        let subject = subjects::deadletter(stream);
        let ack = self
            .jetstream()
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| BusError::jetstream(&subject, e))?
            .await
            .map_err(|e| BusError::jetstream(&subject, e))?;
        metrics::counter!(
            "anchorage_dead_letters_total",
            "stream" => stream.to_owned(),
            "code" => code.to_owned()
        )
        .increment(1);
        Ok(Seq(ack.sequence))
    }
}

/// Most bytes of an event a dead letter carries: with its headers, well within the dead-letter
/// stream's 1 MiB messages.
const DEAD_LETTER_COPY: usize = 512 * 1024;

/// Header values cannot hold line breaks; reasons are kept to one line and a sane length.
fn single_line(s: &str) -> String {
    let mut line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > 1024 {
        let mut cut = 1024;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

impl PullConsumer {
    /// The consumer's durable name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deliveries after which an event that keeps failing is dead-lettered.
    pub fn max_deliver(&self) -> i64 {
        self.max_deliver
    }

    /// Deliveries the server lets be unacknowledged at once; `None`: no limit.
    pub fn max_ack_pending(&self) -> Option<usize> {
        usize::try_from(self.max_ack_pending)
            .ok()
            .filter(|n| *n > 0)
    }

    /// Makes the next delivery start at stream sequence `next` (or the first retained one
    /// after it), dropping pending and redelivery state.
    pub async fn reset_to(&self, next: Seq) -> Result<(), BusError> {
        self.stream
            .reset_consumer(&self.name, Some(next.0.max(1)))
            .await
            .map_err(|e| BusError::jetstream(format!("reset {}", self.name), e))?;
        Ok(())
    }

    /// Waits up to `wait` for a first message, then takes up to `max` without waiting.
    ///
    /// Every pull is bounded in time on this side too: a server that dies (or loses its
    /// leadership) while holding a pull request never answers it, and a pull that waited for
    /// it would stall the projection for good. Past the bound the pull fails, and the caller
    /// resumes from its checkpoint.
    pub async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, BusError> {
        let mut out = Vec::new();
        let bound = wait + PULL_MARGIN;
        let pulled = tokio::time::timeout(bound, async {
            let first = self
                .consumer
                .batch()
                .max_messages(1)
                .expires(wait)
                .messages()
                .await
                .map_err(|e| BusError::jetstream(&self.name, e))?;
            collect(first, &mut out, &self.name).await?;
            if out.is_empty() || max <= 1 {
                return Ok(());
            }
            let rest = self
                .consumer
                .fetch()
                .max_messages(max - 1)
                .messages()
                .await
                .map_err(|e| BusError::jetstream(&self.name, e))?;
            collect(rest, &mut out, &self.name).await
        })
        .await;
        match pulled {
            Ok(Ok(())) => Ok(out),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(BusError::jetstream(
                &self.name,
                format!("no answer to a pull within {bound:?}"),
            )),
        }
    }
}

/// How much longer than its own expiry a pull may take before it counts as lost.
const PULL_MARGIN: Duration = Duration::from_secs(5);

async fn collect(
    mut batch: jetstream::consumer::pull::Batch,
    out: &mut Vec<Delivery>,
    name: &str,
) -> Result<(), BusError> {
    while let Some(item) = batch.next().await {
        let message = item.map_err(|e| BusError::jetstream(name, e))?;
        let info = message.info().map_err(|e| BusError::jetstream(name, e))?;
        let (seq, delivered, pending) = (Seq(info.stream_sequence), info.delivered, info.pending);
        out.push(Delivery {
            message,
            seq,
            delivered,
            pending,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_in_a_header() {
        assert_eq!(single_line("a\nb\r\tc"), "a b  c");
        let long = "é".repeat(1000);
        let cut = single_line(&long);
        assert!(cut.len() <= 1024 && cut.chars().all(|c| c == 'é'));
    }
}

/// One stored event read back in order (for replay).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Its stream sequence.
    pub seq: Seq,
    /// The subject it was stored on.
    pub subject: String,
    /// The stored bytes.
    pub payload: Bytes,
    /// The MEMBERSHIP position it was decided on ([`header::MEMBERSHIP_SEQ`]), if it says.
    pub membership: Option<u64>,
}

/// Reads a stream in order from a sequence, with an ordered consumer: ephemeral, no acks,
/// recreated by the client on any gap, so it never skips or repeats.
pub struct StreamReader {
    messages: jetstream::consumer::pull::Ordered,
    stream: String,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// Reads `stream` from sequence `from` (or the first retained one after it).
    pub async fn read_stream(&self, stream: &str, from: Seq) -> Result<StreamReader, BusError> {
        let handle = self.stream_handle(stream).await?;
        let consumer = handle
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.0.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::jetstream(stream, e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::jetstream(stream, e))?;
        Ok(StreamReader {
            messages,
            stream: stream.to_owned(),
        })
    }
}

impl StreamReader {
    /// The next stored event; waits for one if the reader is at the end of the stream.
    pub async fn next(&mut self) -> Result<StoredEvent, BusError> {
        let mut errors = 0;
        loop {
            let Some(item) = self.messages.next().await else {
                return Err(BusError::jetstream(
                    &self.stream,
                    "the ordered consumer ended",
                ));
            };
            let message = match item {
                Ok(m) => m,
                // Heartbeat misses and the like: the ordered consumer recreates itself.
                Err(err) if errors < 20 => {
                    errors += 1;
                    tracing::debug!(stream = %self.stream, error = %err, "ordered read");
                    continue;
                }
                Err(err) => return Err(BusError::jetstream(&self.stream, err)),
            };
            let info = message
                .info()
                .map_err(|e| BusError::jetstream(&self.stream, e))?;
            let membership = message
                .headers
                .as_ref()
                .and_then(|h| h.get(header::MEMBERSHIP_SEQ))
                .and_then(|v| v.as_str().parse().ok());
            return Ok(StoredEvent {
                seq: Seq(info.stream_sequence),
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
                membership,
            });
        }
    }
}
