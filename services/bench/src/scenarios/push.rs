//! `bench push`: one message to a 100,000-member group of which 10,000 members are offline
//! with an FCM target; pushes/s until every one of them was notified, through a local FCM
//! that fails 10% of calls (503). Next to the same number of calls made straight to the same
//! provider by a bare client with the same concurrency: what the outbox, the decisions and
//! the retries cost on top. Every member must be notified exactly once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anchorage_schema::event::{MessageSent, PushTargetSet};
use anchorage_schema::push::PushTarget;
use anchorage_schema::{Actor, ClientMsgId, ConversationId, DeviceId, Envelope, EventId, UserId};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::env::{BenchEnv, Sizes, big_group, progress, projected, publish_all, rate};

/// Every n-th call to the fake provider fails.
const FAIL_EVERY: usize = 10;

/// The fake FCM: what it took per token, and calls in all.
#[derive(Default)]
struct Fake {
    calls: AtomicUsize,
    taken: Mutex<HashMap<String, usize>>,
}

async fn token() -> String {
    json!({"access_token": "bench", "expires_in": 3600}).to_string()
}

async fn send(State(fake): State<Arc<Fake>>, body: String) -> (StatusCode, &'static str) {
    let n = fake.calls.fetch_add(1, Ordering::SeqCst) + 1;
    if n.is_multiple_of(FAIL_EVERY) {
        return (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":{"code":503}}"#);
    }
    let token = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["message"]["token"].as_str().map(str::to_owned))
        .unwrap_or_default();
    *fake
        .taken
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(token)
        .or_default() += 1;
    (StatusCode::OK, r#"{"name":"projects/bench/messages/1"}"#)
}

impl Fake {
    fn distinct(&self) -> usize {
        self.taken.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn taken(&self) -> usize {
        self.taken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum()
    }

    fn reset(&self) {
        self.calls.store(0, Ordering::SeqCst);
        self.taken.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The test RSA key of the repository's push fixtures signs the token requests.
fn service_account(
    env: &BenchEnv,
    addr: std::net::SocketAddr,
) -> anyhow::Result<std::path::PathBuf> {
    let cwd = std::env::current_dir()?;
    let key = cwd
        .ancestors()
        .map(|d| d.join("tests/push/fcm-test-key.pem"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("no tests/push/fcm-test-key.pem here or above"))?;
    let account = json!({
        "client_email": "bench@bench.iam.gserviceaccount.com",
        "private_key": std::fs::read_to_string(key)?,
        "token_uri": format!("http://{addr}/token"),
    });
    let path = env.dir.path().join("fcm.json");
    std::fs::write(&path, account.to_string())?;
    Ok(path)
}

fn user(i: usize) -> anyhow::Result<UserId> {
    Ok(UserId::parse(format!("u{i:06}"))?)
}

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let offline = (s.members / 10).max(1);
    let fake = Arc::new(Fake::default());
    let router = axum::Router::new()
        .route("/token", post(token))
        .route("/v1/projects/bench/messages:send", post(send))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut config = env.config.clone();
    config.push.grace_ms = 0;
    config.push.max_backoff_ms = 1000;
    config.push.fcm = Some(anchorage_config::FcmConfig {
        project_id: "bench".into(),
        credentials: service_account(env, addr)?,
        endpoint: format!("http://{addr}"),
    });
    let concurrency = config.push.concurrency;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stack = anchorage::stack::Stack::start(&config, listener).await?;
    let bus = env.bus().await?;

    progress(&format!("a group of {} members", s.members));
    big_group(&bus, &stack, &[], s.members).await?;
    progress(&format!("{offline} of them with an FCM target"));
    let targets = (0..offline).map(|i| {
        let u = user(i * 10)?;
        let set = PushTargetSet {
            user: u.clone(),
            device: DeviceId::parse("phone")?,
            target: PushTarget::Fcm {
                token: format!("token-{i}"),
            },
            preview: true,
        };
        let env = Envelope::new(
            EventId::parse(format!("bench:push:{i}"))?,
            anchorage_schema::now_ms(),
            Actor::User {
                user: u.clone(),
                device: DeviceId::parse("phone")?,
            },
            set,
        );
        Ok((anchorage_schema::subjects::user(&u), env))
    });
    publish_all(&bus, targets).await?;
    let users_end = bus.stream_state("USERS").await?.last_seq.0;
    projected(&stack, "users", users_end).await?;

    progress("one message to the group; notifying every offline member");
    let conv = ConversationId::parse("big")?;
    let membership = bus.stream_state("MEMBERSHIP").await?.last_seq;
    let sent = MessageSent {
        conv: conv.clone(),
        sender: UserId::parse("owner")?,
        device: DeviceId::parse("d")?,
        client_msg_id: ClientMsgId::parse("push-1")?,
        body: Value::String("the release is out".into()),
        client_ts: anchorage_schema::now_ms(),
        reply_to: None,
        mentions: Vec::new(),
        mention_all: false,
        attachments: Vec::new(),
    };
    let message = Envelope::new(
        EventId::parse("bench:push:message")?,
        anchorage_schema::now_ms(),
        Actor::User {
            user: UserId::parse("owner")?,
            device: DeviceId::parse("d")?,
        },
        sent,
    );
    let started = Instant::now();
    bus.publish_event_pipelined(
        &anchorage_schema::subjects::message(&conv),
        &message,
        Some(membership),
    )
    .await?
    .stored()
    .await?;
    let deadline = started + Duration::from_secs(600);
    while fake.distinct() < offline {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {offline} notified in 600 s",
            fake.distinct()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours_elapsed = started.elapsed();
    // Anything sent twice would show now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ours_calls, ours_taken, ours_distinct) = (
        fake.calls.load(Ordering::SeqCst),
        fake.taken(),
        fake.distinct(),
    );
    let (backlog, _) = stack.store.push_backlog().await?;
    stack.stop().await?;

    progress("the same calls straight to the provider");
    fake.reset();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let started = Instant::now();
    let url = format!("http://{addr}/v1/projects/bench/messages:send");
    let calls = futures::stream::iter(0..offline)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let body = json!({"message": {
                    "token": format!("token-{i}"),
                    "notification": {"title": "big", "body": "owner: the release is out"},
                    "data": {"conv": "big", "seq": "1", "badge": "1"},
                }});
                // Again until taken, as a client that loses nothing must.
                loop {
                    let answer = client
                        .post(&url)
                        .bearer_auth("bench")
                        .json(&body)
                        .send()
                        .await;
                    if answer.is_ok_and(|a| a.status().is_success()) {
                        return;
                    }
                }
            }
        })
        .buffer_unordered(concurrency);
    calls.collect::<Vec<()>>().await;
    let bare_elapsed = started.elapsed();
    bus.close().await;

    let ours = rate(offline, ours_elapsed);
    let bare = rate(offline, bare_elapsed);
    Ok(json!({
        "members": s.members,
        "offline_with_target": offline,
        "provider_fails_every": FAIL_EVERY,
        "concurrency": concurrency,
        "ours": {
            "pushes_per_sec": ours,
            "all_notified_ms": ours_elapsed.as_millis() as u64,
            "provider_calls": ours_calls,
            "notified": ours_taken,
            "duplicates": ours_taken - ours_distinct,
            "lost": offline - ours_distinct,
            "left_in_outbox": backlog,
        },
        "bare_provider_calls": {
            "pushes_per_sec": bare,
            "all_taken_ms": bare_elapsed.as_millis() as u64,
        },
        "ratio": ours / bare,
    }))
}
