//! What every scenario shares: the sizes of a run, a nats-server with the streams applied,
//! events to publish, the client process, and the report helpers.

use std::time::{Duration, Instant};

use anchorage::natsd::{NatsServer, NatsServerOptions};
use anchorage::stack::Stack;
use anchorage_bus::{Bus, StreamSet};
use anchorage_config::Config;
use anchorage_schema::event::{GroupCreated, MembersAdded, MessageSent};
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, DeviceId, Envelope, Event, EventId, GroupId, SourceId,
    UserId, subjects,
};
use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Sizes of one run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Events published / replayed.
    pub events: usize,
    /// Sockets for push and memory figures.
    pub sockets: usize,
    /// Messages sent through the edge.
    pub sends: usize,
    /// Concurrent senders.
    pub senders: usize,
    /// Members of the large group.
    pub members: usize,
    /// Small groups in a batch.
    pub groups: usize,
    /// Online members of the large group (fanout) and clients reconnecting at once.
    pub online: usize,
    /// Messages fanned out.
    pub fanouts: usize,
    /// Edges the clients of `send` and `fanout` are spread over.
    pub edges: usize,
    /// Messages of text `search` searches.
    pub searched: usize,
}

impl Sizes {
    /// The full sizes, or a small, fast run (a smoke test of the output, not of speed).
    pub fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                events: 2_000,
                sockets: 20,
                sends: 400,
                senders: 4,
                members: 2_000,
                groups: 50,
                online: 50,
                fanouts: 2,
                edges: 1,
                searched: 20_000,
            }
        } else {
            Sizes {
                events: 100_000,
                sockets: 1_000,
                sends: 20_000,
                senders: 16,
                members: 100_000,
                groups: 500,
                online: 10_000,
                fanouts: 20,
                edges: 1,
                searched: 1_000_000,
            }
        }
    }
}

/// The machine the figures come from.
pub fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    json!({"cpus": cpus, "cpu": model, "os": std::env::consts::OS})
}

/// A progress line on stderr.
pub fn progress(what: &str) {
    eprintln!("bench: {what}");
}

/// Per second.
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The `p` percentile of sorted durations, in ms.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Resident memory of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident memory of this process while `fut` runs, sampled every 50 ms.
pub async fn peak_rss<T>(fut: impl std::future::Future<Output = T>) -> (T, u64) {
    let mut peak = rss_kib();
    let mut fut = std::pin::pin!(fut);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            v = &mut fut => return (v, peak.max(rss_kib())),
            _ = tick.tick() => peak = peak.max(rss_kib()),
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    (unix_nanos() / 1_000_000) as u64
}

/// A nats-server with the streams applied, in a temporary directory.
#[derive(Debug)]
pub struct BenchEnv {
    pub dir: tempfile::TempDir,
    nats: NatsServer,
    pub config: Config,
}

impl BenchEnv {
    /// Starts the server (the binary from `dev.nats_server` or `.tools/`, as `anchorage dev`
    /// finds it) and the configuration of a stack on loopback without limits in the way.
    pub async fn start() -> anyhow::Result<BenchEnv> {
        let dir = tempfile::tempdir()?;
        let binary = anchorage::natsd::locate(None, &std::env::current_dir()?)?;
        let nats = NatsServer::spawn(NatsServerOptions {
            binary,
            server_name: "bench".into(),
            port: None,
            store_dir: dir.path().join("nats"),
            sync_always: false,
            cluster: None,
            // A loopback server that lives for one run; what it measures is messaging.
            auth: None,
            tls: None,
        })
        .await?;
        let mut config = Config::default();
        config.nats.url = nats.url();
        config.database.url = format!("sqlite://{}/bench.db", dir.path().display());
        config.edge.listen = "127.0.0.1:0".parse()?;
        config.edge.rate_per_sec = 1_000_000;
        config.edge.rate_burst = 1_000_000;
        config.edge.user_rate_per_sec = 1_000_000;
        config.edge.max_connections = 100_000;
        // Every benchmark client connects from 127.0.0.1.
        config.edge.max_pending = 100_000;
        config.edge.max_pending_per_ip = 0;
        config.streams.dir = find_streams()?;
        Ok(BenchEnv { dir, nats, config })
    }

    /// A connection with the streams applied.
    pub async fn bus(&self) -> anyhow::Result<Bus> {
        let bus = Bus::connect(&anchorage::bus_options(&self.config, false)).await?;
        let set = StreamSet::load(&self.config.streams.dir, 1)?;
        bus.apply(&set).await?;
        Ok(bus)
    }

    /// The whole stack (projector and edge) in this process, on loopback.
    pub async fn stack(&self) -> anyhow::Result<Stack> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Stack::start(&self.config, listener).await
    }

    /// `n` edges besides the stack's own, each over its own NATS connection, as separate edge
    /// processes would be: where they listen, and their connections (to count what NATS
    /// delivers to each).
    ///
    /// Their presence records are refreshed once an hour instead of every 30 s: a refresh
    /// sends every edge one record per connected user, a background cost that would otherwise
    /// land in some measuring windows and not others.
    pub async fn edges(&self, stack: &mut Stack, n: usize) -> anyhow::Result<Vec<Edge>> {
        let mut config = self.config.clone();
        config.edge.presence_ttl_secs = 3 * 3600;
        let mut edges = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let bus = stack.add_edge(&config, listener).await?;
            edges.push(Edge { addr, bus });
        }
        Ok(edges)
    }

    /// Stops the server and removes its store.
    pub async fn stop(mut self) {
        let _ = self.nats.stop(Duration::from_secs(10)).await;
    }
}

/// An edge of a bench run, with its own NATS connection.
#[derive(Debug)]
pub struct Edge {
    pub addr: std::net::SocketAddr,
    pub bus: Bus,
}

/// Messages NATS delivered to each edge since `before` (from [`received`]).
pub fn delivered_since(edges: &[Edge], before: &[(u64, u64)]) -> Vec<(u64, u64)> {
    edges
        .iter()
        .zip(before)
        .map(|(e, b)| {
            let now = e.bus.received();
            (now.0 - b.0, now.1 - b.1)
        })
        .collect()
}

/// What NATS has delivered to each edge so far: messages and bytes.
pub fn received(edges: &[Edge]) -> Vec<(u64, u64)> {
    edges.iter().map(|e| e.bus.received()).collect()
}

/// The stream definitions: `streams/` in the working directory or above it.
fn find_streams() -> anyhow::Result<std::path::PathBuf> {
    let cwd = std::env::current_dir()?;
    cwd.ancestors()
        .map(|d| d.join("streams"))
        .find(|p| p.join("streams").is_dir())
        .context("no streams/ folder here or above; run from an Anchorage checkout")
}

/// Message `n` into `conv`, as a user's edge would store it.
pub fn message_event(n: usize, conv: &ConversationId, body_len: usize) -> anyhow::Result<Envelope> {
    Ok(Envelope::new(
        EventId::parse(format!("bench:d:{n}"))?,
        1,
        Actor::User {
            user: UserId::parse("bench")?,
            device: DeviceId::parse("d")?,
        },
        MessageSent {
            conv: conv.clone(),
            sender: UserId::parse("bench")?,
            device: DeviceId::parse("d")?,
            client_msg_id: ClientMsgId::parse(format!("m{n}"))?,
            body: Value::String("x".repeat(body_len)),
            client_ts: 1,
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        },
    ))
}

/// Publishes `events` messages of 200 B spread round-robin over `conversations` conversations
/// (`c0`, `c1`, …), 256 in flight.
pub async fn publish_messages(
    bus: &Bus,
    events: usize,
    conversations: usize,
) -> anyhow::Result<()> {
    let convs: Vec<ConversationId> = (0..conversations)
        .map(|i| ConversationId::parse(format!("c{i}")))
        .collect::<Result<_, _>>()?;
    publish_all(
        bus,
        (0..events).map(|n| {
            let conv = &convs[n % convs.len()];
            Ok((
                anchorage_schema::subjects::message(conv),
                message_event(n, conv, 200)?,
            ))
        }),
    )
    .await
}

/// Publishes events (subject, event) in order, 256 in flight.
pub async fn publish_all(
    bus: &Bus,
    events: impl Iterator<Item = anyhow::Result<(String, Envelope)>>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut pending = futures::stream::FuturesUnordered::new();
    for event in events {
        let (subject, event) = event?;
        let bus = bus.clone();
        pending.push(async move { bus.publish_event(&subject, &event, None).await });
        while pending.len() > 256 {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    Ok(())
}

/// Publishes membership event `n` of `group` from the system; returns its seq.
pub async fn membership_event(
    bus: &Bus,
    group: &str,
    n: usize,
    event: impl Into<Event>,
) -> anyhow::Result<u64> {
    let g = GroupId::parse(group)?;
    let env = Envelope::new(
        EventId::parse(format!("bench:{group}:{n}"))?,
        anchorage_schema::now_ms(),
        Actor::System {
            source: SourceId::parse("bench")?,
        },
        event,
    );
    Ok(bus
        .publish_event(&subjects::membership(&g), &env, None)
        .await?
        .seq
        .0)
}

/// Waits until the stack's `projection` has applied its stream up to `seq`.
pub async fn projected(stack: &Stack, projection: &str, seq: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while stack
        .store
        .checkpoint(projection)
        .await?
        .map_or(0, |c| c.last_seq)
        < seq
    {
        if Instant::now() > deadline {
            bail!("the {projection} projection did not catch up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A group `big` owned by `owner` with `extra` and `numbered` members `u000000`, …, once
/// projected; returns the number of the last event (the next one's id is one more).
pub async fn big_group(
    bus: &Bus,
    stack: &Stack,
    extra: &[&str],
    numbered: usize,
) -> anyhow::Result<usize> {
    let created = GroupCreated {
        group: GroupId::parse("big")?,
        owner: UserId::parse("owner")?,
        title: "big".into(),
        members: extra
            .iter()
            .map(|u| UserId::parse(*u))
            .collect::<Result<Vec<_>, _>>()?,
        direct: false,
    };
    let mut last = membership_event(bus, "big", 0, created).await?;
    let ids: Vec<usize> = (0..numbered).collect();
    let chunks = ids.chunks(1000);
    let events = chunks.len();
    for (n, chunk) in chunks.enumerate() {
        let added = MembersAdded {
            group: GroupId::parse("big")?,
            members: chunk
                .iter()
                .map(|i| UserId::parse(format!("u{i:06}")))
                .collect::<Result<Vec<_>, _>>()?,
        };
        last = membership_event(bus, "big", n + 1, added).await?;
    }
    projected(stack, "membership", last).await?;
    Ok(events)
}

/// The client side of a socket-heavy scenario, in its own process.
#[derive(Debug)]
pub struct ClientProcess {
    child: tokio::process::Child,
    out: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl ClientProcess {
    /// Starts `count` clients of `mode` against `addr` and waits until their sockets are
    /// open.
    pub async fn start(
        addr: std::net::SocketAddr,
        count: usize,
        mode: &str,
        messages: usize,
    ) -> anyhow::Result<ClientProcess> {
        Self::start_spread(&[addr], count, mode, messages).await
    }

    /// Starts `count` clients of `mode`, client `n` against `addrs[n % addrs.len()]`, and
    /// waits until their sockets are open.
    pub async fn start_spread(
        addrs: &[std::net::SocketAddr],
        count: usize,
        mode: &str,
        messages: usize,
    ) -> anyhow::Result<ClientProcess> {
        let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let exe = std::env::current_exe()?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "clients",
                &addrs.join(","),
                &count.to_string(),
                "--mode",
                mode,
                "--prefix",
                "u",
                "--messages",
                &messages.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut out = tokio::io::BufReader::new(child.stdout.take().context("client stdout")?);
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await?;
        if line.trim() != "ready" {
            bail!("clients did not connect: {line:?}");
        }
        Ok(ClientProcess { child, out })
    }

    /// The process's report line, once it is done.
    pub async fn report(mut self) -> anyhow::Result<Value> {
        let report = self.report_line().await?;
        // Done once the line is out (a fan-out process holds its sockets until stopped).
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        Ok(report)
    }

    /// The process's report line, as soon as it is out (the process may still hold its
    /// sockets).
    pub async fn report_line(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut self.out, &mut line).await?;
        serde_json::from_str(&line).with_context(|| format!("client report {line:?}"))
    }

    /// Stops the clients.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        let _ = self.child.wait().await;
        Ok(())
    }
}

/// How long after `restarted` (Unix ms) each client of a reconnect report was back in line
/// (its `resynced_unix_ms`), sorted.
pub fn resync_times(report: &Value, restarted: u64) -> Vec<Duration> {
    let mut times: Vec<Duration> = report["resynced_unix_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|t| Duration::from_millis(t.saturating_sub(restarted)))
        .collect();
    times.sort();
    times
}

/// Delivery latencies from a client process's report, sorted.
pub fn sorted_latencies(report: &Value) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = report["latencies_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    latencies.sort();
    latencies
}

/// The PostgreSQL server the scenario writes to.
#[derive(Debug)]
pub struct Postgres {
    pub url: String,
    /// Set when this run started it (and stops it).
    started: Option<tempfile::TempDir>,
}

impl Postgres {
    /// The server `ANCHORAGE_BENCH_POSTGRES_URL` names, or a throwaway one.
    pub async fn start() -> anyhow::Result<Postgres> {
        if let Ok(url) = std::env::var("ANCHORAGE_BENCH_POSTGRES_URL") {
            return Ok(Postgres { url, started: None });
        }
        progress("starting PostgreSQL (deploy/postgres.sh)");
        let dir = tempfile::tempdir()?;
        // The server runs as the postgres user, who must be able to enter the folder.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let out = tokio::process::Command::new("deploy/postgres.sh")
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .await
            .context("running deploy/postgres.sh (from the repository root)")?;
        anyhow::ensure!(
            out.status.success(),
            "deploy/postgres.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout)?.trim().to_owned();
        Ok(Postgres {
            url,
            started: Some(dir),
        })
    }

    /// Stops the server if this run started it.
    pub async fn stop(self) {
        if let Some(dir) = self.started {
            let _ = tokio::process::Command::new("deploy/postgres.sh")
                .arg("stop")
                .arg(dir.path().join("pg"))
                .output()
                .await;
        }
    }
}
