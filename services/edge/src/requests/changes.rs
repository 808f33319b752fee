//! Changes to messages — edit, revoke, reactions, pins — and what they are read with: who
//! reacted, a message's edits. Replies and mentions of a `send` are checked here too.
//!
//! Every change is an entry of the conversation with its own seq, published on the
//! conversation's subject like a message (with the membership position it was decided on), so
//! it inherits the order, the `prev` chain, gap repair, replay and delivery to every device.
//! Each is decided on the projection's copy of its message and refused there with a precise
//! code; event ids are built from the caller and the state the change was decided on, so a
//! retry is stored once and a later change (a reaction taken back and given again) is new.

use anchorage_protocol::request::{Edit, Edits, Pin, React, ReactorsQuery, Revoke};
use anchorage_protocol::{Done, Messages, Reactors};
use anchorage_schema::event::{MessageEdited, MessageRevoked, PinChanged, ReactionChanged, Role};
use anchorage_schema::subjects;
use anchorage_schema::{
    ClientMsgId, ConversationId, Envelope, Event, EventId, Seq, UserId, now_ms,
};
use anchorage_store::MessageRow;
use xxhash_rust::xxh3::xxh3_64;

use super::error::RequestError;
use super::session::Session;

/// Most users one message mentions.
pub(crate) const MAX_MENTIONS: usize = 50;
/// Longest reaction, in bytes (an emoji with modifiers and joiners fits).
pub(crate) const MAX_EMOJI_BYTES: usize = 32;
/// Most users one `reactors` answer lists.
const MAX_REACTORS: u32 = 500;

/// Refuses what cannot be a reaction: empty, longer than [`MAX_EMOJI_BYTES`], holding
/// control, invisible or direction characters or whitespace, or not starting with something
/// visible.
pub(crate) fn check_emoji(emoji: &str) -> Result<(), RequestError> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Err(RequestError::Invalid(format!(
            "a reaction is 1 to {MAX_EMOJI_BYTES} bytes; this one is {}",
            emoji.len()
        )));
    }
    if emoji
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || invisible(c))
    {
        return Err(RequestError::Invalid(
            "a reaction holds no control, invisible or direction characters, nor whitespace".into(),
        ));
    }
    // Joiners, selectors, skin tones, tags and combining marks shape what stands before
    // them: a reaction starts with something to see, and a joiner joins two things.
    if emoji.chars().next().is_none_or(shaping) || emoji.ends_with(ZWJ) {
        return Err(RequestError::Invalid(
            "a reaction starts with something visible: not a joiner, selector or mark".into(),
        ));
    }
    Ok(())
}

/// The zero-width joiner, which makes one emoji of several.
const ZWJ: char = '\u{200D}';

/// Characters that show nothing, or turn or mark the text's direction: soft hyphens, the
/// combining grapheme joiner, the Arabic letter mark, Hangul and Khmer fillers, Mongolian
/// selectors and separator, zero-width spaces and non-joiners, direction marks, embeddings,
/// overrides and isolates, word joiners, invisible operators and deprecated format
/// characters, the Braille blank, the byte-order mark, interlinear annotations, shorthand
/// format controls, musical formatting, variation selectors other than the emoji ones and the
/// language tag.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}'
        | '\u{17B5}' | '\u{180B}'..='\u{180F}' | '\u{200B}' | '\u{200C}' | '\u{200E}'
        | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{2800}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0D}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E001F}' | '\u{E0080}'..='\u{E01EF}')
}

/// Characters that only shape the one before them: the joiner, the emoji presentation
/// selectors, skin tones, tag letters (subdivision flags), combining marks (the keycap).
fn shaping(c: char) -> bool {
    c == ZWJ
        || matches!(c,
            '\u{FE0E}' | '\u{FE0F}' | '\u{1F3FB}'..='\u{1F3FF}' | '\u{E0020}'..='\u{E007F}'
            | '\u{0300}'..='\u{036F}' | '\u{20D0}'..='\u{20FF}')
}

impl Session {
    /// Checks what a message refers to: the message it replies to is one of the
    /// conversation's, it mentions at most [`MAX_MENTIONS`] users, and `@all` comes from an
    /// owner or admin (either side of a 1:1).
    pub(super) async fn check_references(
        &self,
        conv: &ConversationId,
        reply_to: Option<u64>,
        mentions: &[UserId],
        mention_all: bool,
    ) -> Result<(), RequestError> {
        if mentions.len() > MAX_MENTIONS {
            return Err(RequestError::Invalid(format!(
                "a message mentions at most {MAX_MENTIONS} users; this one names {}",
                mentions.len()
            )));
        }
        if mention_all && !conv.is_direct() && !self.is_staff(conv).await? {
            return Err(RequestError::Forbidden(format!(
                "only owners and admins mention everyone in {conv}"
            )));
        }
        if let Some(target) = reply_to {
            self.target(conv, target).await?;
        }
        Ok(())
    }

    /// Whether the caller is an owner or admin of `conv`.
    async fn is_staff(&self, conv: &ConversationId) -> Result<bool, RequestError> {
        let role = self
            .state
            .store
            .member_role(conv.as_str(), self.claims.sub.as_str())
            .await?;
        Ok(matches!(role, Some(Role::Owner | Role::Admin)))
    }

    /// Message `seq` of `conv` as the projection holds it, once it holds it: `not_found` for
    /// a seq that is not a message of the conversation.
    pub(super) async fn target(
        &self,
        conv: &ConversationId,
        seq: u64,
    ) -> Result<MessageRow, RequestError> {
        self.target_projected(conv, seq, false).await
    }

    /// A message that can still change: stored and not revoked, in the state after every
    /// entry the conversation holds (a reaction taken back right after it was given is
    /// decided on the state that has it).
    async fn live_target(
        &self,
        conv: &ConversationId,
        seq: u64,
    ) -> Result<MessageRow, RequestError> {
        let row = self.target_projected(conv, seq, true).await?;
        if row.revoked {
            return Err(RequestError::NotFound(format!(
                "message {seq} in {conv} was revoked"
            )));
        }
        Ok(row)
    }

    /// Message `seq` once the projection holds it — or with `settled`, once it holds the
    /// whole conversation as the stream has it now (one look at the stream either way).
    async fn target_projected(
        &self,
        conv: &ConversationId,
        seq: u64,
        settled: bool,
    ) -> Result<MessageRow, RequestError> {
        let missing = || RequestError::NotFound(format!("no message {seq} in {conv}"));
        let end = self.state.conversation_end(conv).await?;
        if seq == 0 || seq > end.0 {
            return Err(missing());
        }
        let until = if settled { end } else { Seq(seq) };
        if !self.state.messages_projected(until).await? {
            return Err(RequestError::Overloaded(format!(
                "the history of {conv} is catching up; try again in a moment"
            )));
        }
        self.state
            .store
            .message(conv.as_str(), seq)
            .await?
            .ok_or_else(missing)
    }

    /// Publishes a change as an entry of `conv`, decided on the caller's membership.
    async fn publish_change(
        &self,
        conv: &ConversationId,
        id: String,
        event: impl Into<Event>,
    ) -> Result<Done, RequestError> {
        let position = self
            .state
            .hub
            .member_position(&self.claims.sub, conv)
            .ok_or_else(|| RequestError::Forbidden(format!("not a member of {conv}")))?;
        let id = EventId::parse(id).map_err(|e| RequestError::Invalid(e.to_string()))?;
        let env = Envelope::new(id, now_ms(), self.actor(), event);
        let published = self
            .state
            .bus
            .publish_event_pipelined(&subjects::message(conv), &env, Some(Seq(position)))
            .await?
            .stored()
            .await?;
        Ok(Done {
            conv: Some(conv.clone()),
            seq: Some(published.seq.0),
        })
    }

    pub(super) async fn edit(&self, r: Edit) -> Result<Done, RequestError> {
        let Edit { conv, seq, body } = r;
        self.member(&conv)?;
        let row = self.live_target(&conv, seq).await?;
        let user = &self.claims.sub;
        if row.sender != user.as_str() {
            return Err(RequestError::Forbidden(format!(
                "message {seq} in {conv} is not yours: only its sender edits a message"
            )));
        }
        let window_ms = self.state.messages.edit_window_secs.saturating_mul(1000);
        if now_ms().saturating_sub(row.server_ts) > i64::try_from(window_ms).unwrap_or(i64::MAX) {
            return Err(RequestError::Forbidden(format!(
                "message {seq} in {conv} is past the edit window ({} s)",
                self.state.messages.edit_window_secs
            )));
        }
        let device = &self.claims.device;
        let text = body.to_string();
        if row.body == text {
            // Already so (a retry of an edit that is stored): nothing to store.
            return Ok(Done {
                conv: Some(conv),
                seq: Some(row.version),
            });
        }
        // Named after the body and the state it changes: a retry before the edit is stored is
        // stored once, and going back to an earlier body later is an edit of its own.
        let id = format!(
            "{user}:{device}:edit:{conv}:{seq}:{:016x}:{}",
            xxh3_64(text.as_bytes()),
            row.version
        );
        let mut body = body;
        // Moderation sees an edit like a message: a new body is a new text.
        if let Some(hook) = &self.state.before_send {
            let client_msg_id = ClientMsgId::parse(row.client_msg_id.clone())
                .map_err(|e| RequestError::Invalid(e.to_string()))?;
            let event_id =
                EventId::parse(id.clone()).map_err(|e| RequestError::Invalid(e.to_string()))?;
            let draft = crate::hook::Draft {
                conv: &conv,
                sender: user,
                device,
                client_msg_id: &client_msg_id,
                body: &body,
            };
            if let Some(replaced) = hook.check(&event_id, &draft).await? {
                body = replaced;
            }
        }
        let event = MessageEdited {
            conv: conv.clone(),
            target: seq,
            editor: user.clone(),
            device: device.clone(),
            body,
        };
        self.publish_change(&conv, id, event).await
    }

    pub(super) async fn revoke(&self, r: Revoke) -> Result<Done, RequestError> {
        let Revoke { conv, seq } = r;
        self.member(&conv)?;
        let row = self.live_target(&conv, seq).await?;
        let user = &self.claims.sub;
        let own = row.sender == user.as_str();
        if !own && (conv.is_direct() || !self.is_staff(&conv).await?) {
            return Err(RequestError::Forbidden(format!(
                "message {seq} in {conv} is not yours: only its sender, or an owner or admin \
                 of the group, revokes it"
            )));
        }
        let event = MessageRevoked {
            conv: conv.clone(),
            target: seq,
            sender: row.sender,
            device: row.device,
            client_msg_id: row.client_msg_id,
            client_ts: row.client_ts,
            sent_at: row.server_ts,
        };
        self.publish_change(&conv, format!("{user}:revoke:{conv}:{seq}"), event)
            .await
    }

    pub(super) async fn react(&self, r: React) -> Result<Done, RequestError> {
        let React {
            conv,
            seq,
            emoji,
            remove,
        } = r;
        check_emoji(&emoji)?;
        self.member(&conv)?;
        self.live_target(&conv, seq).await?;
        let user = &self.claims.sub;
        let store = &self.state.store;
        let (has, at) = store
            .reaction_of(conv.as_str(), seq, &emoji, user.as_str())
            .await?;
        if has != remove {
            // Already so: nothing to store.
            return Ok(Done {
                conv: Some(conv),
                seq: None,
            });
        }
        if !remove
            && store.emoji_count(conv.as_str(), seq).await?
                >= u64::from(self.state.messages.max_reaction_kinds)
            && store
                .reactors(conv.as_str(), seq, &emoji, 0, 1)
                .await?
                .is_empty()
        {
            return Err(RequestError::Invalid(format!(
                "message {seq} in {conv} carries {} different reactions already",
                self.state.messages.max_reaction_kinds
            )));
        }
        // Named after the state it changes: a retry is stored once, taking back and giving
        // again is new.
        let id = format!(
            "{user}:react:{conv}:{seq}:{:016x}:{}:{at}",
            xxh3_64(emoji.as_bytes()),
            if remove { "remove" } else { "add" }
        );
        let event = ReactionChanged {
            conv: conv.clone(),
            target: seq,
            user: user.clone(),
            emoji,
            added: !remove,
        };
        self.publish_change(&conv, id, event).await
    }

    pub(super) async fn pin(&self, r: Pin) -> Result<Done, RequestError> {
        let Pin { conv, seq, unpin } = r;
        self.member(&conv)?;
        let row = self.live_target(&conv, seq).await?;
        if !conv.is_direct() && !self.is_staff(&conv).await? {
            return Err(RequestError::Forbidden(format!(
                "only owners and admins pin messages in {conv}"
            )));
        }
        if row.pinned != unpin {
            return Ok(Done {
                conv: Some(conv),
                seq: None,
            });
        }
        let user = &self.claims.sub;
        let id = format!(
            "{user}:pin:{conv}:{seq}:{}:{}",
            if unpin { "unpin" } else { "pin" },
            row.version
        );
        let event = PinChanged {
            conv: conv.clone(),
            target: seq,
            pinned: !unpin,
        };
        self.publish_change(&conv, id, event).await
    }

    /// Refuses to answer from a history behind the conversation's stream (waiting briefly
    /// for it): a client that saw a change live — a revoke, a reaction — must not be answered
    /// as if it had not happened.
    async fn settled(&self, conv: &ConversationId) -> Result<(), RequestError> {
        if self.state.settled_conversation(conv).await? {
            Ok(())
        } else {
            Err(RequestError::Overloaded(format!(
                "the history of {conv} is catching up; ask again in a moment"
            )))
        }
    }

    pub(super) async fn reactors(&self, r: ReactorsQuery) -> Result<Reactors, RequestError> {
        let ReactorsQuery {
            conv,
            seq,
            emoji,
            after,
            limit,
        } = r;
        check_emoji(&emoji)?;
        self.member(&conv)?;
        self.target(&conv, seq).await?;
        self.settled(&conv).await?;
        let limit = limit.unwrap_or(100).clamp(1, MAX_REACTORS);
        let mut rows = self
            .state
            .store
            .reactors(conv.as_str(), seq, &emoji, after.unwrap_or(0), limit + 1)
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let cursor = more.then(|| rows.last().map(|(_, at)| *at)).flatten();
        Ok(Reactors {
            conv,
            seq,
            emoji,
            users: rows.into_iter().map(|(user, _)| user).collect(),
            cursor,
        })
    }

    pub(super) async fn edits(&self, r: Edits) -> Result<Messages, RequestError> {
        let Edits { conv, seq } = r;
        self.member(&conv)?;
        self.target(&conv, seq).await?;
        self.settled(&conv).await?;
        let rows = self.state.store.edits_of(conv.as_str(), seq).await?;
        Ok(Messages {
            conv,
            messages: self.state.views(rows, self.claims.sub.as_str()).await?,
            more: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check_emoji;

    #[test]
    fn reactions_are_visible_emoji() {
        for fine in [
            "👍",
            "👍🏽",
            "❤\u{FE0F}",
            "👩\u{200D}💻",
            "🇳🇴",
            "1\u{FE0F}\u{20E3}",
            "🏴\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
            "+1",
            "ok",
        ] {
            assert!(check_emoji(fine).is_ok(), "{fine:?} refused");
        }
        for bad in [
            "",
            "a b",
            "\n",
            "\u{200B}",
            "\u{202E}",
            "\u{FEFF}",
            "\u{180E}",
            "\u{FE0F}",
            "\u{061C}",
            "👍\u{061C}",
            "\u{206A}",
            "\u{E0001}",
            "\u{E0020}",
            "\u{FFF9}",
            "\u{3164}",
            "\u{115F}",
            "\u{2800}",
            "\u{034F}",
            "\u{0301}",
            "🏽",
            "\u{17B4}",
            "\u{1BCA0}",
            "\u{1D173}",
            "👍\u{FE00}",
            "👍\u{E0100}",
            "👍\u{180B}",
            "👍\u{200D}",
            "\u{200D}👍",
            "👍\u{200B}",
            &"x".repeat(33),
        ] {
            assert!(check_emoji(bad).is_err(), "{bad:?} accepted");
        }
    }
}
