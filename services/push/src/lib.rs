//! Offline push: notifications of new messages to devices that are not connected, through
//! FCM, APNs and Web Push, as a durable outbox.
//!
//! - **Queued from the stream.** The durable consumer `push` of MESSAGES hands over each new
//!   message. Its recipients are the members at the MEMBERSHIP position it was decided on
//!   (the worker waits for the membership projection to hold that position), less its sender
//!   and those whose settings for the conversation say `none` (or `mentions`, and it does
//!   not mention them). For each of their devices with a push target, one outbox row per
//!   conversation is raised to the message (a newer message replaces the one waiting: one
//!   notification, updated). The message is acknowledged once the rows are committed, so a
//!   crash queues it again, and a message queued before raises nothing.
//! - **Sent after a grace.** A row is due `push.grace_ms` after its message: if any of the
//!   user's devices acknowledged receiving it, or the user read past it, nothing is sent; nor
//!   while the conversation is muted (do not disturb), nor for a message revoked meanwhile.
//!   Otherwise the device's provider gets one notification, with the conversation as its
//!   collapse key and the user's exact unread total (from the projection) as the badge.
//! - **Nothing dropped.** A provider that does not answer, throttles or fails is called again
//!   with full-jitter backoff (honouring `Retry-After`) for `push.retry_for_secs`; then the
//!   row records the failure. Each row keeps its last outcome (`delivered`, `suppressed: …`,
//!   `failed: …`). A provider's "this address is no longer valid" becomes a
//!   `device.push_removed` event naming the address, so a newer registration stays.
//! - **Many workers.** A worker claims the rows it sends for a while (PostgreSQL skips rows
//!   another worker locked), so two projector processes never send the same notification.

pub mod apns;
pub mod fcm;
pub mod webpush;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anchorage_bus::{Bus, Delivery};
use anchorage_config::PushConfig;
use anchorage_schema::backoff::Backoff;
use anchorage_schema::event::PushTargetRemoved;
use anchorage_schema::push::PushTarget;
use anchorage_schema::subjects::{self, stream};
use anchorage_schema::{Actor, DeviceId, Envelope, Event, EventId, SourceId, UserId, now_ms};
use anchorage_store::Store;
use anchorage_store::push::{NewMessage, PushJob, PushMessage, PushRecordOf};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::xxh3_64;

/// The durable consumer of MESSAGES that queues notifications.
pub const CONSUMER: &str = "push";
/// Messages taken from the stream at once.
const BATCH: usize = 256;
/// How long one pull waits for a message.
const PULL_WAIT: Duration = Duration::from_secs(5);
/// How often the outbox is looked at when nothing woke the sender.
const TICK: Duration = Duration::from_millis(100);
/// Unread messages counted per conversation for the badge, as the conversation list counts.
const BADGE_CAP: u32 = 999;
/// Longest text shown in a notification, in characters.
const PREVIEW_CHARS: usize = 200;
/// Outcomes written in one transaction at most.
const RECORDS_PER_BATCH: usize = 512;
/// How often the outbox's size is measured for the metrics.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// Waits after failures to reach NATS or the database.
const PAUSES: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// How long a message waits for the projection that shows it, then is tried again.
const NOT_YET: Duration = Duration::from_millis(250);

/// What a call to a provider came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The provider took it.
    Delivered,
    /// Try again later (at the time the provider named, if it did).
    Retry(String, Option<Duration>),
    /// The address is no longer valid: the target goes.
    Rejected(String),
    /// It will never be taken (a payload or credential the provider refuses).
    Failed(String),
}

/// One notification, for any provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The conversation.
    pub conv: String,
    /// The newest message it announces.
    pub seq: u64,
    /// The title: the group's, or the sender's name; "New message" without preview.
    pub title: String,
    /// The text, when the device shows previews and the message has text.
    pub body: Option<String>,
    /// The user's unread total.
    pub badge: u64,
    /// It mentions the user, or is a 1:1 message.
    pub urgent: bool,
}

impl Notification {
    /// What the provider collapses notifications by: one per conversation (16 hex digits,
    /// within APNs' and Web Push's limits).
    pub fn collapse_key(&self) -> String {
        format!("{:016x}", xxh3_64(self.conv.as_bytes()))
    }

    /// Whether it is delivered at once rather than when the device sees fit.
    pub fn urgent(&self) -> bool {
        self.urgent
    }

    /// The APNs payload.
    pub fn apns_payload(&self) -> String {
        let mut alert = json!({ "title": self.title });
        if let Some(body) = &self.body {
            alert["body"] = json!(body);
        }
        json!({
            "aps": {
                "alert": alert,
                "badge": self.badge,
                "sound": "default",
                "thread-id": self.conv,
            },
            "conv": self.conv,
            "seq": self.seq,
        })
        .to_string()
    }

    /// The FCM `messages:send` body for `token`.
    pub fn fcm_message(&self, token: &str) -> Value {
        let key = self.collapse_key();
        let mut notification = json!({ "title": self.title });
        if let Some(body) = &self.body {
            notification["body"] = json!(body);
        }
        json!({
            "message": {
                "token": token,
                "notification": notification,
                "data": {
                    "conv": self.conv,
                    "seq": self.seq.to_string(),
                    "badge": self.badge.to_string(),
                },
                "android": {
                    "collapse_key": key,
                    "priority": if self.urgent { "HIGH" } else { "NORMAL" },
                    "notification": { "tag": key, "notification_count": self.badge },
                },
                "apns": {
                    "headers": { "apns-collapse-id": key },
                    "payload": { "aps": { "badge": self.badge, "thread-id": self.conv } },
                },
            }
        })
    }

    /// The JSON a browser's service worker decrypts.
    pub fn web_payload(&self) -> String {
        json!({
            "conv": self.conv,
            "seq": self.seq,
            "title": self.title,
            "body": self.body,
            "badge": self.badge,
        })
        .to_string()
    }
}

/// An HTTP client for provider calls, each bounded by `timeout`; `http2`: HTTP/2 only
/// (APNs).
pub(crate) fn http_client(timeout: Duration, http2: bool) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("anchorage/", env!("CARGO_PKG_VERSION")));
    if http2 {
        builder = builder.http2_prior_knowledge();
    }
    Ok(builder.build()?)
}

/// A provider's refusal: its status, the `Retry-After` it named, and its body.
pub(crate) struct Refusal {
    pub status: u16,
    pub wait: Option<Duration>,
    pub text: String,
}

/// What a call came back with: a refusal to look at, or what is settled already — taken
/// (2xx), or no answer (to try again).
pub(crate) async fn refusal(answer: reqwest::Result<reqwest::Response>) -> Result<Refusal, Sent> {
    let answer = answer.map_err(|e| Sent::Retry(format!("no answer: {e}"), None))?;
    let status = answer.status().as_u16();
    if (200..300).contains(&status) {
        return Err(Sent::Delivered);
    }
    let wait = retry_after(answer.headers());
    let text = answer.text().await.unwrap_or_default();
    Ok(Refusal { status, wait, text })
}

/// A `Retry-After` in seconds, if the answer has one (at most an hour).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// The first 200 characters of a provider's answer, on one line.
pub(crate) fn short(text: &str) -> String {
    text.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The configured providers.
#[derive(Debug, Default)]
pub struct Providers {
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    web_push: Option<webpush::WebPush>,
}

impl Providers {
    /// Those `config` configures (reading their keys).
    pub fn new(config: &PushConfig) -> anyhow::Result<Providers> {
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        Ok(Providers {
            fcm: config
                .fcm
                .as_ref()
                .map(|c| fcm::Fcm::new(c, timeout))
                .transpose()?,
            apns: config
                .apns
                .as_ref()
                .map(|c| apns::Apns::new(c, timeout))
                .transpose()?,
            web_push: config
                .web_push
                .as_ref()
                .map(|c| webpush::WebPush::new(c, timeout))
                .transpose()?,
        })
    }

    /// Whether any provider is configured.
    pub fn any(&self) -> bool {
        self.fcm.is_some() || self.apns.is_some() || self.web_push.is_some()
    }

    /// Sends `n` to `target`.
    pub async fn send(&self, target: &PushTarget, n: &Notification) -> Sent {
        let off = |name: &str| Sent::Failed(format!("{name} is not configured"));
        match target {
            PushTarget::Fcm { token } => match &self.fcm {
                Some(p) => p.send(token, n).await,
                None => off("push.fcm"),
            },
            PushTarget::Apns { token, sandbox } => match &self.apns {
                Some(p) => p.send(token, *sandbox, n).await,
                None => off("push.apns"),
            },
            PushTarget::WebPush {
                endpoint,
                p256dh,
                auth,
            } => match &self.web_push {
                Some(p) => p.send(endpoint, p256dh, auth, n).await,
                None => off("push.web_push"),
            },
        }
    }
}

/// Runs the push worker until `shutdown`: the stream consumer that queues notifications and
/// the sender that works through the outbox. Without any provider configured it only waits
/// for `shutdown` (targets are refused at registration then).
pub async fn run(
    bus: Bus,
    store: Store,
    config: PushConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let providers = Providers::new(&config)?;
    if !providers.any() {
        shutdown.cancelled().await;
        return Ok(());
    }
    let worker = Arc::new(Worker {
        bus,
        store,
        providers,
        config,
        wake: tokio::sync::Notify::new(),
    });
    let queue = tokio::spawn({
        let (worker, shutdown) = (worker.clone(), shutdown.clone());
        async move { worker.queue(shutdown).await }
    });
    let send = worker.clone().send(shutdown.clone()).await;
    shutdown.cancel();
    queue.await??;
    send
}

/// The worker's parts.
#[derive(Debug)]
struct Worker {
    bus: Bus,
    store: Store,
    providers: Providers,
    config: PushConfig,
    /// Rung when rows were queued, so the sender looks at once.
    wake: tokio::sync::Notify,
}

impl Worker {
    /// Queues notifications of the messages the consumer hands over, until `shutdown`.
    async fn queue(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut failures = 0u32;
        let mut consumer = None;
        while !shutdown.is_cancelled() {
            let c = match &consumer {
                Some(c) => c,
                None => match self.bus.pull_consumer(stream::MESSAGES, CONSUMER).await {
                    Ok(c) => consumer.insert(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "push: binding the consumer");
                        self.pause(&mut failures, &shutdown).await;
                        continue;
                    }
                },
            };
            let batch = tokio::select! {
                _ = shutdown.cancelled() => break,
                b = c.next_batch(BATCH, PULL_WAIT) => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "push: pulling messages");
                    consumer = None;
                    self.pause(&mut failures, &shutdown).await;
                    continue;
                }
            };
            // The batch is queued in one transaction and acknowledged after it: unacknowledged,
            // it comes again, so a message is never passed over unqueued.
            match self.queue_batch(&batch, &shutdown).await {
                Ok(()) => {
                    for delivery in &batch {
                        if let Err(e) = delivery.ack().await {
                            tracing::warn!(error = %e, "push: acknowledging");
                        }
                    }
                    failures = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push: queueing");
                    self.pause(&mut failures, &shutdown).await;
                }
            }
            if !batch.is_empty() {
                self.wake.notify_one();
            }
        }
        Ok(())
    }

    /// Waits after the `failures`-th failure in a row (full jitter, up to 10 s).
    async fn pause(&self, failures: &mut u32, shutdown: &CancellationToken) {
        let delay = PAUSES.delay(*failures, None);
        *failures = failures.saturating_add(1);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// Queues the notifications of the new messages among `batch`, in one transaction, once
    /// the membership projection holds every position they were decided on.
    async fn queue_batch(
        &self,
        batch: &[Delivery],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let messages: Vec<Queued> = batch.iter().filter_map(|d| self.queued(d)).collect();
        if messages.is_empty() {
            return Ok(());
        }
        // Their recipients are the members when each was decided. A message without its
        // position is decided on what is projected now.
        let needed = messages.iter().filter_map(|m| m.membership).max();
        let projected = match needed {
            Some(m) => self.membership_reached(m, shutdown).await?,
            None => self.membership_projected().await?,
        };
        let new: Vec<NewMessage<'_>> = messages
            .iter()
            .map(|m| NewMessage {
                conv: m.conv.as_str(),
                seq: m.seq,
                membership: m.membership.unwrap_or(projected),
                sender: m.sender.as_deref(),
                mentions: &m.mentions,
                mention_all: m.mention_all,
                due_at: m.due_at,
            })
            .collect();
        let raised = self.store.enqueue_pushes(&new).await?;
        metrics::counter!("anchorage_push_queued_total").increment(raised);
        Ok(())
    }

    /// What a stored event asks to be queued: only a new message has notifications.
    fn queued(&self, delivery: &Delivery) -> Option<Queued> {
        // What the projector sets aside as undecodable has nothing to announce.
        let env = Envelope::from_json(delivery.payload()).ok()?;
        let (conv, sender, mentions, mention_all) = match env.event {
            Event::MessageSent(m) => (
                m.conv,
                Some(m.sender.to_string()),
                m.mentions.iter().map(|u| u.to_string()).collect(),
                m.mention_all,
            ),
            Event::SystemMessagePosted(m) => (m.conv, None, Vec::new(), false),
            _ => return None,
        };
        // The projector sets aside a message stored under another conversation's subject.
        if delivery.subject() != subjects::message(&conv) {
            return None;
        }
        // A message older than the retry period is news to nobody (a consumer that was
        // stopped for long, a restore).
        let retry_for =
            i64::try_from(self.config.retry_for_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if now_ms().saturating_sub(env.occurred_at) > retry_for {
            return None;
        }
        let grace = i64::try_from(self.config.grace_ms).unwrap_or(i64::MAX);
        Some(Queued {
            conv: conv.to_string(),
            seq: delivery.seq.0,
            membership: delivery.membership(),
            sender,
            mentions,
            mention_all,
            due_at: env.occurred_at.max(now_ms() - grace).saturating_add(grace),
        })
    }

    /// The membership projection's checkpoint.
    async fn membership_projected(&self) -> anyhow::Result<u64> {
        Ok(self
            .store
            .checkpoint("membership")
            .await?
            .map_or(0, |c| c.last_seq))
    }

    /// Waits until the membership projection holds MEMBERSHIP position `m`; returns where it
    /// stands.
    async fn membership_reached(
        &self,
        m: u64,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<u64> {
        loop {
            let at = self.membership_projected().await?;
            if at >= m {
                return Ok(at);
            }
            tokio::select! {
                _ = shutdown.cancelled() => anyhow::bail!("shutting down"),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Works through the outbox until `shutdown`: claims what is due and sends it,
    /// `push.concurrency` calls at a time; what each came to is recorded in batches.
    async fn send(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.config.concurrency.max(1)));
        // A claim outlives the longest a decision can take: up to three provider calls (an
        // access token, the send, the send again with a renewed token), each bounded by the
        // timeout, and the database around them.
        let claim_for = i64::try_from(self.config.timeout_ms.saturating_mul(4))
            .unwrap_or(i64::MAX)
            .saturating_add(30_000);
        let (records, recorded) = tokio::sync::mpsc::unbounded_channel();
        let recorder = tokio::spawn(record(self.store.clone(), recorded));
        let mut failures = 0u32;
        let mut calls = tokio::task::JoinSet::new();
        let mut gauged = tokio::time::Instant::now() - BACKLOG_EVERY;
        while !shutdown.is_cancelled() {
            while calls.try_join_next().is_some() {}
            if gauged.elapsed() >= BACKLOG_EVERY {
                gauged = tokio::time::Instant::now();
                if let Ok((waiting, failing)) = self.store.push_backlog().await {
                    metrics::gauge!("anchorage_push_backlog").set(waiting as f64);
                    metrics::gauge!("anchorage_push_failing").set(failing as f64);
                }
            }
            let free = slots.available_permits();
            let claimed = if free == 0 {
                Ok(Vec::new())
            } else {
                let now = now_ms();
                self.store
                    .claim_pushes(
                        now,
                        now + claim_for,
                        u32::try_from(free).unwrap_or(u32::MAX),
                    )
                    .await
            };
            let jobs = match claimed {
                Ok(jobs) => {
                    failures = 0;
                    jobs
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push: claiming notifications");
                    self.pause(&mut failures, &shutdown).await;
                    continue;
                }
            };
            let full = !jobs.is_empty() && jobs.len() == free;
            if !jobs.is_empty() {
                // What the round's notifications share is read once.
                let round = Arc::new(Round {
                    projected: self
                        .store
                        .checkpoint("messages")
                        .await
                        .ok()
                        .flatten()
                        .map_or(0, |c| c.last_seq),
                    messages: tokio::sync::Mutex::new(HashMap::new()),
                });
                for job in jobs {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    let (worker, round, records) = (self.clone(), round.clone(), records.clone());
                    calls.spawn(async move {
                        let _permit = permit;
                        match worker.decide(&job, &round).await {
                            Ok((outcome, retry_at)) => {
                                let _ = records.send(PushRecordOf {
                                    job,
                                    outcome,
                                    retry_at,
                                });
                            }
                            // The claim expires and the notification is tried again.
                            Err(e) => tracing::warn!(user = %job.user, device = %job.device,
                                conv = %job.conv, error = %e,
                                "push: a notification waits for the database"),
                        }
                    });
                }
            }
            if full {
                // More may be due: wait for a free slot only.
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = calls.join_next() => {}
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        // Calls in flight finish and are recorded; what was claimed and not recorded is
        // claimed again once its claim expires.
        while calls.join_next().await.is_some() {}
        drop(records);
        recorder.await?;
        Ok(())
    }

    /// Decides about one claimed notification and sends it: what it came to, and when to try
    /// again (`None`: never).
    async fn decide(&self, job: &PushJob, round: &Round) -> anyhow::Result<(String, Option<i64>)> {
        let ctx = self.store.push_context(job).await?;
        let pass = |why: &str| format!("suppressed: {why}");
        let skip = if ctx.target.is_none() {
            Some(pass("no target"))
        } else if !ctx.member {
            Some(pass("not a member"))
        } else if ctx.read_seq >= job.seq {
            Some(pass("read"))
        } else if ctx.received_seq >= job.seq {
            Some(pass("received"))
        } else if ctx.muted_until.is_some_and(|t| t > now_ms()) {
            Some(pass("muted"))
        } else if ctx.notify.as_deref() == Some("none")
            || (ctx.notify.as_deref() == Some("mentions") && !job.mention)
        {
            Some(pass("settings"))
        } else {
            None
        };
        if let Some(outcome) = skip {
            metrics::counter!("anchorage_push_suppressed_total").increment(1);
            return Ok((outcome, None));
        }
        let Some((target_json, preview)) = ctx.target else {
            return Ok((pass("no target"), None));
        };
        let target: PushTarget = match serde_json::from_str(&target_json) {
            Ok(t) => t,
            Err(e) => return Ok((format!("failed: stored target: {e}"), None)),
        };
        // The text and the badge come from the history: it must hold the message.
        if round.projected < job.seq {
            let at = now_ms() + i64::try_from(NOT_YET.as_millis()).unwrap_or(i64::MAX);
            return Ok(("waiting for the history".into(), Some(at)));
        }
        let mut seq = job.seq;
        let mut message = self.message(round, &job.conv, seq).await?;
        if message.as_ref().is_none_or(|m| m.revoked) {
            // The newest waiting message is gone (revoked): announce the newest before it
            // that is still there, if one came since the last notification.
            match self
                .store
                .announceable(&job.conv, &job.user, job.pushed_seq, job.seq)
                .await?
            {
                Some(earlier) => {
                    seq = earlier;
                    message = self.message(round, &job.conv, seq).await?;
                }
                None => return Ok((pass("revoked"), None)),
            }
        }
        let Some(message) = message.filter(|m| !m.revoked) else {
            return Ok((pass("revoked"), None));
        };
        let badge = self.store.unread_total(&job.user, BADGE_CAP).await?;
        let mut n = notification(job, &message, preview, badge);
        n.seq = seq;
        let sent = self.providers.send(&target, &n).await;
        let provider = target.provider();
        Ok(match sent {
            Sent::Delivered => {
                metrics::counter!("anchorage_push_delivered_total", "provider" => provider)
                    .increment(1);
                ("delivered".into(), None)
            }
            Sent::Retry(why, wait) => {
                metrics::counter!("anchorage_push_retries_total", "provider" => provider)
                    .increment(1);
                let backoff = Backoff::new(
                    Duration::from_secs(1),
                    Duration::from_millis(self.config.max_backoff_ms.max(1)),
                );
                let delay = backoff
                    .delay(job.attempts, wait)
                    .max(Duration::from_millis(100));
                if self.gave_up(job, delay) {
                    metrics::counter!("anchorage_push_failed_total", "provider" => provider)
                        .increment(1);
                    let outcome = format!("failed: {why} (after {} attempts)", job.attempts + 1);
                    (outcome, None)
                } else {
                    let at = now_ms() + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                    (format!("retrying: {why}"), Some(at))
                }
            }
            Sent::Rejected(why) => {
                metrics::counter!("anchorage_push_rejected_total", "provider" => provider)
                    .increment(1);
                self.remove_target(job, &target, ctx.target_version).await?;
                (format!("failed: address rejected: {why}"), None)
            }
            Sent::Failed(why) => {
                metrics::counter!("anchorage_push_failed_total", "provider" => provider)
                    .increment(1);
                tracing::warn!(provider, error = %why, "push: a provider refused a notification");
                (format!("failed: {why}"), None)
            }
        })
    }

    /// Message `seq` of `conv`, read once per round.
    async fn message(
        &self,
        round: &Round,
        conv: &str,
        seq: u64,
    ) -> anyhow::Result<Option<PushMessage>> {
        let mut messages = round.messages.lock().await;
        let key = (conv.to_owned(), seq);
        if let Some(m) = messages.get(&key) {
            return Ok(m.clone());
        }
        let m = self.store.push_message(conv, seq).await?;
        messages.insert(key, m.clone());
        Ok(m)
    }

    /// Whether the retry period is over by the next attempt: the notification has been
    /// failing since its first failed attempt.
    fn gave_up(&self, job: &PushJob, delay: Duration) -> bool {
        let limit =
            i64::try_from(self.config.retry_for_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let since = job.failing_since.unwrap_or_else(now_ms);
        let next = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        next.saturating_sub(since) > limit
    }

    /// Records that the provider refused the target's address: the target goes, unless the
    /// device registered another address since.
    async fn remove_target(
        &self,
        job: &PushJob,
        target: &PushTarget,
        registered: u64,
    ) -> anyhow::Result<()> {
        let (Ok(user), Ok(device)) = (UserId::parse(&job.user), DeviceId::parse(&job.device))
        else {
            return Ok(());
        };
        let address = target.address().to_owned();
        // One removal per registration: the same address registered again and rejected
        // again is removed again.
        let id = format!(
            "push:{user}:{device}:rejected:{registered}:{:016x}",
            xxh3_64(address.as_bytes())
        );
        let env = Envelope::new(
            EventId::parse(id)?,
            now_ms(),
            Actor::System {
                source: SourceId::parse("anchorage")?,
            },
            PushTargetRemoved {
                user: user.clone(),
                device,
                address: Some(address),
                reason: "rejected".into(),
            },
        );
        self.bus
            .publish_event(&subjects::user(&user), &env, None)
            .await?;
        Ok(())
    }
}

/// A new message to queue, as read from the stream.
struct Queued {
    conv: String,
    seq: u64,
    /// The MEMBERSHIP position it was decided on, if it names one.
    membership: Option<u64>,
    sender: Option<String>,
    mentions: Vec<String>,
    mention_all: bool,
    due_at: i64,
}

/// What the notifications of one claim share: how far the history is, and the messages
/// they announce (read once each).
struct Round {
    projected: u64,
    messages: tokio::sync::Mutex<HashMap<(String, u64), Option<PushMessage>>>,
}

/// Records outcomes as they come, many to a transaction, until every sender is gone. A batch
/// that cannot be written is tried again a few times; past that its claims expire and the
/// notifications are sent again (at least once, never lost).
async fn record(store: Store, mut outcomes: tokio::sync::mpsc::UnboundedReceiver<PushRecordOf>) {
    let mut batch = Vec::new();
    while let Some(first) = outcomes.recv().await {
        batch.push(first);
        while batch.len() < RECORDS_PER_BATCH {
            match outcomes.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        for attempt in 0..5u32 {
            match store.record_pushes(&batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "push: recording outcomes");
                    tokio::time::sleep(PAUSES.delay(attempt, None)).await;
                }
            }
        }
        batch.clear();
    }
}

/// The notification of `job`'s message.
fn notification(
    job: &PushJob,
    message: &anchorage_store::push::PushMessage,
    preview: bool,
    badge: u64,
) -> Notification {
    let text = serde_json::from_str::<Value>(&message.body)
        .ok()
        .and_then(|b| anchorage_store::text::searchable_text(&b).map(str::to_owned));
    // A system post is stored under `system:<source>`, which names nobody.
    let sender = if message.sender.starts_with("system:") {
        String::new()
    } else {
        message
            .sender_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| message.sender.clone())
    };
    let direct = message.title.is_none();
    let (title, body) = match (preview, text) {
        (true, Some(text)) => {
            let text = cut(&text, PREVIEW_CHARS);
            match &message.title {
                Some(group) if !sender.is_empty() => {
                    (group.clone(), Some(format!("{sender}: {text}")))
                }
                Some(group) => (group.clone(), Some(text)),
                None if !sender.is_empty() => (sender, Some(text)),
                // A system post into a 1:1 conversation: nobody to name.
                None => ("New message".to_owned(), Some(text)),
            }
        }
        _ => ("New message".to_owned(), None),
    };
    Notification {
        conv: job.conv.clone(),
        seq: job.seq,
        title,
        body,
        badge,
        urgent: job.mention || direct,
    }
}

/// The first `max` characters of `text`, with an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorage_store::push::PushMessage;

    fn job() -> PushJob {
        PushJob {
            user: "bob".into(),
            device: "phone".into(),
            conv: "ops".into(),
            seq: 42,
            pushed_seq: 0,
            mention: false,
            attempts: 0,
            failing_since: None,
        }
    }

    fn message(body: &str, title: Option<&str>) -> PushMessage {
        PushMessage {
            sender: "alice".into(),
            sender_name: Some("Alice".into()),
            body: body.into(),
            revoked: false,
            title: title.map(str::to_owned),
        }
    }

    #[test]
    fn previews_name_the_sender_in_groups_and_nothing_without_preview() {
        let n = notification(&job(), &message(r#""deploy done""#, Some("Ops")), true, 3);
        assert_eq!(n.title, "Ops");
        assert_eq!(n.body.as_deref(), Some("Alice: deploy done"));
        assert!(!n.urgent);
        let n = notification(&job(), &message(r#"{"text":"hi"}"#, None), true, 1);
        assert_eq!((n.title.as_str(), n.body.as_deref()), ("Alice", Some("hi")));
        assert!(n.urgent, "a 1:1 message is urgent");
        let mut system = message(r#""your order shipped""#, None);
        system.sender = "system:api".into();
        system.sender_name = None;
        let n = notification(&job(), &system, true, 1);
        assert_eq!(
            (n.title.as_str(), n.body.as_deref()),
            ("New message", Some("your order shipped"))
        );
        let n = notification(&job(), &message(r#""secret""#, Some("Ops")), false, 1);
        assert_eq!((n.title.as_str(), n.body), ("New message", None));
        // An encrypted body has no text to show.
        let n = notification(
            &job(),
            &message(r#"{"ciphertext":"AAA"}"#, Some("Ops")),
            true,
            1,
        );
        assert_eq!((n.title.as_str(), n.body), ("New message", None));
    }

    #[test]
    fn long_text_is_cut_on_a_character() {
        let long = "é".repeat(500);
        let n = notification(&job(), &message(&format!("{long:?}"), None), true, 0);
        assert!(n.web_payload().len() < webpush::MAX_PLAINTEXT);
        let body = n.body.unwrap();
        assert_eq!(body.chars().count(), PREVIEW_CHARS + 1);
        assert!(body.ends_with('…'));
    }

    #[test]
    fn one_collapse_key_per_conversation() {
        let a = notification(&job(), &message(r#""a""#, None), true, 0);
        let mut other = job();
        other.seq = 43;
        let b = notification(&other, &message(r#""b""#, None), true, 0);
        assert_eq!(a.collapse_key(), b.collapse_key());
        assert_eq!(a.collapse_key().len(), 16);
        other.conv = "dev".into();
        let c = notification(&other, &message(r#""c""#, None), true, 0);
        assert_ne!(a.collapse_key(), c.collapse_key());
        let fcm = a.fcm_message("tok");
        assert_eq!(fcm["message"]["token"], "tok");
        assert_eq!(fcm["message"]["android"]["collapse_key"], a.collapse_key());
        let apns: Value = serde_json::from_str(&a.apns_payload()).unwrap();
        assert_eq!(apns["aps"]["thread-id"], "ops");
    }
}
