//! `anchorage bench <scenario> [--quick] [--json]`: what users feel, next to the raw JetStream
//! and WebSocket baselines measured in the same run on the same machine.
//!
//! Every scenario starts its own nats-server (temporary store) and, where it needs one, the
//! stack in-process on loopback; every loop is bounded in count and time and stops by itself.
//! Progress goes to stderr; the result is one JSON object on stdout: our figures, the baseline
//! figures, and their ratio.

use std::time::{Duration, Instant};

use anchorage_bus::{Bus, StreamSet};
use anchorage_config::Config;
use anchorage_schema::event::MessageSent;
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, DeviceId, Envelope, EventId, UserId, subjects,
};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::natsd::{NatsServer, NatsServerOptions};
use crate::stack::Stack;

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
}

impl Sizes {
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
                fanouts: 5,
            }
        }
    }
}

/// Runs one scenario and returns its JSON report.
pub async fn run(scenario: &str, sizes: Sizes) -> anyhow::Result<Value> {
    let env = BenchEnv::start().await?;
    let result = match scenario {
        "raw" => raw(&env, sizes).await,
        "send" => send(&env, sizes).await,
        "replay" => replay(&env, sizes).await,
        "memory" => memory(&env, sizes).await,
        "members" => members(&env, sizes).await,
        "fanout" => fanout(&env, sizes).await,
        "reconnect" => reconnect(&env, sizes).await,
        other => bail!(
            "unknown scenario {other:?}: raw, send, fanout, members, reconnect, replay, memory"
        ),
    };
    env.stop().await;
    let mut report = result?;
    report["scenario"] = json!(scenario);
    report["machine"] = machine();
    Ok(report)
}

fn machine() -> Value {
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

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// A nats-server with the streams applied, in a temporary directory.
struct BenchEnv {
    dir: tempfile::TempDir,
    nats: NatsServer,
    config: Config,
}

impl BenchEnv {
    async fn start() -> anyhow::Result<BenchEnv> {
        let dir = tempfile::tempdir()?;
        let binary = crate::natsd::locate(None, &std::env::current_dir()?)?;
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
        let streams = find_streams()?;
        config.streams.dir = streams;
        Ok(BenchEnv { dir, nats, config })
    }

    async fn bus(&self) -> anyhow::Result<Bus> {
        let bus = Bus::connect(&crate::bus_options(&self.config, false)).await?;
        let set = StreamSet::load(&self.config.streams.dir, 1)?;
        bus.apply(&set).await?;
        Ok(bus)
    }

    async fn stop(mut self) {
        let _ = self.nats.stop(Duration::from_secs(10)).await;
        let _ = &self.dir;
    }
}

/// The stream definitions: `streams/` in the working directory or above it.
fn find_streams() -> anyhow::Result<std::path::PathBuf> {
    let cwd = std::env::current_dir()?;
    cwd.ancestors()
        .map(|d| d.join("streams"))
        .find(|p| p.join("streams").is_dir())
        .context("no streams/ folder here or above; run from an Anchorage checkout")
}

fn message_event(n: usize, conv: &ConversationId, body_len: usize) -> anyhow::Result<Envelope> {
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
            body: json!("x".repeat(body_len)),
            client_ts: 1,
        },
    ))
}

/// The stream the raw baselines use: like MESSAGES, but nothing consumes it.
const RAW_STREAM: &str = "BENCH_RAW";

/// Raw JetStream publish rate: pipelined, with `Nats-Msg-Id`, 200-byte payloads, into a
/// stream configured like MESSAGES.
async fn raw_publish(url: &str, count: usize) -> anyhow::Result<f64> {
    let client = async_nats_connect(url).await?;
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: RAW_STREAM.into(),
        subjects: vec!["bench.raw.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let start = Instant::now();
    let mut acks = futures::stream::FuturesOrdered::new();
    for n in 0..count {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("raw-{n}").as_str());
        let ack = js
            .publish_with_headers(format!("bench.raw.c{}", n % 64), headers, payload.clone())
            .await?;
        acks.push_back(ack.into_future());
        while acks.len() > 256 {
            if let Some(r) = acks.next().await {
                r?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(rate(count, start.elapsed()))
}

async fn async_nats_connect(url: &str) -> anyhow::Result<async_nats::Client> {
    Ok(async_nats::connect(url).await?)
}

/// Raw consume rate: an ordered consumer reading `count` stored messages of `stream`.
async fn raw_consume(bus: &Bus, stream: &str, count: usize) -> anyhow::Result<f64> {
    let mut reader = bus.read_stream(stream, anchorage_schema::Seq(1)).await?;
    let start = Instant::now();
    for _ in 0..count {
        reader.next().await?;
    }
    Ok(rate(count, start.elapsed()))
}

/// Raw WebSocket push: a bare axum server pushing `frames` 200-byte frames to each of
/// `sockets` clients (feed + one flush per batch, as our edge writes).
async fn raw_push(sockets: usize, frames: usize) -> anyhow::Result<f64> {
    use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
    let frame: axum::extract::ws::Utf8Bytes = "y".repeat(200).into();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move |ws: WebSocketUpgrade| {
            let frame = frame.clone();
            async move {
                ws.on_upgrade(move |socket| async move {
                    let (mut sink, _) = socket.split();
                    for chunk in 0..frames.div_ceil(64) {
                        for _ in 0..64.min(frames - chunk * 64) {
                            if sink.feed(AxMessage::Text(frame.clone())).await.is_err() {
                                return;
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                    }
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let start = Instant::now();
    let clients = (0..sockets).map(|_| async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
        let mut got = 0;
        while got < frames {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => got += 1,
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        anyhow::Ok(got)
    });
    let counts = futures::future::try_join_all(clients).await?;
    let elapsed = start.elapsed();
    server.abort();
    Ok(rate(counts.iter().sum(), elapsed))
}

async fn raw(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress("raw JetStream publish");
    let publish = raw_publish(&env.config.nats.url, s.events).await?;
    progress("raw JetStream consume");
    let consume = raw_consume(&bus, RAW_STREAM, s.events).await?;
    progress("raw WebSocket push");
    let push = raw_push(s.sockets, 500).await?;
    bus.close().await;
    Ok(json!({
        "baseline": {
            "jetstream_publish_msgs_per_sec": publish.round(),
            "jetstream_consume_msgs_per_sec": consume.round(),
            "websocket_push_frames_per_sec": push.round(),
        },
        "sizes": {"events": s.events, "sockets": s.sockets, "frames_per_socket": 500},
    }))
}

/// Signs a client in on the edge; returns the socket.
async fn signed_in(
    addr: std::net::SocketAddr,
    config: &Config,
    user: &str,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), None, true).await?;
    let token = anchorage_edge::auth::mint_hs256(
        &config.auth.hmac_secret,
        UserId::parse(user)?,
        DeviceId::parse("bench")?,
        3600,
    )?;
    ws.send(Message::Text(
        json!({"type": "hello", "id": 0, "protocol": 1, "token": token})
            .to_string()
            .into(),
    ))
    .await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => return Ok(ws),
            Some(Ok(_)) => {}
            other => bail!("no welcome: {other:?}"),
        }
    }
}

/// Waits for the answer with `id`, skipping pushes.
async fn answer(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    id: u64,
) -> anyhow::Result<Value> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["id"] == json!(id) {
                    return Ok(v);
                }
            }
            Some(Ok(_)) => {}
            other => bail!("connection ended: {other:?}"),
        }
    }
}

/// Sends one sender keeps in flight.
const WINDOW: usize = 32;

async fn send(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress("raw JetStream publish (baseline)");
    let baseline = raw_publish(&env.config.nats.url, s.events).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stack = Stack::start(&env.config, listener).await?;
    let addr = stack.edge_addr;
    progress("sends through the edge");
    let per_sender = s.sends / s.senders;
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(s.senders));
    let senders = (0..s.senders).map(|i| {
        let config = env.config.clone();
        let ready = ready.clone();
        async move {
            let user = format!("sender{i}");
            let mut ws = signed_in(addr, &config, &user).await?;
            let group = format!("bench{i}");
            ws.send(Message::Text(
                json!({"type": "create_group", "id": 1, "group": group, "title": "bench"})
                    .to_string()
                    .into(),
            ))
            .await?;
            answer(&mut ws, 1).await?;
            // Everyone connected and ready: the clock starts.
            ready.wait().await;
            let started = Instant::now();
            // Up to WINDOW sends in flight; acks come back in order.
            let (mut sink, mut stream) = ws.split();
            let body = "x".repeat(200);
            let mut sent_at = std::collections::VecDeque::with_capacity(WINDOW);
            let mut latencies = Vec::with_capacity(per_sender);
            let mut next = 0;
            while latencies.len() < per_sender {
                while next < per_sender && sent_at.len() < WINDOW {
                    let id = 2 + next as u64;
                    sink.feed(Message::Text(
                        json!({"type": "send", "id": id, "conv": group,
                               "client_msg_id": format!("m{next}"), "body": body,
                               // Written now, as a client's outbox stamps it.
                               "client_ts": anchorage_schema::now_ms()})
                        .to_string()
                        .into(),
                    ))
                    .await?;
                    sent_at.push_back(Instant::now());
                    next += 1;
                }
                sink.flush().await?;
                let a: Value = match stream.next().await {
                    Some(Ok(Message::Text(t))) => serde_json::from_str(&t)?,
                    Some(Ok(_)) => continue,
                    other => bail!("connection ended: {other:?}"),
                };
                if a["id"].is_null() {
                    continue;
                }
                if a["type"] != "ack" {
                    bail!("not acked: {a}");
                }
                let t0 = sent_at.pop_front().context("an ack nobody waits for")?;
                latencies.push(t0.elapsed());
            }
            anyhow::Ok((started, Instant::now(), latencies))
        }
    });
    let all = futures::future::try_join_all(senders).await?;
    let first = all.iter().map(|(s, _, _)| *s).min().context("no senders")?;
    let last = all.iter().map(|(_, e, _)| *e).max().context("no senders")?;
    let elapsed = last.duration_since(first);
    let mut latencies: Vec<Duration> = all.into_iter().flat_map(|(_, _, l)| l).collect();
    latencies.sort();
    let ours = rate(latencies.len(), elapsed);
    stack.stop().await?;
    bus.close().await;
    Ok(json!({
        "ours": {
            "accepted_msgs_per_sec": ours.round(),
            "ack_latency_ms_p50": percentile(&latencies, 0.50),
            "ack_latency_ms_p99": percentile(&latencies, 0.99),
        },
        "baseline": {"jetstream_publish_msgs_per_sec": baseline.round()},
        "ratio": ours / baseline,
        "target": ">= 0.5 x raw publish",
        "sizes": {"sends": latencies.len(), "senders": s.senders, "in_flight_per_sender": WINDOW,
                  "body_bytes": 200},
    }))
}

async fn replay(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress("publishing events to replay");
    let convs: Vec<ConversationId> = (0..100)
        .map(|i| ConversationId::parse(format!("c{i}")))
        .collect::<Result<_, _>>()?;
    let mut pending = futures::stream::FuturesUnordered::new();
    for n in 0..s.events {
        let conv = &convs[n % convs.len()];
        let event = message_event(n, conv, 200)?;
        let subject = subjects::message(conv);
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
    progress("raw consume (baseline)");
    let baseline = raw_consume(&bus, "MESSAGES", s.events).await?;
    progress("replay into a fresh database");
    let store = anchorage_store::Store::connect(&anchorage_store::StoreOptions {
        url: format!("sqlite://{}/replay.db", env.dir.path().display()),
        max_connections: 4,
        // As `anchorage replay` opens its target.
        sqlite_synchronous: "NORMAL",
    })
    .await?;
    store.migrate().await?;
    let options = anchorage_projector::replay::ReplayOptions {
        batch_size: 1000,
        upto: Default::default(),
        membership: Default::default(),
    };
    let start = Instant::now();
    let summary = anchorage_projector::replay::replay(&bus, &store, &options, |_| {}).await?;
    let elapsed = start.elapsed();
    let replayed = (summary.applied + summary.rejected) as usize;
    let ours = rate(replayed, elapsed);
    store.close().await;
    bus.close().await;
    Ok(json!({
        "ours": {"replay_events_per_sec": ours.round(), "events": replayed, "database": "sqlite"},
        "baseline": {"jetstream_consume_msgs_per_sec": baseline.round()},
        "ratio": ours / baseline,
        "target": ">= 0.3 x raw consume",
    }))
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
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

async fn memory(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stack = Stack::start(&env.config, listener).await?;
    let addr = stack.edge_addr;
    // Clients run in a separate process so their memory is not counted.
    let before = rss_kib();
    progress("opening idle connections from a client process");
    let (mut child, _out) = client_process(addr, s.sockets, "idle", 0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    child.start_kill()?;
    let _ = child.wait().await;
    stack.stop().await?;
    let per = after.saturating_sub(before) as f64 / s.sockets.max(1) as f64;
    Ok(json!({
        "ours": {"kib_per_idle_connection": per, "connections": s.sockets,
                 "rss_before_kib": before, "rss_after_kib": after},
        "target": "<= 16 KiB per idle connection",
    }))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one request; returns the answer, its size in bytes and the round trip.
async fn timed(ws: &mut Ws, id: u64, mut frame: Value) -> anyhow::Result<(Value, usize, f64)> {
    frame["id"] = json!(id);
    let t0 = Instant::now();
    ws.send(Message::Text(frame.to_string().into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t)?;
                if v["id"] == json!(id) {
                    return Ok((v, t.len(), t0.elapsed().as_secs_f64() * 1000.0));
                }
            }
            Some(Ok(_)) => {}
            other => bail!("connection ended: {other:?}"),
        }
    }
}

async fn membership_event(
    bus: &Bus,
    group: &str,
    n: usize,
    event: impl Into<anchorage_schema::Event>,
) -> anyhow::Result<u64> {
    let g = anchorage_schema::GroupId::parse(group)?;
    let env = Envelope::new(
        EventId::parse(format!("bench:{group}:{n}"))?,
        anchorage_schema::now_ms(),
        Actor::System {
            source: anchorage_schema::SourceId::parse("bench")?,
        },
        event,
    );
    Ok(bus
        .publish_event(&subjects::membership(&g), &env, None)
        .await?
        .seq
        .0)
}

async fn membership_projected(stack: &Stack, seq: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while stack
        .store
        .checkpoint("membership")
        .await?
        .map_or(0, |c| c.last_seq)
        < seq
    {
        if Instant::now() > deadline {
            bail!("the membership projection did not catch up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A client-side copy of one member list, as the bench keeps it.
struct Copy {
    epoch: String,
    version: u64,
    members: std::collections::BTreeSet<String>,
}

impl Copy {
    fn digest(&self) -> String {
        anchorage_digest::SetDigest::of(self.members.iter().map(String::as_str)).to_wire()
    }

    fn sync_frame(&self, group: &str) -> Value {
        json!({"type": "members_sync", "group": group, "epoch": self.epoch,
               "version": self.version, "digest": self.digest()})
    }

    fn apply_page(&mut self, page: &Value) {
        for m in page["members"].as_array().into_iter().flatten() {
            self.members.extend(m.as_str().map(str::to_owned));
        }
        for m in page["details"].as_array().into_iter().flatten() {
            self.members.extend(m["user"].as_str().map(str::to_owned));
        }
    }

    fn apply_diff(&mut self, diff: &Value) {
        for m in diff["upserts"].as_array().into_iter().flatten() {
            self.members.extend(m["user"].as_str().map(str::to_owned));
        }
        for m in diff["removed"].as_array().into_iter().flatten() {
            if let Some(u) = m.as_str() {
                self.members.remove(u);
            }
        }
        self.version = diff["version"].as_u64().unwrap_or(self.version);
    }
}

/// A full pull: the first page and every page after it. Returns the copy, bytes and time.
async fn full_pull(ws: &mut Ws, id: &mut u64, group: &str) -> anyhow::Result<(Copy, usize, f64)> {
    *id += 1;
    let (mut page, mut bytes, mut ms) =
        timed(ws, *id, json!({"type": "members_sync", "group": group})).await?;
    if page["type"] != "members_page" {
        bail!("expected a snapshot page: {page}");
    }
    let mut copy = Copy {
        epoch: page["epoch"].as_str().unwrap_or_default().to_owned(),
        version: page["anchor"].as_u64().unwrap_or(0),
        members: Default::default(),
    };
    loop {
        copy.apply_page(&page);
        let Some(cursor) = page["cursor"].as_str().map(str::to_owned) else {
            return Ok((copy, bytes, ms));
        };
        *id += 1;
        let (next, b, t) = timed(
            ws,
            *id,
            json!({"type": "members_fetch", "group": group, "epoch": copy.epoch,
                   "anchor": copy.version, "cursor": cursor}),
        )
        .await?;
        page = next;
        bytes += b;
        ms += t;
    }
}

/// Diffs until the copy is current. Returns bytes, time and the members changed.
async fn diff_to_current(
    ws: &mut Ws,
    id: &mut u64,
    group: &str,
    copy: &mut Copy,
) -> anyhow::Result<(usize, f64, usize)> {
    let (mut bytes, mut ms, mut changed) = (0, 0.0, 0);
    loop {
        *id += 1;
        let (a, b, t) = timed(ws, *id, copy.sync_frame(group)).await?;
        bytes += b;
        ms += t;
        match a["type"].as_str() {
            Some("members_diff") => {
                changed += a["upserts"].as_array().map_or(0, Vec::len)
                    + a["removed"].as_array().map_or(0, Vec::len);
                copy.apply_diff(&a);
                if a["more"] != true {
                    return Ok((bytes, ms, changed));
                }
            }
            Some("members_unchanged") => return Ok((bytes, ms, changed)),
            _ => bail!("expected a diff: {a}"),
        }
    }
}

async fn members(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stack = Stack::start(&env.config, listener).await?;
    let big = "big";
    progress(&format!("a group of {} members", s.members));
    let numbered = s.members.saturating_sub(2);
    let mut n = big_group(&bus, &stack, &["reader"], numbered).await?;
    let mut ws = signed_in(stack.edge_addr, &env.config, "reader").await?;
    let mut id = 0u64;

    progress("full realignment");
    let (mut copy, full_bytes, full_ms) = full_pull(&mut ws, &mut id, big).await?;
    let count = copy.members.len();

    progress("unchanged check");
    id += 1;
    let (a, unchanged_bytes, unchanged_ms) = timed(&mut ws, id, copy.sync_frame(big)).await?;
    if a["type"] != "members_unchanged" {
        bail!("expected unchanged: {a}");
    }

    progress("1 change");
    n += 1;
    let seq = membership_event(
        &bus,
        big,
        n,
        anchorage_schema::event::MembersAdded {
            group: anchorage_schema::GroupId::parse(big)?,
            members: vec![UserId::parse("newcomer")?],
        },
    )
    .await?;
    membership_projected(&stack, seq).await?;
    let (one_bytes, one_ms, _) = diff_to_current(&mut ws, &mut id, big, &mut copy).await?;

    progress("1% churn");
    let churn = (s.members / 100).max(2);
    let leaving = (0..churn / 2)
        .map(|i| UserId::parse(format!("u{:06}", i * 37 % numbered.max(1))))
        .collect::<Result<Vec<_>, _>>()?;
    let joining = (0..churn / 2)
        .map(|i| UserId::parse(format!("churn{i:06}")))
        .collect::<Result<Vec<_>, _>>()?;
    n += 1;
    membership_event(
        &bus,
        big,
        n,
        anchorage_schema::event::MembersRemoved {
            group: anchorage_schema::GroupId::parse(big)?,
            members: leaving,
            reason: anchorage_schema::event::RemovalReason::Removed,
        },
    )
    .await?;
    n += 1;
    let seq = membership_event(
        &bus,
        big,
        n,
        anchorage_schema::event::MembersAdded {
            group: anchorage_schema::GroupId::parse(big)?,
            members: joining,
        },
    )
    .await?;
    membership_projected(&stack, seq).await?;
    let (churn_bytes, churn_ms, churn_changed) =
        diff_to_current(&mut ws, &mut id, big, &mut copy).await?;
    let server = stack.store.group_row(big).await?.context("the group")?;
    let digest = anchorage_digest::SetDigest {
        sum: server.digest_sum,
        count: server.member_count,
    };
    if copy.digest() != digest.to_wire() {
        bail!("the bench's copy does not match the server after the diffs");
    }

    progress(&format!("{} groups in budget-bounded batches", s.groups));
    let mut last = 0;
    for g in 0..s.groups {
        last = membership_event(
            &bus,
            &format!("team{g:03}"),
            0,
            anchorage_schema::event::GroupCreated {
                group: anchorage_schema::GroupId::parse(format!("team{g:03}"))?,
                owner: UserId::parse("owner")?,
                title: "team".into(),
                members: std::iter::once("reader".to_owned())
                    .chain((0..18).map(|m| format!("t{g}m{m}")))
                    .map(UserId::parse)
                    .collect::<Result<Vec<_>, _>>()?,
                direct: false,
            },
        )
        .await?;
    }
    membership_projected(&stack, last).await?;
    let mut copies = Vec::new();
    let mut naive_batch_bytes = 0;
    for g in 0..s.groups {
        let (c, b, _) = full_pull(&mut ws, &mut id, &format!("team{g:03}")).await?;
        naive_batch_bytes += b;
        copies.push(c);
    }
    for g in (0..s.groups).step_by(10) {
        last = membership_event(
            &bus,
            &format!("team{g:03}"),
            1,
            anchorage_schema::event::MembersAdded {
                group: anchorage_schema::GroupId::parse(format!("team{g:03}"))?,
                members: vec![UserId::parse(format!("late{g}"))?],
            },
        )
        .await?;
    }
    membership_projected(&stack, last).await?;
    let mut pending: Vec<Value> = copies
        .iter()
        .enumerate()
        .map(|(g, c)| {
            json!({"group": format!("team{g:03}"), "epoch": c.epoch, "version": c.version,
                   "digest": c.digest()})
        })
        .collect();
    // About 32 bytes per group: the batch needs several answers, each within the budget.
    let budget = (s.groups * 32).max(1024);
    let (mut batch_bytes, mut batch_ms, mut rounds, mut diffs) = (0, 0.0, 0, 0);
    while !pending.is_empty() {
        id += 1;
        let (a, b, t) = timed(
            &mut ws,
            id,
            json!({"type": "members_sync_batch", "groups": pending, "budget_bytes": budget}),
        )
        .await?;
        batch_bytes += b;
        batch_ms += t;
        rounds += 1;
        diffs += a["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["result"] == "diff")
            .count();
        match a["cursor"].as_u64() {
            Some(c) => {
                pending.drain(..c as usize);
            }
            None => break,
        }
    }
    stack.stop().await?;
    bus.close().await;
    let per = |bytes: usize, n: usize| bytes as f64 / n.max(1) as f64;
    Ok(json!({
        "ours": {
            "unchanged_bytes": unchanged_bytes,
            "unchanged_ms": unchanged_ms,
            "one_change_bytes": one_bytes,
            "one_change_ms": one_ms,
            "churn_changed_members": churn_changed,
            "churn_bytes": churn_bytes,
            "churn_bytes_per_changed_member": per(churn_bytes, churn_changed),
            "churn_ms": churn_ms,
            "full_bytes": full_bytes,
            "full_bytes_per_member": per(full_bytes, count),
            "full_server_ms": full_ms,
            "batch_groups": s.groups,
            "batch_changed_groups": diffs,
            "batch_bytes": batch_bytes,
            "batch_rounds": rounds,
            "batch_ms": batch_ms,
        },
        "baseline": {
            "naive_full_pull_bytes": full_bytes,
            "naive_batch_full_pull_bytes": naive_batch_bytes,
        },
        "ratio": {
            "unchanged_vs_full_pull": per(unchanged_bytes, full_bytes),
            "one_change_vs_full_pull": per(one_bytes, full_bytes),
            "churn_vs_full_pull": per(churn_bytes, full_bytes),
            "batch_vs_full_pulls": per(batch_bytes, naive_batch_bytes),
        },
        "target": "unchanged <= 64 B; diff <= 64 B per changed member; full <= 24 B per member and < 1 s server time",
        "sizes": {"members": count, "groups": s.groups, "batch_budget_bytes": budget},
    }))
}

/// Starts the client process of a socket-heavy scenario and waits until its sockets are open.
async fn client_process(
    addr: std::net::SocketAddr,
    count: usize,
    mode: &str,
    messages: usize,
) -> anyhow::Result<(
    tokio::process::Child,
    tokio::io::BufReader<tokio::process::ChildStdout>,
)> {
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "bench-clients",
            &addr.to_string(),
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
    Ok((child, out))
}

async fn report_line(
    out: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
) -> anyhow::Result<Value> {
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(out, &mut line).await?;
    serde_json::from_str(&line).with_context(|| format!("client report {line:?}"))
}

/// A group `big` owned by `owner` with `extra` and `numbered` members `u000000`, …, once
/// projected; returns the number of the last event (the next one's id is one more).
async fn big_group(
    bus: &Bus,
    stack: &Stack,
    extra: &[&str],
    numbered: usize,
) -> anyhow::Result<usize> {
    let mut last = membership_event(
        bus,
        "big",
        0,
        anchorage_schema::event::GroupCreated {
            group: anchorage_schema::GroupId::parse("big")?,
            owner: UserId::parse("owner")?,
            title: "big".into(),
            members: extra
                .iter()
                .map(|u| UserId::parse(*u))
                .collect::<Result<Vec<_>, _>>()?,
            direct: false,
        },
    )
    .await?;
    let ids: Vec<usize> = (0..numbered).collect();
    let chunks = ids.chunks(1000);
    let events = chunks.len();
    for (n, chunk) in chunks.enumerate() {
        last = membership_event(
            bus,
            "big",
            n + 1,
            anchorage_schema::event::MembersAdded {
                group: anchorage_schema::GroupId::parse("big")?,
                members: chunk
                    .iter()
                    .map(|i| UserId::parse(format!("u{i:06}")))
                    .collect::<Result<Vec<_>, _>>()?,
            },
        )
        .await?;
    }
    membership_projected(stack, last).await?;
    Ok(events)
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Sends a message to `big` carrying its send time; returns its seq.
async fn send_stamped(ws: &mut Ws, id: u64) -> anyhow::Result<u64> {
    let (a, _, _) = timed(
        ws,
        id,
        json!({"type": "send", "conv": "big", "client_msg_id": format!("f{id}"),
               "body": {"t": unix_nanos() as u64}, "client_ts": anchorage_schema::now_ms()}),
    )
    .await?;
    a["seq"].as_u64().with_context(|| format!("not acked: {a}"))
}

/// Delivery latencies from a client process's report, sorted.
fn sorted_latencies(report: &Value) -> Vec<Duration> {
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

/// The same fan-out with nothing of ours in the way: a bare axum WebSocket server that answers
/// `hello` and then writes each frame to every socket (one write and flush per socket, as a
/// live message goes out), to the same client process. Returns the delivery latencies.
async fn raw_fanout(online: usize, messages: usize) -> anyhow::Result<Vec<Duration>> {
    use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
    let (frames, _) = tokio::sync::broadcast::channel::<axum::extract::ws::Utf8Bytes>(16);
    let subscribe = frames.clone();
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(move |ws: WebSocketUpgrade| {
            let mut rx = subscribe.subscribe();
            async move {
                ws.read_buffer_size(4096)
                    .on_upgrade(move |socket| async move {
                        let (mut sink, mut stream) = socket.split();
                        let _hello = stream.next().await;
                        let welcome =
                            json!({"type": "welcome", "id": 0, "changes": []}).to_string();
                        if sink.send(AxMessage::Text(welcome.into())).await.is_err() {
                            return;
                        }
                        while let Ok(frame) = rx.recv().await {
                            if sink.send(AxMessage::Text(frame)).await.is_err() {
                                return;
                            }
                        }
                    })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let (mut child, mut out) = client_process(addr, online, "fanout", messages).await?;
    for _ in 0..messages {
        let frame = json!({"type": "message", "prev": 0,
                           "message": {"conv": "big", "seq": 1, "body": {"t": unix_nanos() as u64}}});
        frames.send(frame.to_string().into())?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = report_line(&mut out).await?;
    let _ = child.wait().await;
    server.abort();
    Ok(sorted_latencies(&report))
}

async fn fanout(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress(&format!(
        "raw WebSocket fan-out to {} sockets (baseline)",
        s.online
    ));
    let raw = raw_fanout(s.online, s.fanouts).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stack = Stack::start(&env.config, listener).await?;
    progress(&format!("a group of {} members", s.members));
    big_group(&bus, &stack, &[], s.members).await?;
    progress(&format!("{} members online", s.online));
    let (mut child, mut out) =
        client_process(stack.edge_addr, s.online, "fanout", s.fanouts).await?;
    let mut owner = signed_in(stack.edge_addr, &env.config, "owner").await?;
    for n in 0..s.fanouts {
        progress(&format!("message {} of {}", n + 1, s.fanouts));
        send_stamped(&mut owner, n as u64 + 1).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = report_line(&mut out).await?;
    let _ = child.wait().await;
    stack.stop().await?;
    bus.close().await;
    let latencies = sorted_latencies(&report);
    let missing = report["missing"].as_u64().unwrap_or(0);
    let max = latencies.last().copied().unwrap_or_default();
    let raw_max = raw.last().copied().unwrap_or_default();
    // Every online member of one message, over the time the slowest one took.
    let deliveries_per_sec = rate(s.online, max);
    let raw_per_sec = rate(s.online, raw_max);
    Ok(json!({
        "ours": {
            "delivery_ms_p50": percentile(&latencies, 0.50),
            "delivery_ms_p99": percentile(&latencies, 0.99),
            "delivery_ms_max": max.as_secs_f64() * 1000.0,
            "deliveries": latencies.len(),
            "missing": missing,
            "deliveries_per_sec": deliveries_per_sec.round(),
        },
        "baseline": {
            "raw_websocket_fanout_ms_p50": percentile(&raw, 0.50),
            "raw_websocket_fanout_ms_p99": percentile(&raw, 0.99),
            "raw_websocket_fanout_ms_max": raw_max.as_secs_f64() * 1000.0,
            "websocket_push_frames_per_sec": raw_per_sec.round(),
        },
        "ratio": deliveries_per_sec / raw_per_sec,
        "target": "p99 < 100 ms to 10,000 online members of a 100,000-member group",
        "sizes": {"members": s.members, "online": s.online, "messages": s.fanouts},
    }))
}

fn unix_ms() -> u64 {
    (unix_nanos() / 1_000_000) as u64
}

/// Peak resident memory of this process while `fut` runs, sampled every 50 ms.
async fn peak_rss<T>(fut: impl std::future::Future<Output = T>) -> (T, u64) {
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

async fn reconnect(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stack = Stack::start(&env.config, listener).await?;
    progress(&format!("a group of {} members", s.online));
    big_group(&bus, &stack, &[], s.online).await?;
    // The edge the clients use, restarted on the same port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let start_edge = |listener| {
        let config = env.config.clone();
        let (bus, store) = (stack.bus.clone(), stack.store.clone());
        async move {
            let state =
                crate::edge_state(&config, bus, store, crate::load_streams(&config)?).await?;
            let stop = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(anchorage_edge::run(listener, state, stop.clone()));
            anyhow::Ok((stop, task))
        }
    };
    let (stop, task) = start_edge(listener).await?;
    progress(&format!("{} clients connected", s.online));
    let (mut child, mut out) = client_process(addr, s.online, "reconnect", 0).await?;
    let mut owner = signed_in(stack.edge_addr, &env.config, "owner").await?;
    for n in 0..3 {
        send_stamped(&mut owner, n + 1).await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    progress("edge restart");
    stop.cancel();
    task.await??;
    let mut last = 0;
    for n in 3..6 {
        last = send_stamped(&mut owner, n + 1).await?;
    }
    while stack
        .store
        .checkpoint("messages")
        .await?
        .map_or(0, |c| c.last_seq)
        < last
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = rss_kib();
    let restarted = unix_ms();
    let (stop, task) = start_edge(tokio::net::TcpListener::bind(addr).await?).await?;
    let (report, peak) = peak_rss(report_line(&mut out)).await;
    let report = report?;
    let _ = child.wait().await;
    stop.cancel();
    task.await??;
    stack.stop().await?;
    bus.close().await;
    let mut times: Vec<Duration> = report["resynced_unix_ms"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|t| Duration::from_millis(t.saturating_sub(restarted)))
        .collect();
    times.sort();
    // A client that did not report being back in line failed, whatever the reason.
    let failures = s.online.saturating_sub(times.len());
    Ok(json!({
        "ours": {
            "clients": s.online,
            "resynced": times.len(),
            "failures": failures,
            "all_resynced_s": times.last().map_or(0.0, Duration::as_secs_f64),
            "resynced_ms_p50": percentile(&times, 0.50),
            "resynced_ms_p99": percentile(&times, 0.99),
            "connection_attempts": report["attempts"],
            "failure_reasons": report["failures"],
            "rss_before_mib": before as f64 / 1024.0,
            "rss_peak_mib": peak as f64 / 1024.0,
        },
        "target": "10,000 reconnects resynced in < 10 s with zero failures",
        "sizes": {"clients": s.online, "missed_messages": 3},
    }))
}
