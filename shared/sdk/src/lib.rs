//! The Anchorage client SDK: the client half of the protocol.
//!
//! A [`Client`] keeps a local SQLite store of conversations, messages, anchors and read
//! markers, and a background engine that keeps it in line with the server:
//!
//! - **Connecting.** Full-jitter exponential backoff from about 0.5 s to 20 s between attempts,
//!   at least as long as a server's retry-after hint; the count resets once a connection held.
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

mod backoff;
mod engine;
mod store;

use anchorage_schema::now_ms;
use std::path::PathBuf;
use std::sync::Arc;

use anchorage_schema::{ConversationId, GroupId, UserId};
use tokio::sync::broadcast;

pub use backoff::delay as backoff_delay;

/// Where the outbox stands for one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    Pending,
    Sending,
    Acked,
    Failed,
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub conv: String,
    pub client_msg_id: String,
    pub state: OutboxState,
    pub attempts: u32,
    /// The server's seq, once acknowledged.
    pub seq: Option<u64>,
    /// Why the server refused it, if it did.
    pub error: Option<String>,
}

/// A message as the app shows it; `seq` is `None` while it waits in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalMessage {
    pub conv: String,
    pub seq: Option<u64>,
    pub sender: String,
    pub device: String,
    pub client_msg_id: String,
    pub body: serde_json::Value,
    pub client_ts: i64,
    pub server_ts: Option<i64>,
}

/// What happened, for the app to react to.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    Connected,
    Disconnected {
        code: Option<u16>,
    },
    /// New messages are stored for `conv`, up to `seq`.
    Messages {
        conv: String,
        seq: u64,
    },
    Acked {
        client_msg_id: String,
        seq: u64,
    },
    Failed {
        client_msg_id: String,
        reason: String,
    },
    /// A read marker moved (on this or another device).
    Read {
        conv: String,
        seq: u64,
    },
    /// A missed live message was detected and filled in by a sync.
    GapRepaired {
        conv: String,
        from: u64,
        to: u64,
    },
    /// The token was refused; the token source is asked again on the next attempt.
    AuthFailed {
        code: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    #[error("local store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("invalid id: {0}")]
    Id(#[from] anchorage_schema::IdError),
    #[error("the client was shut down")]
    Closed,
}

/// Produces a device token for each connection attempt (so it can be refreshed).
pub type TokenSource = Arc<dyn Fn() -> String + Send + Sync>;

/// How to connect.
#[derive(Clone)]
pub struct ClientOptions {
    /// `ws://host:port/ws`.
    pub url: String,
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
        ConversationId::parse(conv)?;
        let id = format!("{:x}-{:x}", now_ms(), backoff::random() & 0xffff_ffff);
        self.engine
            .store
            .enqueue_send(conv, &id, &body, now_ms())
            .await?;
        self.engine.wake();
        Ok(id)
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

    /// The read marker of `conv` as this device knows it.
    pub async fn read_marker(&self, conv: &str) -> Result<u64, SdkError> {
        self.engine.store.read_marker(conv).await
    }

    /// Marks `conv` read up to `seq` (queued while offline).
    pub async fn mark_read(&self, conv: &str, seq: u64) -> Result<(), SdkError> {
        ConversationId::parse(conv)?;
        self.engine.store.set_read(conv, seq).await?;
        self.command(serde_json::json!({"type": "read", "conv": conv, "seq": seq}))
            .await
    }

    /// Creates a group (queued while offline).
    pub async fn create_group(
        &self,
        group: &str,
        title: &str,
        members: &[&str],
    ) -> Result<(), SdkError> {
        GroupId::parse(group)?;
        self.command(
            serde_json::json!({"type": "create_group", "group": group, "title": title,
                                        "members": members}),
        )
        .await
    }

    /// Opens the 1:1 conversation with `peer` (queued while offline); returns its id, which is
    /// known without asking the server.
    pub async fn open_direct(&self, me: &str, peer: &str) -> Result<String, SdkError> {
        let conv = ConversationId::direct(&UserId::parse(me)?, &UserId::parse(peer)?);
        self.command(serde_json::json!({"type": "open_direct", "peer": peer}))
            .await?;
        Ok(conv.to_string())
    }

    /// Asks for `conv` to be brought up to date now (when the user opens it).
    pub fn open_conversation(&self, conv: &str) {
        self.engine.request_sync(conv);
    }

    /// Commands still waiting to reach the server.
    pub async fn pending_commands(&self) -> Result<u64, SdkError> {
        self.engine.store.pending_commands().await
    }

    async fn command(&self, frame: serde_json::Value) -> Result<(), SdkError> {
        self.engine.store.enqueue_command(&frame).await?;
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
