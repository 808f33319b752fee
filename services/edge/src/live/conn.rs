//! One connection's sending half, as the rest of the edge sees it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use anchorage_protocol::ServerFrame;
use anchorage_schema::{DeviceId, UserId};
use tokio_util::sync::CancellationToken;

pub use crate::outbox::Frame;
use crate::outbox::Outbox;

/// Identifies one connection on this edge.
pub type ConnId = u64;

/// Serializes a frame once, for any number of sockets.
pub(crate) fn frame(f: &ServerFrame) -> Frame {
    Frame::from(f.to_json())
}

/// The sending half of one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    /// The connection.
    pub id: ConnId,
    /// Its signed-in user.
    pub user: UserId,
    /// Its signed-in device.
    pub device: DeviceId,
    outbox: Outbox,
    kick: CancellationToken,
    kick_code: Arc<AtomicU16>,
}

impl ConnHandle {
    /// A handle over the connection's outbox.
    pub fn new(id: ConnId, user: UserId, device: DeviceId, outbox: Outbox) -> Self {
        Self {
            id,
            user,
            device,
            outbox,
            kick: CancellationToken::new(),
            kick_code: Arc::new(AtomicU16::new(0)),
        }
    }

    /// Queues a frame without waiting; a full queue closes the connection (slow consumer).
    pub fn push(&self, frame: Frame) {
        if let Err(refused) = self.outbox.try_push(frame)
            && let Some(code) = refused.close_code()
        {
            self.close_with(code);
        }
    }

    /// Queues an answer, waiting for a free slot if need be (answers are never dropped while
    /// the connection lives); past the byte bounds the connection is closed as too slow.
    pub async fn reply(&self, frame: Frame) {
        if let Err(refused) = self.outbox.push(frame).await
            && let Some(code) = refused.close_code()
        {
            self.close_with(code);
        }
    }

    /// Asks the connection to close with `code`.
    pub fn close_with(&self, code: u16) {
        let _ = self
            .kick_code
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        self.kick.cancel();
    }

    /// Whether the connection was asked to close.
    pub fn is_closing(&self) -> bool {
        self.kick.is_cancelled()
    }

    /// Resolves when the connection was asked to close; returns the close code.
    pub async fn kicked(&self) -> u16 {
        self.kick.cancelled().await;
        self.kick_code.load(Ordering::SeqCst)
    }
}
