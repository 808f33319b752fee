//! The answer to `hello`: which conversations changed since the client's anchors, with unread
//! counts and each one's last message, bounded (the rest comes with a cursor).

use std::collections::{HashMap, HashSet};

use anchorage_protocol::request::Hello;
use anchorage_protocol::{ConvChange, PROTOCOL_VERSION, Welcome};
use anchorage_schema::ConversationId;
use anchorage_schema::subjects::stream;
use anchorage_store::ConversationState;

use super::error::RequestError;
use super::session::Session;

/// Conversations per `welcome`; more come with a cursor.
const CHANGES_PER_WELCOME: u32 = 200;
/// Unread counts stop counting here.
const UNREAD_CAP: u32 = 1000;

impl Session {
    pub(super) async fn welcome(&self, hello: &Hello) -> Result<Welcome, RequestError> {
        let store = &self.state.store;
        // Everything stored before the live subscriptions were in place must be in the
        // summary: wait (briefly) for the projection to get there. If it does not (the
        // projector is down or far behind), each conversation's last seq comes from the stream
        // itself, so no change is left out.
        let end = self
            .state
            .bus
            .stream_state(stream::MESSAGES)
            .await?
            .last_seq;
        let projected = self.state.messages_projected(end).await?;
        let anchors: HashMap<&str, (u64, Option<u64>)> = hello
            .anchors
            .iter()
            .map(|a| (a.conv.as_str(), (a.seq, a.read)))
            .collect();
        let user = self.claims.sub.as_str();
        let mut states = store
            .conversation_states(
                user,
                self.claims.device.as_str(),
                hello.cursor.as_deref().unwrap_or(""),
                CHANGES_PER_WELCOME,
            )
            .await?;
        let cursor = (states.len() == CHANGES_PER_WELCOME as usize)
            .then(|| states.last().map(|s| s.conv.clone()))
            .flatten();
        // The edge's own view of the membership stream is ahead of the projection: a
        // conversation the user left since the projection stopped is not summarized (nothing
        // of it after the removal reaches them), and one joined since is.
        let member_of: HashSet<ConversationId> = self
            .state
            .hub
            .conversations_of(&self.claims.sub)
            .into_iter()
            .collect();
        states.retain(|s| {
            ConversationId::parse(s.conv.as_str()).is_ok_and(|c| member_of.contains(&c))
        });
        if !projected && cursor.is_none() {
            // Conversations joined since the projection stopped: their history is all in the
            // stream.
            let known: HashSet<String> = states.iter().map(|s| s.conv.clone()).collect();
            for conv in &member_of {
                if !known.contains(conv.as_str()) {
                    states.push(ConversationState {
                        conv: conv.to_string(),
                        last_seq: 0,
                        read_seq: 0,
                        delivered_seq: 0,
                    });
                }
            }
        }
        let mut changes = Vec::new();
        for s in states {
            let (anchor, read) = anchors
                .get(s.conv.as_str())
                .copied()
                .unwrap_or((s.delivered_seq, None));
            let Ok(conv) = ConversationId::parse(s.conv.clone()) else {
                continue;
            };
            let last_seq = if projected {
                s.last_seq
            } else {
                self.state.conversation_end(&conv).await?.0.max(s.last_seq)
            };
            // Nothing new, and no read marker past the one the device holds (a read on
            // another device while it was away reaches it here, or never).
            if last_seq <= anchor && read.is_none_or(|read| s.read_seq <= read) {
                continue;
            }
            let unread = store
                .count_after_for(&s.conv, s.read_seq, UNREAD_CAP, user)
                .await?;
            let mentions = if unread > 0 {
                store
                    .mentions_after(&s.conv, user, s.read_seq, UNREAD_CAP)
                    .await?
            } else {
                0
            };
            let last = store
                .page_for(&s.conv, anchorage_store::PageAt::Before(0), 1, user)
                .await?;
            let last_message = super::messages::page_views(last).into_iter().next();
            changes.push(ConvChange {
                conv,
                last_seq,
                unread,
                read_seq: s.read_seq,
                last_message,
                mentions,
            });
        }
        // The user's own state comes with the first page.
        let state = match hello.cursor {
            None => Some(Box::new(
                self.welcome_state(hello.state_version.unwrap_or(0)).await?,
            )),
            Some(_) => None,
        };
        Ok(Welcome {
            state,
            protocol: PROTOCOL_VERSION,
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
            max_frame_bytes: self.state.config.max_frame_bytes,
            changes,
            cursor,
            compact: true,
        })
    }
}
