//! What a connection shows, who is typing, who is online: `view` / `unview` mark the
//! conversations a connection has open, `typing` tells the others (nothing of it is stored; it
//! travels between edges on core NATS and reaches only connections viewing the conversation),
//! `presence` says who is online and when they were last seen.

use anchorage_protocol::request::{PresenceQuery, Typing, View};
use anchorage_protocol::{Done, PresenceAnswer, PresenceInfo};
use anchorage_schema::subjects;

use super::error::RequestError;
use super::session::Session;
use crate::live::TypingSignal;

impl Session {
    pub(super) fn view(&self, r: View) -> Result<Done, RequestError> {
        self.member(&r.conv)?;
        self.state.hub.view(self.conn.id, &r.conv);
        Ok(Done {
            conv: Some(r.conv),
            seq: None,
        })
    }

    pub(super) fn unview(&self, r: View) -> Result<Done, RequestError> {
        self.state.hub.unview(self.conn.id, &r.conv);
        Ok(Done {
            conv: Some(r.conv),
            seq: None,
        })
    }

    pub(super) async fn typing(&self, r: Typing) -> Result<Done, RequestError> {
        let Typing { conv, stop } = r;
        self.member(&conv)?;
        let user = &self.claims.sub;
        // A user typing on and on is told to the others once per interval; the answer is the
        // same either way.
        if self.state.hub.typing_allowed(user, &conv, !stop) {
            let signal = TypingSignal {
                user: user.clone(),
                typing: !stop,
            };
            let payload = serde_json::to_string(&signal).unwrap_or_default();
            self.state
                .bus
                .notify(&subjects::typing(&conv), payload)
                .await?;
        }
        Ok(Done {
            conv: Some(conv),
            seq: None,
        })
    }
}

/// Most users one `presence` request asks about.
pub(crate) const MAX_PRESENCE: usize = 100;

impl Session {
    /// Whether users are online and when they were last seen — users who share a
    /// conversation with the caller, show their presence and are not deleted; the others are
    /// `hidden` (so nobody learns who exists or who hides). With `conv`, its online member count.
    pub(super) async fn presence(&self, r: PresenceQuery) -> Result<PresenceAnswer, RequestError> {
        let PresenceQuery { users, conv } = r;
        if users.len() > MAX_PRESENCE {
            return Err(RequestError::Invalid(format!(
                "ask about at most {MAX_PRESENCE} users at a time"
            )));
        }
        if users.is_empty() && conv.is_none() {
            return Err(RequestError::Invalid("name users or a conversation".into()));
        }
        let store = &self.state.store;
        let me = self.claims.sub.as_str();
        let asked: Vec<String> = users.iter().map(ToString::to_string).collect();
        let shared = store.sharing_a_conversation(me, &asked).await?;
        let mut answers = Vec::with_capacity(users.len());
        for user in users {
            let hidden = || PresenceInfo {
                user: user.to_string(),
                online: false,
                last_seen: None,
                hidden: true,
            };
            if !shared.iter().any(|s| s == user.as_str())
                || !store.privacy_of(user.as_str()).await?.1
                || store.user_deleted(user.as_str()).await?
            {
                answers.push(hidden());
                continue;
            }
            let (online, last_seen) = self
                .state
                .hub
                .presence_of(&user)
                .await
                .map_err(|e| RequestError::Overloaded(e.to_string()))?;
            answers.push(PresenceInfo {
                user: user.to_string(),
                online,
                last_seen,
                hidden: false,
            });
        }
        let online = match conv {
            Some(conv) => {
                self.member(&conv)?;
                let online: Vec<String> = self
                    .state
                    .hub
                    .online_users()
                    .into_iter()
                    .map(|u| u.to_string())
                    .collect();
                Some(
                    store
                        .members_showing_presence(conv.as_str(), &online)
                        .await?,
                )
            }
            None => None,
        };
        Ok(PresenceAnswer {
            users: answers,
            online,
        })
    }
}
