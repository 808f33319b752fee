//! The queue between a connection's producers (its own answers, live pushes) and its writer
//! task, bounded in frames and in bytes.
//!
//! Each connection may have at most `edge.queue_frames` frames and `edge.queue_bytes` bytes
//! waiting for its socket, all connections of one user together `edge.queue_bytes_per_user`,
//! and all connections of the edge together at most `edge.queued_bytes_total` — so one
//! account's stalled sockets cannot use up what everyone shares. A frame that would go past a byte bound is not queued: the
//! connection is closed with [`close::SLOW_CONSUMER`] and the client resyncs from its anchors
//! when it reconnects. A client that asks for large answers and never reads them costs the edge
//! its byte bound, not its memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use anchorage_protocol::close;
use anchorage_schema::UserId;
use tokio::sync::mpsc;

/// A serialized server frame; cloning it shares the bytes (one serialization per message,
/// however many recipients).
pub type Frame = axum::extract::ws::Utf8Bytes;

/// The bytes queued on this edge, across connections, and the bounds.
#[derive(Debug)]
pub struct QueueBudget {
    queued: AtomicUsize,
    per_connection: usize,
    per_user: usize,
    total: usize,
    /// Bytes queued per user, shared by the user's connections while any is open.
    users: Mutex<HashMap<UserId, Weak<AtomicUsize>>>,
}

impl QueueBudget {
    pub fn new(per_connection: usize, per_user: usize, total: usize) -> Self {
        Self {
            queued: AtomicUsize::new(0),
            per_connection,
            per_user,
            total,
            users: Mutex::new(HashMap::new()),
        }
    }

    /// The counter of `user`'s queued bytes (one per user while any of theirs is connected).
    fn user_counter(&self, user: &UserId) -> Arc<AtomicUsize> {
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(counter) = users.get(user).and_then(Weak::upgrade) {
            return counter;
        }
        if users.len() > 1024 {
            users.retain(|_, w| w.strong_count() > 0);
        }
        let counter = Arc::new(AtomicUsize::new(0));
        users.insert(user.clone(), Arc::downgrade(&counter));
        counter
    }

    /// Bytes queued on the edge right now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Past a byte bound, or the frame queue is full: the client is too slow.
    TooSlow,
    /// The writer is gone (the connection is closing).
    Closed,
}

impl Refused {
    /// The close code that goes with the refusal, if any.
    pub fn close_code(self) -> Option<u16> {
        match self {
            Refused::TooSlow => Some(close::SLOW_CONSUMER),
            Refused::Closed => None,
        }
    }
}

/// The producing half of a connection's queue.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    queued: Arc<AtomicUsize>,
    user: Arc<AtomicUsize>,
    budget: Arc<QueueBudget>,
}

/// The writer's half: taking a frame gives its bytes back to the budgets.
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Frame>,
    queued: Arc<AtomicUsize>,
    user: Arc<AtomicUsize>,
    budget: Arc<QueueBudget>,
}

/// A queue of at most `frames` frames for a connection of `user`, under `budget`.
pub fn channel(frames: usize, budget: Arc<QueueBudget>, user: &UserId) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(frames);
    let queued = Arc::new(AtomicUsize::new(0));
    let user = budget.user_counter(user);
    (
        Outbox {
            tx,
            queued: queued.clone(),
            user: user.clone(),
            budget: budget.clone(),
        },
        Inbox {
            rx,
            queued,
            user,
            budget,
        },
    )
}

impl Outbox {
    /// Counts `len` bytes against both bounds, or refuses without counting.
    fn reserve(&self, len: usize) -> Result<(), Refused> {
        let mine = self.queued.fetch_add(len, Ordering::AcqRel) + len;
        let users = self.user.fetch_add(len, Ordering::AcqRel) + len;
        let all = self.budget.queued.fetch_add(len, Ordering::AcqRel) + len;
        // A frame alone larger than the connection's bound still goes through an empty queue:
        // an answer is bounded by its own limits, the queue bounds what piles up.
        let piled_up =
            mine != len && (mine > self.budget.per_connection || users > self.budget.per_user);
        if piled_up || all > self.budget.total {
            self.release(len);
            return Err(Refused::TooSlow);
        }
        Ok(())
    }

    fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
        self.user.fetch_sub(len, Ordering::AcqRel);
        self.budget.queued.fetch_sub(len, Ordering::AcqRel);
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, frame: Frame) -> Result<(), Refused> {
        let len = frame.len();
        self.reserve(len)?;
        self.tx.try_send(frame).map_err(|e| {
            self.release(len);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::TooSlow,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }

    /// Queues a frame, waiting for a free slot when only the frame count is full (answers
    /// are never dropped for that); refused past a byte bound.
    pub async fn push(&self, frame: Frame) -> Result<(), Refused> {
        let len = frame.len();
        self.reserve(len)?;
        let sent = match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            // The wait is boxed so it does not weigh on every connection's future.
            Err(mpsc::error::TrySendError::Full(frame)) => Box::pin(self.tx.send(frame))
                .await
                .map_err(|_| Refused::Closed),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Closed),
        };
        if sent.is_err() {
            self.release(len);
        }
        sent
    }
}

impl Inbox {
    fn taken(&self, frame: &Frame) {
        let len = frame.len();
        self.queued.fetch_sub(len, Ordering::AcqRel);
        self.user.fetch_sub(len, Ordering::AcqRel);
        self.budget.queued.fetch_sub(len, Ordering::AcqRel);
    }

    pub async fn recv(&mut self) -> Option<Frame> {
        let frame = self.rx.recv().await?;
        self.taken(&frame);
        Some(frame)
    }

    pub fn try_recv(&mut self) -> Option<Frame> {
        let frame = self.rx.try_recv().ok()?;
        self.taken(&frame);
        Some(frame)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Frames never written give their bytes back too.
        self.rx.close();
        while let Ok(frame) = self.rx.try_recv() {
            self.taken(&frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Frame {
        Frame::from("x".repeat(len))
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn bytes_are_bounded_per_connection_and_per_edge() {
        let budget = Arc::new(QueueBudget::new(100, 1000, 150));
        let (a, mut a_rx) = channel(16, budget.clone(), &user("a"));
        let (b, b_rx) = channel(16, budget.clone(), &user("b"));
        assert_eq!(a.try_push(frame(60)), Ok(()));
        assert_eq!(a.push(frame(60)).await, Err(Refused::TooSlow), "a's bound");
        assert_eq!(b.try_push(frame(80)), Ok(()));
        assert_eq!(
            b.try_push(frame(20)),
            Err(Refused::TooSlow),
            "the edge's bound"
        );
        assert_eq!(budget.queued(), 140);
        // Written frames give their bytes back; so do frames of a closed connection.
        assert_eq!(a_rx.recv().await.map(|f| f.len()), Some(60));
        assert_eq!(a.try_push(frame(10)), Ok(()));
        drop(b_rx);
        assert_eq!(budget.queued(), 10);
        assert_eq!(b.try_push(frame(1)), Err(Refused::Closed));
        assert_eq!(budget.queued(), 10);
    }

    #[tokio::test]
    async fn one_large_answer_goes_through_an_empty_queue() {
        let budget = Arc::new(QueueBudget::new(100, 1000, 1000));
        let (a, _rx) = channel(16, budget, &user("a"));
        assert_eq!(a.try_push(frame(500)), Ok(()));
        assert_eq!(a.try_push(frame(1)), Err(Refused::TooSlow));
    }

    #[tokio::test]
    async fn a_full_frame_queue_is_too_slow_for_pushes() {
        let budget = Arc::new(QueueBudget::new(1000, 1000, 1000));
        let (a, _rx) = channel(2, budget.clone(), &user("a"));
        assert_eq!(a.try_push(frame(1)), Ok(()));
        assert_eq!(a.try_push(frame(1)), Ok(()));
        assert_eq!(a.try_push(frame(1)), Err(Refused::TooSlow));
        assert_eq!(budget.queued(), 2);
    }

    #[tokio::test]
    async fn one_user_cannot_take_what_everyone_shares() {
        let budget = Arc::new(QueueBudget::new(100, 150, 1000));
        let (a1, _r1) = channel(16, budget.clone(), &user("hog"));
        let (a2, _r2) = channel(16, budget.clone(), &user("hog"));
        let (v, _rv) = channel(16, budget.clone(), &user("victim"));
        assert_eq!(a1.try_push(frame(90)), Ok(()));
        assert_eq!(a2.try_push(frame(50)), Ok(()));
        assert_eq!(
            a2.try_push(frame(20)),
            Err(Refused::TooSlow),
            "the user's bound"
        );
        assert_eq!(v.try_push(frame(90)), Ok(()), "others are not affected");
        drop((a1, _r1));
        let (a3, _r3) = channel(16, budget, &user("hog"));
        assert_eq!(
            a3.try_push(frame(60)),
            Ok(()),
            "a closed connection gave its bytes back"
        );
    }
}
