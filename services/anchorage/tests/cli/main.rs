//! The `anchorage` command as a separate process (`CARGO_BIN_EXE_anchorage`), one test binary:
//! crash recovery, `anchorage dev`, and edges in separate processes.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

mod chat;
mod crash;
mod dev;
mod edges;
mod failover;
mod partitions;
mod telemetry;
