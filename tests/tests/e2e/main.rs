//! The end-to-end tests, one test binary: real nats-server processes, real databases, real
//! sockets. Each module is one area; every test starts its own nats-server (or cluster) and
//! database, so tests of different modules never share state.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

mod common;
mod files;

mod api;
mod attachments;
mod attachments_outside;
mod changes;
mod chaos;
mod cluster;
mod faults;
mod ingest;
mod large_group;
mod members;
mod messaging;
mod nats_security;
mod observability;
mod push;
mod push_outside;
mod rebuild;
mod sdk;
mod search;
mod search_outside;
mod security;
mod stack;
mod streams;
mod webhooks;
