//! The Anchorage event schema: the facts every other part of the system agrees on.
//!
//! Everything that happens in Anchorage — a message sent, a read marker moved, a member added —
//! is an [`Event`] wrapped in a versioned [`Envelope`] and appended to a JetStream stream. The
//! streams are the source of truth; SQL projections, edge caches and client stores are derived
//! from them. This crate holds:
//!
//! - [`ids`]: parse-don't-validate newtypes for every identifier, valid as subject tokens;
//! - [`event`]: the envelope, the event payloads and their decoding rules;
//! - [`subjects`]: every stream name, subject and header name, built in one place;
//! - [`anchor`]: sequence numbers and stream epochs, the version vocabulary of sync;
//! - [`limits`]: the bounds every writer enforces so every reader can decode what it stored;
//! - [`backoff`]: the one full-jitter backoff every retry loop uses;
//! - [`search`]: prefix search with the same answer on every database;
//! - [`push`]: where devices are reached while offline (push targets);
//! - [`attachment`]: files messages carry, by object id, name, type and size;
//! - [`admin`]: server API keys and webhook endpoints as stored.
//!
//! The crate has no I/O. It is shared by the bus, the projector, the edge and the SDK.

#![warn(missing_docs)]

pub mod admin;
pub mod anchor;
pub mod attachment;
pub mod backoff;
pub mod event;
pub mod ids;
pub mod limits;
pub mod push;
pub mod search;
pub mod subjects;

pub use anchor::{Epoch, Seq};
pub use event::{Actor, DecodeError, EntryKind, Envelope, Event, now_ms};
pub use ids::{
    ClientMsgId, ConversationId, DIRECT_PREFIX, DeviceId, EventId, GroupId, IdError,
    RESERVED_SOURCES, SourceId, UserId,
};
