//! `bench reconnect`: an edge restarts under thousands of connected members; how long until
//! every client is back in line (reconnected with backoff, anchors presented, missed messages
//! synced), and what the storm costs the edge.

use std::time::Duration;

use serde_json::{Value, json};

use super::fanout::send_stamped;
use crate::client::signed_in;
use crate::env::{
    BenchEnv, ClientProcess, Sizes, big_group, peak_rss, percentile, progress, projected,
    resync_times, rss_kib, unix_ms,
};

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    let stack = env.stack().await?;
    progress(&format!("a group of {} members", s.online));
    big_group(&bus, &stack, &[], s.online).await?;
    // The edge the clients use, restarted on the same port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, task) = edge_on(&env.config, &stack, listener).await?;
    progress(&format!("{} clients connected", s.online));
    let clients = ClientProcess::start(addr, s.online, "reconnect", 0).await?;
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
    projected(&stack, "messages", last).await?;
    let before = rss_kib();
    let restarted = unix_ms();
    let (stop, task) = edge_on(
        &env.config,
        &stack,
        tokio::net::TcpListener::bind(addr).await?,
    )
    .await?;
    let (report, peak) = peak_rss(clients.report()).await;
    let report = report?;
    stop.cancel();
    task.await??;
    stack.stop().await?;
    bus.close().await;
    let times = resync_times(&report, restarted);
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

/// An edge of `stack` serving `listener` in this process, until its token is cancelled (then
/// its task ends); restarting it on the same address is binding that address again.
pub async fn edge_on(
    config: &anchorage_config::Config,
    stack: &anchorage::stack::Stack,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<(
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)> {
    let streams = anchorage::load_streams(config)?;
    let state =
        anchorage::edge_state(config, stack.bus.clone(), stack.store.clone(), streams).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(anchorage_edge::run(listener, state, stop.clone()));
    Ok((stop, task))
}
