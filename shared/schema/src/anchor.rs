//! Versions: stream sequences and anchors.
//!
//! A JetStream stream sequence names a version of everything written to that stream up to it.
//! The version of an entity (a conversation, a group) is the sequence of its last event. An
//! [`Anchor`] pairs a sequence with the [`Epoch`] of the stream's lifetime, so an anchor taken
//! before a stream was recreated can never be mistaken for a valid one: its epoch differs and
//! the client realigns instead of diffing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stream sequence number. `Seq(0)` means "nothing yet".
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// Before the first event.
    pub const ZERO: Seq = Seq(0);

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The lifetime of a stream: its creation time in nanoseconds since the Unix epoch, as the
/// server reports it. Deleting and recreating a stream gives it a new epoch.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A version a client can hold and later present: "I have everything up to `seq` of the
/// stream lifetime `epoch`".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Anchor {
    /// The stream's lifetime the sequence belongs to.
    pub epoch: Epoch,
    /// The sequence within that lifetime.
    pub seq: Seq,
}

impl Anchor {
    /// An anchor at `seq` of `epoch`.
    pub fn new(epoch: Epoch, seq: Seq) -> Self {
        Self { epoch, seq }
    }

    /// Whether a diff from this anchor can be served by a stream of lifetime `epoch` whose
    /// oldest retained sequence is `first` and newest is `last`. Anything else needs a
    /// realignment: another lifetime, a version the stream no longer holds, or one from the
    /// future (a client that talked to a different deployment).
    pub fn diffable(&self, epoch: Epoch, first: Seq, last: Seq) -> bool {
        self.epoch == epoch && self.seq <= last && self.seq.0 + 1 >= first.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffable_only_within_the_same_lifetime_and_retained_range() {
        let e = Epoch(7);
        let a = Anchor::new(e, Seq(10));
        assert!(a.diffable(e, Seq(1), Seq(20)));
        assert!(a.diffable(e, Seq(11), Seq(20)), "next event is retained");
        assert!(!a.diffable(e, Seq(12), Seq(20)), "seq 11 was discarded");
        assert!(!a.diffable(e, Seq(1), Seq(9)), "anchor from the future");
        assert!(!a.diffable(Epoch(8), Seq(1), Seq(20)), "another lifetime");
        assert!(
            Anchor::new(e, Seq(20)).diffable(e, Seq(1), Seq(20)),
            "up to date"
        );
    }

    #[test]
    fn serializes_as_plain_numbers() {
        let a = Anchor::new(Epoch(5), Seq(9));
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"epoch":5,"seq":9}"#);
    }
}
