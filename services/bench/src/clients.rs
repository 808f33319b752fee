//! The client side of the socket-heavy scenarios, run as a separate process
//! (`anchorage-bench clients`) so its sockets and memory are not counted against the server
//! and each process stays within its own file-descriptor limit.
//!
//! It opens `count` signed-in sockets (users `<prefix><n>` with six digits; socket `n` to the
//! `n % k`-th of the `k` edge addresses it is given), says `ready` on stdout, then:
//!
//! - `idle`: holds them until killed;
//! - `fanout`: waits until every socket received `messages` live messages whose body carries
//!   the send time (`{"t": unix nanoseconds}`), then prints one JSON line with every delivery
//!   latency and holds the sockets until killed;
//! - `reconnect`: follows the live messages of conversation `big`; when the edge closes the
//!   sockets, each reconnects with full-jitter backoff (honouring `Retry-After`), presents its
//!   anchor, syncs what the welcome reports changed, and records when it was back in line.
//!   Prints one JSON line once all are resynced (or after two minutes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anchorage_config::Config;
use anchorage_protocol::request::Sync;
use anchorage_protocol::{ConvAnchor, Push, Reply, ReplyBody, ServerFrame, Welcome, close};
use anchorage_schema::ConversationId;
use anyhow::bail;
use futures::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Refused, Ws, send, sign_in};
use crate::env::unix_nanos;

/// Connection attempts in flight while opening the sockets.
const OPENING: usize = 64;
/// How long the fanout and reconnect modes wait before reporting what they have.
const LIMIT: Duration = Duration::from_secs(120);

/// What the clients do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Hold the sockets until killed.
    Idle,
    /// Report the delivery latencies of live messages.
    Fanout,
    /// Report when each client was back in line after the edge restarted.
    Reconnect,
    /// Count the reaction and typing frames of conversation `big` (the first
    /// [`signal_viewers`] sockets view it) until `messages` reactions were counted.
    Signals,
}

/// Sockets of the signals mode that view the conversation (and so get its typing): one in a
/// hundred, at least 5 and at most 100.
pub fn signal_viewers(online: usize) -> usize {
    (online / 100).clamp(5, 100).min(online)
}

fn user(prefix: &str, n: usize) -> String {
    format!("{prefix}{n:06}")
}

fn backoff(attempt: u32, hint: Option<Duration>) -> Duration {
    anchorage_sdk::backoff_delay(attempt, hint, anchorage_sdk::backoff_random())
}

/// The edge socket `n` connects to.
fn edge_of(addrs: &[SocketAddr], n: usize) -> SocketAddr {
    addrs[n % addrs.len()]
}

/// Opens `count` sockets, a few at a time.
async fn open_all(addrs: &[SocketAddr], prefix: &str, count: usize) -> anyhow::Result<Vec<Ws>> {
    let config = Config::default();
    let config = &config;
    let opened = futures::stream::iter(0..count)
        .map(|n| {
            let name = user(prefix, n);
            let addr = edge_of(addrs, n);
            async move {
                for attempt in 1..=20u32 {
                    match sign_in(addr, config, &name, Vec::new()).await {
                        Ok((ws, _)) => return Ok(ws),
                        Err(Refused::Busy(hint)) => {
                            tokio::time::sleep(backoff(attempt, hint)).await
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
    addrs: &[SocketAddr],
    count: usize,
    mode: Mode,
    prefix: &str,
    messages: usize,
) -> anyhow::Result<()> {
    if addrs.is_empty() {
        bail!("no edge to connect to");
    }
    let sockets = open_all(addrs, prefix, count).await?;
    println!("ready");
    match mode {
        Mode::Idle => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            drop(sockets);
        }
        Mode::Fanout => fanout(sockets, messages).await?,
        Mode::Reconnect => reconnect(addrs, prefix, sockets).await?,
        Mode::Signals => signals(sockets, messages).await?,
    }
    Ok(())
}

/// Each socket counts the reactions of `big` (from the coalesced frames' deltas) until it
/// counted `reactions`, and the typing frames it gets; viewers wait a little longer for
/// typing. Prints the totals.
async fn signals(sockets: Vec<Ws>, reactions: usize) -> anyhow::Result<()> {
    use anchorage_protocol::RequestBody;
    use anchorage_protocol::request::View;
    let big = ConversationId::parse("big")?;
    let viewers = signal_viewers(sockets.len());
    let tasks = sockets.into_iter().enumerate().map(|(n, mut ws)| {
        let big = big.clone();
        tokio::spawn(async move {
            let viewer = n < viewers;
            if viewer {
                let view = RequestBody::View(View { conv: big });
                if send(&mut ws, 1, &view).await.is_err() {
                    return (0u64, 0u64, false, 0u128);
                }
            }
            let (mut frames, mut typing, mut counted, mut done_at) = (0u64, 0u64, 0i64, 0u128);
            let deadline = tokio::time::Instant::now() + LIMIT;
            // After the reactions: viewers wait for typing, the others for stray frames.
            let mut linger: Option<tokio::time::Instant> = None;
            loop {
                let until = linger.map_or(deadline, |l| l.min(deadline));
                let next = tokio::time::timeout_at(until, ws.next()).await;
                let Ok(Some(Ok(m))) = next else { break };
                let Message::Text(t) = m else { continue };
                match serde_json::from_str(&t) {
                    Ok(ServerFrame::Push(Push::Reactions(r))) => {
                        frames += 1;
                        counted += r.deltas.iter().map(|d| d.delta).sum::<i64>();
                        if counted >= reactions as i64 && linger.is_none() {
                            done_at = unix_nanos();
                            linger = Some(tokio::time::Instant::now() + Duration::from_secs(3));
                        }
                    }
                    Ok(ServerFrame::Push(Push::Typing(_))) => typing += 1,
                    _ => {}
                }
            }
            (frames, typing, counted >= reactions as i64, done_at)
        })
    });
    let (mut frames, mut typing, mut typing_receivers, mut complete, mut last) =
        (0u64, 0u64, 0u64, 0u64, 0u128);
    for t in futures::future::join_all(tasks).await {
        let (f, ty, done, at) = t.unwrap_or_default();
        frames += f;
        typing += ty;
        typing_receivers += u64::from(ty > 0);
        complete += u64::from(done);
        last = last.max(at);
    }
    println!(
        "{}",
        json!({
            "reaction_frames": frames,
            "typing_frames": typing,
            "typing_receivers": typing_receivers,
            "complete": complete,
            "last_done_unix_ns": last.to_string(),
        })
    );
    Ok(())
}

/// The live message a frame is, if it is one.
fn live_message(text: &str) -> Option<anchorage_protocol::LiveMessage> {
    match serde_json::from_str(text).ok()? {
        ServerFrame::Push(Push::Message(m)) => Some(m),
        _ => None,
    }
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
                if let Some(sent) = live_message(&t).and_then(|m| m.message.body["t"].as_u64()) {
                    latencies.push(now.saturating_sub(u128::from(sent)) as f64 / 1e6);
                }
            }
            (latencies, ws)
        })
    });
    let mut all = Vec::new();
    let mut missing = 0;
    // The sockets stay open until the process is stopped: closing them is traffic of its own
    // (presence), not part of the fan-out.
    let mut open = Vec::new();
    for t in futures::future::join_all(tasks).await {
        let (got, ws) = t?;
        missing += messages.saturating_sub(got.len());
        all.extend(got);
        open.push(ws);
    }
    println!("{}", json!({"latencies_ms": all, "missing": missing}));
    std::future::pending::<()>().await;
    drop(open);
    Ok(())
}

/// One socket's life across an edge restart: returns when it was back in line (Unix ms), and
/// how many connection attempts that took.
async fn follow(addr: SocketAddr, name: String, mut ws: Ws) -> anyhow::Result<(u128, u32)> {
    let config = Config::default();
    let big = ConversationId::parse("big")?;
    let mut anchor = 0u64;
    // Live messages until the edge goes away.
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m
            && let Some(live) = live_message(&t)
        {
            anchor = anchor.max(live.message.seq);
        }
    }
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let anchors = vec![ConvAnchor {
            conv: big.clone(),
            seq: anchor,
            read: None,
        }];
        let (mut ws, welcome) = match sign_in(addr, &config, &name, anchors).await {
            Ok(ok) => ok,
            Err(Refused::Busy(hint)) => {
                tokio::time::sleep(backoff(attempts, hint)).await;
                continue;
            }
            Err(Refused::Other(_)) => {
                tokio::time::sleep(backoff(attempts, None)).await;
                continue;
            }
        };
        match resync(&mut ws, &welcome, &big, &mut anchor).await? {
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
async fn resync(
    ws: &mut Ws,
    welcome: &Welcome,
    big: &ConversationId,
    anchor: &mut u64,
) -> anyhow::Result<Resync> {
    let mut id = 1u64;
    for change in &welcome.changes {
        let conv = &change.conv;
        let mut after = if conv == big { *anchor } else { 0 };
        loop {
            id += 1;
            let sync = Sync {
                conv: conv.clone(),
                after,
                limit: Some(500),
            };
            // A failed send shows up as the end of the stream below.
            let _ = send(ws, id, &sync.into()).await;
            let answer = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let frame: ServerFrame = serde_json::from_str(&t)?;
                        if frame.id() == Some(id) {
                            break frame;
                        }
                    }
                    Some(Ok(Message::Close(Some(c)))) if u16::from(c.code) == close::GOING_AWAY => {
                        return Ok(Resync::WentAway);
                    }
                    Some(Ok(Message::Close(Some(c)))) => {
                        bail!("closed during sync: {} {}", c.code, c.reason)
                    }
                    Some(Ok(_)) => {}
                    other => bail!("lost during sync: {other:?}"),
                }
            };
            let ServerFrame::Reply(Reply {
                body: ReplyBody::Messages(page),
                ..
            }) = answer
            else {
                bail!("sync refused: {answer:?}");
            };
            if let Some(last) = page.messages.last() {
                after = last.seq;
                if conv == big {
                    *anchor = last.seq;
                }
            }
            if !page.more {
                break;
            }
        }
    }
    Ok(Resync::Done)
}

async fn reconnect(addrs: &[SocketAddr], prefix: &str, sockets: Vec<Ws>) -> anyhow::Result<()> {
    let prefix: Arc<str> = prefix.into();
    let tasks: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(n, ws)| {
            let name = user(&prefix, n);
            let addr = edge_of(addrs, n);
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
