//! `bench sdk`: the TypeScript SDK next to the Rust SDK, in the same run against the same
//! stack. Each SDK runs in its own process (`anchorage-bench sdk-runner`, and
//! `node shared/sdk-ts/bench/bench.mjs`) on the same job (see [`crate::sdk`]):
//!
//! - **send**: senders each queue their share of the messages through their outbox at once
//!   (the outbox pipelines them) until all are acknowledged;
//! - **reconnect**: members of a group are connected when their edge restarts; how long until
//!   each is back in line (reconnected with backoff, anchors presented, missed messages
//!   synced).
//!
//! Each client keeps its local store in a file flushed on every write (the Rust SDK's SQLite
//! file; the TypeScript SDK's file log). Each figure is measured twice, alternating the SDKs,
//! and the better round of each counts, so neither SDK pays alone for a cold server or a
//! background pause; a last round sends with the TypeScript SDK's store in memory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anchorage::stack::Stack;
use anchorage_bus::Bus;
use anchorage_config::Config;
use anchorage_schema::GroupId;
use anchorage_schema::UserId;
use anchorage_schema::event::GroupCreated;
use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::fanout::send_stamped;
use super::reconnect::edge_on;
use crate::client::{signed_in, token};
use crate::env::{
    BenchEnv, Sizes, big_group, membership_event, percentile, progress, projected, resync_times,
    unix_ms,
};

/// The two SDKs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sdk {
    Rust,
    TypeScript,
}

impl Sdk {
    fn name(self) -> &'static str {
        match self {
            Sdk::Rust => "rust",
            Sdk::TypeScript => "typescript",
        }
    }

    /// Users of this SDK's clients are `<prefix><n>`.
    fn prefix(self) -> &'static str {
        match self {
            Sdk::Rust => "rs",
            Sdk::TypeScript => "ts",
        }
    }
}

/// A runner process with its job.
struct Runner {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    out: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Runner {
    /// Starts `sdk`'s runner on `job` and waits until its clients are signed in.
    async fn start(sdk: Sdk, job: &Value) -> anyhow::Result<Runner> {
        let mut command = match sdk {
            Sdk::Rust => {
                let mut c = tokio::process::Command::new(std::env::current_exe()?);
                c.arg("sdk-runner");
                c
            }
            Sdk::TypeScript => {
                let node = std::env::var_os("ANCHORAGE_NODE").unwrap_or_else(|| "node".into());
                let mut c = tokio::process::Command::new(node);
                c.arg("--experimental-websocket")
                    .arg("--no-warnings")
                    .arg(ts_runner()?);
                c
            }
        };
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting the {} SDK's runner", sdk.name()))?;
        let stdin = child.stdin.take().context("runner stdin")?;
        let out = tokio::io::BufReader::new(child.stdout.take().context("runner stdout")?).lines();
        let mut runner = Runner { child, stdin, out };
        runner.say(job).await?;
        let ready = runner.line().await?;
        if ready["ready"] != true {
            bail!("the {} SDK's clients did not sign in: {ready}", sdk.name());
        }
        Ok(runner)
    }

    async fn say(&mut self, line: &Value) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        Ok(self.stdin.flush().await?)
    }

    async fn line(&mut self) -> anyhow::Result<Value> {
        let line = self.out.next_line().await?.context("the runner ended")?;
        serde_json::from_str(&line).with_context(|| format!("runner line {line:?}"))
    }

    /// The report, once the runner is done.
    async fn report(mut self) -> anyhow::Result<Value> {
        let report = self.line().await?;
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("the runner failed: {status}");
        }
        Ok(report)
    }
}

/// `shared/sdk-ts/bench/bench.mjs` in the working directory or above it.
fn ts_runner() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    cwd.ancestors()
        .map(|d| d.join("shared/sdk-ts/bench/bench.mjs"))
        .find(|p| p.is_file())
        .context("no shared/sdk-ts/bench/bench.mjs here or above; run from an Anchorage checkout")
}

/// The job's clients: a token for each of `users`, and the conversation each uses.
fn clients(
    config: &Config,
    users: &[String],
    conv: impl Fn(usize) -> String,
) -> anyhow::Result<Value> {
    users
        .iter()
        .enumerate()
        .map(|(i, u)| Ok(json!({"token": token(config, u)?, "conv": conv(i)})))
        .collect()
}

/// One send round of `sdk`: `senders` clients, each into its own group.
async fn send_round(
    env: &BenchEnv,
    stack: &Stack,
    sdk: Sdk,
    round: usize,
    s: Sizes,
    store: &str,
) -> anyhow::Result<Value> {
    let senders: Vec<String> = (0..s.senders)
        .map(|i| format!("{}send{round}x{i}", sdk.prefix()))
        .collect();
    let per_sender = s.sends / s.senders;
    let job = json!({
        "mode": "send",
        "url": format!("ws://{}/ws", stack.edge_addr),
        "clients": clients(&env.config, &senders, |i| senders[i].clone())?,
        "messages": per_sender,
        "store": store,
    });
    progress(&format!(
        "{} SDK: {} senders, {per_sender} messages each, {store} store (round {round})",
        sdk.name(),
        s.senders
    ));
    let report = Runner::start(sdk, &job).await?.report().await?;
    let acked = report["acked"].as_u64().unwrap_or(0) as usize;
    if acked != per_sender * s.senders {
        bail!(
            "{} SDK: {acked} of {} acknowledged",
            sdk.name(),
            per_sender * s.senders
        );
    }
    let elapsed = Duration::from_secs_f64(report["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0);
    let latencies = crate::env::sorted_latencies(&report);
    Ok(json!({
        "accepted_msgs_per_sec": crate::env::rate(acked, elapsed).round(),
        "queued_to_acked_ms_p50": percentile(&latencies, 0.50),
        "queued_to_acked_ms_p99": percentile(&latencies, 0.99),
    }))
}

/// One reconnect round of `sdk`: `count` members of `big` connected to an edge that restarts
/// while `big` gets three messages.
async fn reconnect_round(
    env: &BenchEnv,
    stack: &Stack,
    sdk: Sdk,
    round: usize,
    members: &[String],
) -> anyhow::Result<Value> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, task) = edge_on(&env.config, stack, listener).await?;
    progress(&format!(
        "{} SDK: {} clients, edge restart (round {round})",
        sdk.name(),
        members.len()
    ));
    let job = json!({
        "mode": "reconnect",
        "url": format!("ws://{addr}/ws"),
        "clients": clients(&env.config, members, |_| "big".to_owned())?,
        "store": "file",
    });
    let mut runner = Runner::start(sdk, &job).await?;
    let mut owner = signed_in(stack.edge_addr, &env.config, "owner").await?;
    // Client message ids stay unique over the rounds of both SDKs.
    let first = 1 + (2 * round as u64 + u64::from(sdk == Sdk::TypeScript)) * 100;
    for n in first..first + 3 {
        send_stamped(&mut owner, n).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    task.await??;
    let mut last = 0;
    for n in first + 3..first + 6 {
        last = send_stamped(&mut owner, n).await?;
    }
    projected(stack, "messages", last).await?;
    let restarted = unix_ms();
    let (stop, task) = edge_on(
        &env.config,
        stack,
        tokio::net::TcpListener::bind(addr).await?,
    )
    .await?;
    runner.say(&json!({"last": last})).await?;
    let report = runner.report().await?;
    stop.cancel();
    task.await??;
    let times = resync_times(&report, restarted);
    Ok(json!({
        "clients": members.len(),
        "resynced": times.len(),
        "failures": members.len().saturating_sub(times.len()),
        "failure_reasons": report["failures"],
        "disconnects": report["disconnects"],
        "all_resynced_s": times.last().map_or(0.0, Duration::as_secs_f64),
        "resynced_ms_p50": percentile(&times, 0.50),
        "resynced_ms_p99": percentile(&times, 0.99),
    }))
}

/// Groups `<user>` owned by each of `users`, projected.
async fn own_groups(bus: &Bus, stack: &Stack, users: &[String]) -> anyhow::Result<()> {
    let mut last = 0;
    for u in users {
        let created = GroupCreated {
            group: GroupId::parse(u.as_str())?,
            owner: UserId::parse(u.as_str())?,
            title: "bench".into(),
            members: Vec::new(),
            direct: false,
        };
        last = membership_event(bus, u, 0, created).await?;
    }
    projected(stack, "membership", last).await
}

/// The better of two rounds: the higher `key`, or the lower when `lower` is set.
fn best(rounds: Vec<Value>, key: &str, lower: bool) -> Value {
    let figure = |v: &Value| v[key].as_f64().unwrap_or(0.0);
    rounds
        .into_iter()
        .reduce(|a, b| {
            let better = if lower {
                figure(&b) < figure(&a)
            } else {
                figure(&b) > figure(&a)
            };
            if better { b } else { a }
        })
        .unwrap_or(Value::Null)
}

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    let stack = env.stack().await?;
    // Reconnecting clients: each runs a whole SDK (and, in Rust, a SQLite file of its own).
    let count = s.online.min(1_000);
    progress(&format!("a group of {} members", 2 * count));
    let owners: Vec<String> = [Sdk::Rust, Sdk::TypeScript]
        .into_iter()
        .flat_map(|sdk| (0..3).flat_map(move |r| (0..s.senders).map(move |i| (sdk, r, i))))
        .map(|(sdk, r, i)| format!("{}send{r}x{i}", sdk.prefix()))
        .collect();
    own_groups(&bus, &stack, &owners).await?;
    big_group(&bus, &stack, &[], 2 * count).await?;
    let numbered =
        |from: usize| -> Vec<String> { (from..from + count).map(|i| format!("u{i:06}")).collect() };
    let mut send = [Vec::new(), Vec::new()];
    let mut reconnect = [Vec::new(), Vec::new()];
    for round in 0..2 {
        // Alternating: Rust first, then TypeScript first.
        let order = if round == 0 {
            [Sdk::Rust, Sdk::TypeScript]
        } else {
            [Sdk::TypeScript, Sdk::Rust]
        };
        for sdk in order {
            let i = usize::from(sdk == Sdk::TypeScript);
            send[i].push(send_round(env, &stack, sdk, round, s, "file").await?);
        }
        for sdk in order {
            let i = usize::from(sdk == Sdk::TypeScript);
            let members = numbered(i * count);
            reconnect[i].push(reconnect_round(env, &stack, sdk, round, &members).await?);
        }
    }
    // For scale: the TypeScript SDK with its store in memory, as a browser tab or a bot may run.
    let memory = send_round(env, &stack, Sdk::TypeScript, 2, s, "memory").await?;
    stack.stop().await?;
    bus.close().await;
    let [rust_send, ts_send] = send.map(|r| best(r, "accepted_msgs_per_sec", false));
    let [rust_reconnect, ts_reconnect] = reconnect.map(|r| best(r, "resynced_ms_p50", true));
    let figure = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let send_ratio = figure(&ts_send, "accepted_msgs_per_sec")
        / figure(&rust_send, "accepted_msgs_per_sec").max(1e-9);
    // Time, so the faster SDK has the smaller figure: Rust's over TypeScript's.
    let reconnect_ratio = figure(&rust_reconnect, "resynced_ms_p50").max(1.0)
        / figure(&ts_reconnect, "resynced_ms_p50").max(1.0);
    Ok(json!({
        "ours": {"send": ts_send, "reconnect": ts_reconnect, "sdk": "typescript",
                 "store": "a file per client: an append-only log, flushed on each write",
                 "send_with_memory_store": memory, "runtime": node_version().await},
        "baseline": {"send": rust_send, "reconnect": rust_reconnect, "sdk": "rust",
                     "store": "a SQLite file per client, synchronous = FULL"},
        "ratio": {"send": send_ratio, "reconnect_p50": reconnect_ratio},
        "target": "TypeScript within 20% of Rust: each ratio >= 0.8",
        "sizes": {"senders": s.senders, "sends": (s.sends / s.senders) * s.senders,
                  "reconnecting_clients": count, "missed_messages": 3, "rounds": 2},
    }))
}

async fn node_version() -> String {
    let node = std::env::var_os("ANCHORAGE_NODE").unwrap_or_else(|| "node".into());
    match tokio::process::Command::new(node)
        .arg("--version")
        .output()
        .await
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Err(_) => String::new(),
    }
}
