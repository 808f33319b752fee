//! The user's own state, the same on all their devices: how each conversation looks to them
//! (pinned, archived, do not disturb, a draft), the messages they deleted for themselves, and
//! what others may see of them. Each change is an event on the user's own subject in USERS;
//! the projection keeps the current state with the version of each change, `welcome` and
//! `user_state` hand out what changed since a version, and `state` pushes carry each change
//! live with the version before it, so a device that missed one notices and asks.

use anchorage_protocol::request::{
    Hide, RemovePush, SetPrefs, SetPrivacy, SetPush, UserStateQuery,
};
use anchorage_protocol::{ConvPrefs, DevicePush, Done, HiddenMessages, UserState};
use anchorage_schema::event::{
    ConversationPrefsChanged, MessagesHidden, PrivacyChanged, PushTargetRemoved, PushTargetSet,
};
use anchorage_schema::push::PushTarget;
use anchorage_schema::{Envelope, Event, EventId, backoff, now_ms, subjects};
use xxhash_rust::xxh3::xxh3_64;

use super::error::RequestError;
use super::session::Session;
use crate::progress::Projection;

/// Longest draft, in bytes.
pub(crate) const MAX_DRAFT_BYTES: usize = 4096;
/// Most messages one `hide` deletes for oneself.
pub(crate) const MAX_HIDE: usize = 100;
/// Most rows of each kind one state answer carries.
pub(crate) const STATE_PAGE: u32 = 1000;

impl Session {
    /// Publishes a change of the user's own state under `id`.
    async fn publish_state(
        &self,
        id: String,
        event: impl Into<Event>,
    ) -> Result<u64, RequestError> {
        let id = EventId::parse(id).map_err(|e| RequestError::Invalid(e.to_string()))?;
        let env = Envelope::new(id, now_ms(), self.actor(), event);
        let published = self
            .state
            .bus
            .publish_event(&subjects::user(&self.claims.sub), &env, None)
            .await?;
        Ok(published.seq.0)
    }

    /// An id for a change that is new each time it is asked (setting a preference back and
    /// forth is several changes).
    fn fresh_id(&self, what: &str) -> String {
        format!(
            "{}:{}:{what}:{}:{:08x}",
            self.claims.sub,
            self.claims.device,
            now_ms(),
            backoff::random() & 0xffff_ffff
        )
    }

    pub(super) async fn set_prefs(&self, r: SetPrefs) -> Result<Done, RequestError> {
        let SetPrefs {
            conv,
            pinned,
            archived,
            muted_until,
            draft,
            notify,
        } = r;
        self.member(&conv)?;
        if pinned.is_none()
            && archived.is_none()
            && muted_until.is_none()
            && draft.is_none()
            && notify.is_none()
        {
            return Err(RequestError::Invalid("set_prefs changes nothing".into()));
        }
        if muted_until.is_some_and(|t| t < 0) {
            return Err(RequestError::Invalid(
                "muted_until is a Unix millisecond, or 0 to end it".into(),
            ));
        }
        if let Some(d) = &draft
            && d.len() > MAX_DRAFT_BYTES
        {
            return Err(RequestError::Invalid(format!(
                "a draft holds at most {MAX_DRAFT_BYTES} bytes; this one has {}",
                d.len()
            )));
        }
        if let Some(n) = &notify
            && !matches!(n.as_str(), "all" | "mentions" | "none")
        {
            return Err(RequestError::Invalid(
                "notify is all, mentions or none".into(),
            ));
        }
        let event = ConversationPrefsChanged {
            user: self.claims.sub.clone(),
            conv: conv.clone(),
            pinned,
            archived,
            muted_until,
            draft,
            notify,
        };
        let seq = self.publish_state(self.fresh_id("prefs"), event).await?;
        Ok(Done {
            conv: Some(conv),
            seq: Some(seq),
        })
    }

    pub(super) async fn hide(&self, r: Hide) -> Result<Done, RequestError> {
        let Hide { conv, mut seqs } = r;
        self.member(&conv)?;
        seqs.sort_unstable();
        seqs.dedup();
        if seqs.is_empty() || seqs.len() > MAX_HIDE {
            return Err(RequestError::Invalid(format!(
                "hide 1 to {MAX_HIDE} messages at a time"
            )));
        }
        let end = self.state.conversation_end(&conv).await?;
        if let Some(past) = seqs.iter().find(|s| **s == 0 || **s > end.0) {
            return Err(RequestError::NotFound(format!(
                "no message {past} in {conv}"
            )));
        }
        let last = seqs.last().copied().unwrap_or_default();
        if !self
            .state
            .messages_projected(anchorage_schema::Seq(last))
            .await?
        {
            return Err(RequestError::Overloaded(format!(
                "the history of {conv} is catching up; try again in a moment"
            )));
        }
        let found = self
            .state
            .store
            .messages_among(conv.as_str(), &seqs)
            .await?;
        if let Some(other) = seqs.iter().find(|s| !found.contains(s)) {
            return Err(RequestError::NotFound(format!(
                "{other} is not a message of {conv}"
            )));
        }
        let user = &self.claims.sub;
        let list = seqs
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        // The same messages hidden again are one change.
        let id = format!("{user}:hide:{conv}:{:016x}", xxh3_64(list.as_bytes()));
        let event = MessagesHidden {
            user: user.clone(),
            conv: conv.clone(),
            seqs,
        };
        let seq = self.publish_state(id, event).await?;
        Ok(Done {
            conv: Some(conv),
            seq: Some(seq),
        })
    }

    pub(super) async fn set_privacy(&self, r: SetPrivacy) -> Result<Done, RequestError> {
        let SetPrivacy { receipts, presence } = r;
        if receipts.is_none() && presence.is_none() {
            return Err(RequestError::Invalid("set_privacy changes nothing".into()));
        }
        let event = PrivacyChanged {
            user: self.claims.sub.clone(),
            receipts,
            presence,
        };
        let seq = self.publish_state(self.fresh_id("privacy"), event).await?;
        Ok(Done {
            conv: None,
            seq: Some(seq),
        })
    }

    pub(super) async fn set_push(&self, r: SetPush) -> Result<Done, RequestError> {
        let SetPush { target, preview } = r;
        self.state.push_target_allowed(&target)?;
        let event = PushTargetSet {
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
            target,
            preview,
        };
        let seq = self.publish_state(self.fresh_id("push"), event).await?;
        // Answered once the target is in place (waiting briefly): a message sent after the
        // `ok` finds it.
        self.state
            .progress
            .reached(Projection::Users, seq, super::PROJECTION_WAIT)
            .await?;
        Ok(Done {
            conv: None,
            seq: Some(seq),
        })
    }

    pub(super) async fn remove_push(&self, _: RemovePush) -> Result<Done, RequestError> {
        let event = PushTargetRemoved {
            user: self.claims.sub.clone(),
            device: self.claims.device.clone(),
            address: None,
            reason: "unregistered".into(),
        };
        let seq = self.publish_state(self.fresh_id("push"), event).await?;
        Ok(Done {
            conv: None,
            seq: Some(seq),
        })
    }

    pub(super) async fn user_state(&self, r: UserStateQuery) -> Result<UserState, RequestError> {
        if !self.state_projected().await? {
            return Err(RequestError::Overloaded(
                "the user's state is catching up; ask again in a moment".into(),
            ));
        }
        self.state_since(r.after).await
    }

    /// The user's state for `welcome`: what changed since `after`, and if the projection has
    /// not caught up with the user's subject yet, `more` (the device asks `user_state`).
    pub(super) async fn welcome_state(&self, after: u64) -> Result<UserState, RequestError> {
        // A `hello` never fails for this: if it cannot tell (NATS passing through an
        // election), the device asks again.
        let caught_up = self.state_projected().await.unwrap_or(false);
        let mut state = self.state_since(after).await?;
        state.more |= !caught_up;
        Ok(state)
    }

    /// Whether the projection holds every change the user's subject holds (waiting briefly):
    /// a device that missed a change and asks must get it, not an older state.
    async fn state_projected(&self) -> Result<bool, RequestError> {
        let subject = subjects::user(&self.claims.sub);
        let last = self
            .state
            .bus
            .last_subject_seq(anchorage_schema::subjects::stream::USERS, &subject)
            .await?;
        Ok(self
            .state
            .progress
            .reached(Projection::Users, last.0, super::PROJECTION_WAIT)
            .await?)
    }

    /// What changed of the user's own state after version `after` (a page of it).
    pub(super) async fn state_since(&self, after: u64) -> Result<UserState, RequestError> {
        let s = self
            .state
            .store
            .user_state_since(self.claims.sub.as_str(), after, STATE_PAGE)
            .await?;
        let mut hidden: Vec<HiddenMessages> = Vec::new();
        for (conv, seq) in s.hidden {
            match hidden.iter_mut().find(|h| h.conv == conv) {
                Some(h) => h.seqs.push(seq),
                None => hidden.push(HiddenMessages {
                    conv,
                    seqs: vec![seq],
                }),
            }
        }
        Ok(UserState {
            prefs: s
                .prefs
                .into_iter()
                .map(|p| ConvPrefs {
                    conv: p.conv,
                    pinned: p.pinned,
                    archived: p.archived,
                    muted_until: p.muted_until,
                    draft: p.draft,
                    notify: p.notify,
                })
                .collect(),
            hidden,
            push: s.push.into_iter().map(device_push).collect(),
            receipts: s.receipts,
            presence: s.presence,
            version: s.version,
            more: s.more,
        })
    }
}

/// How a device is notified, as its user's devices see it (never the address).
fn device_push(row: anchorage_store::push::PushTargetRow) -> DevicePush {
    let target = row
        .target
        .and_then(|t| serde_json::from_str::<PushTarget>(&t).ok());
    DevicePush {
        device: row.device,
        provider: target.as_ref().map(|t| t.provider().to_owned()),
        preview: target.is_some() && row.preview,
    }
}

impl crate::EdgeState {
    /// Refuses a target this server cannot push to: a malformed one (`invalid_request`), one of
    /// a provider that is not configured or a Web Push subscription at a push service the
    /// operator did not name (`forbidden`).
    pub(crate) fn push_target_allowed(&self, target: &PushTarget) -> Result<(), RequestError> {
        target
            .check()
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        let off = |name: &str| {
            RequestError::Forbidden(format!("this server does not push through {name}"))
        };
        match target {
            PushTarget::Fcm { .. } if self.push.fcm.is_none() => Err(off("FCM")),
            PushTarget::Apns { .. } if self.push.apns.is_none() => Err(off("APNs")),
            PushTarget::WebPush { endpoint, .. } => {
                let Some(web) = &self.push.web_push else {
                    return Err(off("Web Push"));
                };
                if anchorage_schema::push::web_push_allowed(
                    endpoint,
                    &web.allowed_hosts,
                    &web.allowed_http_hosts,
                ) {
                    Ok(())
                } else {
                    Err(RequestError::Forbidden(
                        "this server does not call that push service".into(),
                    ))
                }
            }
            _ => Ok(()),
        }
    }
}
