//! Versions: stream sequences and anchors.
//!
//! A JetStream stream sequence names a version of everything written to that stream up to it.
//! The version of an entity (a conversation, a group) is the sequence of its last event. A
//! version is only comparable within one [`Epoch`] of the stream's lifetime, so a version taken
//! before a stream was recreated can never be mistaken for a valid one: its epoch differs and
//! the client realigns instead of diffing.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stream sequence number. `Seq(0)` means "nothing yet".
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
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
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
