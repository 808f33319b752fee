//! The Rust SDK's side of `bench sdk`, run as a separate process (`anchorage-bench sdk-runner`) so that
//! it is measured as `shared/sdk-ts/bench/bench.mjs` measures the TypeScript SDK: the same job,
//! the same steps, the same report. The job protocol (one JSON object per line):
//!
//! - stdin, first line: `{"mode": "send" | "reconnect", "url": "ws://…/ws",
//!   "clients": [{"token": "…", "conv": "…"}], "messages": N, "store": "file" | "memory"}`;
//! - the runner starts one SDK client per entry (each with its own local store: here always a
//!   SQLite file, the Rust SDK's only store), waits until every one is signed in, and prints
//!   `{"ready": true}`;
//! - `send`: every client queues `messages` messages into its `conv` through its outbox at once
//!   and waits for their acknowledgements; the report is `{"acked", "elapsed_ms",
//!   "latencies_ms"}` (from queueing to acknowledgement);
//! - `reconnect`: the clients follow their `conv` while the bench restarts the edge; stdin's
//!   second line `{"last": seq}` names the newest message, and the report is
//!   `{"resynced_unix_ms": [...], "failures": {...}, "disconnects": n}`: when each client held
//!   `last` after its connection was lost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchorage_sdk::{Client, ClientEvent, ClientOptions};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{broadcast, watch};

use crate::env::unix_ms;

/// How long a client may take to sign in, to be acknowledged, or to be back in line.
const LIMIT: Duration = Duration::from_secs(120);

/// One client of the job.
struct Member {
    client: Client,
    events: broadcast::Receiver<ClientEvent>,
    conv: String,
}

/// Reads the job from stdin, runs it, prints the report.
pub async fn run() -> anyhow::Result<()> {
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let job: Value = serde_json::from_str(&stdin.next_line().await?.context("no job on stdin")?)?;
    let url = job["url"].as_str().context("job.url")?.to_owned();
    let messages = job["messages"].as_u64().unwrap_or(0) as usize;
    let dir = tempfile::tempdir()?;
    let mut members = Vec::new();
    for (i, c) in job["clients"]
        .as_array()
        .context("job.clients")?
        .iter()
        .enumerate()
    {
        let token = c["token"].as_str().context("client token")?.to_owned();
        let conv = c["conv"].as_str().context("client conv")?.to_owned();
        members.push(start(&url, token, &dir.path().join(format!("{i}.db")), conv).await?);
    }
    let signed_in = members.iter_mut().map(|m| connected(&mut m.events));
    tokio::time::timeout(LIMIT, futures::future::try_join_all(signed_in))
        .await
        .context("clients did not sign in")??;
    println!("{}", json!({"ready": true}));
    let report = match job["mode"].as_str() {
        Some("send") => send(members, messages).await?,
        Some("reconnect") => reconnect(members, &mut stdin).await?,
        other => bail!("unknown mode {other:?}"),
    };
    println!("{report}");
    Ok(())
}

async fn start(url: &str, token: String, store: &Path, conv: String) -> anyhow::Result<Member> {
    let client = Client::start(ClientOptions {
        url: url.to_owned(),
        token: Arc::new(move || token.clone()),
        store_path: store.to_owned(),
    })
    .await?;
    let events = client.subscribe();
    Ok(Member {
        client,
        events,
        conv,
    })
}

async fn connected(events: &mut broadcast::Receiver<ClientEvent>) -> anyhow::Result<()> {
    loop {
        match events.recv().await {
            Ok(ClientEvent::Connected) => return Ok(()),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => bail!("client ended: {e}"),
        }
    }
}

async fn send(members: Vec<Member>, messages: usize) -> anyhow::Result<Value> {
    let started = Instant::now();
    let runs = members.into_iter().map(|mut m| async move {
        // Acknowledgements are read while the messages are queued (they come as soon as the
        // outbox sends), and matched to the moment each `send` was called.
        let acks = tokio::spawn(async move {
            let mut acked = std::collections::HashMap::with_capacity(messages);
            while acked.len() < messages {
                match m.events.recv().await {
                    Ok(ClientEvent::Acked { client_msg_id, .. }) => {
                        acked.insert(client_msg_id, Instant::now());
                    }
                    Ok(ClientEvent::Failed { reason, .. }) => bail!("a send was refused: {reason}"),
                    Ok(_) => {}
                    Err(e) => bail!("events: {e}"),
                }
            }
            anyhow::Ok(acked)
        });
        let mut queued = Vec::with_capacity(messages);
        for n in 0..messages {
            let body = Value::String(format!("{n:>200}"));
            let t0 = Instant::now();
            queued.push((m.client.send(&m.conv, body).await?, t0));
        }
        let acked = acks.await??;
        m.client.shutdown().await;
        queued
            .into_iter()
            .map(|(id, t0)| {
                let at = acked
                    .get(&id)
                    .context("a message acknowledged under another id")?;
                Ok(at.duration_since(t0).as_secs_f64() * 1000.0)
            })
            .collect::<anyhow::Result<Vec<f64>>>()
    });
    let all = tokio::time::timeout(LIMIT, futures::future::try_join_all(runs))
        .await
        .context("sends were not acknowledged")??;
    let elapsed = started.elapsed();
    let latencies: Vec<f64> = all.into_iter().flatten().collect();
    Ok(json!({
        "acked": latencies.len(),
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
        "latencies_ms": latencies,
    }))
}

async fn reconnect(
    members: Vec<Member>,
    stdin: &mut tokio::io::Lines<tokio::io::BufReader<tokio::io::Stdin>>,
) -> anyhow::Result<Value> {
    // Unknown until the bench names it: `u64::MAX`.
    let (last_tx, last_rx) = watch::channel(u64::MAX);
    let follows: Vec<_> = members
        .into_iter()
        .map(|m| tokio::spawn(follow(m, last_rx.clone())))
        .collect();
    let line = stdin.next_line().await?.context("no restart line")?;
    let last = serde_json::from_str::<Value>(&line)?["last"]
        .as_u64()
        .context("restart.last")?;
    last_tx.send(last)?;
    let mut resynced = Vec::new();
    let mut failures = serde_json::Map::new();
    let mut disconnects = 0;
    for f in follows {
        match f.await? {
            Ok((at, lost)) => {
                resynced.push(at);
                disconnects += lost;
            }
            Err(e) => {
                let n = failures.entry(e.to_string()).or_insert(json!(0));
                *n = json!(n.as_u64().unwrap_or(0) + 1);
            }
        }
    }
    Ok(json!({"resynced_unix_ms": resynced, "failures": failures, "disconnects": disconnects}))
}

/// Follows one client: once it lost its connection, when it held `last` (Unix ms), and how
/// often it was disconnected.
async fn follow(mut m: Member, mut last: watch::Receiver<u64>) -> anyhow::Result<(u64, u64)> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut disconnects = 0;
    // The times the newest seq grew after a disconnect: (seq, unix ms).
    let mut held: Vec<(u64, u64)> = Vec::new();
    loop {
        let target = *last.borrow();
        if disconnects > 0
            && let Some(&(_, at)) = held.iter().find(|(seq, _)| *seq >= target)
        {
            m.client.shutdown().await;
            return Ok((at, disconnects));
        }
        tokio::select! {
            event = m.events.recv() => match event {
                Ok(ClientEvent::Disconnected { .. }) => disconnects += 1,
                Ok(ClientEvent::Messages { conv, seq }) if conv == m.conv && disconnects > 0 => {
                    held.push((seq, unix_ms()));
                }
                Ok(_) => {}
                // Lost events may have been the disconnect: this client cannot be timed.
                Err(e) => bail!("events: {e}"),
            },
            changed = last.changed() => changed?,
            () = tokio::time::sleep_until(deadline) => bail!("not back in line within {LIMIT:?}"),
        }
    }
}
