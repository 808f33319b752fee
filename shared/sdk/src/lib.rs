//! The Anchorage client SDK: the client half of the protocol.
//!
//! A [`Client`] keeps a local SQLite store of conversations, messages, anchors and read
//! markers, and a background engine that keeps it in line with the server:
//!
//! - **Connecting.** Full-jitter exponential backoff from about 0.5 s to 20 s between attempts,
//!   at least as long as a server's retry-after hint; the count resets once a connection held.
//!   Sends, and what the engine keeps in line itself (the user's state, history, member
//!   lists, queued commands), wait out `rate_limited` and `overloaded` for as long as the
//!   server names (50 ms to ten minutes) and go again on the same connection, so a server
//!   catching up is not met with every client reconnecting at once; outside the outbox,
//!   `overloaded` five times at most, five seconds at a time, before the connection is given
//!   up. The app's own requests get `overloaded` at once.
//! - **Outbox.** [`Client::send`] writes the message to the outbox (`pending`) and returns at
//!   once; the engine sends it (`sending`), retrying under the same `client_msg_id` across
//!   reconnects and restarts until the server acknowledges it (`acked`, with its seq) or refuses
//!   it (`failed`). Sends leave strictly in the order they were written, so a sender's
//!   messages keep their order in every conversation.
//! - **Offline queue.** Reads, group actions and 1:1 opens made while offline are queued and
//!   flushed in order on reconnect.
//! - **Gaps.** Each live message names the previous seq of its conversation; when it is not the
//!   local anchor, something was missed and the engine syncs from the anchor instead.
//! - **Catch-up.** On reconnect the engine presents its anchors and syncs the conversations the
//!   server reports as changed.
//! - **Display order.** Stored messages by seq, then unacknowledged ones by client time.
//! - **Member lists.** Kept per group with their version and digest, synced when the group's
//!   conversation opens (never at login), kept current by live notifications while it is
//!   watched; see the `members` module for the five layers.

#![warn(missing_docs)]

mod backoff;
mod engine;
mod members;
mod store;

use anchorage_schema::now_ms;
use std::path::PathBuf;
use std::sync::Arc;

use anchorage_protocol::request::{
    AddMembers, CreateGroup, Download, Edit, Edits, Hide, MarkRead, MembersSearch,
    MembersSyncBatch, OpenDirect, Pin, PresenceQuery, React, ReactorsQuery, ReceiptsQuery,
    RemoveMembers, Revoke, Search, SetPrivacy, Typing, Upload, View,
};
use anchorage_protocol::{MembersBatch, Reactors, Receipts, ReplyBody, RequestBody, ServerFrame};
pub use anchorage_schema::attachment::{Attachment, AttachmentId};
use anchorage_schema::{ConversationId, GroupId, UserId};
use tokio::sync::broadcast;

pub use anchorage_digest::SetDigest;
pub use anchorage_protocol::request::SetPrefs;
pub use anchorage_protocol::{
    ConvPrefs, MemberInfo, PresenceInfo, Reaction, SearchResult, SearchResults,
};
pub use backoff::{delay as backoff_delay, random as backoff_random};
pub use members::{MemberListState, MemberSyncKind};

/// Where the outbox stands for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Waiting for a connection.
    Pending,
    /// Sent; its answer has not come yet.
    Sending,
    /// Stored by the server.
    Acked,
    /// Refused by the server for good.
    Failed,
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The conversation.
    pub conv: String,
    /// The message's id, its idempotency key.
    pub client_msg_id: String,
    /// Where it stands.
    pub state: OutboxState,
    /// How often it was sent so far.
    pub attempts: u32,
    /// The server's seq, once acknowledged.
    pub seq: Option<u64>,
    /// Why the server refused it, if it did.
    pub error: Option<String>,
    /// What the message refers to.
    pub refs: Refs,
}

/// What a message refers to: the message it replies to, who it mentions, and the files it
/// carries (each from [`Client::upload`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refs {
    /// The message it replies to (its seq).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Users it mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
    /// It mentions everyone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    /// Files it carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A message as the app shows it; `seq` is `None` while it waits in the outbox. Its state is
/// the latest this device knows: edited bodies, tombstones of revoked messages (`body` null),
/// pins and reaction counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalMessage {
    /// The conversation.
    pub conv: String,
    /// Its place in the conversation, once stored.
    pub seq: Option<u64>,
    /// Who sent it.
    pub sender: String,
    /// From which device.
    pub device: String,
    /// The sender's id of the message.
    pub client_msg_id: String,
    /// Text or any JSON.
    pub body: serde_json::Value,
    /// The sender's clock, Unix milliseconds.
    pub client_ts: i64,
    /// When the server stored it.
    pub server_ts: Option<i64>,
    /// What it refers to.
    pub refs: Refs,
    /// How often it was edited.
    pub edits: u32,
    /// Revoked for everyone: a tombstone.
    pub revoked: bool,
    /// Pinned in its conversation.
    pub pinned: bool,
    /// Reactions, by emoji in the order each first came.
    pub reactions: Vec<Reaction>,
}

/// A conversation as a list shows it, from the local store.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSummary {
    /// The conversation.
    pub conv: String,
    /// The newest seq held.
    pub last_seq: u64,
    /// The user's read marker.
    pub read_seq: u64,
    /// Messages from others after the read marker (not revoked).
    pub unread: u64,
    /// When the newest message was stored (0 if none), newest conversations first.
    pub last_ts: i64,
}

/// What happened, for the app to react to.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // the fields are named for what they hold
pub enum ClientEvent {
    /// Signed in and caught up.
    Connected,
    /// The connection ended (with the server's close code, if it sent one).
    Disconnected { code: Option<u16> },
    /// New messages are stored for `conv`, up to `seq`.
    Messages { conv: String, seq: u64 },
    /// Stored message `seq` of `conv` changed (edited, revoked, pinned, reactions).
    MessageChanged { conv: String, seq: u64 },
    /// The other member of a 1:1 came online or went offline (`last_seen`: when).
    Presence {
        user: String,
        online: bool,
        last_seen: Option<i64>,
    },
    /// Another member read `conv` up to `seq` (1:1s and small groups).
    Receipt {
        conv: String,
        user: String,
        seq: u64,
    },
    /// The user's own state (conversation preferences, messages deleted for oneself,
    /// privacy) changed; the store holds it at `version`.
    StateChanged { version: u64 },
    /// Who is typing in a conversation the app views (`users`: a few of them; `count`: all).
    Typing {
        conv: String,
        users: Vec<String>,
        count: u32,
    },
    /// A message from the outbox was stored at `seq`.
    Acked { client_msg_id: String, seq: u64 },
    /// A message from the outbox was refused for good.
    Failed {
        client_msg_id: String,
        reason: String,
    },
    /// A read marker moved (on this or another device).
    Read { conv: String, seq: u64 },
    /// A missed live message was detected and filled in by a sync.
    GapRepaired { conv: String, from: u64, to: u64 },
    /// The token was refused; the token source is asked again on the next attempt.
    AuthFailed { code: u16 },
    /// One round of a member-list sync landed: the copy is at `version`.
    MembersSynced {
        group: String,
        version: u64,
        via: MemberSyncKind,
    },
    /// A live member-list change was applied and its digest checked.
    MembersChanged { group: String, version: u64 },
}

/// One group's entry in [`Client::group_versions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupVersionInfo {
    /// The group.
    pub group: String,
    /// The server's version of its member list.
    pub version: u64,
    /// How many members it has.
    pub members: u64,
    /// The version of the local member list, if there is one.
    pub local_version: Option<u64>,
}

/// What [`Client::sync_members_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Answers received (one per budget-bounded round).
    pub rounds: u32,
    /// Groups whose copy was current.
    pub unchanged: u32,
    /// Groups brought up to date by a diff.
    pub diffs: u32,
    /// Groups that need a realignment; each is scheduled for its own sync.
    pub realign: Vec<String>,
    /// Bytes of the answers.
    pub bytes: u64,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it is
pub enum SdkError {
    #[error("local store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("invalid id: {0}")]
    Id(#[from] anchorage_schema::IdError),
    #[error("the client was shut down")]
    Closed,
    #[error("no answer from the server (offline?)")]
    Unavailable,
    #[error("refused by the server: {0}")]
    Refused(String),
    #[error("file transfer: {0}")]
    Transfer(String),
}

/// Produces a device token for each connection attempt (so it can be refreshed).
pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// How to connect.
#[derive(Clone)]
pub struct ClientOptions {
    /// `ws://host:port/ws`.
    pub url: String,
    /// Where device tokens come from.
    pub token: TokenSource,
    /// The local SQLite file.
    pub store_path: PathBuf,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("url", &self.url)
            .field("store_path", &self.store_path)
            .finish_non_exhaustive()
    }
}

/// A signed-in device.
#[derive(Debug, Clone)]
pub struct Client {
    engine: Arc<engine::Engine>,
}

impl Client {
    /// Opens the local store and starts connecting in the background.
    pub async fn start(options: ClientOptions) -> Result<Client, SdkError> {
        let store = store::LocalStore::open(&options.store_path).await?;
        let engine = engine::Engine::start(options, store);
        Ok(Client { engine })
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.engine.events.subscribe()
    }

    /// Queues a message; returns its client id at once (see [`Client::outbox`]).
    pub async fn send(&self, conv: &str, body: serde_json::Value) -> Result<String, SdkError> {
        self.send_with(conv, body, Refs::default()).await
    }

    /// Queues a message that replies to another or mentions users; returns its client id.
    pub async fn send_with(
        &self,
        conv: &str,
        body: serde_json::Value,
        refs: Refs,
    ) -> Result<String, SdkError> {
        ConversationId::parse(conv)?;
        for user in &refs.mentions {
            UserId::parse(user.as_str())?;
        }
        let id = format!("{:x}-{:x}", now_ms(), backoff::random() & 0xffff_ffff);
        self.engine
            .store
            .enqueue_send(conv, &id, &body, now_ms(), &refs)
            .await?;
        self.engine.wake();
        Ok(id)
    }

    /// Replaces the body of one's own message `seq` (queued while offline).
    pub async fn edit(
        &self,
        conv: &str,
        seq: u64,
        body: serde_json::Value,
    ) -> Result<(), SdkError> {
        let conv = ConversationId::parse(conv)?;
        self.command(Edit { conv, seq, body }.into()).await
    }

    /// Revokes message `seq` for everyone (queued while offline); its text is erased.
    pub async fn revoke(&self, conv: &str, seq: u64) -> Result<(), SdkError> {
        let conv = ConversationId::parse(conv)?;
        self.command(Revoke { conv, seq }.into()).await
    }

    /// Adds (or with `remove`, takes back) a reaction on message `seq` (queued while offline).
    pub async fn react(
        &self,
        conv: &str,
        seq: u64,
        emoji: &str,
        remove: bool,
    ) -> Result<(), SdkError> {
        let conv = ConversationId::parse(conv)?;
        let react = React {
            conv,
            seq,
            emoji: emoji.to_owned(),
            remove,
        };
        self.command(react.into()).await
    }

    /// Pins (or with `unpin`, unpins) message `seq` (queued while offline).
    pub async fn pin(&self, conv: &str, seq: u64, unpin: bool) -> Result<(), SdkError> {
        let conv = ConversationId::parse(conv)?;
        self.command(Pin { conv, seq, unpin }.into()).await
    }

    /// Changes how `conv` looks to the user on all their devices: only the fields given
    /// (`muted_until` 0 and an empty `draft` clear them). Queued while offline.
    pub async fn set_prefs(&self, prefs: SetPrefs) -> Result<(), SdkError> {
        self.command(prefs.into()).await
    }

    /// How `conv` looks to the user, as this device knows it.
    pub async fn prefs(&self, conv: &str) -> Result<ConvPrefs, SdkError> {
        self.engine.store.prefs(conv).await
    }

    /// Deletes messages for the user (not for others), on all their devices. Queued while
    /// offline.
    pub async fn hide(&self, conv: &str, seqs: &[u64]) -> Result<(), SdkError> {
        let conv = ConversationId::parse(conv)?;
        let hide = Hide {
            conv,
            seqs: seqs.to_vec(),
        };
        self.command(hide.into()).await
    }

    /// Changes what others may see of the user (read receipts, presence). Queued while
    /// offline.
    pub async fn set_privacy(
        &self,
        receipts: Option<bool>,
        presence: Option<bool>,
    ) -> Result<(), SdkError> {
        self.command(SetPrivacy { receipts, presence }.into()).await
    }

    /// Registers where this device is reached while it is not connected (an FCM or APNs
    /// token, a Web Push subscription); `preview`: notifications show the text. Queued while
    /// offline; registering again replaces the target.
    pub async fn set_push(
        &self,
        target: anchorage_schema::push::PushTarget,
        preview: bool,
    ) -> Result<(), SdkError> {
        self.command(anchorage_protocol::request::SetPush { target, preview }.into())
            .await
    }

    /// This device is not notified while offline any more. Queued while offline.
    pub async fn remove_push(&self) -> Result<(), SdkError> {
        self.command(anchorage_protocol::request::RemovePush {}.into())
            .await
    }

    /// The user's devices that are notified while offline, as this device knows them:
    /// (device, provider, preview).
    pub async fn push_devices(&self) -> Result<Vec<(String, String, bool)>, SdkError> {
        self.engine.store.push_devices().await
    }

    /// The user's privacy settings as this device knows them: (receipts, presence).
    pub async fn privacy(&self) -> Result<(bool, bool), SdkError> {
        self.engine.store.privacy().await
    }

    /// How far the other members read `conv` (1:1s and small groups), and with `seq` how
    /// many read that message or further (any group).
    pub async fn receipts(&self, conv: &str, seq: Option<u64>) -> Result<Receipts, SdkError> {
        let conv = ConversationId::parse(conv)?;
        match self.ask(ReceiptsQuery { conv, seq }.into()).await? {
            ReplyBody::Receipts(r) => Ok(r),
            other => Err(SdkError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Whether `users` are online and when they were last seen (those who share a
    /// conversation with this user and show their presence; the others come back `hidden`).
    pub async fn presence(&self, users: &[&str]) -> Result<Vec<PresenceInfo>, SdkError> {
        let query = PresenceQuery {
            users: self::users(users)?,
            conv: None,
        };
        match self.ask(query.into()).await? {
            ReplyBody::Presence(p) => Ok(p.users),
            other => Err(SdkError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// How many members of `conv` are online.
    pub async fn online_count(&self, conv: &str) -> Result<u64, SdkError> {
        let query = PresenceQuery {
            users: Vec::new(),
            conv: Some(ConversationId::parse(conv)?),
        };
        match self.ask(query.into()).await? {
            ReplyBody::Presence(p) => Ok(p.online.unwrap_or(0)),
            other => Err(SdkError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// The app shows `conv`: typing indicators start coming ([`ClientEvent::Typing`]), on
    /// this connection and the next ones, until [`Client::unview`].
    pub async fn view(&self, conv: &str) -> Result<(), SdkError> {
        let id = ConversationId::parse(conv)?;
        self.engine
            .viewing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(conv.to_owned());
        self.ask(RequestBody::View(View { conv: id }))
            .await
            .map(drop)
    }

    /// The app stopped showing `conv`.
    pub async fn unview(&self, conv: &str) -> Result<(), SdkError> {
        let id = ConversationId::parse(conv)?;
        self.engine
            .viewing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(conv);
        self.ask(RequestBody::Unview(View { conv: id }))
            .await
            .map(drop)
    }

    /// The user is typing in `conv` (or with `stop`, stopped). Not queued: a typing signal
    /// that cannot go now is of no use later.
    pub async fn typing(&self, conv: &str, stop: bool) -> Result<(), SdkError> {
        let conv = ConversationId::parse(conv)?;
        self.ask(Typing { conv, stop }.into()).await.map(drop)
    }

    /// Who reacted to message `seq` with `emoji`, a page at a time (`after`: the previous
    /// page's cursor).
    pub async fn reactors(
        &self,
        conv: &str,
        seq: u64,
        emoji: &str,
        after: Option<u64>,
    ) -> Result<Reactors, SdkError> {
        let query = ReactorsQuery {
            conv: ConversationId::parse(conv)?,
            seq,
            emoji: emoji.to_owned(),
            after,
            limit: None,
        };
        match self.ask(query.into()).await? {
            ReplyBody::Reactors(r) => Ok(r),
            other => Err(SdkError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// The edits of message `seq`, oldest first (bodies erased once it is revoked).
    pub async fn edits(&self, conv: &str, seq: u64) -> Result<Vec<LocalMessage>, SdkError> {
        let conv = ConversationId::parse(conv)?;
        match self.ask(Edits { conv, seq }.into()).await? {
            ReplyBody::Messages(m) => Ok(m.messages.into_iter().map(engine::to_local).collect()),
            other => Err(SdkError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// The outbox state of a message sent from this device.
    pub async fn outbox(&self, client_msg_id: &str) -> Result<Option<OutboxEntry>, SdkError> {
        self.engine.store.outbox_entry(client_msg_id).await
    }

    /// Messages of a conversation in display order.
    pub async fn messages(&self, conv: &str) -> Result<Vec<LocalMessage>, SdkError> {
        self.engine.store.messages(conv).await
    }

    /// The highest seq of `conv` this device holds without gaps.
    pub async fn anchor(&self, conv: &str) -> Result<u64, SdkError> {
        self.engine.store.anchor(conv).await
    }

    /// The user's conversations this device holds, the one with the newest message first,
    /// with their unread counts.
    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>, SdkError> {
        let me = self
            .engine
            .me
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(|(user, _)| user)
            .unwrap_or_default();
        self.engine.store.conversations(&me).await
    }

    /// The read marker of `conv` as this device knows it.
    pub async fn read_marker(&self, conv: &str) -> Result<u64, SdkError> {
        self.engine.store.read_marker(conv).await
    }

    /// Marks `conv` read up to `seq` (queued while offline).
    pub async fn mark_read(&self, conv: &str, seq: u64) -> Result<(), SdkError> {
        let request = MarkRead {
            conv: ConversationId::parse(conv)?,
            seq,
        }
        .into();
        self.engine.store.mark_read(conv, seq, &request).await?;
        self.engine.wake();
        Ok(())
    }

    /// Creates a group (queued while offline).
    pub async fn create_group(
        &self,
        group: &str,
        title: &str,
        members: &[&str],
    ) -> Result<(), SdkError> {
        let create = CreateGroup {
            group: GroupId::parse(group)?,
            title: title.to_owned(),
            members: users(members)?,
        };
        self.command(create.into()).await
    }

    /// Opens the 1:1 conversation with `peer` (queued while offline); returns its id, which is
    /// known without asking the server.
    pub async fn open_direct(&self, me: &str, peer: &str) -> Result<String, SdkError> {
        let peer = UserId::parse(peer)?;
        let conv = ConversationId::direct(&UserId::parse(me)?, &peer);
        self.command(OpenDirect { peer }.into()).await?;
        Ok(conv.to_string())
    }

    /// Asks for `conv` to be brought up to date now (when the user opens it): its messages,
    /// and for a group its member list.
    pub fn open_conversation(&self, conv: &str) {
        self.engine.request_sync(conv);
        if !conv.starts_with("dm-") {
            self.engine.request_member_sync(conv, true);
        }
    }

    /// Schedules a sync of `group`'s member list (once, however often asked); from then on
    /// live changes keep it current while connected.
    pub fn sync_members(&self, group: &str) {
        self.engine.request_member_sync(group, true);
    }

    /// The local member list of `group`, by id.
    pub async fn members(&self, group: &str) -> Result<Vec<MemberInfo>, SdkError> {
        self.engine.store.members(group).await
    }

    /// Where the local member list of `group` stands, if there is one.
    pub async fn member_list(&self, group: &str) -> Result<Option<MemberListState>, SdkError> {
        self.engine.store.member_list(group).await
    }

    /// The digest of the members stored locally (computed from them).
    pub async fn member_digest(&self, group: &str) -> Result<SetDigest, SdkError> {
        Ok(self.engine.store.computed_digest(group).await?.total())
    }

    /// Local members whose id or nickname starts with `prefix`.
    pub async fn search_members(
        &self,
        group: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<MemberInfo>, SdkError> {
        self.engine.store.search_members(group, prefix, limit).await
    }

    /// Members whose id or nickname starts with `query`, from the server's list (for members
    /// not held locally).
    pub async fn search_members_remote(
        &self,
        group: &str,
        query: &str,
        limit: u32,
    ) -> Result<Vec<MemberInfo>, SdkError> {
        let search = MembersSearch {
            group: GroupId::parse(group)?,
            query: query.to_owned(),
            limit: Some(limit),
        };
        match self.ask(search.into()).await? {
            ReplyBody::MembersFound(found) => Ok(found.members),
            other => Err(unexpected(&other)),
        }
    }

    /// Messages of this user's conversations (or of `conv`) whose text matches `query`, newest
    /// first, from the server's index: only messages that reached the user, in their current
    /// text. `before` pages back (the last result's seq; 0 for the newest).
    pub async fn search(
        &self,
        query: &str,
        conv: Option<&str>,
        before: u64,
        limit: u32,
    ) -> Result<SearchResults, SdkError> {
        let search = Search {
            query: query.to_owned(),
            conv: conv.map(ConversationId::parse).transpose()?,
            before,
            limit: Some(limit),
        };
        match self.ask(search.into()).await? {
            ReplyBody::SearchResults(found) => Ok(found),
            other => Err(unexpected(&other)),
        }
    }

    /// Uploads a file for a message to `conv` (online only): returns the attachment to send in
    /// [`Refs::attachments`]. The file goes straight to the server's object storage through
    /// a URL valid for a few minutes, issued for this conversation, this type and this size.
    pub async fn upload(
        &self,
        conv: &str,
        name: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Attachment, SdkError> {
        let upload = Upload {
            conv: ConversationId::parse(conv)?,
            name: name.to_owned(),
            content_type: content_type.to_owned(),
            size: bytes.len() as u64,
        };
        let grant = match self.ask(upload.into()).await? {
            ReplyBody::Upload(grant) => grant,
            other => return Err(unexpected(&other)),
        };
        let url = self.http_url(&grant.url)?;
        let mut put = self.engine.http.put(url).body(bytes);
        for (name, value) in &grant.headers {
            put = put.header(name, value);
        }
        let answer = put
            .send()
            .await
            .map_err(|e| SdkError::Transfer(e.without_url().to_string()))?;
        if !answer.status().is_success() {
            let status = answer.status();
            let detail = answer.text().await.unwrap_or_default();
            return Err(SdkError::Transfer(format!(
                "upload answered {status}: {detail}"
            )));
        }
        Ok(grant.attachment)
    }

    /// A URL to download file `attachment` of message `seq` in `conv`, valid for a few
    /// minutes (online only; only for members who can read the message).
    pub async fn download_url(
        &self,
        conv: &str,
        seq: u64,
        attachment: &AttachmentId,
    ) -> Result<String, SdkError> {
        let download = Download {
            conv: ConversationId::parse(conv)?,
            seq,
            attachment: attachment.clone(),
        };
        match self.ask(download.into()).await? {
            ReplyBody::Download(grant) => self.http_url(&grant.url),
            other => Err(unexpected(&other)),
        }
    }

    /// Downloads file `attachment` of message `seq` in `conv`.
    pub async fn download(
        &self,
        conv: &str,
        seq: u64,
        attachment: &AttachmentId,
    ) -> Result<Vec<u8>, SdkError> {
        let url = self.download_url(conv, seq, attachment).await?;
        let transfer = |e: reqwest::Error| SdkError::Transfer(e.without_url().to_string());
        let answer = self.engine.http.get(url).send().await.map_err(transfer)?;
        if !answer.status().is_success() {
            return Err(SdkError::Transfer(format!(
                "download answered {}",
                answer.status()
            )));
        }
        Ok(answer.bytes().await.map_err(transfer)?.to_vec())
    }

    /// `url` as given by the server: absolute, or a path on the server this client connects to.
    fn http_url(&self, url: &str) -> Result<String, SdkError> {
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(url.to_owned());
        }
        let ws = &self.engine.options.url;
        let base = ws
            .strip_prefix("ws://")
            .map(|rest| ("http://", rest))
            .or_else(|| ws.strip_prefix("wss://").map(|rest| ("https://", rest)))
            .ok_or_else(|| SdkError::Transfer(format!("{ws} is not a ws:// or wss:// URL")))?;
        let host = base.1.split('/').next().unwrap_or_default();
        Ok(format!("{}{host}{url}", base.0))
    }

    /// The server's versions of this user's groups next to the local member lists' (cheap: no
    /// member lists move), so the app knows which lists are stale.
    pub async fn group_versions(&self) -> Result<Vec<GroupVersionInfo>, SdkError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let ask = anchorage_protocol::request::GroupVersions {
                cursor: cursor.take(),
            };
            let (groups, next) = match self.ask(ask.into()).await? {
                ReplyBody::GroupVersions(v) => (v.groups, v.cursor),
                other => return Err(unexpected(&other)),
            };
            for g in groups {
                let local = self.engine.store.member_list(g.group.as_str()).await?;
                out.push(GroupVersionInfo {
                    group: g.group.to_string(),
                    version: g.version,
                    members: g.members,
                    local_version: local.map(|l| l.version),
                });
            }
            match next {
                Some(c) => cursor = Some(c),
                None => return Ok(out),
            }
        }
    }

    /// Brings the member lists of many groups up to date in budget-bounded answers, in the
    /// order given (most important first). Groups that need a realignment are scheduled for
    /// their own sync and listed in the report.
    pub async fn sync_members_batch(
        &self,
        groups: &[&str],
        budget_bytes: u32,
    ) -> Result<BatchReport, SdkError> {
        use anchorage_protocol::{GroupSync, GroupSyncResult};
        let store = &self.engine.store;
        let mut pending = Vec::new();
        for g in groups {
            let group = GroupId::parse(*g)?;
            let entry = match store.member_list(g).await? {
                Some(l) => GroupSync {
                    group,
                    epoch: Some(l.epoch),
                    version: l.version,
                    digest: Some(store.computed_digest(g).await?.total().to_wire()),
                    compact: false,
                },
                None => GroupSync {
                    group,
                    epoch: None,
                    version: 0,
                    digest: None,
                    compact: false,
                },
            };
            pending.push(entry);
        }
        let mut report = BatchReport::default();
        while !pending.is_empty() {
            let batch = MembersSyncBatch {
                groups: pending.clone(),
                budget_bytes: Some(budget_bytes),
                cursor: None,
            };
            let answer = self.ask(batch.into()).await?;
            report.bytes += ServerFrame::reply(0, answer.clone()).to_json().len() as u64;
            report.rounds += 1;
            let ReplyBody::MembersBatch(MembersBatch { results, cursor }) = answer else {
                return Err(unexpected(&answer));
            };
            for (result, asked) in results.into_iter().zip(&pending) {
                match result {
                    GroupSyncResult::Unchanged { .. } => report.unchanged += 1,
                    GroupSyncResult::Diff {
                        group,
                        epoch,
                        version,
                        digest,
                        upserts,
                        removed,
                        more,
                    } => {
                        report.diffs += 1;
                        let change = members::Change {
                            upserts: &upserts,
                            removed: &removed,
                        };
                        let applied = store
                            .apply_members(group.as_str(), &epoch, asked.version, version, change)
                            .await?;
                        let agrees = matches!(applied, members::Applied::Done(d)
                            if digest.as_deref().and_then(SetDigest::from_wire).is_none_or(|e| e == d));
                        if more || !agrees {
                            self.engine.request_member_sync(group.as_str(), false);
                        }
                    }
                    GroupSyncResult::Realign { group } => {
                        self.engine.request_member_sync(group.as_str(), false);
                        report.realign.push(group.to_string());
                    }
                    GroupSyncResult::Error { group, code, .. } => {
                        if matches!(
                            code,
                            anchorage_protocol::ErrorCode::Forbidden
                                | anchorage_protocol::ErrorCode::NotFound
                        ) {
                            store.drop_member_list(group.as_str()).await?;
                        }
                    }
                }
            }
            match cursor {
                Some(c) => {
                    pending.drain(..c as usize);
                }
                None => break,
            }
        }
        Ok(report)
    }

    /// Adds members to a group (queued while offline).
    pub async fn add_members(&self, group: &str, members: &[&str]) -> Result<(), SdkError> {
        let add = AddMembers {
            group: GroupId::parse(group)?,
            members: users(members)?,
        };
        self.command(add.into()).await
    }

    /// Removes members from a group (queued while offline).
    pub async fn remove_members(&self, group: &str, members: &[&str]) -> Result<(), SdkError> {
        let remove = RemoveMembers {
            group: GroupId::parse(group)?,
            members: users(members)?,
        };
        self.command(remove.into()).await
    }

    /// Sends a request now (not queued) and returns the answer's body.
    async fn ask(&self, request: RequestBody) -> Result<ReplyBody, SdkError> {
        match self
            .engine
            .ask(request)
            .await
            .ok_or(SdkError::Unavailable)?
        {
            ServerFrame::Reply(reply) => Ok(reply.body),
            answer => Err(SdkError::Refused(engine::reason(&answer))),
        }
    }

    /// Test hook: treat the live member-list change to `version` as lost in transit.
    #[doc(hidden)]
    pub fn drop_member_notice(&self, version: u64) {
        self.engine
            .drop_notice
            .store(version, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test hook: delete `n` local member rows of `group` behind the digest's back.
    #[doc(hidden)]
    pub async fn damage_members(&self, group: &str, n: u32) -> Result<(), SdkError> {
        self.engine.store.damage_members(group, n).await
    }

    /// Test hook: add `n` local member rows of `group` that the server never had, behind the
    /// digest's back.
    #[doc(hidden)]
    pub async fn add_phantom_members(&self, group: &str, n: u32) -> Result<(), SdkError> {
        self.engine.store.add_phantom_members(group, n).await
    }

    /// Test hook: label the local copy of `group` with another stream epoch.
    #[doc(hidden)]
    pub async fn relabel_member_epoch(&self, group: &str, epoch: &str) -> Result<(), SdkError> {
        self.engine.store.relabel_epoch(group, epoch).await
    }

    /// Commands still waiting to reach the server.
    pub async fn pending_commands(&self) -> Result<u64, SdkError> {
        self.engine.store.pending_commands().await
    }

    /// Queues a request until the server has it (kept across restarts).
    async fn command(&self, request: RequestBody) -> Result<(), SdkError> {
        self.engine.store.enqueue_command(&request).await?;
        self.engine.wake();
        Ok(())
    }

    /// Test hook: treat the live copy of message `seq` as lost in transit.
    #[doc(hidden)]
    pub fn drop_push(&self, seq: u64) {
        self.engine
            .drop_push
            .store(seq, std::sync::atomic::Ordering::SeqCst);
    }

    /// Test hook: whether the push armed with [`Client::drop_push`] has been dropped.
    #[doc(hidden)]
    pub fn push_dropped(&self) -> bool {
        self.engine
            .drop_push
            .load(std::sync::atomic::Ordering::SeqCst)
            == 0
    }

    /// Disconnects and stops the engine; the local store keeps everything.
    pub async fn shutdown(&self) {
        self.engine.shutdown().await;
    }
}

/// User ids, checked.
fn users(ids: &[&str]) -> Result<Vec<UserId>, SdkError> {
    ids.iter()
        .map(|u| UserId::parse(*u).map_err(SdkError::from))
        .collect()
}

/// An answer of the wrong kind.
fn unexpected(answer: &ReplyBody) -> SdkError {
    SdkError::Refused(format!("unexpected answer {answer:?}"))
}
