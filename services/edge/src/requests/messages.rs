//! Reading a conversation: `sync` (after an anchor), `history` (before a point), and the
//! markers `read` (the user's, synced to their devices) and `received` (this device's).

use std::time::Duration;

use anchorage_protocol::request::{History, MarkRead, MarkReceived, ReceiptsQuery, Sync};
use std::collections::BTreeMap;

use anchorage_protocol::{Done, Message, Messages, Reaction, Receipt, Receipts};
use anchorage_schema::event::ReadMarked;
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{ConversationId, Envelope, EventId, Seq, now_ms};
use anchorage_store::{EntryKind, EntryPage, MessageRow, PageAt};

use super::error::RequestError;
use super::session::Session;
use crate::EdgeState;
use crate::progress::Projection;

/// Most messages one `sync` or `history` answer carries.
const MAX_PAGE: u32 = 500;
/// Bytes of message bodies one `sync` or `history` answer carries at most (at least one
/// message); the rest comes with `more`.
const PAGE_BYTES: usize = 1024 * 1024;
/// How long a request waits for the projection to catch up with the stream.
pub(crate) const PROJECTION_WAIT: Duration = Duration::from_secs(2);

/// A stored entry as clients see it, with the reactions on it (`None` for a row that is not
/// one: never stored so).
pub(super) fn message_view(row: MessageRow, reactions: Vec<Reaction>) -> Option<Message> {
    let kind = row.kind;
    let message = kind.is_message();
    let mention_all = row.mentions.iter().any(|m| m == "*");
    let mentions = row.mentions.into_iter().filter(|m| m != "*").collect();
    Some(Message {
        kind,
        target: row.target,
        emoji: row.emoji,
        added: (row.kind == EntryKind::Reaction).then_some(row.flag.unwrap_or(false)),
        reply_to: row.reply_to,
        mentions,
        mention_all,
        edits: row.edits,
        revoked: row.revoked,
        pinned: if message {
            row.pinned
        } else {
            row.kind == EntryKind::Pin && row.flag.unwrap_or(false)
        },
        reactions,
        version: (message && row.version > row.seq).then_some(row.version),
        attachments: row.attachments,
        ..Message::entry(
            ConversationId::parse(row.conv).ok()?,
            row.seq,
            row.sender,
            row.device,
            row.client_msg_id,
            serde_json::from_str(&row.body).unwrap_or(serde_json::Value::String(row.body)),
            (row.client_ts, row.server_ts),
        )
    })
}

/// The entries of a page as clients see them: each message with the reactions on it read
/// with it.
pub(super) fn page_views(page: EntryPage) -> Vec<Message> {
    let mut reactions: BTreeMap<u64, Vec<Reaction>> = BTreeMap::new();
    for c in page.reactions {
        reactions.entry(c.target).or_default().push(Reaction {
            emoji: c.emoji,
            count: c.count,
            mine: c.mine,
        });
    }
    page.rows
        .into_iter()
        .filter_map(|row| {
            let r = reactions.remove(&row.seq).unwrap_or_default();
            message_view(row, r)
        })
        .collect()
}

/// The answer carrying at most `limit` of the page's entries (read with one more, to know
/// whether more remain) and at most [`PAGE_BYTES`] of bodies; `more` also when the history is
/// `unsettled`.
fn messages_page(
    conv: ConversationId,
    mut page: EntryPage,
    limit: u32,
    unsettled: bool,
) -> Messages {
    let more = page.rows.len() > limit as usize || unsettled;
    page.rows.truncate(limit as usize);
    let more = cut_to_bytes(&mut page.rows) || more;
    Messages {
        conv,
        messages: page_views(page),
        more,
    }
}

impl EdgeState {
    /// Entries of one conversation as `user` sees them, each message with its reactions read
    /// now (and whether `user` is among those who reacted): for answers that carry no version
    /// a device goes on from (search results, a message's edits).
    pub(crate) async fn views(
        &self,
        rows: Vec<MessageRow>,
        user: &str,
    ) -> Result<Vec<Message>, RequestError> {
        let messages = rows.iter().filter(|r| r.kind == EntryKind::Message);
        let (from, to) = messages.fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r.seq), hi.max(r.seq)));
        let mut reactions = Vec::new();
        if from <= to
            && let Some(conv) = rows.first().map(|r| r.conv.clone())
        {
            reactions = self.store.reaction_counts(&conv, from, to, user).await?;
        }
        Ok(page_views(EntryPage { rows, reactions }))
    }
}

impl EdgeState {
    /// Whether the message projection holds everything the stream holds for `conv` right
    /// now (waiting briefly for it), so a sync never answers from a projection that lags
    /// behind messages the client may have missed live. If not (the projector is far behind),
    /// the answer says `more` and the client asks again.
    pub(crate) async fn settled_conversation(
        &self,
        conv: &ConversationId,
    ) -> Result<bool, RequestError> {
        let last = self.conversation_end(conv).await?;
        self.messages_projected(last).await
    }

    /// The seq of the conversation's last message, from the stream itself.
    pub(crate) async fn conversation_end(
        &self,
        conv: &ConversationId,
    ) -> Result<Seq, RequestError> {
        Ok(self
            .bus
            .last_subject_seq(stream::MESSAGES, &subjects::message(conv))
            .await?)
    }

    /// Whether the message projection has applied the MESSAGES stream up to `seq` (waiting
    /// up to [`PROJECTION_WAIT`]) — its checkpoint, not a conversation's last seq, so an
    /// event the projection set aside holds nothing up.
    pub(crate) async fn messages_projected(&self, seq: Seq) -> Result<bool, RequestError> {
        Ok(self
            .progress
            .reached(Projection::Messages, seq.0, PROJECTION_WAIT)
            .await?)
    }
}

impl Session {
    pub(super) async fn sync(&self, r: Sync) -> Result<Messages, RequestError> {
        let Sync { conv, after, limit } = r;
        self.member(&conv)?;
        let settled = self.state.settled_conversation(&conv).await?;
        let limit = limit.unwrap_or(100).clamp(1, MAX_PAGE);
        let page = self
            .state
            .store
            .page_for(
                conv.as_str(),
                PageAt::After(after),
                limit + 1,
                self.claims.sub.as_str(),
            )
            .await?;
        if !settled && page.rows.is_empty() {
            // Nothing to show yet, and more may be coming: say when to ask again rather than
            // an empty page with `more`.
            return Err(RequestError::Overloaded(format!(
                "the history of {conv} is catching up; sync again in a moment"
            )));
        }
        Ok(messages_page(conv, page, limit, !settled))
    }

    pub(super) async fn history(&self, r: History) -> Result<Messages, RequestError> {
        let History {
            conv,
            before,
            limit,
        } = r;
        self.member(&conv)?;
        // The page must start where the conversation is: from its newest message (`before`
        // 0), or from a point the projection may not have reached. Until the projection holds
        // everything up to there, a page would leave the newest messages out without saying.
        let projected_there = before > 0
            && self
                .state
                .progress
                .reached(Projection::Messages, before - 1, Duration::ZERO)
                .await?;
        let complete = projected_there || self.state.settled_conversation(&conv).await?;
        if !complete {
            return Err(RequestError::Overloaded(format!(
                "the history of {conv} is catching up; ask again in a moment"
            )));
        }
        let limit = limit.unwrap_or(50).clamp(1, MAX_PAGE);
        let page = self
            .state
            .store
            .page_for(
                conv.as_str(),
                PageAt::Before(before),
                limit + 1,
                self.claims.sub.as_str(),
            )
            .await?;
        Ok(messages_page(conv, page, limit, false))
    }

    /// Refuses a position past the conversation's last message: a marker there would hide
    /// every later message from the device's summaries.
    async fn within_conversation(
        &self,
        conv: &ConversationId,
        seq: u64,
    ) -> Result<(), RequestError> {
        let last = self.state.conversation_end(conv).await?;
        if seq > last.0 {
            return Err(RequestError::Invalid(format!(
                "seq {seq} is past the last message of {conv} ({})",
                last.0
            )));
        }
        Ok(())
    }

    pub(super) async fn read(&self, r: MarkRead) -> Result<Done, RequestError> {
        let MarkRead { conv, seq } = r;
        self.member(&conv)?;
        self.within_conversation(&conv, seq).await?;
        let user = &self.claims.sub;
        let event_id = EventId::parse(format!("{user}:read:{conv}:{seq}"))
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        let env = Envelope::new(
            event_id,
            now_ms(),
            self.actor(),
            ReadMarked {
                user: user.clone(),
                conv: conv.clone(),
                read_seq: seq,
            },
        );
        self.state
            .bus
            .publish_event(&subjects::read(user, &conv), &env, None)
            .await?;
        Ok(Done {
            conv: Some(conv),
            seq: Some(seq),
        })
    }

    /// How far the others read: each of them in a 1:1 or a small group, how many read a
    /// message (`seq`) in any; members who hide their receipts are left out.
    pub(super) async fn receipts(&self, r: ReceiptsQuery) -> Result<Receipts, RequestError> {
        let ReceiptsQuery { conv, seq } = r;
        self.member(&conv)?;
        if let Some(seq) = seq {
            self.within_conversation(&conv, seq).await?;
        }
        let me = self.claims.sub.as_str();
        let store = &self.state.store;
        let small = conv.is_direct()
            || store.group_row(conv.as_str()).await?.is_some_and(|g| {
                g.member_count <= u64::from(self.state.messages.receipts_max_members)
            });
        let readers = if small {
            store
                .read_positions(conv.as_str())
                .await?
                .into_iter()
                .filter(|(user, _)| user != me)
                .map(|(user, seq)| Receipt {
                    conv: conv.clone(),
                    user,
                    seq,
                })
                .collect()
        } else {
            Vec::new()
        };
        let count = match seq {
            // Counted from the same list, so the answer agrees with itself while reads land.
            Some(seq) if small => Some(
                readers
                    .iter()
                    .filter(|r: &&Receipt| r.seq > 0 && r.seq >= seq)
                    .count() as u64,
            ),
            Some(seq) => Some(store.readers_count(conv.as_str(), seq, me).await?),
            None => None,
        };
        Ok(Receipts {
            conv,
            readers,
            count,
        })
    }

    pub(super) async fn received(&self, r: MarkReceived) -> Result<Done, RequestError> {
        let MarkReceived { conv, seq } = r;
        self.member(&conv)?;
        self.within_conversation(&conv, seq).await?;
        self.state
            .store
            .set_delivered(
                self.claims.sub.as_str(),
                self.claims.device.as_str(),
                conv.as_str(),
                seq,
            )
            .await?;
        Ok(Done {
            conv: Some(conv),
            seq: Some(seq),
        })
    }
}

/// Cuts a page of messages to [`PAGE_BYTES`] of bodies (keeping at least one); returns
/// whether it cut anything.
fn cut_to_bytes(rows: &mut Vec<MessageRow>) -> bool {
    let mut total = 0usize;
    let keep = rows
        .iter()
        .position(|r| {
            total += r.body.len();
            total > PAGE_BYTES
        })
        .map_or(rows.len(), |i| i.max(1));
    let cut = keep < rows.len();
    rows.truncate(keep);
    cut
}
