//! `anchorage bench <scenario> [--quick] [--json]`: what users feel, next to the raw JetStream
//! and WebSocket baselines measured in the same run on the same machine.
//!
//! Every scenario starts its own nats-server (temporary store) and, where it needs one, the
//! stack in-process on loopback; every loop is bounded in count and time and stops by itself.
//! Progress goes to stderr; the result is one JSON object on stdout: our figures, the baseline
//! figures, and their ratio. Clients speak the typed protocol of `anchorage-protocol`.
//!
//! The benchmarks are their own binary (`anchorage-bench`, which `anchorage bench` runs), so
//! the production binary links no WebSocket client, no SDK and no NATS client of its own.

pub mod client;
pub mod clients;
pub mod env;
pub mod raw;
pub mod scenarios;
pub mod sdk;

use serde_json::Value;

pub use env::Sizes;

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The baselines alone: raw JetStream publish and consume, raw WebSocket push.
    Raw,
    /// Messages accepted through the edge, next to raw JetStream publishing.
    Send,
    /// Rebuilding the projections, next to a raw consumer.
    Replay,
    /// What an idle connection costs the edge.
    Memory,
    /// Member-list sync of a large group and of many small ones, next to full pulls.
    Members,
    /// A message to the online members of a large group, next to a bare WebSocket server.
    Fanout,
    /// An edge restart under thousands of clients: how long until all are back in line.
    Reconnect,
    /// Reactions and typing in a large group with many members online, next to raw
    /// publishing and to one push per reaction per member.
    Signals,
    /// Events from another system (users, a large group, system posts) until projected,
    /// next to raw publishing.
    Ingest,
    /// The messages projection on PostgreSQL in 1, 2 and 4 partitions, next to a raw
    /// consumer.
    Partitions,
    /// Full-text search over a large history, next to the bare index.
    Search,
    /// A message to the offline members of a large group as pushes through a provider that
    /// fails 10% of calls, next to the same calls made straight to it.
    Push,
    /// The TypeScript SDK next to the Rust SDK: sends through the outbox, and reconnects after
    /// an edge restart (needs Node.js ≥ 20).
    Sdk,
}

impl Scenario {
    /// The scenario's name, as given on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Raw => "raw",
            Scenario::Send => "send",
            Scenario::Replay => "replay",
            Scenario::Memory => "memory",
            Scenario::Members => "members",
            Scenario::Fanout => "fanout",
            Scenario::Reconnect => "reconnect",
            Scenario::Signals => "signals",
            Scenario::Ingest => "ingest",
            Scenario::Partitions => "partitions",
            Scenario::Search => "search",
            Scenario::Push => "push",
            Scenario::Sdk => "sdk",
        }
    }
}

/// Runs one scenario and returns its JSON report.
pub async fn run(scenario: Scenario, sizes: Sizes) -> anyhow::Result<Value> {
    let env = env::BenchEnv::start().await?;
    let result = match scenario {
        Scenario::Raw => raw::scenario(&env, sizes).await,
        Scenario::Send => scenarios::send::run(&env, sizes).await,
        Scenario::Replay => scenarios::replay::run(&env, sizes).await,
        Scenario::Memory => scenarios::memory::run(&env, sizes).await,
        Scenario::Members => scenarios::members::run(&env, sizes).await,
        Scenario::Fanout => scenarios::fanout::run(&env, sizes).await,
        Scenario::Reconnect => scenarios::reconnect::run(&env, sizes).await,
        Scenario::Signals => scenarios::signals::run(&env, sizes).await,
        Scenario::Ingest => scenarios::ingest::run(&env, sizes).await,
        Scenario::Partitions => scenarios::partitions::run(&env, sizes).await,
        Scenario::Search => scenarios::search::run(&env, sizes).await,
        Scenario::Push => scenarios::push::run(&env, sizes).await,
        Scenario::Sdk => scenarios::sdk::run(&env, sizes).await,
    };
    env.stop().await;
    let mut report = result?;
    report["scenario"] = Value::String(scenario.name().into());
    report["machine"] = env::machine();
    Ok(report)
}
