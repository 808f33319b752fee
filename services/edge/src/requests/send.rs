//! Sends: checked, handed to the stream without waiting, answered in the order they came.
//!
//! A connection keeps many sends in flight; each answer takes its place behind the answers
//! of the sends before it, also an answer given at once (a refusal, a duplicate). A send
//! refused for a passing reason (`rate_limited`, `overloaded`, `internal`) blocks the sends
//! after it with `out_of_order` until it is sent again, so a client that retries in order
//! keeps its order.

use anchorage_protocol::request::SendMessage;
use anchorage_protocol::{Ack, RequestId, ServerFrame};
use anchorage_schema::event::MessageSent;
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{ClientMsgId, ConversationId, Envelope, EventId, Seq, now_ms};

use super::error::RequestError;
use super::session::Session;

/// The answer of a send, once JetStream acknowledged it.
pub type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = SendAnswer> + Send>>;

/// The answer to a send, and which send it was if it was refused for a passing reason.
#[derive(Debug)]
pub struct SendAnswer {
    /// The `ack` or the refusal.
    pub frame: ServerFrame,
    /// The send, if it was refused for a passing reason.
    pub refused: Option<Box<(ConversationId, ClientMsgId)>>,
}

impl SendAnswer {
    /// An answer that is known already.
    pub fn ready(frame: ServerFrame) -> AckFuture {
        Box::pin(std::future::ready(SendAnswer {
            frame,
            refused: None,
        }))
    }
}

impl Session {
    /// Starts a send; the returned future gives its answer, for the caller to queue behind
    /// the answers of the sends before it.
    pub(super) async fn send(&mut self, id: RequestId, send: SendMessage) -> AckFuture {
        let started = std::time::Instant::now();
        let answer = if let Err(err) = self.out_of_order(&send.conv, &send.client_msg_id) {
            SendAnswer::ready(err.into_frame(Some(id)))
        } else {
            let key = (send.conv.clone(), send.client_msg_id.clone());
            match self.start_send(id, send).await {
                Ok(ack) => ack,
                Err(err) => {
                    if err.is_passing() {
                        self.block(key.0, key.1);
                    }
                    SendAnswer::ready(err.into_frame(Some(id)))
                }
            }
        };
        Box::pin(async move {
            let answer = answer.await;
            crate::metrics::sent(&answer.frame, started);
            answer
        })
    }

    /// Queues the answer of a send whose acknowledgement came (or failed).
    pub async fn answer_send(&mut self, answer: SendAnswer) {
        if let Some(refused) = answer.refused {
            let (conv, client_msg_id) = *refused;
            self.block(conv, client_msg_id);
        }
        self.reply(answer.frame).await;
    }

    /// Remembers a send refused for a passing reason (the first one: the client retries from
    /// there).
    pub(crate) fn block(&mut self, conv: ConversationId, client_msg_id: ClientMsgId) {
        if self.blocked.is_none() {
            self.blocked = Some(Box::new((conv, client_msg_id)));
        }
    }

    /// Refuses a send that would overtake a refused one; the refused one itself, sent again,
    /// lifts the block.
    fn out_of_order(
        &mut self,
        conv: &ConversationId,
        client_msg_id: &ClientMsgId,
    ) -> Result<(), RequestError> {
        let Some(blocked) = self.blocked.as_deref() else {
            return Ok(());
        };
        if (&blocked.0, &blocked.1) == (conv, client_msg_id) {
            self.blocked = None;
            return Ok(());
        }
        Err(RequestError::OutOfOrder(format!(
            "{} in {} was refused: send it again before later messages",
            blocked.1, blocked.0
        )))
    }

    /// Checks and hands a message to the stream without waiting for it to be stored: the
    /// answer comes from the returned acknowledgement. Messages started one after another are
    /// stored in that order, so a connection can keep many sends in flight.
    async fn start_send(
        &self,
        id: RequestId,
        send: SendMessage,
    ) -> Result<AckFuture, RequestError> {
        let SendMessage {
            conv,
            client_msg_id,
            body,
            client_ts,
            retry,
            reply_to,
            mentions,
            mention_all,
        } = send;
        let user = &self.claims.sub;
        // The membership position this send is decided on travels with the message: edges
        // deliver it only once their view has reached it.
        let position = self
            .state
            .hub
            .member_position(user, &conv)
            .ok_or_else(|| RequestError::Forbidden(format!("not a member of {conv}")))?;
        if let Some(until) = self.state.hub.muted_until(user, &conv)
            && until > now_ms()
        {
            return Err(RequestError::Forbidden(format!(
                "muted in {conv} until {until}"
            )));
        }
        // A retry may come after the stream's duplicate window: then the projection is what
        // says whether the first attempt was stored, and it can say so only once it holds
        // everything the stream holds for this conversation. Until then: come back later,
        // never a second copy.
        if retry && !self.state.settled_conversation(&conv).await? {
            return Err(RequestError::Overloaded(format!(
                "the history of {conv} is catching up; retry {client_msg_id} in a moment"
            )));
        }
        // A repeat after the stream's duplicate window must get the original from the
        // history, never a second copy the history would not hold. A send can be such a
        // repeat only if it says so (`retry`) or was written long enough ago (its `client_ts`
        // older than half the window, or from a clock running ahead): only those pay for the
        // history lookup, fresh sends go straight to the stream (which deduplicates them).
        let age = now_ms().saturating_sub(client_ts);
        let maybe_repeat = retry || !(-1_000..=self.state.fresh_send_ms).contains(&age);
        if maybe_repeat
            && let Some(row) = self
                .state
                .store
                .message_by_client_id(
                    conv.as_str(),
                    user.as_str(),
                    self.claims.device.as_str(),
                    client_msg_id.as_str(),
                )
                .await?
        {
            let ack = Ack {
                client_msg_id,
                seq: row.seq,
                server_ts: row.server_ts,
                duplicate: true,
            };
            return Ok(SendAnswer::ready(ServerFrame::reply(id, ack)));
        }
        let mut mentions = mentions;
        mentions.sort();
        mentions.dedup();
        self.check_references(&conv, reply_to, &mentions, mention_all)
            .await?;
        // The idempotency key names the conversation: the same client id in two conversations
        // is two messages.
        let event_id = EventId::parse(format!(
            "{user}:{}:{conv}:{client_msg_id}",
            self.claims.device
        ))
        .map_err(|e| RequestError::Invalid(e.to_string()))?;
        let mut body = body;
        if let Some(hook) = &self.state.before_send {
            let draft = crate::hook::Draft {
                conv: &conv,
                sender: user,
                device: &self.claims.device,
                client_msg_id: &client_msg_id,
                body: &body,
            };
            if let Some(replaced) = hook.check(&event_id, &draft).await? {
                body = replaced;
            }
        }
        let server_ts = now_ms();
        let env = Envelope::new(
            event_id,
            server_ts,
            self.actor(),
            MessageSent {
                conv: conv.clone(),
                sender: user.clone(),
                device: self.claims.device.clone(),
                client_msg_id: client_msg_id.clone(),
                body,
                client_ts,
                reply_to,
                mentions,
                mention_all,
            },
        );
        let pending = self
            .state
            .bus
            .publish_event_pipelined(&subjects::message(&conv), &env, Some(Seq(position)))
            .await?;
        let bus = self.state.bus.clone();
        Ok(Box::pin(async move {
            let published = match pending.stored().await {
                Ok(p) => p,
                Err(err) => {
                    let err = RequestError::from(err);
                    let refused = err.is_passing().then(|| Box::new((conv, client_msg_id)));
                    return SendAnswer {
                        frame: err.into_frame(Some(id)),
                        refused,
                    };
                }
            };
            let server_ts = if published.duplicate {
                // The original's time, from the stored copy.
                bus.stored_event(stream::MESSAGES, published.seq)
                    .await
                    .map(|e| e.occurred_at)
                    .unwrap_or(server_ts)
            } else {
                server_ts
            };
            let ack = Ack {
                client_msg_id,
                seq: published.seq.0,
                server_ts,
                duplicate: published.duplicate,
            };
            SendAnswer {
                frame: ServerFrame::reply(id, ack),
                refused: None,
            }
        }))
    }
}
