//! One WebSocket connection: admission, `hello`, the reader loop and the writer task.
//!
//! - **Admission.** At most `edge.max_connections` signed-in sockets, and apart from them at
//!   most `edge.max_pending` sockets still without `hello` (`edge.max_pending_per_ip` from one
//!   address); past those, or once the edge is shutting down, the upgrade is refused with
//!   `503` and a jittered `Retry-After`, so a reconnect storm spreads out. Browser `Origin`s
//!   are checked against `edge.allowed_origins`.
//! - **Limits.** Frames and messages over `edge.max_frame_bytes` close the socket with 1009,
//!   before `hello` too; a text frame that is not UTF-8 closes it with 1007. Every frame —
//!   undecodable ones included — draws from a per-connection and a per-user token bucket, and
//!   past them is answered `rate_limited` with a `retry_after_ms`; a client that keeps sending
//!   while limited (twice its burst plus a pipelined window of sends in a row) is closed with
//!   4029. Before `hello`, a few bad frames are
//!   answered, then the socket is closed with 4029.
//! - **Authentication.** The first frame must be `hello` with a device token, within
//!   `edge.hello_timeout_ms`. A bad token closes with 4001, an expired one with 4002, a revoked
//!   session with 4005 — checked after the connection is registered, against the projection
//!   and the revocations this edge heard live, so a revocation that returned is never missed;
//!   a token that expires during the connection closes it with 4002.
//! - **Order.** Requests of one connection are handled one after the other, so a sender's
//!   messages are stored in the order it sent them.
//! - **Writer.** Frames go through a queue bounded in frames and bytes (see [`crate::outbox`])
//!   to a writer task that batches them into one flush; a full queue closes the connection
//!   with 4008 (resync on reconnect). The writer stops writing data at once and sends the
//!   close frame after what the socket already holds, so a client that reads, however
//!   slowly, gets the 4008.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anchorage_protocol::request::Hello;
use anchorage_protocol::{Request, RequestBody, RequestId, ServerFrame, close, decode_request};
use axum::Extension;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};

use crate::auth::{Claims, SignInError, TokenError};
use crate::limits::{Bucket, PendingPlace};
use crate::live::{ConnHandle, Frame, frame};
use crate::outbox::{self, Inbox};
use crate::requests::{AckFuture, RequestError, SendAnswer, Session};
use crate::{EdgeState, PeerAddr};

/// Sends one connection may have in flight before it waits for the oldest acknowledgement.
const MAX_INFLIGHT_SENDS: usize = 256;
/// Frames answered before `hello` before the socket is closed with 4029.
const MAX_FRAMES_BEFORE_HELLO: u32 = 16;
/// How long a connection closed as too slow has to read what its socket holds and the close.
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Upgrades `GET /ws` to a WebSocket, if admitted.
pub async fn upgrade(
    State(state): State<EdgeState>,
    peer: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
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
    if state.admission.available_permits() == 0 {
        return busy("edge at capacity\n");
    }
    // Until it signs in, the socket holds a pending place, never one of max_connections.
    let ip = peer.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(p)| p.0.ip());
    let Some(place) = state.pending.admit(ip) else {
        return busy("too many sockets waiting to sign in\n");
    };
    // A plain GET gets the same `503` a refused upgrade would: browsers' WebSockets do not
    // show a refused upgrade's `Retry-After`, so clients ask this way after a failed attempt.
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let max = state.config.max_frame_bytes as usize;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| connection(socket, state, place))
}

/// `503` with a jittered `Retry-After`, so refused clients come back spread out.
fn busy(why: &'static str) -> Response {
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    let retry = 1 + anchorage_schema::backoff::jitter(5);
    if let Ok(v) = HeaderValue::from_str(&retry.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

type Sink = SplitSink<WebSocket, Message>;

async fn send_close(sink: &mut Sink, code: u16, reason: &str) {
    // A client that stopped reading may never take the close frame: do not wait for it.
    send_close_within(sink, code, reason, Duration::from_secs(1)).await;
}

async fn send_close_within(sink: &mut Sink, code: u16, reason: &str, within: Duration) {
    // A close frame carries at most 125 bytes: 2 for the code, the rest for the reason.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason[..end];
    let _ = tokio::time::timeout(
        within,
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        }))),
    )
    .await;
}

/// The close code and reason for a failed socket read, if the client is owed one: a frame
/// over the size limit (1009) or a text frame that is not UTF-8 (1007).
fn read_failure(err: &axum::Error) -> Option<(u16, &'static str)> {
    let e = err.to_string();
    if e.contains("too long") || e.contains("Space limit") {
        Some((close::TOO_BIG, "frame too large"))
    } else if e.contains("UTF-8") {
        Some((close::INVALID_PAYLOAD, "text frames must be UTF-8"))
    } else {
        None
    }
}

/// Waits for a valid `hello` and checks its token; answers bad frames meanwhile (a few).
async fn await_hello(
    state: &EdgeState,
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
) -> Result<(RequestId, Claims, Hello), (u16, String)> {
    let max = state.config.max_frame_bytes as usize;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(state.config.hello_timeout_ms);
    let mut answered = 0u32;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        if matches!(
            next,
            Ok(Some(Ok(Message::Text(_)
                | Message::Binary(_)
                | Message::Ping(_))))
        ) {
            answered += 1;
            if answered > MAX_FRAMES_BEFORE_HELLO {
                return Err((close::RATE_LIMITED, "too many frames before hello".into()));
            }
        }
        let text = match next {
            Err(_) => return Err((close::HELLO_TIMEOUT, "no hello in time".into())),
            Ok(Some(Err(err))) => {
                return Err(
                    read_failure(&err).map_or((0, String::new()), |(code, why)| (code, why.into()))
                );
            }
            Ok(None) => return Err((0, String::new())),
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(Message::Close(_)))) => return Err((0, String::new())),
            Ok(Some(Ok(Message::Binary(_)))) => {
                let f = RequestError::NotText.into_frame(None);
                let _ = sink.send(Message::Text(frame(&f))).await;
                continue;
            }
            Ok(Some(Ok(_))) => continue,
        };
        let request = match decode_request(&text, max) {
            Ok(r) => r,
            Err((id, err)) => {
                let f = RequestError::Frame(err).into_frame(id);
                let _ = sink.send(Message::Text(frame(&f))).await;
                continue;
            }
        };
        let Request {
            id,
            body: RequestBody::Hello(hello),
        } = request
        else {
            let f = RequestError::HelloRequired.into_frame(Some(request.id));
            let _ = sink.send(Message::Text(frame(&f))).await;
            continue;
        };
        return match state.verifier.sign_in(&hello) {
            Ok(claims) => Ok((id, claims, hello)),
            Err(SignInError::Protocol) => {
                let f = RequestError::UnsupportedProtocol.into_frame(Some(id));
                let _ = sink.send(Message::Text(frame(&f))).await;
                Err((close::UNSUPPORTED_PROTOCOL, "unsupported protocol".into()))
            }
            Err(SignInError::Token(err)) => {
                let code = match err {
                    TokenError::Expired => close::TOKEN_EXPIRED,
                    _ => close::AUTH_FAILED,
                };
                Err((code, err.to_string()))
            }
        };
    }
}

/// Whether the session was revoked: asked once the connection is registered, so a revocation
/// heard live before that is in the hub's memory and one heard after closes the connection.
async fn revoked(state: &EdgeState, claims: &Claims) -> Result<bool, (u16, String)> {
    if state.hub.revoked(&claims.sub, &claims.device) {
        return Ok(true);
    }
    let failed = |err: anchorage_store::StoreError| {
        tracing::warn!(error = %err, "checking revocation");
        (close::GOING_AWAY, "try again".to_owned())
    };
    let store = &state.store;
    Ok(store
        .is_revoked(claims.sub.as_str(), claims.device.as_str())
        .await
        .map_err(failed)?
        || store
            .user_deleted(claims.sub.as_str())
            .await
            .map_err(failed)?)
}

/// Serves one upgraded socket. Split before the future starts, so the socket itself is not
/// kept in it for the connection's lifetime.
fn connection(
    socket: WebSocket,
    state: EdgeState,
    place: PendingPlace,
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    serve(sink, stream, state, place)
}

async fn serve(
    mut sink: Sink,
    mut stream: SplitStream<WebSocket>,
    state: EdgeState,
    place: PendingPlace,
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
    // Signed in: the socket now takes one of max_connections instead of its pending place.
    let Ok(_permit) = state.admission.clone().try_acquire_owned() else {
        Box::pin(send_close(&mut sink, close::GOING_AWAY, "edge at capacity")).await;
        return;
    };
    drop(place);
    let _connected = crate::metrics::Connected::count();
    let (outbox, inbox) = outbox::channel(
        state.config.queue_frames as usize,
        state.queue_budget.clone(),
        &claims.sub,
    );
    let conn = ConnHandle::new(
        state.hub.next_conn_id(),
        claims.sub.clone(),
        claims.device.clone(),
        outbox,
    );
    let writer = tokio::spawn(writer(sink, inbox, conn.clone()));
    let conn_id = conn.id;
    match Box::pin(state.hub.register(conn.clone(), &state.progress)).await {
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(error = format!("{err:#}"), "registering a connection");
            conn.close_with(close::GOING_AWAY);
            let _ = writer.await;
            return;
        }
    }
    match Box::pin(revoked(&state, &claims)).await {
        Ok(false) => {}
        Ok(true) => conn.close_with(close::REVOKED),
        Err((code, _)) => conn.close_with(code),
    }
    let expires = expiry(&claims);
    let mut bucket = Bucket::new(state.config.rate_per_sec, state.config.rate_burst);
    // Refusals in a row: a client that ignores `rate_limited` is disconnected. A pipelining
    // client may have a full window of sends on the wire before it reads its first refusal,
    // so those are allowed on top of twice the burst.
    let mut strikes = 0u32;
    let max_strikes = state
        .config
        .rate_burst
        .saturating_mul(2)
        .saturating_add(MAX_INFLIGHT_SENDS as u32);
    let max = state.config.max_frame_bytes as usize;
    let shutdown = state.shutdown.clone();
    // What an idle connection keeps is what it costs: the state moves into the session, the
    // hello is dropped once answered, and the larger futures are boxed while they run.
    let mut session = Session::new(state, claims, conn.clone());
    if !conn.is_closing() {
        Box::pin(session.hello(hello_id, &hello)).await;
    }
    drop(hello);
    // Sends whose acknowledgements are still to come, answered in order as they arrive.
    let mut inflight: FuturesOrdered<AckFuture> = FuturesOrdered::new();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => { conn.close_with(close::GOING_AWAY); break; }
            _ = tokio::time::sleep_until(expires) => { conn.close_with(close::TOKEN_EXPIRED); break; }
            _ = conn.kicked() => break,
            Some(answer) = inflight.next(), if !inflight.is_empty() => {
                session.answer_send(answer).await;
                continue;
            }
            m = stream.next() => m,
        };
        let message = match message {
            Some(Err(err)) => {
                if let Some((code, _)) = read_failure(&err) {
                    if code == close::INVALID_PAYLOAD {
                        session.reply(RequestError::NotUtf8.into_frame(None)).await;
                    }
                    conn.close_with(code);
                }
                break;
            }
            None | Some(Ok(Message::Close(_))) => break,
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_) | Message::Ping(_)))) => m,
            Some(Ok(_)) => continue,
        };
        // Every frame counts against the limits, whether it decodes or not.
        let limited = bucket
            .take(Instant::now())
            .and_then(|()| session.state.user_limits.take(&session.claims.sub));
        if let Err(wait) = limited {
            strikes += 1;
            if strikes > max_strikes {
                conn.close_with(close::RATE_LIMITED);
                break;
            }
            Box::pin(refuse_limited(
                &mut session,
                &mut inflight,
                &message,
                wait,
                max,
            ))
            .await;
            continue;
        }
        strikes = 0;
        if matches!(message, Message::Ping(_)) {
            // Answered by the WebSocket layer; it only had to pass the limits.
            continue;
        }
        // Boxed: it waits for the sends before it, and the connection's future stays small.
        let decoded = match decode_message(message, max) {
            Ok(f) => Box::new(f),
            Err(refusal) => {
                Box::pin(answer_in_order(&mut session, &mut inflight, *refusal)).await;
                continue;
            }
        };
        if matches!(decoded.body, RequestBody::Send(_)) {
            if inflight.len() >= MAX_INFLIGHT_SENDS
                && let Some(answer) = inflight.next().await
            {
                session.answer_send(answer).await;
            }
        } else {
            // Anything but a send waits for the sends before it: answers keep the order.
            while let Some(answer) = inflight.next().await {
                session.answer_send(answer).await;
            }
        }
        if let Some(ack) = Box::pin(session.handle(*decoded)).await {
            inflight.push_back(ack);
        }
    }
    // Sends still in flight go unanswered: the client sends them again under the same ids
    // and gets the stored seqs.
    drop(inflight);
    session.state.hub.unregister(conn_id);
    drop(session);
    conn.close_with(close::GOING_AWAY);
    linger(writer, stream).await;
}

/// Waits for the writer to deliver the close — it may be stuck on a socket the client reads
/// slowly or not at all — and for the client to close in turn, within the grace; meanwhile
/// reads and drops what the client still sends. A socket closed with bytes unread is reset,
/// and a reset makes the client's side discard what it had not read yet: the close among it.
async fn linger(writer: tokio::task::JoinHandle<()>, mut stream: SplitStream<WebSocket>) {
    let abort = writer.abort_handle();
    let mut deadline = tokio::time::Instant::now() + SLOW_CLOSE_GRACE + Duration::from_secs(1);
    let mut writer = std::pin::pin!(writer);
    let mut written = false;
    loop {
        tokio::select! {
            _ = &mut writer, if !written => {
                written = true;
                // The close is on its way: a moment for the client's answer.
                deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            m = stream.next() => {
                if !matches!(m, Some(Ok(_))) {
                    // The client closed (or the socket failed): nothing more to read.
                    if !written {
                        let _ = tokio::time::timeout_at(deadline, &mut writer).await;
                    }
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    abort.abort();
}

/// Answers a frame refused by the rate limits, in its place: a send behind the sends still in
/// flight (and holding back the sends after it), anything else after them.
async fn refuse_limited(
    session: &mut Session,
    inflight: &mut FuturesOrdered<AckFuture>,
    message: &Message,
    wait: u64,
    max: usize,
) {
    // Decoded once, for the request id and, for a send, to hold back the sends after it
    // (see `Session::block`); a frame that does not decode still has its id if readable.
    let (id, send) = match message {
        Message::Text(t) => match decode_request(t, max) {
            Ok(Request {
                id,
                body: RequestBody::Send(send),
            }) => {
                let no = session.next_send();
                session.block(send.conv, send.client_msg_id, no);
                (Some(id), true)
            }
            Ok(request) => (Some(request.id), false),
            Err((id, _)) => (id, false),
        },
        _ => (None, false),
    };
    let refusal = RequestError::RateLimited {
        retry_after_ms: wait,
    }
    .into_frame(id);
    // Answers keep the order of requests: behind the sends still in flight.
    if send {
        inflight.push_back(SendAnswer::ready(refusal));
    } else {
        answer_in_order(session, inflight, refusal).await;
    }
}

/// The request a frame carries, or the refusal to answer it with (boxed: it is rare, and the
/// connection's future keeps only what it needs).
fn decode_message(message: Message, max: usize) -> Result<Request, Box<ServerFrame>> {
    match message {
        Message::Text(text) => decode_request(&text, max)
            .map_err(|(id, err)| Box::new(RequestError::Frame(err).into_frame(id))),
        _ => Err(Box::new(RequestError::NotText.into_frame(None))),
    }
}

/// Queues `frame` after the answers of the sends still in flight: answers keep the order of
/// the requests.
async fn answer_in_order(
    session: &mut Session,
    inflight: &mut FuturesOrdered<AckFuture>,
    frame: ServerFrame,
) {
    while let Some(answer) = inflight.next().await {
        session.answer_send(answer).await;
    }
    session.reply(frame).await;
}

/// When the token stops being valid, as a deadline (a very distant `exp` is just far away).
fn expiry(claims: &Claims) -> tokio::time::Instant {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = Duration::from_secs(claims.exp.saturating_sub(now));
    let far = Duration::from_secs(100 * 365 * 86_400);
    tokio::time::Instant::now() + left.min(far)
}

/// Sends queued frames, several per flush, until the connection is asked to close; then the
/// close frame, after what is already queued unless the client is too slow to take it.
async fn writer(mut sink: Sink, mut inbox: Inbox, conn: ConnHandle) {
    let code = loop {
        tokio::select! {
            biased;
            code = conn.kicked() => break code,
            next = inbox.recv() => {
                let Some(first) = next else { return };
                // A slow client must not keep the close from being sent: stop writing data
                // the moment the connection is asked to close (what the socket already took
                // still goes first).
                tokio::select! {
                    biased;
                    code = conn.kicked() => break code,
                    written = write_batch(&mut sink, first, &mut inbox) => {
                        if written.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let grace = if code == close::SLOW_CONSUMER {
        metrics::counter!("anchorage_slow_consumer_closes_total").increment(1);
        SLOW_CLOSE_GRACE
    } else {
        let mut delivered = Ok(());
        while let Some(f) = inbox.try_recv() {
            delivered = sink.feed(Message::Text(f)).await;
            if delivered.is_err() {
                break;
            }
        }
        if delivered.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.flush()).await;
        Duration::from_secs(1)
    };
    let reason = match code {
        close::SLOW_CONSUMER => "too slow: reconnect and resync from your anchors",
        close::TOO_BIG => "frame too large",
        close::TOKEN_EXPIRED => "token expired",
        close::REVOKED => "session revoked",
        close::INVALID_PAYLOAD => "text frames must be UTF-8",
        close::RATE_LIMITED => "too many requests after rate_limited: back off",
        _ => "going away",
    };
    send_close_within(&mut sink, code, reason, grace).await;
}

/// Writes `first` and whatever else is queued (up to 64 frames) in one flush.
async fn write_batch(sink: &mut Sink, first: Frame, inbox: &mut Inbox) -> Result<(), axum::Error> {
    sink.feed(Message::Text(first)).await?;
    for _ in 0..64 {
        match inbox.try_recv() {
            Some(f) => sink.feed(Message::Text(f)).await?,
            None => break,
        }
    }
    sink.flush().await
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
