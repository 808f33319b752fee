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
}

impl Sizes {
    pub fn new(quick: bool) -> Self {
        if quick {
            Sizes {
                events: 2_000,
                sockets: 20,
                sends: 400,
                senders: 4,
            }
        } else {
            Sizes {
                events: 100_000,
                sockets: 1_000,
                sends: 20_000,
                senders: 16,
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
        other => bail!("unknown scenario {other:?}: raw, send, replay, memory"),
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
            let mut latencies = Vec::with_capacity(per_sender);
            let body = "x".repeat(200);
            for n in 0..per_sender {
                let id = 2 + n as u64;
                let t0 = Instant::now();
                ws.send(Message::Text(
                    json!({"type": "send", "id": id, "conv": group, "client_msg_id": format!("m{n}"),
                           "body": body, "client_ts": 1})
                    .to_string()
                    .into(),
                ))
                .await?;
                let a = answer(&mut ws, id).await?;
                if a["type"] != "ack" {
                    bail!("not acked: {a}");
                }
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
        "sizes": {"sends": latencies.len(), "senders": s.senders, "body_bytes": 200},
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
    let exe = std::env::current_exe()?;
    let before = rss_kib();
    progress("opening idle connections from a client process");
    let mut child = tokio::process::Command::new(exe)
        .args(["bench-clients", &addr.to_string(), &s.sockets.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut out = tokio::io::BufReader::new(child.stdout.take().context("client stdout")?);
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line).await?;
    if line.trim() != "ready" {
        bail!("clients did not connect: {line:?}");
    }
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

/// The client side of `memory`: opens `count` signed-in sockets, says `ready`, then idles
/// until killed (or for at most ten minutes).
pub async fn idle_clients(addr: &str, count: usize) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    let config = Config::default();
    let mut sockets = Vec::with_capacity(count);
    for i in 0..count {
        sockets.push(signed_in(addr, &config, &format!("idle{i}")).await?);
    }
    println!("ready");
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(sockets);
    Ok(())
}
