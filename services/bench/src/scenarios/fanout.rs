//! `bench fanout`: one message to the online members of a large group, from the send to each
//! socket, next to a bare axum server writing the same frame to the same client process. With
//! `--edges N` the members are spread over N edges, and the report counts what NATS delivered
//! to each edge per message: one delivery per edge, however many of its sockets get it.

use std::time::Duration;

use anchorage_protocol::ReplyBody;
use anchorage_protocol::request::SendMessage;
use anchorage_schema::{ClientMsgId, ConversationId};
use anyhow::bail;
use serde_json::{Value, json};

use crate::client::{Ws, signed_in, timed};
use crate::env::{
    BenchEnv, ClientProcess, Sizes, big_group, delivered_since, percentile, progress, rate,
    received, sorted_latencies, unix_nanos,
};
use crate::raw;

/// Sends request `id`, a message to `big` carrying its send time; returns its seq.
pub async fn send_stamped(ws: &mut Ws, id: u64) -> anyhow::Result<u64> {
    let send = SendMessage {
        conv: ConversationId::parse("big")?,
        client_msg_id: ClientMsgId::parse(format!("f{id}"))?,
        body: json!({"t": unix_nanos() as u64}),
        client_ts: anchorage_schema::now_ms(),
        retry: false,
        reply_to: None,
        mentions: Vec::new(),
        mention_all: false,
        attachments: Vec::new(),
    };
    match timed(ws, id, send).await?.0 {
        ReplyBody::Ack(ack) => Ok(ack.seq),
        other => bail!("not acked: {other:?}"),
    }
}

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress(&format!(
        "raw WebSocket fan-out to {} sockets (baseline)",
        s.online
    ));
    let raw = raw::fanout(s.online, s.fanouts).await?;
    let mut stack = env.stack().await?;
    let edges = env.edges(&mut stack, s.edges).await?;
    let addrs: Vec<_> = edges.iter().map(|e| e.addr).collect();
    progress(&format!("a group of {} members", s.members));
    big_group(&bus, &stack, &[], s.members).await?;
    progress(&format!(
        "{} members online on {} edge(s)",
        s.online,
        edges.len()
    ));
    let mut clients = ClientProcess::start_spread(&addrs, s.online, "fanout", s.fanouts).await?;
    let mut owner = signed_in(addrs[0], &env.config, "owner").await?;
    // What reaches each edge with no message sent, over as long as the messages take.
    let window = Duration::from_millis(500) * s.fanouts as u32;
    let idle_from = received(&edges);
    tokio::time::sleep(window).await;
    let idle = delivered_since(&edges, &idle_from);
    let before = received(&edges);
    for n in 0..s.fanouts {
        progress(&format!("message {} of {}", n + 1, s.fanouts));
        send_stamped(&mut owner, n as u64 + 1).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = clients.report_line().await?;
    let delivered = delivered_since(&edges, &before);
    clients.kill().await?;
    let per_message: Vec<f64> = delivered
        .iter()
        .zip(&idle)
        .map(|(d, i)| d.0.saturating_sub(i.0) as f64 / s.fanouts as f64)
        .collect();
    stack.stop().await?;
    bus.close().await;
    let latencies = sorted_latencies(&report);
    let missing = report["missing"].as_u64().unwrap_or(0);
    let max = latencies.last().copied().unwrap_or_default();
    let raw_max = raw.last().copied().unwrap_or_default();
    // Every online member of one message, over the time the slowest one took.
    let deliveries_per_sec = rate(s.online, max);
    let raw_per_sec = rate(s.online, raw_max);
    let (p99, raw_p99) = (percentile(&latencies, 0.99), percentile(&raw, 0.99));
    Ok(json!({
        "ours": {
            // The first socket: what the path from the send to the edge costs, before the
            // fan-out's own spread.
            "delivery_ms_min": percentile(&latencies, 0.0),
            "delivery_ms_p50": percentile(&latencies, 0.50),
            "delivery_ms_p99": p99,
            "delivery_ms_max": max.as_secs_f64() * 1000.0,
            "deliveries": latencies.len(),
            "missing": missing,
            "deliveries_per_sec": deliveries_per_sec.round(),
            "edges": edges.len(),
            // Per edge: NATS messages received per message sent, beyond what it receives idle:
            // the live delivery and the projector's announcement that it stored it (and, on the
            // sender's edge, the publish acknowledgement).
            "nats_messages_per_message_per_edge": per_message,
            "nats_messages_per_edge_idle": idle.iter().map(|i| i.0).collect::<Vec<_>>(),
            "sockets_per_edge": s.online.div_ceil(edges.len()),
        },
        "baseline": {
            "raw_websocket_fanout_ms_min": percentile(&raw, 0.0),
            "raw_websocket_fanout_ms_p50": percentile(&raw, 0.50),
            "raw_websocket_fanout_ms_p99": raw_p99,
            "raw_websocket_fanout_ms_max": raw_max.as_secs_f64() * 1000.0,
            "websocket_push_frames_per_sec": raw_per_sec.round(),
        },
        "ratio": deliveries_per_sec / raw_per_sec,
        // The slowest of the first 99% of sockets, ours over the bare server's: how much
        // longer a message takes to reach nearly everyone.
        "p99_over_baseline": p99 / raw_p99,
        "target": "p99 < 100 ms to 10,000 online members of a 100,000-member group",
        "sizes": {"members": s.members, "online": s.online, "messages": s.fanouts},
    }))
}
