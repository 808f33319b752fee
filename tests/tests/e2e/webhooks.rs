//! Webhooks against a real HTTP receiver started by the test: one that fails, times out,
//! answers 500 then 200 and is down for a while — nothing lost, nothing out of order per
//! conversation, every signature valid — and one that never answers, whose events go to the
//! dead-letter stream while the others carry on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchorage_protocol::request::{Hide, SetPrefs};
use anchorage_schema::admin::Scope;
use anchorage_tests::{
    HttpAnswer, TestNats, TestStack, WsClient, api_key, conv_id, dead_letters, eventually,
    fresh_database, http, metric, scrape, test_config,
};
use anchorage_webhooks::Secret;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// What the receiver does with the next requests; once they are used up, it accepts.
#[derive(Debug, Clone, Copy)]
enum Act {
    Fail(u16),
    Hang,
}

/// A delivery the receiver took, with whether its signature verified.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    body: Value,
    signed: bool,
}

#[derive(Debug, Default)]
struct Receiver {
    script: Mutex<VecDeque<Act>>,
    accepted: Mutex<Vec<Received>>,
    attempts: std::sync::atomic::AtomicUsize,
    secret: Mutex<Option<Secret>>,
}

impl Receiver {
    fn accepted(&self) -> Vec<Received> {
        self.accepted.lock().unwrap().clone()
    }
}

async fn receive(
    axum::extract::State(r): axum::extract::State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    r.attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let act = r.script.lock().unwrap().pop_front();
    match act {
        Some(Act::Fail(status)) => return StatusCode::from_u16(status).unwrap(),
        Some(Act::Hang) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            return StatusCode::OK;
        }
        None => {}
    }
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (id, ts, sig) = (
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
    );
    let signed = r.secret.lock().unwrap().as_ref().is_some_and(|s| {
        ts.parse::<i64>()
            .is_ok_and(|t| sig.split(' ').any(|one| one == s.sign(&id, t, &body)))
    });
    r.accepted.lock().unwrap().push(Received {
        id,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        signed,
    });
    StatusCode::NO_CONTENT
}

/// Serves `r` on `addr` until `stop`.
async fn serve(addr: SocketAddr, r: Arc<Receiver>, stop: CancellationToken) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    bound
}

async fn call(addr: SocketAddr, key: &str, method: &str, path: &str, body: Value) -> HttpAnswer {
    let auth = format!("Bearer {key}");
    let body = (!body.is_null()).then_some(body);
    http(
        addr,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_ref(),
    )
    .await
    .unwrap()
}

/// The seqs of the distinct events of `conv` taken, in the order first taken.
fn seqs_of(received: &[Received], conv: &str) -> Vec<u64> {
    let mut seen = std::collections::HashSet::new();
    received
        .iter()
        .filter(|r| r.body["payload"]["conv"] == conv && r.body["stream"] == "MESSAGES")
        .filter(|r| seen.insert(r.id.clone()))
        .map(|r| r.body["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn webhooks_deliver_everything_in_order_through_failures_and_dead_letter_what_never_lands() {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    config.webhooks.retry_for_secs = 3;
    config.webhooks.max_backoff_ms = 200;
    config.webhooks.timeout_ms = 500;
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let addr = stack.edge_addr();
    let (key, _) = api_key(&nats.url(), Scope::Admin, 10_000).await;

    // The flaky receiver: 500, a hang past the timeout, 503, then it takes everything.
    let flaky = Arc::new(Receiver::default());
    flaky
        .script
        .lock()
        .unwrap()
        .extend([Act::Fail(500), Act::Hang, Act::Fail(503)]);
    let stop = CancellationToken::new();
    let flaky_addr = serve("127.0.0.1:0".parse().unwrap(), flaky.clone(), stop.clone()).await;
    let created = call(
        addr,
        &key,
        "POST",
        "/v1/webhooks",
        json!({"name": "flaky", "url": format!("http://{flaky_addr}/hook"), "events": ["message.*", "group.created"]}),
    )
    .await;
    assert_eq!(created.status, 201, "{created:?}");
    let secret = created.body["secret"].as_str().unwrap().to_owned();
    *flaky.secret.lock().unwrap() = Some(Secret::parse(&secret).unwrap());
    // A dead endpoint: nothing listens there.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead = call(
        addr,
        &key,
        "POST",
        "/v1/webhooks",
        json!({"name": "dead", "url": format!("http://{dead_port}/hook"), "events": ["message.sent"]}),
    )
    .await;
    assert_eq!(dead.status, 201, "{dead:?}");
    let again = call(
        addr,
        &key,
        "POST",
        "/v1/webhooks",
        json!({"name": "dead", "url": "http://x/"}),
    )
    .await;
    assert_eq!(again.status, 409, "{again:?}");
    // No wait for the worker to pick the endpoints up: their consumers start from the
    // records' creation, so what is stored before they run is delivered too.

    for g in ["a", "b"] {
        let r = call(
            addr,
            &key,
            "POST",
            "/v1/groups",
            json!({"group": g, "title": g, "owner": "alice"}),
        )
        .await;
        assert_eq!(r.status, 201, "{r:?}");
    }
    let mut posted = std::collections::HashMap::<&str, Vec<u64>>::new();
    for n in 0..10 {
        for g in ["a", "b"] {
            let r = call(
                addr,
                &key,
                "POST",
                &format!("/v1/conversations/{g}/messages"),
                json!({"body": format!("{g}{n}"), "sender": "alice"}),
            )
            .await;
            assert_eq!(r.status, 201, "{r:?}");
            posted
                .entry(g)
                .or_default()
                .push(r.body["seq"].as_u64().unwrap());
        }
        if n == 4 {
            // The receiver goes down for a while in the middle.
            stop.cancel();
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
    }
    let stop = CancellationToken::new();
    serve(flaky_addr, flaky.clone(), stop.clone()).await;

    eventually(
        Duration::from_secs(60),
        "every message delivered",
        || async {
            let got = flaky.accepted();
            let groups = got
                .iter()
                .filter(|r| r.body["type"] == "group.created")
                .count();
            (seqs_of(&got, "a").len() == 10 && seqs_of(&got, "b").len() == 10 && groups >= 2)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let got = flaky.accepted();
    for g in ["a", "b"] {
        assert_eq!(seqs_of(&got, g), posted[g], "{g}: all, once each, in order");
    }
    assert!(got.iter().all(|r| r.signed), "every signature verifies");
    assert!(
        got.iter().any(|r| r.body["type"] == "group.created"),
        "the group events it asked for"
    );
    assert!(
        got.iter()
            .all(|r| r.body["type"] == "message.sent" || r.body["type"] == "group.created"),
        "and no others"
    );
    assert!(flaky.attempts.load(std::sync::atomic::Ordering::SeqCst) > got.len());

    // The dead endpoint's events went to the dead-letter stream with its last status, after
    // retrying for retry_for_secs — while the flaky one was served all along.
    let letters = eventually(
        Duration::from_secs(60),
        "the dead endpoint's letters",
        || async {
            let all = dead_letters(&nats.url()).await.ok()?;
            let mine: Vec<_> = all
                .into_iter()
                .filter(|h| {
                    h.get("Anchorage-Dlq-Consumer").map(String::as_str) == Some("webhook_dead")
                })
                .collect();
            (mine.len() >= 2).then_some(mine)
        },
    )
    .await
    .unwrap();
    assert_eq!(letters[0]["Anchorage-Dlq-Code"], "webhook_failed");
    assert!(
        letters[0]["Anchorage-Dlq-Reason"].contains("no answer"),
        "{letters:?}"
    );
    let listed = call(addr, &key, "GET", "/v1/webhooks/dead", Value::Null).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert!(
        listed.body["backlog"].as_u64().unwrap() > 0,
        "its backlog is visible: {listed:?}"
    );
    let metrics = scrape(addr).await;
    assert!(
        metric(
            &metrics,
            "anchorage_webhook_deliveries_total",
            &[("endpoint", "flaky"), ("result", "delivered")]
        ) >= 20.0
    );
    assert!(
        metric(
            &metrics,
            "anchorage_webhook_deliveries_total",
            &[("endpoint", "flaky"), ("result", "failed")]
        ) >= 3.0
    );
    assert!(
        metric(
            &metrics,
            "anchorage_webhook_deliveries_total",
            &[("endpoint", "dead"), ("result", "dead_lettered")]
        ) >= 1.0
    );

    // Redelivery from a time: everything again, in order.
    let before = flaky.accepted().len();
    let r = call(
        addr,
        &key,
        "POST",
        "/v1/webhooks/flaky/redeliver",
        json!({"from_time": 0}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    eventually(Duration::from_secs(30), "the redelivery", || async {
        let got = flaky.accepted();
        let again = &got[before..];
        (seqs_of(again, "a").len() == 10).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(seqs_of(&flaky.accepted()[before..], "a"), posted["a"]);

    // A time that cannot be named (the year 10000 and later) is refused, not taken for the
    // beginning of the streams.
    for from in [
        json!({"from_time": 253_402_300_800_000_i64}),
        json!({"from_time": i64::MAX}),
    ] {
        let r = call(addr, &key, "POST", "/v1/webhooks/flaky/redeliver", from).await;
        assert_eq!(r.status, 400, "{r:?}");
    }

    // Deleted: nothing more.
    assert_eq!(
        call(addr, &key, "DELETE", "/v1/webhooks/flaky", Value::Null)
            .await
            .status,
        200
    );
    assert_eq!(
        call(addr, &key, "GET", "/v1/webhooks/flaky", Value::Null)
            .await
            .status,
        404
    );
    stop.cancel();
    stack.stack.stop().await.unwrap();
}

/// The moderation service the before-send hook asks: by the body's text.
async fn moderate(
    axum::extract::State(secret): axum::extract::State<Arc<Secret>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let signed = h("webhook-timestamp")
        .parse::<i64>()
        .is_ok_and(|t| h("webhook-signature") == secret.sign(&h("webhook-id"), t, &body));
    if !signed {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    let draft: Value = serde_json::from_slice(&body).unwrap();
    let verdict = match draft["body"].as_str().unwrap_or("") {
        "bad" => json!({"action": "reject", "reason": "no bad words"}),
        "rewrite" => json!({"action": "replace", "body": {"text": "[redacted]"}}),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            json!({"action": "allow"})
        }
        "broken" => return (StatusCode::OK, "not json".into()),
        _ => json!({"action": "allow"}),
    };
    (StatusCode::OK, verdict.to_string())
}

/// A stack whose before-send hook is the moderation service above.
async fn moderated(
    on_failure: anchorage_config::OnFailure,
) -> (TestNats, TestStack, CancellationToken) {
    let secret = Secret::generate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/before-send", axum::routing::post(moderate))
        .with_state(Arc::new(Secret::parse(&secret).unwrap()));
    let stop = CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await
            .unwrap();
    });
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    config.hooks.before_send = Some(anchorage_config::BeforeSendConfig {
        url: format!("http://{hook_addr}/before-send"),
        secret,
        timeout_ms: 300,
        on_failure,
    });
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    (nats, stack, stop)
}

// The before-send hook allows, rejects (a documented code, for the socket and the API) and
// replaces; when it fails or is too slow, `fail_closed` refuses for a retry and `fail_open`
// lets the message through. Its time is measured.
#[tokio::test]
async fn the_before_send_hook_allows_rejects_replaces_and_fails_as_configured() {
    use anchorage_protocol::ErrorCode;
    use anchorage_tests::{WsClient, create_group, send_message, sync};

    let (nats, stack, stop) = moderated(anchorage_config::OnFailure::FailClosed).await;
    let addr = stack.edge_addr();
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    alice.ok(create_group("g", "G", &[])).await.unwrap();
    let fine = alice
        .ack(send_message("g", "m1", json!("hello")))
        .await
        .unwrap();
    let bad = alice
        .refused(send_message("g", "m2", json!("bad")))
        .await
        .unwrap();
    assert_eq!(
        (bad.code, bad.message.as_str()),
        (ErrorCode::Rejected, "no bad words")
    );
    let rewritten = alice
        .ack(send_message("g", "m3", json!("rewrite")))
        .await
        .unwrap();
    // A rejection does not hold back the sends after it.
    let after = alice
        .ack(send_message("g", "m4", json!("after")))
        .await
        .unwrap();
    let messages = alice.messages(sync("g", 0)).await.unwrap().messages;
    let bodies: Vec<(u64, Value)> = messages.iter().map(|m| (m.seq, m.body.clone())).collect();
    assert_eq!(
        bodies,
        vec![
            (fine.seq, json!("hello")),
            (rewritten.seq, json!({"text": "[redacted]"})),
            (after.seq, json!("after")),
        ]
    );
    for failing in ["slow", "broken"] {
        let refused = alice
            .refused(send_message("g", failing, json!(failing)))
            .await
            .unwrap();
        assert_eq!(
            refused.code,
            ErrorCode::Overloaded,
            "{failing}: {refused:?}"
        );
        assert!(refused.retry_after_ms.is_some());
        // The refused send is retried first (order), with its own id: refused again.
        let again = alice
            .refused(send_message("g", failing, json!(failing)))
            .await
            .unwrap();
        assert_eq!(again.code, ErrorCode::Overloaded);
        // Once the hook answers, the same send goes through.
        alice
            .ack(send_message("g", failing, json!("fine now")))
            .await
            .unwrap();
    }

    // The server API's posts for a user go through it too.
    let (key, _) = api_key(&nats.url(), Scope::Write, 100).await;
    let rejected = call(
        addr,
        &key,
        "POST",
        "/v1/conversations/g/messages",
        json!({"body": "bad", "sender": "alice"}),
    )
    .await;
    assert_eq!(
        (rejected.status, rejected.body["code"].as_str()),
        (422, Some("rejected")),
        "{rejected:?}"
    );
    let metrics = scrape(addr).await;
    for outcome in ["allow", "reject", "replace", "failed_closed"] {
        assert!(
            metric(
                &metrics,
                "anchorage_before_send_seconds_count",
                &[("outcome", outcome)]
            ) >= 1.0,
            "{outcome}"
        );
    }
    stack.stack.stop().await.unwrap();
    stop.cancel();

    let (_nats, stack, stop) = moderated(anchorage_config::OnFailure::FailOpen).await;
    let (mut bob, _) = WsClient::signed_in(stack.edge_addr(), "bob", "d")
        .await
        .unwrap();
    bob.ok(create_group("h", "H", &[])).await.unwrap();
    let through = bob
        .ack(send_message("h", "s1", json!("slow")))
        .await
        .unwrap();
    assert!(through.seq > 0);
    let still = bob
        .refused(send_message("h", "s2", json!("bad")))
        .await
        .unwrap();
    assert_eq!(
        still.code,
        ErrorCode::Rejected,
        "an answer is still an answer"
    );
    stack.stack.stop().await.unwrap();
    stop.cancel();
}

// An endpoint that answers with more than the poster reads: refused as no answer, without
// holding it all in memory.
#[tokio::test]
async fn an_endless_answer_is_cut_off() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { "x".repeat(3 * 1024 * 1024) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let poster = anchorage_webhooks::Poster::new(Duration::from_secs(5)).unwrap();
    let secret = Secret::parse(&Secret::generate().unwrap()).unwrap();
    let outcome = poster
        .post(
            &format!("http://{addr}/hook"),
            &secret,
            "id-1",
            b"{}".to_vec(),
        )
        .await;
    assert!(!outcome.accepted(), "{outcome}");
    assert!(outcome.to_string().contains("over"), "{outcome}");
}

/// A stack whose webhook endpoint `steady` (all `message.*` events) posts to a receiver,
/// and the group `o` (owner alice) to post in; `tweak` adjusts the configuration first.
struct Hooked {
    nats: TestNats,
    stack: TestStack,
    addr: SocketAddr,
    key: String,
    receiver: Arc<Receiver>,
    stop: CancellationToken,
}

async fn hooked(tweak: impl FnOnce(&mut anchorage_config::Config)) -> Hooked {
    let nats = TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
    tweak(&mut config);
    let stack = TestStack::start_with(config, db_dir).await.unwrap();
    let addr = stack.edge_addr();
    let (key, _) = api_key(&nats.url(), Scope::Admin, 10_000).await;
    let receiver = Arc::new(Receiver::default());
    let stop = CancellationToken::new();
    let hook = serve(
        "127.0.0.1:0".parse().unwrap(),
        receiver.clone(),
        stop.clone(),
    )
    .await;
    let created = call(
        addr,
        &key,
        "POST",
        "/v1/webhooks",
        json!({"name": "steady", "url": format!("http://{hook}/hook"), "events": ["message.*"]}),
    )
    .await;
    *receiver.secret.lock().unwrap() =
        Some(Secret::parse(created.body["secret"].as_str().unwrap()).unwrap());
    let r = call(
        addr,
        &key,
        "POST",
        "/v1/groups",
        json!({"group": "o", "title": "O", "owner": "alice"}),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    Hooked {
        nats,
        stack,
        addr,
        key,
        receiver,
        stop,
    }
}

/// Posts `m<n>` as alice in `o` until it is stored (NATS may be coming back); its seq.
async fn post_in_o(addr: SocketAddr, key: &str, n: usize) -> u64 {
    eventually(Duration::from_secs(30), "a post stored", || async {
        let r = call(
            addr,
            key,
            "POST",
            "/v1/conversations/o/messages",
            json!({"body": format!("m{n}"), "sender": "alice"}),
        )
        .await;
        (r.status == 201).then(|| r.body["seq"].as_u64().unwrap())
    })
    .await
    .unwrap()
}

// NATS goes away while events are being delivered and comes back: the worker binds its
// consumers again and every event arrives, in order, none skipped.
#[tokio::test]
async fn deliveries_survive_a_nats_outage() {
    let Hooked {
        mut nats,
        stack,
        addr,
        key,
        receiver,
        stop,
    } = hooked(|_| {}).await;
    let mut posted = Vec::new();
    for n in 0..5 {
        posted.push(post_in_o(addr, &key, n).await);
    }
    nats.server.stop(Duration::from_secs(5)).await.unwrap();
    nats.server.restart().await.unwrap();
    for n in 5..10 {
        posted.push(post_in_o(addr, &key, n).await);
    }
    let got = eventually(
        Duration::from_secs(60),
        "every message delivered",
        || async {
            let got = receiver.accepted();
            (seqs_of(&got, "o").len() == posted.len()).then_some(got)
        },
    )
    .await
    .unwrap();
    assert_eq!(seqs_of(&got, "o"), posted, "all, once each, in order");
    assert!(got.iter().all(|r| r.signed));
    stop.cancel();
    stack.stack.stop().await.unwrap();
}

// NATS goes away just as an event that its endpoint kept failing is to be dead-lettered, and
// comes back: the dead letter is asked again until NATS takes it (the endpoint is not tried for
// another whole retry period), and the endpoint's deliveries go on. A refused dead letter once
// ended the endpoint's delivery for good, without a word, until the process restarted.
#[tokio::test]
async fn a_dead_letter_refused_during_an_outage_is_asked_again_and_deliveries_go_on() {
    let Hooked {
        mut nats,
        stack,
        addr,
        key,
        receiver,
        stop,
    } = hooked(|config| {
        config.webhooks.retry_for_secs = 3;
        config.webhooks.max_backoff_ms = 500;
        // A dead letter refused while NATS is away is known soon.
        config.nats.request_timeout_ms = 500;
    })
    .await;
    receiver
        .script
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n(Act::Fail(503), 1000));
    let first = post_in_o(addr, &key, 0).await;
    eventually(Duration::from_secs(30), "a first attempt", || async {
        (receiver.attempts.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await
    .unwrap();
    nats.server.stop(Duration::from_secs(5)).await.unwrap();
    // Past the event's retry period: its dead letter is refused while NATS is away.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let attempts = receiver.attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!(attempts > 1, "the endpoint was tried again: {attempts}");
    receiver.script.lock().unwrap().clear();
    nats.server.restart().await.unwrap();
    let second = post_in_o(addr, &key, 1).await;
    let got = eventually(
        Duration::from_secs(60),
        "the next message delivered",
        || async {
            let got = receiver.accepted();
            (!seqs_of(&got, "o").is_empty()).then_some(got)
        },
    )
    .await
    .unwrap();
    assert_eq!(seqs_of(&got, "o"), vec![second], "the first was set aside");
    let dead = dead_letters(&nats.url()).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        (
            dead[0].get("Anchorage-Dlq-Code").map(String::as_str),
            dead[0].get("Anchorage-Dlq-Seq").map(String::as_str),
        ),
        (Some("webhook_failed"), Some(first.to_string().as_str())),
        "{dead:?}"
    );
    stop.cancel();
    stack.stack.stop().await.unwrap();
}

// A user's own state is stored with the user: an endpoint naming `message.hidden` or
// `conversation.prefs_changed` gets them (from `USERS`); `message.*` is the conversations'
// messages. Devices' push targets are not filters.
#[tokio::test]
async fn a_users_own_state_reaches_the_endpoints_that_name_it() {
    let Hooked {
        nats,
        stack,
        addr,
        key,
        receiver,
        stop,
    } = hooked(|_| {}).await;
    let hook = serve(
        "127.0.0.1:0".parse().unwrap(),
        receiver.clone(),
        stop.clone(),
    )
    .await;
    let own = call(
        addr,
        &key,
        "POST",
        "/v1/webhooks",
        json!({"name": "own", "url": format!("http://{hook}/hook"),
               "events": ["conversation.prefs_changed", "message.hidden"]}),
    )
    .await;
    assert_eq!(own.status, 201, "{own:?}");
    for events in [json!(["device.push_set"]), json!(["device.*"])] {
        let refused = call(
            addr,
            &key,
            "POST",
            "/v1/webhooks",
            json!({"name": "pushes", "url": format!("http://{hook}/hook"), "events": events}),
        )
        .await;
        assert_eq!(refused.status, 400, "{events}: {refused:?}");
    }
    let seq = post_in_o(addr, &key, 0).await;
    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    alice
        .ok(Hide {
            conv: conv_id("o"),
            seqs: vec![seq],
        })
        .await
        .unwrap();
    alice
        .ok(SetPrefs {
            conv: conv_id("o"),
            pinned: Some(true),
            archived: None,
            muted_until: None,
            draft: None,
            notify: None,
        })
        .await
        .unwrap();
    // Each endpoint gets what it names, once: `steady` (`message.*`) the post, `own` the hide
    // and the pin.
    let got = eventually(Duration::from_secs(30), "the user's state", || async {
        let got = receiver.accepted();
        let types: Vec<String> = got
            .iter()
            .map(|r| r.body["type"].as_str().unwrap_or("").to_owned())
            .collect();
        (types.len() >= 3).then_some(got)
    })
    .await
    .unwrap();
    let mut types: Vec<(&str, &str)> = got
        .iter()
        .map(|r| {
            (
                r.body["type"].as_str().unwrap(),
                r.body["stream"].as_str().unwrap(),
            )
        })
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        vec![
            ("conversation.prefs_changed", "USERS"),
            ("message.hidden", "USERS"),
            ("message.sent", "MESSAGES"),
        ],
        "{got:?}"
    );
    drop(nats);
    stop.cancel();
    stack.stack.stop().await.unwrap();
}

// Under an `Idempotency-Key`, an endpoint's creation asked again (its answer lost) gets the same
// answer, secret included, and a redelivery asked again starts over once; the key with another
// request is a conflict.
#[tokio::test]
async fn webhook_changes_under_a_key_apply_once() {
    let Hooked {
        nats,
        stack,
        addr,
        key,
        receiver: _,
        stop,
    } = hooked(|_| {}).await;
    let keyed = |method: &'static str, path: &'static str, body: Value, idem: &'static str| {
        let key = key.clone();
        async move {
            let auth = format!("Bearer {key}");
            http(
                addr,
                method,
                path,
                &[("Authorization", &auth), ("Idempotency-Key", idem)],
                Some(&body),
            )
            .await
            .unwrap()
        }
    };
    let create = |url: &'static str| {
        keyed(
            "POST",
            "/v1/webhooks",
            json!({"name": "crm", "url": url, "events": ["group.*"]}),
            "create-crm",
        )
    };
    let first = create("https://crm.example.com/in").await;
    assert_eq!(first.status, 201, "{first:?}");
    let again = create("https://crm.example.com/in").await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body, first.body, "the same answer, secret included");
    let other = create("https://other.example.com/in").await;
    assert_eq!(other.status, 409, "{other:?}");
    // Credentials in a URL would show in logs and dead letters: refused, as are URLs that
    // name no host.
    for url in [
        "https://user:pass@crm.example.com/in",
        "http://",
        "http://a b/",
    ] {
        let refused = call(
            addr,
            &key,
            "POST",
            "/v1/webhooks",
            json!({"name": "bad", "url": url, "events": ["group.*"]}),
        )
        .await;
        assert_eq!(refused.status, 400, "{url}: {refused:?}");
    }
    let unkeyed = call(
        addr,
        &key,
        "POST",
        "/v1/webhooks",
        json!({"name": "crm", "url": "https://crm.example.com/in", "events": ["group.*"]}),
    )
    .await;
    assert_eq!(unkeyed.status, 409, "{unkeyed:?}");

    let redeliver = |from: Value| keyed("POST", "/v1/webhooks/crm/redeliver", from, "again-1");
    let started = redeliver(json!({"from_seq": 1})).await;
    assert_eq!(started.status, 200, "{started:?}");
    let repeat = redeliver(json!({"from_seq": 1})).await;
    assert_eq!(
        (
            repeat.status,
            &repeat.body["seq"],
            &repeat.body["duplicate"]
        ),
        (200, &started.body["seq"], &json!(true)),
        "{repeat:?}"
    );
    let reused = redeliver(json!({"from_seq": 2})).await;
    assert_eq!(reused.status, 409, "{reused:?}");
    drop(nats);
    stop.cancel();
    stack.stack.stop().await.unwrap();
}
