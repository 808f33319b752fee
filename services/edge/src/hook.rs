//! The before-send hook: every message is posted (signed like a webhook) to the app's
//! moderation or enrichment service before it is stored, within a time budget.
//!
//! The service answers `{"action": "allow"}`, `{"action": "reject", "reason": "…"}` (the
//! sender gets `rejected` with the reason) or `{"action": "replace", "body": …}` (the message
//! is stored with that body). No answer in time, a non-2xx status or an answer that is none of
//! those is a failure: `fail_open` stores the message as sent, `fail_closed` refuses it as
//! `overloaded` (the client retries with the same id). Every call's time shows in
//! `anchorage_before_send_seconds`, by outcome.

use std::time::{Duration, Instant};

use anchorage_config::{BeforeSendConfig, OnFailure};
use anchorage_schema::limits::{MAX_JSON_DEPTH, json_depth};
use anchorage_schema::{ClientMsgId, ConversationId, DeviceId, EventId, UserId};
use anchorage_webhooks::{Outcome, Poster, Secret};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::requests::RequestError;

/// The configured hook.
#[derive(Debug)]
pub struct BeforeSend {
    poster: Poster,
    url: String,
    secret: Secret,
    on_failure: OnFailure,
    max_body: usize,
}

/// What the hook is asked about.
#[derive(Debug, Serialize)]
pub struct Draft<'a> {
    /// The conversation.
    pub conv: &'a ConversationId,
    /// The sender.
    pub sender: &'a UserId,
    /// The sender's device.
    pub device: &'a DeviceId,
    /// The sender's id of the message.
    pub client_msg_id: &'a ClientMsgId,
    /// The body as sent.
    pub body: &'a Value,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Verdict {
    Allow,
    Reject {
        #[serde(default)]
        reason: String,
    },
    Replace {
        body: Value,
    },
}

impl BeforeSend {
    /// The hook `config` describes; bodies it puts in are held to `max_body` bytes.
    pub fn from_config(config: &BeforeSendConfig, max_body: usize) -> anyhow::Result<BeforeSend> {
        Ok(BeforeSend {
            poster: Poster::new(Duration::from_millis(config.timeout_ms))?,
            url: config.url.clone(),
            secret: Secret::parse(&config.secret)?,
            on_failure: config.on_failure,
            max_body,
        })
    }

    /// Asks about `draft` (sent as event `id`): the body to store, or why not.
    pub async fn check(
        &self,
        id: &EventId,
        draft: &Draft<'_>,
    ) -> Result<Option<Value>, RequestError> {
        let started = Instant::now();
        let body = serde_json::to_vec(draft).map_err(RequestError::internal)?;
        let outcome = self
            .poster
            .post(&self.url, &self.secret, id.as_str(), body)
            .await;
        let verdict = match &outcome {
            Outcome::Answered { status, body } if (200..300).contains(status) => {
                serde_json::from_str::<Verdict>(body).map_err(|e| format!("unreadable answer: {e}"))
            }
            other => Err(other.to_string()),
        };
        let verdict = verdict.and_then(|v| match v {
            Verdict::Replace { body } => {
                let encoded = serde_json::to_vec(&body).unwrap_or_default();
                // A body nests at most 31 deep, as one sent over the WebSocket.
                if encoded.len() > self.max_body || json_depth(&encoded) >= MAX_JSON_DEPTH {
                    Err("a replacement body over the size or nesting limits".to_owned())
                } else {
                    Ok(Verdict::Replace { body })
                }
            }
            v => Ok(v),
        });
        let (label, result) = match verdict {
            Ok(Verdict::Allow) => ("allow", Ok(None)),
            Ok(Verdict::Replace { body }) => ("replace", Ok(Some(body))),
            Ok(Verdict::Reject { reason }) => (
                "reject",
                Err(RequestError::Rejected(if reason.is_empty() {
                    "refused by the before-send hook".to_owned()
                } else {
                    reason
                })),
            ),
            Err(why) => {
                tracing::warn!(%why, "before-send hook failed");
                match self.on_failure {
                    OnFailure::FailOpen => ("failed_open", Ok(None)),
                    OnFailure::FailClosed => (
                        "failed_closed",
                        Err(RequestError::Overloaded(
                            "the before-send hook did not answer; retry in a moment".into(),
                        )),
                    ),
                }
            }
        };
        metrics::histogram!("anchorage_before_send_seconds", "outcome" => label)
            .record(started.elapsed().as_secs_f64());
        result
    }
}
