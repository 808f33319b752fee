//! The baselines: what JetStream and a bare WebSocket server do on the same machine in the
//! same run, with nothing of ours in the way.

use std::time::{Duration, Instant};

use anchorage_bus::Bus;
use anchorage_protocol::{
    ConvChange, LiveMessage, Message, PROTOCOL_VERSION, Push, ServerFrame, Welcome,
};
use anchorage_schema::{ConversationId, DeviceId, UserId};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::env::{BenchEnv, ClientProcess, Sizes, progress, rate, sorted_latencies, unix_nanos};

/// The stream the raw baselines use: like MESSAGES, but nothing consumes it.
pub const RAW_STREAM: &str = "BENCH_RAW";

/// Raw JetStream publish rate: pipelined, with `Nats-Msg-Id`, 200-byte payloads, into a
/// stream configured like MESSAGES.
pub async fn publish(url: &str, count: usize) -> anyhow::Result<f64> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: RAW_STREAM.into(),
        subjects: vec!["bench.raw.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let elapsed = publish_pipelined(&js, "raw", count).await?;
    Ok(rate(count, elapsed))
}

/// Publishes `count` 200-byte messages with `Nats-Msg-Id` on `bench.<kind>.c0`…`c63`, 256 in
/// flight; returns how long until every one was acknowledged.
async fn publish_pipelined(
    js: &async_nats::jetstream::Context,
    kind: &str,
    count: usize,
) -> anyhow::Result<Duration> {
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let messages = (0..count).map(|n| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{kind}-{n}").as_str());
        (
            format!("bench.{kind}.c{}", n % 64),
            headers,
            payload.clone(),
        )
    });
    publish_in_order(js, messages).await
}

/// Publishes messages in their order on one connection, 256 in flight; returns how long
/// until every one was acknowledged.
pub async fn publish_in_order(
    js: &async_nats::jetstream::Context,
    messages: impl IntoIterator<Item = (String, async_nats::HeaderMap, bytes::Bytes)>,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut acks = futures::stream::FuturesOrdered::new();
    for (subject, headers, payload) in messages {
        let ack = js.publish_with_headers(subject, headers, payload).await?;
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
    Ok(start.elapsed())
}

/// The stream of the send-path baseline: like MESSAGES, with RePublish.
const SEND_PATH_STREAM: &str = "BENCH_SEND_PATH";

/// What a send does in NATS without any of our code: publish with `Nats-Msg-Id` (pipelined,
/// 200-byte payloads) into a stream configured like MESSAGES, with its RePublish to live
/// subjects that a subscriber follows (an edge) and one durable consumer reading and
/// acknowledging every message (the projector). Returns the rate at which publishes are
/// acknowledged, once the consumer has read everything too.
pub async fn send_path(url: &str, count: usize) -> anyhow::Result<f64> {
    use async_nats::jetstream::consumer::{AckPolicy, pull};
    use async_nats::jetstream::stream::{Config, Republish};
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(Config {
            name: SEND_PATH_STREAM.into(),
            subjects: vec!["bench.send.>".into()],
            duplicate_window: Duration::from_secs(120),
            republish: Some(Republish {
                source: "bench.send.>".into(),
                destination: "bench.live.>".into(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench_projector".into()),
            ack_policy: AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut live = client.subscribe("bench.live.>").await?;
    let follower = tokio::spawn(async move {
        let mut seen = 0;
        while seen < count && live.next().await.is_some() {
            seen += 1;
        }
    });
    let projector = tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut read = 0;
        while read < count {
            match messages.next().await {
                Some(Ok(m)) => {
                    m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    read += 1;
                }
                Some(Err(e)) => anyhow::bail!("{e}"),
                None => break,
            }
        }
        anyhow::Ok(())
    });
    let published = publish_pipelined(&js, "send", count).await?;
    projector.await??;
    let _ = tokio::time::timeout(Duration::from_secs(5), follower).await;
    Ok(rate(count, published))
}

/// Raw consume rate: an ordered consumer reading `count` stored messages of `stream`.
pub async fn consume(bus: &Bus, stream: &str, count: usize) -> anyhow::Result<f64> {
    let mut reader = bus.read_stream(stream, anchorage_schema::Seq(1)).await?;
    let start = Instant::now();
    for _ in 0..count {
        reader.next().await?;
    }
    Ok(rate(count, start.elapsed()))
}

/// Raw WebSocket push: a bare axum server pushing `frames` 200-byte frames to each of
/// `sockets` clients (feed + one flush per batch, as our edge writes).
pub async fn push(sockets: usize, frames: usize) -> anyhow::Result<f64> {
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
                Some(Ok(WsMessage::Text(_))) => got += 1,
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

/// The same fan-out as `bench fanout` with nothing of ours in the way: a bare axum WebSocket
/// server that answers `hello` and then writes each frame to every socket (one write and flush
/// per socket, as a live message goes out), to the same client process. Returns the delivery
/// latencies.
pub async fn fanout(online: usize, messages: usize) -> anyhow::Result<Vec<Duration>> {
    use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
    let (frames, _) = tokio::sync::broadcast::channel::<axum::extract::ws::Utf8Bytes>(16);
    let subscribe = frames.clone();
    let welcome = ServerFrame::reply(
        0,
        Welcome {
            protocol: PROTOCOL_VERSION,
            user: UserId::parse("u")?,
            device: DeviceId::parse("bench")?,
            max_frame_bytes: 65_536,
            changes: Vec::<ConvChange>::new(),
            cursor: None,
            state: None,
            compact: false,
        },
    )
    .to_json();
    let app = axum::Router::new().route(
        "/ws",
        axum::routing::get(move |ws: WebSocketUpgrade| {
            let mut rx = subscribe.subscribe();
            let welcome = welcome.clone();
            async move {
                ws.read_buffer_size(4096)
                    .on_upgrade(move |socket| async move {
                        let (mut sink, mut stream) = socket.split();
                        let _hello = stream.next().await;
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
    let clients = ClientProcess::start(addr, online, "fanout", messages).await?;
    let big = ConversationId::parse("big")?;
    for n in 0..messages {
        let live: ServerFrame = Push::Message(LiveMessage {
            prev: n as u64,
            message: Box::new(Message::entry(
                big.clone(),
                n as u64 + 1,
                "owner".into(),
                "bench".into(),
                format!("f{n}"),
                json!({"t": unix_nanos() as u64}),
                (0, 0),
            )),
        })
        .into();
        frames.send(live.to_json().into())?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = clients.report().await?;
    server.abort();
    Ok(sorted_latencies(&report))
}

/// `bench raw`: the baselines alone.
pub async fn scenario(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress("raw JetStream publish");
    let publish = publish(&env.config.nats.url, s.events).await?;
    progress("raw JetStream consume");
    let consume = consume(&bus, RAW_STREAM, s.events).await?;
    progress("raw WebSocket push");
    let push = push(s.sockets, 500).await?;
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
