//! One file per scenario; each returns its report (our figures, the baselines, their ratio).

pub mod fanout;
pub mod ingest;
pub mod members;
pub mod memory;
pub mod partitions;
pub mod push;
pub mod reconnect;
pub mod replay;
pub mod sdk;
pub mod search;
pub mod send;
pub mod signals;
