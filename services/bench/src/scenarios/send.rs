//! `bench send`: messages accepted through the edge (sent, stored, acknowledged), many senders
//! each keeping a window of sends in flight, next to raw JetStream publishing. With
//! `--edges N` the senders are spread over N edges, and the report counts what NATS delivered
//! to each edge per send.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anchorage_protocol::request::{CreateGroup, SendMessage};
use anchorage_protocol::{ReplyBody, RequestBody, ServerFrame};
use anchorage_schema::{ClientMsgId, ConversationId, GroupId};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{signed_in, timed};
use crate::env::{BenchEnv, Sizes, delivered_since, percentile, progress, rate, received};
use crate::raw;

/// Sends one sender keeps in flight.
const WINDOW: usize = 32;

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress("raw JetStream publish (baseline)");
    let baseline = raw::publish(&env.config.nats.url, s.events).await?;
    progress("the send path in NATS alone: publish, RePublish, a consumer (baseline)");
    let path = raw::send_path(&env.config.nats.url, s.sends).await?;
    let mut stack = env.stack().await?;
    let edges = env.edges(&mut stack, s.edges).await?;
    progress(&format!("sends through {} edge(s)", edges.len()));
    let before = received(&edges);
    let per_sender = s.sends / s.senders;
    let ready = Arc::new(tokio::sync::Barrier::new(s.senders));
    let senders = (0..s.senders).map(|i| {
        let config = env.config.clone();
        let ready = ready.clone();
        let addr = edges[i % edges.len()].addr;
        async move {
            let mut ws = signed_in(addr, &config, &format!("sender{i}")).await?;
            let group = format!("bench{i}");
            let create = CreateGroup {
                group: GroupId::parse(group.as_str())?,
                title: "bench".into(),
                members: Vec::new(),
            };
            timed(&mut ws, 1, create).await?;
            let conv = ConversationId::parse(group)?;
            // Everyone connected and ready: the clock starts.
            ready.wait().await;
            let started = Instant::now();
            // Up to WINDOW sends in flight; acks come back in order.
            let (mut sink, mut stream) = ws.split();
            let body = Value::String("x".repeat(200));
            let mut sent_at = VecDeque::with_capacity(WINDOW);
            let mut latencies = Vec::with_capacity(per_sender);
            let mut next = 0;
            while latencies.len() < per_sender {
                while next < per_sender && sent_at.len() < WINDOW {
                    let send = RequestBody::Send(SendMessage {
                        conv: conv.clone(),
                        client_msg_id: ClientMsgId::parse(format!("m{next}"))?,
                        body: body.clone(),
                        // Written now, as a client's outbox stamps it.
                        client_ts: anchorage_schema::now_ms(),
                        retry: false,
                        reply_to: None,
                        mentions: Vec::new(),
                        mention_all: false,
                        attachments: Vec::new(),
                    });
                    let text = anchorage_protocol::Request::encode(2 + next as u64, &send);
                    sink.feed(Message::Text(text.into())).await?;
                    sent_at.push_back(Instant::now());
                    next += 1;
                }
                sink.flush().await?;
                let answer: ServerFrame = match stream.next().await {
                    Some(Ok(Message::Text(t))) => serde_json::from_str(&t)?,
                    Some(Ok(_)) => continue,
                    other => bail!("connection ended: {other:?}"),
                };
                match answer {
                    ServerFrame::Push(_) => continue,
                    ServerFrame::Reply(r) if matches!(r.body, ReplyBody::Ack(_)) => {}
                    other => bail!("not acked: {other:?}"),
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
    let delivered = delivered_since(&edges, &before);
    let per_edge = (latencies.len() / edges.len()).max(1) as f64;
    stack.stop().await?;
    bus.close().await;
    Ok(json!({
        "ours": {
            "accepted_msgs_per_sec": ours.round(),
            "ack_latency_ms_p50": percentile(&latencies, 0.50),
            "ack_latency_ms_p99": percentile(&latencies, 0.99),
            "edges": edges.len(),
            // Per edge: NATS messages received per send it took (the publish acknowledgement,
            // the live delivery to its sender's own socket, the projector's announcements).
            "nats_messages_per_send_per_edge": delivered
                .iter()
                .map(|d| d.0 as f64 / per_edge)
                .collect::<Vec<_>>(),
        },
        "baseline": {
            "jetstream_publish_msgs_per_sec": baseline.round(),
            "send_path_msgs_per_sec": path.round(),
        },
        "ratio": ours / baseline,
        // Our own overhead: the same NATS work (publish with an id into a stream with
        // RePublish, a live subscriber, a consumer reading and acknowledging) without our code.
        "ratio_to_send_path": ours / path,
        "target": ">= 0.5 x raw publish",
        "sizes": {"sends": latencies.len(), "senders": s.senders, "in_flight_per_sender": WINDOW,
                  "body_bytes": 200},
    }))
}
