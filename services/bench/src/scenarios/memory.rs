//! `bench memory`: what an idle signed-in connection costs the edge (clients in another
//! process, so their memory is not counted).

use std::time::Duration;

use serde_json::{Value, json};

use crate::env::{BenchEnv, ClientProcess, Sizes, progress, rss_kib};

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let stack = env.stack().await?;
    let before = rss_kib();
    progress("opening idle connections from a client process");
    let clients = ClientProcess::start(stack.edge_addr, s.sockets, "idle", 0).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    clients.kill().await?;
    stack.stop().await?;
    let per = after.saturating_sub(before) as f64 / s.sockets.max(1) as f64;
    Ok(json!({
        "ours": {"kib_per_idle_connection": per, "connections": s.sockets,
                 "rss_before_kib": before, "rss_after_kib": after},
        "target": "<= 16 KiB per idle connection",
    }))
}
