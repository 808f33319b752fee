//! `bench signals`: reactions and typing in a large group with many members online — the
//! reactions per second the edges take, when the last online member has counted them all,
//! and how many frames that cost: coalesced reaction frames to every online member, typing
//! frames to the viewers only. Next to raw JetStream publishing of as many events, and to the
//! frames one push per reaction per online member would cost.

use std::time::Instant;

use anchorage_protocol::request::{React, SendMessage, Typing};
use anchorage_protocol::{ReplyBody, RequestBody, ServerFrame};
use anchorage_schema::{ClientMsgId, ConversationId};
use anyhow::bail;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::client::{answer, send, signed_in, timed};
use crate::clients::signal_viewers;
use crate::env::{BenchEnv, ClientProcess, Sizes, big_group, progress, unix_nanos};
use crate::raw;

/// Sockets reacting at once.
const REACTING: usize = 64;

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let reactors = (s.online / 10).max(10);
    let typers = (reactors / 10).max(5);
    progress(&format!(
        "raw JetStream publish of {reactors} events (baseline)"
    ));
    let raw_per_sec = raw::publish(&env.config.nats.url, reactors).await?;
    let bus = env.bus().await?;
    let stack = env.stack().await?;
    progress(&format!("a group of {} members", s.members));
    big_group(&bus, &stack, &[], s.members).await?;
    let big = ConversationId::parse("big")?;
    let mut owner = signed_in(stack.edge_addr, &env.config, "owner").await?;
    let post = SendMessage {
        conv: big.clone(),
        client_msg_id: ClientMsgId::parse("post")?,
        body: json!("react to me"),
        client_ts: anchorage_schema::now_ms(),
        retry: false,
        reply_to: None,
        mentions: Vec::new(),
        mention_all: false,
        attachments: Vec::new(),
    };
    let target = match timed(&mut owner, 1, post).await?.0 {
        ReplyBody::Ack(ack) => ack.seq,
        other => bail!("not acked: {other:?}"),
    };
    progress(&format!("{} members online", s.online));
    let clients = ClientProcess::start(stack.edge_addr, s.online, "signals", reactors).await?;
    progress(&format!("{reactors} members react, {typers} type"));
    // Reactors are members who are not among the online sockets.
    let mut sockets = Vec::new();
    for n in 0..reactors {
        let user = format!("u{:06}", s.online + n);
        sockets.push(signed_in(stack.edge_addr, &env.config, &user).await?);
    }
    let started = Instant::now();
    let started_ns = unix_nanos();
    let reacted: Vec<anyhow::Result<()>> = futures::stream::iter(sockets.iter_mut())
        .map(|ws| {
            let big = big.clone();
            async move {
                let react = RequestBody::React(React {
                    conv: big,
                    seq: target,
                    emoji: "👍".into(),
                    remove: false,
                });
                send(ws, 2, &react).await?;
                match answer(ws, 2).await?.0 {
                    ServerFrame::Reply(_) => Ok(()),
                    other => bail!("reaction refused: {other:?}"),
                }
            }
        })
        .buffer_unordered(REACTING)
        .collect()
        .await;
    let took = started.elapsed();
    reacted.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    for ws in sockets.iter_mut().take(typers) {
        let typing = RequestBody::Typing(Typing {
            conv: big.clone(),
            stop: false,
        });
        send(ws, 3, &typing).await?;
        answer(ws, 3).await?;
    }
    let report = clients.report().await?;
    stack.stop().await?;
    bus.close().await;
    let per_sec = reactors as f64 / took.as_secs_f64().max(1e-9);
    let frames = report["reaction_frames"].as_u64().unwrap_or(0);
    let naive = (reactors * s.online) as u64;
    let last_done: u128 = report["last_done_unix_ns"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let all_counted_ms = last_done.saturating_sub(started_ns) as f64 / 1e6;
    Ok(json!({
        "ours": {
            "reactions_per_sec": per_sec.round(),
            "all_online_counted_ms": all_counted_ms.round(),
            "members_complete": report["complete"],
            "reaction_frames": frames,
            "reaction_frames_per_member": frames as f64 / s.online as f64,
            "typing_frames": report["typing_frames"],
            "typing_receivers": report["typing_receivers"],
        },
        "baseline": {
            "raw_jetstream_publish_per_sec": raw_per_sec.round(),
            "frames_one_push_per_reaction_per_member": naive,
        },
        "ratio": per_sec / raw_per_sec,
        "frames_saved": 1.0 - frames as f64 / naive as f64,
        "target": "reactions and typing in a 100,000-member group with 10,000 online cost \
                   frames per flush and per viewer, not per reaction and per member",
        "sizes": {
            "members": s.members,
            "online": s.online,
            "viewers": signal_viewers(s.online),
            "reactions": reactors,
            "typing": typers,
        },
    }))
}
