//! One WebSocket connection: admission, `hello`, the reader loop and the writer task.
//!
//! - **Admission.** At most `edge.max_connections` sockets; past that, or once the edge is
//!   shutting down, the upgrade is refused with `503` and a jittered `Retry-After`, so a
//!   reconnect storm spreads out. Browser `Origin`s are checked against
//!   `edge.allowed_origins`.
//! - **Limits.** Frames and messages over `edge.max_frame_bytes` close the socket with 1009;
//!   every request draws from a per-connection and a per-user token bucket, and past them is
//!   answered `rate_limited` with a `retry_after_ms`.
//! - **Authentication.** The first frame must be `hello` with a device token, within
//!   `edge.hello_timeout_ms`. A bad token closes with 4001, an expired one with 4002, a revoked
//!   session with 4005; a token that expires during the connection closes it with 4002.
//! - **Order.** Requests of one connection are handled one after the other, so a sender's
//!   messages are stored in the order it sent them.
//! - **Writer.** Frames go through a bounded queue to a writer task that batches them into
//!   one flush; a full queue closes the connection with 4008 (resync on reconnect).

use std::time::{Duration, Instant};

use anchorage_protocol::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, RequestId, ServerFrame, close, decode_client_frame,
};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::EdgeState;
use crate::auth::{Claims, TokenError};
use crate::hub::{ConnHandle, Frame};
use crate::limits::Bucket;
use crate::session::{AckFuture, Session};

/// Sends one connection may have in flight before it waits for the oldest acknowledgement.
const MAX_INFLIGHT_SENDS: usize = 256;

/// Upgrades `GET /ws` to a WebSocket, if admitted.
pub async fn upgrade(
    State(state): State<EdgeState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !state.config.allowed_origins.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN)
        && !state
            .config
            .allowed_origins
            .iter()
            .any(|o| origin.as_bytes() == o.as_bytes())
    {
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if state.shutdown.is_cancelled() {
        return busy("edge shutting down\n");
    }
    let Ok(permit) = state.admission.clone().try_acquire_owned() else {
        return busy("edge at capacity\n");
    };
    let max = state.config.max_frame_bytes as usize;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| connection(socket, state, permit))
}

/// `503` with a jittered `Retry-After`, so refused clients come back spread out.
fn busy(why: &'static str) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    let retry = 1 + crate::jitter(5);
    if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

type Sink = SplitSink<WebSocket, Message>;

async fn send_close(sink: &mut Sink, code: u16, reason: &str) {
    // A close frame carries at most 125 bytes: 2 for the code, the rest for the reason.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    // A client that stopped reading may never take the close frame: do not wait for it.
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }))),
    )
    .await;
}

pub(crate) fn frame(f: &ServerFrame) -> Frame {
    Utf8Bytes::from(f.to_json())
}

fn error_frame(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> ServerFrame {
    ServerFrame::Error {
        id,
        code,
        message: message.into(),
        retry_after_ms: None,
    }
}

/// Waits for a valid `hello` and checks its token; answers bad frames meanwhile.
async fn await_hello(
    state: &EdgeState,
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
) -> Result<(RequestId, Claims, ClientFrame), (u16, String)> {
    let max = state.config.max_frame_bytes as usize;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(state.config.hello_timeout_ms);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let text = match next {
            Err(_) => return Err((close::HELLO_TIMEOUT, "no hello in time".into())),
            Ok(None) | Ok(Some(Err(_))) => return Err((0, String::new())),
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(_)))) => return Err((0, String::new())),
            Ok(Some(Ok(Message::Binary(_)))) => {
                let f = error_frame(None, ErrorCode::BadFrame, "frames are JSON text");
                let _ = sink.send(Message::Text(frame(&f))).await;
                continue;
            }
            Ok(Some(Ok(_))) => continue,
        };
        let decoded = match decode_client_frame(&text, max) {
            Ok(f) => f,
            Err((id, err)) => {
                let f = ServerFrame::from_frame_error(id, &err);
                let _ = sink.send(Message::Text(frame(&f))).await;
                continue;
            }
        };
        let ClientFrame::Hello {
            id,
            protocol,
            token,
            ..
        } = &decoded
        else {
            let f = error_frame(
                request_id(&decoded),
                ErrorCode::HelloRequired,
                "send hello with a device token first",
            );
            let _ = sink.send(Message::Text(frame(&f))).await;
            continue;
        };
        let id = *id;
        if *protocol != PROTOCOL_VERSION {
            let f = error_frame(
                Some(id),
                ErrorCode::UnsupportedProtocol,
                format!("this server speaks protocol {PROTOCOL_VERSION}"),
            );
            let _ = sink.send(Message::Text(frame(&f))).await;
            return Err((close::UNSUPPORTED_PROTOCOL, "unsupported protocol".into()));
        }
        let claims = match state.verifier.verify(token) {
            Ok(c) => c,
            Err(err) => {
                let code = match err {
                    TokenError::Expired => close::TOKEN_EXPIRED,
                    _ => close::AUTH_FAILED,
                };
                return Err((code, err.to_string()));
            }
        };
        match state
            .store
            .is_revoked(claims.sub.as_str(), claims.device.as_str())
            .await
        {
            Ok(false) => {}
            Ok(true) => return Err((close::REVOKED, "session revoked".into())),
            Err(err) => {
                tracing::warn!(error = %err, "checking revocation");
                return Err((close::GOING_AWAY, "try again".into()));
            }
        }
        return Ok((id, claims, decoded));
    }
}

/// The request id of any client frame.
pub fn request_id(f: &ClientFrame) -> Option<RequestId> {
    Some(match f {
        ClientFrame::Hello { id, .. }
        | ClientFrame::Ping { id }
        | ClientFrame::Send { id, .. }
        | ClientFrame::Sync { id, .. }
        | ClientFrame::History { id, .. }
        | ClientFrame::Read { id, .. }
        | ClientFrame::Received { id, .. }
        | ClientFrame::OpenDirect { id, .. }
        | ClientFrame::CreateGroup { id, .. }
        | ClientFrame::AddMembers { id, .. }
        | ClientFrame::RemoveMembers { id, .. }
        | ClientFrame::Leave { id, .. }
        | ClientFrame::SetRole { id, .. }
        | ClientFrame::MuteMember { id, .. }
        | ClientFrame::SetNickname { id, .. }
        | ClientFrame::UpdateGroup { id, .. }
        | ClientFrame::DismissGroup { id, .. }
        | ClientFrame::GroupVersions { id, .. }
        | ClientFrame::MembersSync { id, .. }
        | ClientFrame::MembersFetch { id, .. }
        | ClientFrame::MembersSyncBatch { id, .. }
        | ClientFrame::MembersSearch { id, .. }
        | ClientFrame::MembersUnsubscribe { id, .. } => *id,
    })
}

/// Serves one upgraded socket. Split before the future starts, so the socket itself is not
/// kept in it for the connection's lifetime.
fn connection(
    socket: WebSocket,
    state: EdgeState,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    serve(sink, stream, state, permit)
}

async fn serve(
    mut sink: Sink,
    mut stream: SplitStream<WebSocket>,
    state: EdgeState,
    _permit: OwnedSemaphorePermit,
) {
    let (hello_id, claims, hello) =
        match Box::pin(await_hello(&state, &mut sink, &mut stream)).await {
            Ok(h) => h,
            Err((0, _)) => return,
            Err((code, reason)) => {
                Box::pin(send_close(&mut sink, code, &reason)).await;
                return;
            }
        };
    // An edge that began shutting down while the hello was on its way welcomes no one: the
    // client would be closed right after, in the middle of its resync.
    if state.shutdown.is_cancelled() {
        Box::pin(send_close(
            &mut sink,
            close::GOING_AWAY,
            "edge shutting down",
        ))
        .await;
        return;
    }
    let (tx, rx) = mpsc::channel::<Frame>(state.config.queue_frames as usize);
    let conn = ConnHandle::new(
        state.hub.next_conn_id(),
        claims.sub.clone(),
        claims.device.clone(),
        tx.clone(),
    );
    let writer = tokio::spawn(writer(sink, rx, conn.clone()));
    let conn_id = conn.id;
    match Box::pin(state.hub.register(conn.clone())).await {
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "registering a connection");
            conn.close_with(close::GOING_AWAY);
            let _ = writer.await;
            return;
        }
    }
    let expires = expiry(&claims);
    let mut bucket = Bucket::new(state.config.rate_per_sec, state.config.rate_burst);
    let max = state.config.max_frame_bytes as usize;
    let shutdown = state.shutdown.clone();
    // What an idle connection keeps is what it costs: the state moves into the session, the
    // hello is dropped once answered, and the larger futures are boxed while they run.
    let mut session = Session::new(state, claims, conn_id, tx);
    Box::pin(session.hello(hello_id, &hello)).await;
    drop(hello);
    // Sends whose acknowledgements are still to come, answered in order as they arrive.
    let mut inflight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => { conn.close_with(close::GOING_AWAY); break; }
            _ = tokio::time::sleep_until(expires) => { conn.close_with(close::TOKEN_EXPIRED); break; }
            _ = conn.kicked() => break,
            Some(answer) = inflight.next(), if !inflight.is_empty() => {
                session.reply(answer).await;
                continue;
            }
            m = stream.next() => m,
        };
        let text = match message {
            Some(Err(err)) => {
                // The socket read failed; a frame over the size limit gets its precise code.
                let e = err.to_string();
                if e.contains("too long") || e.contains("Space limit") {
                    conn.close_with(close::TOO_BIG);
                }
                break;
            }
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(_))) => {
                session
                    .reply(error_frame(
                        None,
                        ErrorCode::BadFrame,
                        "frames are JSON text",
                    ))
                    .await;
                continue;
            }
            Some(Ok(_)) => continue,
        };
        let decoded = match decode_client_frame(&text, max) {
            Ok(f) => f,
            Err((id, err)) => {
                session.reply(ServerFrame::from_frame_error(id, &err)).await;
                continue;
            }
        };
        let limited = bucket
            .take(Instant::now())
            .and_then(|()| session.state.user_limits.take(&session.claims.sub));
        if let Err(wait) = limited {
            session
                .reply(ServerFrame::Error {
                    id: request_id(&decoded),
                    code: ErrorCode::RateLimited,
                    message: "too many requests".into(),
                    retry_after_ms: Some(wait),
                })
                .await;
            continue;
        }
        if matches!(decoded, ClientFrame::Send { .. }) {
            if inflight.len() >= MAX_INFLIGHT_SENDS
                && let Some(answer) = inflight.next().await
            {
                session.reply(answer).await;
            }
        } else {
            // Anything but a send waits for the sends before it: answers keep the order.
            while let Some(answer) = inflight.next().await {
                session.reply(answer).await;
            }
        }
        if let Some(ack) = Box::pin(session.handle(decoded)).await {
            inflight.push_back(ack);
        }
    }
    // Sends still in flight go unanswered: the client sends them again under the same ids
    // and gets the stored seqs.
    drop(inflight);
    session.state.hub.unregister(conn_id);
    drop(session);
    conn.close_with(close::GOING_AWAY);
    // The writer may be stuck on a socket the client no longer reads: give it a moment to
    // finish, then drop the socket.
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        abort.abort();
    }
}

/// When the token stops being valid, as a deadline.
fn expiry(claims: &Claims) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    tokio::time::Instant::now() + Duration::from_secs(claims.exp.saturating_sub(now))
}

/// Sends queued frames, several per flush, until the connection is asked to close.
async fn writer(mut sink: Sink, mut rx: mpsc::Receiver<Frame>, conn: ConnHandle) {
    loop {
        tokio::select! {
            biased;
            code = conn.kicked() => {
                // Deliver what is already queued unless the client is too slow to take it.
                if code != close::SLOW_CONSUMER {
                    while let Ok(f) = rx.try_recv() {
                        if sink.feed(Message::Text(f)).await.is_err() {
                            return;
                        }
                    }
                    let _ = sink.flush().await;
                }
                let reason = match code {
                    close::SLOW_CONSUMER => "too slow: reconnect and resync from your anchors",
                    close::TOO_BIG => "frame too large",
                    close::TOKEN_EXPIRED => "token expired",
                    close::REVOKED => "session revoked",
                    _ => "going away",
                };
                send_close(&mut sink, code, reason).await;
                return;
            }
            next = rx.recv() => {
                let Some(first) = next else { return };
                if sink.feed(Message::Text(first)).await.is_err() {
                    return;
                }
                for _ in 0..64 {
                    match rx.try_recv() {
                        Ok(f) => {
                            if sink.feed(Message::Text(f)).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    fn future_size<A, B, C, Fut>(_: impl Fn(A, B, C) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    #[test]
    fn an_idle_connection_keeps_a_small_future() {
        // Every connected socket holds one of these for its lifetime: the larger futures it
        // awaits now and then are boxed, the shared state is a pointer. (It was 7 KiB.)
        let connection = future_size(super::connection);
        assert!(connection <= 3 * 1024, "{connection} bytes");
        assert_eq!(std::mem::size_of::<crate::EdgeState>(), 8);
    }
}
