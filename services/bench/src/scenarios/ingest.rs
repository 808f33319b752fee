//! `bench ingest`: events from another system — users, a large group built in chunks of 1,000
//! members, system posts — from their publish on `ext.<source>.<type>` until the projections
//! hold their effects (validated, translated, published as native events, projected), next to
//! raw JetStream publishing of the same events.

use std::time::{Duration, Instant};

use anchorage_bus::Bus;
use anchorage_schema::subjects::stream;
use serde_json::{Value, json};

use crate::env::{BenchEnv, Sizes, progress, rate};
use crate::raw;

/// An external event of `type_name` with id `id`, as another system publishes it.
fn external(type_name: &str, id: String, payload: Value) -> (String, Vec<u8>) {
    let body = json!({"id": id, "type": type_name, "v": 1, "occurred_at": 1_764_000_000_000u64,
                      "payload": payload});
    (
        format!("ext.bench.{type_name}"),
        serde_json::to_vec(&body).expect("JSON"),
    )
}

/// Publishes events in order, pipelined, as an integration would; how long until all were
/// stored.
async fn publish_all(
    js: &async_nats::jetstream::Context,
    events: &[(String, Vec<u8>)],
) -> anyhow::Result<Duration> {
    raw::publish_in_order(
        js,
        events.iter().map(|(subject, payload)| {
            (
                subject.clone(),
                async_nats::HeaderMap::new(),
                payload.clone().into(),
            )
        }),
    )
    .await
}

/// Waits until the ingest worker has taken in every event of INGEST and the projections hold
/// what it published; how long since `since`.
async fn ingested(
    bus: &Bus,
    store: &anchorage_store::Store,
    since: Instant,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(900);
    let end = bus.stream_state(stream::INGEST).await?.last_seq.0;
    let at = |name: &'static str| async move {
        anyhow::Ok(store.checkpoint(name).await?.map_or(0, |c| c.last_seq))
    };
    while at("ingest").await? < end {
        anyhow::ensure!(Instant::now() < deadline, "ingest did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress(&format!("taken in after {:?}", since.elapsed()));
    for (name, s) in [
        ("users", stream::USERS),
        ("membership", stream::MEMBERSHIP),
        ("messages", stream::MESSAGES),
    ] {
        let last = bus.stream_state(s).await?.last_seq.0;
        while at(name).await? < last {
            anyhow::ensure!(Instant::now() < deadline, "{name} did not catch up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(since.elapsed())
}

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    let js = async_nats::jetstream::new(async_nats::connect(&env.config.nats.url).await?);
    let users = s.members;
    let posts = (s.events / 10).max(100);
    progress("raw JetStream publish (baseline)");
    let baseline = raw::publish(&env.config.nats.url, s.events).await?;
    let stack = env.stack().await?;

    progress(&format!(
        "{users} users and a group of {users} members from another system"
    ));
    let mut events: Vec<(String, Vec<u8>)> = (0..users)
        .map(|n| {
            external(
                "user.created",
                format!("u{n}"),
                json!({"user": format!("x{n:06}"), "display_name": format!("User {n}")}),
            )
        })
        .collect();
    events.push(external(
        "group.created",
        "big".into(),
        json!({"group": "xbig", "owner": "x000000", "title": "Everyone"}),
    ));
    let ids: Vec<usize> = (1..users).collect();
    for (n, chunk) in ids.chunks(1000).enumerate() {
        let members: Vec<String> = chunk.iter().map(|i| format!("x{i:06}")).collect();
        events.push(external(
            "group.members_added",
            format!("big-{n}"),
            json!({"group": "xbig", "members": members}),
        ));
    }
    let count = events.len();
    let started = Instant::now();
    let published = publish_all(&js, &events).await?;
    let projected = ingested(&bus, &stack.store, started).await?;
    let dead = bus.stream_state(stream::DEADLETTER).await?.messages;
    if dead > 0 {
        let m = js
            .get_stream(stream::DEADLETTER)
            .await?
            .get_raw_message(1)
            .await?;
        anyhow::bail!(
            "{dead} events were dead-lettered, the first: {:?}",
            m.headers
        );
    }
    let group = stack
        .store
        .group_row("xbig")
        .await?
        .ok_or_else(|| anyhow::anyhow!("the group was not created"))?;
    anyhow::ensure!(
        group.member_count as usize == users,
        "the group has {} members of {users}",
        group.member_count
    );

    progress(&format!("{posts} system posts into the group"));
    let posts_events: Vec<(String, Vec<u8>)> = (0..posts)
        .map(|n| {
            external(
                "message.system_posted",
                format!("p{n}"),
                json!({"conv": "xbig", "body": format!("notice {n}")}),
            )
        })
        .collect();
    let started = Instant::now();
    publish_all(&js, &posts_events).await?;
    let posts_projected = ingested(&bus, &stack.store, started).await?;
    let conv = stack
        .store
        .conversation("xbig")
        .await?
        .ok_or_else(|| anyhow::anyhow!("no system post was stored"))?;
    anyhow::ensure!(
        conv.message_count as usize == posts,
        "{} system posts stored of {posts}",
        conv.message_count
    );
    stack.stop().await?;
    bus.close().await;

    let ours = rate(count, projected);
    Ok(json!({
        "ours": {
            "events_per_sec": ours.round(),
            "events": count,
            "publish_secs": published.as_secs_f64(),
            "projected_secs": projected.as_secs_f64(),
            "system_posts_per_sec": rate(posts, posts_projected).round(),
        },
        "baseline": {"jetstream_publish_msgs_per_sec": baseline.round()},
        "ratio": ours / baseline,
        "target": ">= 20,000 events/s; 100,000 users and a 100,000-member group projected in < 15 s",
        "sizes": {"users": users, "members": users, "system_posts": posts},
    }))
}
