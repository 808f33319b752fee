//! The benchmark's WebSocket client: the typed protocol, with the size and round trip of each
//! answer (what a user's device pays).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anchorage_config::Config;
use anchorage_protocol::request::Hello;
use anchorage_protocol::{
    ConvAnchor, PROTOCOL_VERSION, Reply, ReplyBody, Request, RequestBody, RequestId, ServerFrame,
    Welcome,
};
use anchorage_schema::{DeviceId, UserId};
use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A client socket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum Refused {
    /// The server is shedding load: try again after at least this long.
    Busy(Option<Duration>),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Refused {
    fn from(e: anyhow::Error) -> Self {
        Refused::Other(e)
    }
}

/// A device token for `user` (device `bench`), signed with the configuration's secret.
pub fn token(config: &Config, user: &str) -> anyhow::Result<String> {
    Ok(anchorage_edge::auth::mint_hs256(
        &config.auth.hmac_secret,
        UserId::parse(user)?,
        DeviceId::parse("bench")?,
        3600,
    )?)
}

/// Connects with a small read buffer (as a client holding thousands of sockets would: the
/// default 128 KiB, zeroed as it grows, would make the clients the bottleneck) and signs in
/// with `anchors`; returns the socket and the welcome.
pub async fn sign_in(
    addr: SocketAddr,
    config: &Config,
    user: &str,
    anchors: Vec<ConvAnchor>,
) -> Result<(Ws, Welcome), Refused> {
    let ws_config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let connected = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/ws"),
        Some(ws_config),
        true,
    )
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
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        token: token(config, user)?,
        anchors,
        cursor: None,
        state_version: None,
    };
    send(&mut ws, 0, &hello.into()).await?;
    match answer(&mut ws, 0).await?.0 {
        ServerFrame::Reply(Reply {
            body: ReplyBody::Welcome(welcome),
            ..
        }) => Ok((ws, welcome)),
        other => Err(Refused::Other(anyhow::anyhow!("no welcome: {other:?}"))),
    }
}

/// Signs `user` in with no anchors; fails on any refusal.
pub async fn signed_in(addr: SocketAddr, config: &Config, user: &str) -> anyhow::Result<Ws> {
    match sign_in(addr, config, user, Vec::new()).await {
        Ok((ws, _)) => Ok(ws),
        Err(Refused::Busy(_)) => bail!("{user}: the edge is busy"),
        Err(Refused::Other(e)) => Err(e),
    }
}

/// Sends request `id`.
pub async fn send(ws: &mut Ws, id: RequestId, body: &RequestBody) -> anyhow::Result<()> {
    ws.send(Message::Text(Request::encode(id, body).into()))
        .await?;
    Ok(())
}

/// The next frame the server sends, with its size; `None` when the socket closed.
pub async fn next_frame(ws: &mut Ws) -> anyhow::Result<Option<(ServerFrame, usize)>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(Some((serde_json::from_str(&t)?, t.len()))),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Waits for the answer to request `id` (skipping pushes); returns it and its size.
pub async fn answer(ws: &mut Ws, id: RequestId) -> anyhow::Result<(ServerFrame, usize)> {
    loop {
        let (frame, len) = next_frame(ws)
            .await?
            .context("connection ended before the answer")?;
        if frame.id() == Some(id) {
            return Ok((frame, len));
        }
    }
}

/// Sends one request; returns the frame answering it, its size in bytes and the round trip
/// (ms).
pub async fn timed_frame(
    ws: &mut Ws,
    id: RequestId,
    body: impl Into<RequestBody>,
) -> anyhow::Result<(ServerFrame, usize, f64)> {
    let t0 = Instant::now();
    send(ws, id, &body.into()).await?;
    let (frame, len) = answer(ws, id).await?;
    Ok((frame, len, t0.elapsed().as_secs_f64() * 1000.0))
}

/// Sends one request; returns the answer's body, its size in bytes and the round trip (ms).
pub async fn timed(
    ws: &mut Ws,
    id: RequestId,
    body: impl Into<RequestBody>,
) -> anyhow::Result<(ReplyBody, usize, f64)> {
    match timed_frame(ws, id, body).await? {
        (ServerFrame::Reply(reply), len, ms) => Ok((reply.body, len, ms)),
        (other, ..) => bail!("refused: {other:?}"),
    }
}
