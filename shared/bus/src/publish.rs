//! Appending events to the streams.
//!
//! Every event is published with its event id as `Nats-Msg-Id`, so a retry inside the stream's
//! duplicate window is stored once and acknowledged with the original sequence
//! (`duplicate: true`). Only a JetStream acknowledgement counts as "stored"; a timeout is
//! ambiguous (the event may be stored), and the caller retries with the same event id.
//!
//! Commands that were decided on a version publish with
//! `Nats-Expected-Last-Subject-Sequence`; a lost race comes back as
//! [`PublishError::Conflict`] for the caller to re-read and decide again.

use anchorage_schema::subjects::header;
use anchorage_schema::{Envelope, Seq};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;

use crate::{Bus, BusError};

/// A stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Its stream sequence.
    pub seq: Seq,
    /// The event id was already stored: `seq` is the original's.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
/// Why a publish failed.
#[allow(missing_docs)] // each variant's message says what it is
pub enum PublishError {
    #[error("{subject} changed since version {expected}")]
    Conflict { subject: String, expected: Seq },
    #[error("no stream stores {subject}")]
    NoStream { subject: String },
    #[error("publish to {subject} timed out; it may or may not be stored, retry with the same id")]
    TimedOut { subject: String },
    #[error("publish to {subject} failed: {message}")]
    Unavailable { subject: String, message: String },
    #[error("publish to {subject} failed: {message}")]
    Other { subject: String, message: String },
}

impl PublishError {
    /// Whether the failure is a passing condition of the servers (an election, a restart, a
    /// lost connection, back-pressure) rather than something about the event: the same
    /// publish, retried with the same id after a moment, succeeds or finds the stored copy.
    /// "No stream stores this subject" is one too: the streams of a running system do not
    /// disappear, but while a stream elects a leader nobody answers for it.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PublishError::NoStream { .. }
                | PublishError::TimedOut { .. }
                | PublishError::Unavailable { .. }
        )
    }
}

/// An event handed to the server whose acknowledgement is still to come.
pub struct PendingAck {
    inner: async_nats::jetstream::context::PublishAckFuture,
    subject: String,
    expected: Option<Seq>,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAck")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl PendingAck {
    /// Waits until JetStream stored the event.
    pub async fn stored(self) -> Result<Published, PublishError> {
        let subject = self.subject;
        let ack = self
            .inner
            .await
            .map_err(|e| publish_error(&subject, self.expected, e))?;
        Ok(Published {
            seq: Seq(ack.sequence),
            duplicate: ack.duplicate,
        })
    }
}

fn publish_error(
    subject: &str,
    expected: Option<Seq>,
    err: async_nats::jetstream::context::PublishError,
) -> PublishError {
    use async_nats::jetstream::ErrorCode;
    // What the server answered, when it did: a clustered stream names some refusals with
    // codes of its own.
    let code = std::error::Error::source(&err)
        .and_then(|e| e.downcast_ref::<async_nats::jetstream::Error>())
        .map(async_nats::jetstream::Error::error_code);
    match err.kind() {
        // A lost race; a clustered stream names one that raced another publish proposed on the
        // same version with a code of its own (no sequence in the message).
        kind if kind == PublishErrorKind::WrongLastSequence
            || code == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT) =>
        {
            PublishError::Conflict {
                subject: subject.to_owned(),
                expected: expected.unwrap_or_default(),
            }
        }
        // The same id is being stored by a clustered stream right now (retried with it in a
        // moment, the publish finds the stored copy), or a leader elected a moment ago cannot
        // check a subject's last sequence yet.
        _ if code == Some(ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT)
            || code == Some(ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY) =>
        {
            PublishError::Unavailable {
                subject: subject.to_owned(),
                message: err.to_string(),
            }
        }
        PublishErrorKind::StreamNotFound => PublishError::NoStream {
            subject: subject.to_owned(),
        },
        PublishErrorKind::TimedOut => PublishError::TimedOut {
            subject: subject.to_owned(),
        },
        PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
            PublishError::Unavailable {
                subject: subject.to_owned(),
                message: err.to_string(),
            }
        }
        _ => PublishError::Other {
            subject: subject.to_owned(),
            message: err.to_string(),
        },
    }
}

impl Bus {
    /// Hands `event` to the server without waiting for it to be stored. Events handed over
    /// one after another on this connection are stored in that order unless one is lost on the
    /// way (in the socket of a connection that dies, or on its way to a stream leader that
    /// dies): a later one may then be stored without it. A caller whose events must keep
    /// their order hands the next over once the one before is stored.
    ///
    /// `membership` is the MEMBERSHIP position the event was decided on (see
    /// [`header::MEMBERSHIP_SEQ`]).
    pub async fn publish_event_pipelined(
        &self,
        subject: &str,
        event: &Envelope,
        membership: Option<Seq>,
    ) -> Result<PendingAck, PublishError> {
        self.hand_over(subject, event, None, membership).await
    }

    /// Publishes `event` on `subject` and waits for JetStream to store it.
    pub async fn publish_event(
        &self,
        subject: &str,
        event: &Envelope,
        expected_last_subject_seq: Option<Seq>,
    ) -> Result<Published, PublishError> {
        self.hand_over(subject, event, expected_last_subject_seq, None)
            .await?
            .stored()
            .await
    }

    async fn hand_over(
        &self,
        subject: &str,
        event: &Envelope,
        expected: Option<Seq>,
        membership: Option<Seq>,
    ) -> Result<PendingAck, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::MSG_ID, event.id.as_str());
        headers.insert(header::EVENT_TYPE, event.event.type_name());
        if let Some(position) = membership {
            headers.insert(header::MEMBERSHIP_SEQ, position.to_string().as_str());
        }
        if let Some(expected) = expected {
            headers.insert(
                header::EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
        }
        let inner = self
            .jetstream()
            .publish_with_headers(subject.to_owned(), headers, event.to_json().into())
            .await
            .map_err(|e| publish_error(subject, expected, e))?;
        Ok(PendingAck {
            inner,
            subject: subject.to_owned(),
            expected,
        })
    }

    /// The event stored at `seq` in `stream`.
    pub async fn stored_event(&self, stream: &str, seq: Seq) -> Result<Envelope, PublishError> {
        let other = |message: String| PublishError::Other {
            subject: format!("{stream}#{seq}"),
            message,
        };
        match self.stored_event_if_any(stream, seq).await {
            Ok(Some(decoded)) => decoded.map_err(other),
            Ok(None) => Err(other("no message stored there".to_owned())),
            Err(e) => Err(other(e.to_string())),
        }
    }

    /// The event stored at `seq` in `stream`, or `None` if no message is stored there
    /// (removed by the stream's limits) — told apart from a failure to ask.
    pub async fn stored_event_if_any(
        &self,
        stream: &str,
        seq: Seq,
    ) -> Result<Option<Result<Envelope, String>>, BusError> {
        let handle = self.stream_handle(stream).await?;
        let stored = crate::stored_or_none(stream, handle.get_raw_message(seq.0).await)?;
        Ok(stored.map(|m| Envelope::from_json(&m.payload).map_err(|e| e.to_string())))
    }

    /// The sequence of the first message `stream` stores at or after `from`, if any (those
    /// before it, up to `from`, were erased or never stored).
    pub async fn first_stored_from(
        &self,
        stream: &str,
        from: Seq,
    ) -> Result<Option<Seq>, BusError> {
        let handle = self.stream_handle(stream).await?;
        let first = handle.get_first_raw_message_by_subject(">", from.0).await;
        Ok(crate::stored_or_none(stream, first)?.map(|m| Seq(m.sequence)))
    }

    /// Where a hole at `seq` in `stream` ends — the first sequence after it that may hold a
    /// message — when the stream shows that nothing is stored at `seq`: its leader stores a
    /// later message (a server applies messages in order, so it holds everything before that
    /// one), or `seq` is below the stream's first sequence (purged). `None` when `seq` is
    /// stored or nothing shows otherwise: a leader elected a moment ago answers "no message"
    /// for what it has not applied yet, and a reader that took that for a hole would pass an
    /// event it never read.
    pub async fn hole_end(&self, stream: &str, seq: Seq) -> Result<Option<Seq>, BusError> {
        Ok(match self.first_stored_from(stream, seq).await? {
            Some(next) => (next > seq).then_some(next),
            None => {
                let first = self.stream_state(stream).await?.first_seq;
                (seq < first).then_some(first)
            }
        })
    }

    /// Erases the message at `seq` from `stream`: JetStream overwrites its bytes in the store
    /// before it lets go of them (a secure delete), and the sequence stays taken. `false` if
    /// nothing is stored there (erased already). Only a NATS user allowed
    /// `$JS.API.STREAM.MSG.DELETE.<stream>` may do this (the projector).
    pub async fn erase(&self, stream: &str, seq: Seq) -> Result<bool, BusError> {
        use async_nats::jetstream::stream::DeleteMessageErrorKind;
        let handle = self.stream_handle(stream).await?;
        match handle.delete_message(seq.0).await {
            Ok(done) => Ok(done),
            // Refused: fine if there is nothing left to erase there (the server names that
            // case with more than one code).
            Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => {
                match self.stored_event_if_any(stream, seq).await? {
                    None => Ok(false),
                    Some(_) => Err(BusError::jetstream(stream, e)),
                }
            }
            Err(e) => Err(BusError::jetstream(stream, e)),
        }
    }

    /// The first event still stored on `subject` in `stream`, with its sequence; `None` if
    /// none is (or it is not an event).
    pub async fn first_subject_event(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<(Seq, Envelope)>, BusError> {
        let handle = self.stream_handle(stream).await?;
        let first = handle.get_first_raw_message_by_subject(subject, 1).await;
        Ok(crate::stored_or_none(subject, first)?.and_then(|m| {
            Envelope::from_json(&m.payload)
                .ok()
                .map(|env| (Seq(m.sequence), env))
        }))
    }

    /// Stores a record (not an event) on `subject` only if the subject's last sequence is
    /// still `expected` (0: no record yet), so two writers never overwrite each other unseen.
    pub async fn publish_record(
        &self,
        subject: &str,
        payload: Vec<u8>,
        expected: Seq,
    ) -> Result<Published, PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        self.jetstream()
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .map_err(|e| publish_error(subject, Some(expected), e))?
            .await
            .map(|ack| Published {
                seq: Seq(ack.sequence),
                duplicate: ack.duplicate,
            })
            .map_err(|e| publish_error(subject, Some(expected), e))
    }

    /// Publishes raw bytes on a subject and waits for JetStream to store them. For events from
    /// other systems (tests, tools), which arrive as bytes we have not validated.
    pub async fn publish_raw(
        &self,
        subject: &str,
        msg_id: Option<&str>,
        payload: Vec<u8>,
    ) -> Result<Published, PublishError> {
        let mut headers = HeaderMap::new();
        if let Some(id) = msg_id {
            headers.insert(header::MSG_ID, id);
        }
        let other = |e: &dyn std::fmt::Display| PublishError::Other {
            subject: subject.to_owned(),
            message: e.to_string(),
        };
        let ack = self
            .jetstream()
            .publish_with_headers(subject.to_owned(), headers, payload.into())
            .await
            .map_err(|e| other(&e))?
            .await
            .map_err(|e| other(&e))?;
        Ok(Published {
            seq: Seq(ack.sequence),
            duplicate: ack.duplicate,
        })
    }
}
