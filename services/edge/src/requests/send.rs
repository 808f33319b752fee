//! Sends: checked, handed to the stream, answered in the order they came.
//!
//! A connection keeps many sends in flight; each answer takes its place behind the answers
//! of the sends before it, also an answer given at once (a refusal, a duplicate). A send
//! refused for a passing reason (`rate_limited`, `overloaded`, `internal`) blocks the sends
//! after it with `out_of_order` until it is sent again, so a client that retries in order
//! keeps its order.
//!
//! Within a conversation, a connection's sends reach the stream one after another: each is
//! handed over once the one before it is stored. Handing it over earlier could store it
//! although the one before was lost — NATS loses what was in the socket of a connection that
//! dies and sends what was queued behind it once it reconnects, and a stream leader that dies
//! loses what was on its way to it — and the retry of the lost one would then be stored after
//! it. A send whose predecessor was not stored is not handed over at all: it is answered
//! `out_of_order`, like every send after a refusal. Sends to different conversations do not
//! wait for each other.

use anchorage_protocol::request::SendMessage;
use anchorage_protocol::{Ack, RequestId, ServerFrame};
use anchorage_schema::event::MessageSent;
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{ClientMsgId, ConversationId, Envelope, EventId, Seq, now_ms};
use tokio::sync::watch;

use super::error::RequestError;
use super::session::Session;

/// The answer of a send, once JetStream acknowledged it.
pub type AckFuture = std::pin::Pin<Box<dyn std::future::Future<Output = SendAnswer> + Send>>;

/// The answer to a send, and what became of it if it was handed to the stream.
#[derive(Debug)]
pub struct SendAnswer {
    /// The `ack` or the refusal.
    pub frame: ServerFrame,
    /// The send, if it was handed to the stream (or waited to be).
    handed: Option<Box<Handed>>,
}

impl SendAnswer {
    /// An answer that is known already.
    pub fn ready(frame: ServerFrame) -> AckFuture {
        Box::pin(std::future::ready(SendAnswer {
            frame,
            handed: None,
        }))
    }
}

/// The last send of one conversation on a connection that was handed to the stream (or waits
/// to be).
#[derive(Debug)]
pub(crate) struct Lane {
    /// Its number among the connection's sends.
    no: u64,
    /// Whether it was stored, once that is known (`Some(false)`: lost, or not handed over).
    stored: watch::Receiver<Option<bool>>,
    /// The first send of the lane that was handed over and not stored: nothing after it is
    /// handed over until it is sent again.
    stalled: Option<ClientMsgId>,
}

/// A send that was handed to the stream, and its fate.
#[derive(Debug)]
struct Handed {
    conv: ConversationId,
    client_msg_id: ClientMsgId,
    no: u64,
    fate: Fate,
}

/// When a send is handed to the stream.
enum HandOver {
    /// Handed over already: its acknowledgement is to come.
    Now(anchorage_bus::PendingAck),
    /// Once the send before it is stored.
    After(watch::Receiver<Option<bool>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Stored,
    /// Handed over, and no acknowledgement came: it may or may not be stored.
    InDoubt,
    /// Not handed over: the send before it was not stored.
    HeldBack,
}

impl Session {
    /// Starts a send; the returned future gives its answer, for the caller to queue behind
    /// the answers of the sends before it.
    pub(super) async fn send(&mut self, id: RequestId, send: SendMessage) -> AckFuture {
        let started = std::time::Instant::now();
        let no = self.next_send();
        let answer = if let Err(err) = self.out_of_order(&send.conv, &send.client_msg_id) {
            SendAnswer::ready(err.into_frame(Some(id)))
        } else {
            let key = (send.conv.clone(), send.client_msg_id.clone());
            match self.start_send(id, no, send).await {
                Ok(ack) => ack,
                Err(err) => {
                    if err.is_passing() {
                        self.block(key.0, key.1, no);
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
        if let Some(handed) = answer.handed {
            let Handed {
                conv,
                client_msg_id,
                no,
                fate,
            } = *handed;
            match fate {
                // The lane is idle once its last send is stored.
                Fate::Stored => {
                    if self
                        .lanes
                        .get(&conv)
                        .is_some_and(|l| l.no == no && l.stalled.is_none())
                    {
                        self.lanes.remove(&conv);
                    }
                }
                Fate::InDoubt => {
                    if let Some(lane) = self.lanes.get_mut(&conv) {
                        lane.stalled.get_or_insert_with(|| client_msg_id.clone());
                    }
                    self.block(conv, client_msg_id, no);
                }
                Fate::HeldBack => {}
            }
        }
        self.reply(answer.frame).await;
    }

    /// Numbers a send as it is read.
    pub(crate) fn next_send(&mut self) -> u64 {
        self.read += 1;
        self.read
    }

    /// Remembers a send (numbered `no` as it was read) refused for a passing reason: the
    /// earliest one, which the client sees refused first and retries from. A send whose
    /// acknowledgement failed is known to be refused only after later ones may have been.
    pub(crate) fn block(&mut self, conv: ConversationId, client_msg_id: ClientMsgId, no: u64) {
        if self.blocked.as_ref().is_none_or(|b| no < b.0) {
            self.blocked = Some(Box::new((no, conv, client_msg_id)));
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
        if (&blocked.1, &blocked.2) == (conv, client_msg_id) {
            self.blocked = None;
            return Ok(());
        }
        Err(RequestError::OutOfOrder(format!(
            "{} in {} was refused: send it again before later messages",
            blocked.2, blocked.1
        )))
    }

    /// The refusal of a send by someone this edge does not know as a member of `conv`:
    /// `forbidden`, unless its view of the memberships is behind the stream (a group just
    /// created or joined, an edge catching up after NATS came back), when it is `overloaded`
    /// — a passing refusal, which holds back the sends after it, so a client that sends it
    /// again once the membership arrived keeps its order.
    async fn not_a_member(&self, conv: &ConversationId) -> RequestError {
        let behind = match self.state.bus.stream_state(stream::MEMBERSHIP).await {
            Ok(state) => self.state.hub.membership_position() < state.last_seq.0,
            Err(_) => true,
        };
        if behind {
            RequestError::Overloaded(format!(
                "this server is catching up with the members of {conv}; retry in a moment"
            ))
        } else {
            RequestError::Forbidden(format!("not a member of {conv}"))
        }
    }

    /// Checks a message and hands it to the stream — at once, or once the send before it in
    /// its conversation is stored — without waiting for it to be stored: the answer comes from
    /// the returned future, so a connection can keep many sends in flight.
    async fn start_send(
        &mut self,
        id: RequestId,
        no: u64,
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
            attachments,
        } = send;
        // A lane stalled on a send that was not stored takes only that send again (whatever
        // becomes of it then: if it is refused again, the connection's sends are blocked on
        // it).
        match self.lanes.get(&conv).and_then(|l| l.stalled.as_ref()) {
            Some(stalled) if *stalled == client_msg_id => {
                self.lanes.remove(&conv);
            }
            Some(stalled) => {
                return Err(RequestError::OutOfOrder(format!(
                    "{stalled} in {conv} was not stored: send it again before later messages"
                )));
            }
            None => {}
        }
        let user = &self.claims.sub;
        // The membership position this send is decided on travels with the message: edges
        // deliver it only once their view has reached it.
        let Some(position) = self.state.hub.member_position(user, &conv) else {
            return Err(self.not_a_member(&conv).await);
        };
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
        if !attachments.is_empty() {
            // Rare and slow (a call to object storage per file): kept out of every send's
            // future.
            Box::pin(
                self.state
                    .check_attachments(&conv, user.as_str(), &attachments),
            )
            .await?;
        }
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
                attachments,
            },
        );
        let subject = subjects::message(&conv);
        let position = Some(Seq(position));
        let bus = self.state.bus.clone();
        let before = self
            .lanes
            .get(&conv)
            .filter(|lane| *lane.stored.borrow() != Some(true))
            .map(|lane| lane.stored.clone());
        // With nothing to wait for, handed over now: the order of hand-over is the order of
        // storage.
        let hand_over = match before {
            None => HandOver::Now(
                bus.publish_event_pipelined(&subject, &env, position)
                    .await?,
            ),
            Some(before) => HandOver::After(before),
        };
        let (done, stored) = watch::channel(None);
        self.lanes.insert(
            conv.clone(),
            Lane {
                no,
                stored,
                stalled: None,
            },
        );
        Ok(Box::pin(async move {
            let handed = |fate| {
                Some(Box::new(Handed {
                    conv: conv.clone(),
                    client_msg_id: client_msg_id.clone(),
                    no,
                    fate,
                }))
            };
            let pending = match hand_over {
                HandOver::Now(pending) => Ok(pending),
                HandOver::After(mut before) => {
                    // A dropped sender (the connection closed) counts as not stored.
                    let stored = before
                        .wait_for(Option::is_some)
                        .await
                        .is_ok_and(|s| *s == Some(true));
                    if !stored {
                        let _ = done.send(Some(false));
                        let err = RequestError::OutOfOrder(format!(
                            "an earlier message of this connection in {conv} was not stored: \
                             send it again first"
                        ));
                        return SendAnswer {
                            frame: err.into_frame(Some(id)),
                            handed: handed(Fate::HeldBack),
                        };
                    }
                    bus.publish_event_pipelined(&subject, &env, position).await
                }
            };
            let published = match pending {
                Ok(pending) => pending.stored().await,
                Err(err) => Err(err),
            };
            let published = match published {
                Ok(p) => p,
                Err(err) => {
                    let _ = done.send(Some(false));
                    return SendAnswer {
                        frame: RequestError::from(err).into_frame(Some(id)),
                        handed: handed(Fate::InDoubt),
                    };
                }
            };
            let _ = done.send(Some(true));
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
                client_msg_id: client_msg_id.clone(),
                seq: published.seq.0,
                server_ts,
                duplicate: published.duplicate,
            };
            SendAnswer {
                frame: ServerFrame::reply(id, ack),
                handed: handed(Fate::Stored),
            }
        }))
    }
}
