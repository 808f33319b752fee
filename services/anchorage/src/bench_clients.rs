//! The client side of the socket-heavy benchmarks, run as a separate process
//! (`anchorage bench-clients`) so its sockets and memory are not counted against the server
//! and each process stays within its own file-descriptor limit.
//!
//! It opens `count` signed-in sockets (users `<prefix><n>` with six digits), says `ready` on
//! stdout, then:
//!
//! - `idle`: holds them until killed;
//! - `fanout`: waits until every socket received `messages` live messages whose body carries
//!   the send time (`{"t": unix nanoseconds}`), then prints one JSON line with every delivery
//!   latency;
//! - `reconnect`: follows the live messages of conversation `big`; when the edge closes the
//!   sockets, each reconnects with full-jitter backoff (honouring `Retry-After`), presents its
//!   anchor, syncs what the welcome reports changed, and records when it was back in line.
//!   Prints one JSON line once all are resynced (or after two minutes).

use std::sync::Arc;
use std::time::Duration;

use anchorage_config::Config;
use anchorage_schema::{DeviceId, UserId};
use anyhow::bail;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connection attempts in flight while opening the sockets.
const OPENING: usize = 64;
/// How long the fanout and reconnect modes wait before reporting what they have.
const LIMIT: Duration = Duration::from_secs(120);

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn user(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:06}")
}

/// Why one connection attempt failed.
enum Refused {
    /// The server is shedding load: try again after at least this long.
    Busy(Option<Duration>),
    Other(anyhow::Error),
}

/// Connects and signs in; returns the socket and the welcome.
async fn sign_in(
    addr: std::net::SocketAddr,
    user: &str,
    anchors: Value,
) -> Result<(Ws, Value), Refused> {
    // A small read buffer, as a client holding thousands of sockets would use: the default
    // (128 KiB, zeroed as it grows) would make the clients, not the server, the bottleneck.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let connected =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), Some(config), true)
            .await;
    let mut ws = match connected {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let hint = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(Refused::Busy(hint));
        }
        Err(e) => return Err(Refused::Other(e.into())),
    };
    let config = Config::default();
    let token = (|| -> anyhow::Result<String> {
        Ok(anchorage_edge::auth::mint_hs256(
            &config.auth.hmac_secret,
            UserId::parse(user)?,
            DeviceId::parse("bench")?,
            3600,
        )?)
    })()
    .map_err(Refused::Other)?;
    let hello =
        json!({"type": "hello", "id": 0, "protocol": 1, "token": token, "anchors": anchors});
    ws.send(Message::Text(hello.to_string().into()))
        .await
        .map_err(|e| Refused::Other(e.into()))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).map_err(|e| Refused::Other(e.into()))?;
                if v["type"] == "welcome" {
                    return Ok((ws, v));
                }
            }
            Some(Ok(_)) => {}
            other => return Err(Refused::Other(anyhow::anyhow!("no welcome: {other:?}"))),
        }
    }
}

/// Opens `count` sockets, a few at a time.
async fn open_all(
    addr: std::net::SocketAddr,
    prefix: &str,
    count: usize,
) -> anyhow::Result<Vec<Ws>> {
    let opened = futures::stream::iter(0..count)
        .map(|n| {
            let name = user(prefix, n);
            async move {
                for attempt in 1..=20u32 {
                    match sign_in(addr, &name, json!([])).await {
                        Ok((ws, _)) => return Ok(ws),
                        Err(Refused::Busy(hint)) => {
                            let wait = anchorage_sdk::backoff_delay(
                                attempt,
                                hint,
                                anchorage_sdk::backoff_random(),
                            );
                            tokio::time::sleep(wait).await;
                        }
                        Err(Refused::Other(e)) => return Err(e),
                    }
                }
                bail!("{name} could not connect")
            }
        })
        .buffered(OPENING)
        .collect::<Vec<_>>()
        .await;
    opened.into_iter().collect()
}

/// Runs the client side of a benchmark (see the module docs).
pub async fn run(
    addr: &str,
    count: usize,
    mode: &str,
    prefix: &str,
    messages: usize,
) -> anyhow::Result<()> {
    let addr: std::net::SocketAddr = addr.parse()?;
    let sockets = open_all(addr, prefix, count).await?;
    println!("ready");
    match mode {
        "idle" => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            drop(sockets);
        }
        "fanout" => fanout(sockets, messages).await?,
        "reconnect" => reconnect(addr, prefix, sockets).await?,
        other => bail!("unknown mode {other:?}: idle, fanout, reconnect"),
    }
    Ok(())
}

async fn fanout(sockets: Vec<Ws>, messages: usize) -> anyhow::Result<()> {
    let tasks = sockets.into_iter().map(|mut ws| {
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            let deadline = tokio::time::Instant::now() + LIMIT;
            while latencies.len() < messages {
                let next = tokio::time::timeout_at(deadline, ws.next()).await;
                let Ok(Some(Ok(Message::Text(t)))) = next else {
                    if matches!(next, Ok(Some(Ok(_)))) {
                        continue;
                    }
                    break;
                };
                let now = unix_nanos();
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                if v["type"] != "message" {
                    continue;
                }
                if let Some(sent) = v["message"]["body"]["t"].as_u64() {
                    latencies.push(now.saturating_sub(u128::from(sent)) as f64 / 1e6);
                }
            }
            latencies
        })
    });
    let mut all = Vec::new();
    let mut missing = 0;
    for t in futures::future::join_all(tasks).await {
        let got = t.unwrap_or_default();
        missing += messages.saturating_sub(got.len());
        all.extend(got);
    }
    println!("{}", json!({"latencies_ms": all, "missing": missing}));
    Ok(())
}

/// One socket's life across an edge restart: returns when it was back in line (Unix ms), and
/// how many connection attempts that took.
async fn follow(
    addr: std::net::SocketAddr,
    name: String,
    mut ws: Ws,
) -> anyhow::Result<(u128, u32)> {
    let mut anchor = 0u64;
    // Live messages until the edge goes away.
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && let Ok(v) = serde_json::from_str::<Value>(&t)
            && v["type"] == "message"
        {
            anchor = anchor.max(v["message"]["seq"].as_u64().unwrap_or(0));
        }
    }
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let anchors = json!([{"conv": "big", "seq": anchor}]);
        let (mut ws, welcome) = match sign_in(addr, &name, anchors).await {
            Ok(ok) => ok,
            Err(Refused::Busy(hint)) => {
                let wait =
                    anchorage_sdk::backoff_delay(attempts, hint, anchorage_sdk::backoff_random());
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(Refused::Other(_)) => {
                let wait =
                    anchorage_sdk::backoff_delay(attempts, None, anchorage_sdk::backoff_random());
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        match resync(&mut ws, &welcome, &mut anchor).await? {
            Resync::Done => {}
            // The edge went away in the middle (it was shutting down): like any client, come
            // back and go on from what arrived.
            Resync::WentAway => continue,
        }
        let done = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        // Stay connected until the report is out.
        tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
        return Ok((done, attempts));
    }
}

/// How a resync after a welcome ended.
enum Resync {
    Done,
    /// The edge closed the socket with "going away".
    WentAway,
}

/// Fetches what changed while away, as the welcome lists it; `anchor` follows `big`.
async fn resync(ws: &mut Ws, welcome: &Value, anchor: &mut u64) -> anyhow::Result<Resync> {
    let changed: Vec<String> = welcome["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["conv"].as_str().map(str::to_owned))
        .collect();
    let mut id = 1u64;
    for conv in changed {
        let mut after = if conv == "big" { *anchor } else { 0 };
        loop {
            id += 1;
            let sync = json!({"type": "sync", "id": id, "conv": conv, "after": after,
                              "limit": 500});
            // A failed send shows up as the end of the stream below.
            let _ = ws.send(Message::Text(sync.to_string().into())).await;
            let answer = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t)?;
                        if v["id"] == json!(id) {
                            break v;
                        }
                    }
                    Some(Ok(Message::Close(Some(close))))
                        if u16::from(close.code) == anchorage_protocol::close::GOING_AWAY =>
                    {
                        return Ok(Resync::WentAway);
                    }
                    Some(Ok(Message::Close(Some(close)))) => {
                        bail!("closed during sync: {} {}", close.code, close.reason)
                    }
                    Some(Ok(_)) => {}
                    other => bail!("lost during sync: {other:?}"),
                }
            };
            if let Some(last) = answer["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["seq"].as_u64())
            {
                after = last;
                if conv == "big" {
                    *anchor = last;
                }
            }
            if answer["more"] != true {
                break;
            }
        }
    }
    Ok(Resync::Done)
}

async fn reconnect(
    addr: std::net::SocketAddr,
    prefix: &str,
    sockets: Vec<Ws>,
) -> anyhow::Result<()> {
    let prefix: Arc<str> = prefix.into();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(n, ws)| {
            let name = user(&prefix, n);
            tokio::spawn(tokio::time::timeout(LIMIT * 2, follow(addr, name, ws)))
        })
        .collect();
    let mut resynced = Vec::new();
    let mut attempts = 0u64;
    // Why clients failed, with how many failed that way.
    let mut failures: std::collections::BTreeMap<String, u64> = Default::default();
    for t in futures::future::join_all(tasks).await {
        let why = match t {
            Ok(Ok(Ok((at, tries)))) => {
                resynced.push(at as u64);
                attempts += u64::from(tries);
                continue;
            }
            Ok(Ok(Err(e))) => format!("{e:#}"),
            Ok(Err(_)) => "not back in line in time".to_owned(),
            Err(e) => format!("client task: {e}"),
        };
        *failures.entry(why).or_default() += 1;
    }
    println!(
        "{}",
        json!({"resynced_unix_ms": resynced, "attempts": attempts, "failures": failures})
    );
    Ok(())
}
