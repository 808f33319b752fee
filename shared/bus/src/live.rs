//! Live subjects: the republished copies of stored events (`live.>`).
//!
//! Republish is core NATS — at most once — so a subscriber can miss one. Every live message
//! carries its stream sequence and the previous sequence on the same subject; whoever consumes
//! them checks the chain and repairs a gap from the projections (see `streams/README.md`).

use anchorage_schema::Seq;
use anchorage_schema::subjects::header;
use bytes::Bytes;
use futures::StreamExt;

use crate::{Bus, BusError};

/// One live copy of a stored event.
#[derive(Debug, Clone)]
pub struct LiveEvent {
    /// The live subject.
    pub subject: String,
    /// Its stream sequence.
    pub seq: Seq,
    /// The previous sequence on the same subject (0 if none).
    pub prev: Seq,
    /// The MEMBERSHIP position the event was decided on, if it carries one.
    pub membership: Option<Seq>,
    /// The stored bytes.
    pub payload: Bytes,
}

/// A subscription to live subjects.
#[derive(Debug)]
pub struct LiveSubscription {
    inner: async_nats::Subscriber,
}

impl Bus {
    /// Subscribes to a live subject (wildcards allowed).
    pub async fn subscribe_live(&self, subject: &str) -> Result<LiveSubscription, BusError> {
        let inner = self
            .client()
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::jetstream(subject, e))?;
        Ok(LiveSubscription { inner })
    }

    /// Subscribes to notifications (core NATS subjects, wildcards allowed).
    pub async fn subscribe_notices(&self, subject: &str) -> Result<Notices, BusError> {
        let inner = self
            .client()
            .subscribe(subject.to_owned())
            .await
            .map_err(|e| BusError::jetstream(subject, e))?;
        Ok(Notices { inner })
    }

    /// Publishes a notification on core NATS (not stored; at most once).
    pub async fn notify(&self, subject: &str, payload: String) -> Result<(), BusError> {
        self.client()
            .publish(subject.to_owned(), payload.into())
            .await
            .map_err(|e| BusError::jetstream(subject, e))
    }

    /// Waits until the server has processed everything sent so far on this connection
    /// (subscriptions included), so an event published after this returns reaches them.
    ///
    /// Flushing the socket alone is not enough: the server may not have read the bytes yet.
    /// A request to a fresh inbox nobody listens on is answered by the server itself ("no
    /// responders") after everything before it on the connection — one round trip.
    pub async fn flush(&self) -> Result<(), BusError> {
        let client = self.client();
        match client.request(client.new_inbox(), Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(BusError::jetstream("flush", e)),
        }
    }
}

impl Bus {
    /// The sequence of the last event stored on `subject` in `stream` (0 if none): the current
    /// version of that entity.
    pub async fn last_subject_seq(&self, stream: &str, subject: &str) -> Result<Seq, BusError> {
        Ok(self
            .last_subject_payload(stream, subject)
            .await?
            .map_or(Seq(0), |(seq, _)| seq))
    }

    /// The last message on `subject` in `stream` (a record whose last version is the current
    /// one) with its sequence, or `None` if there is none.
    pub async fn last_subject_payload(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<(Seq, bytes::Bytes)>, BusError> {
        let handle = self.stream_handle(stream).await?;
        let last = handle.get_last_raw_message_by_subject(subject).await;
        Ok(crate::stored_or_none(subject, last)?.map(|m| (Seq(m.sequence), m.payload)))
    }
}

impl Bus {
    /// The subjects of `stream` matching `filter` that hold messages, sorted.
    pub async fn subjects(&self, stream: &str, filter: &str) -> Result<Vec<String>, BusError> {
        use futures::StreamExt;
        let handle = self.stream_handle(stream).await?;
        let mut listing = handle
            .info_with_subjects(filter)
            .await
            .map_err(|e| BusError::jetstream(stream, e))?;
        let mut subjects = Vec::new();
        while let Some(item) = listing.next().await {
            let (subject, _) = item.map_err(|e| BusError::jetstream(stream, e))?;
            subjects.push(subject);
        }
        subjects.sort();
        Ok(subjects)
    }
}

impl LiveSubscription {
    /// The next live event; `None` when the subscription ended. Messages without the
    /// republish headers are skipped (nothing but JetStream publishes on `live.>`).
    pub async fn next(&mut self) -> Option<LiveEvent> {
        loop {
            let m = self.inner.next().await?;
            let headers = m.headers.as_ref();
            let num = |name: &str| {
                headers
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.as_str().parse::<u64>().ok())
            };
            let (Some(seq), Some(prev)) = (num(header::SEQUENCE), num(header::LAST_SEQUENCE))
            else {
                tracing::debug!(subject = %m.subject, "live message without sequence headers");
                continue;
            };
            return Some(LiveEvent {
                subject: m.subject.to_string(),
                seq: Seq(seq),
                prev: Seq(prev),
                membership: num(header::MEMBERSHIP_SEQ).map(Seq),
                payload: m.payload,
            });
        }
    }

    /// Stops the subscription.
    pub async fn unsubscribe(mut self) {
        let _ = self.inner.unsubscribe().await;
    }
}

/// A subscription to notifications: (subject, payload) pairs.
#[derive(Debug)]
pub struct Notices {
    inner: async_nats::Subscriber,
}

impl Notices {
    /// The next notification; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<(String, Bytes)> {
        let m = self.inner.next().await?;
        Some((m.subject.to_string(), m.payload))
    }
}
