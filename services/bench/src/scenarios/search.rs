//! `bench search`: full-text search over a large history — messages of realistic text (words
//! of a Zipf-distributed vocabulary, some CJK) in 1,000 groups — rebuilt into SQLite by
//! `replay` (index included) and into PostgreSQL, then queried as users: common, middling and rare words, two
//! words, prefixes and CJK. Next to the bare index answering the same match in the same run:
//! what membership windows, hidden messages and current state cost on top.

use std::time::{Duration, Instant};

use anchorage_schema::event::{GroupCreated, MessageSent};
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, DeviceId, Envelope, EventId, GroupId, UserId,
};
use anchorage_store::text::Query;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::env::{
    BenchEnv, Postgres, Sizes, membership_event, percentile, progress, publish_all, rate, unix_ms,
};

/// Groups the messages are spread over, and users; each group has [`MEMBERS`] of them.
const GROUPS: usize = 1_000;
const USERS: usize = 200;
const MEMBERS: usize = 10;
/// Words of the vocabulary; word `k` is drawn with weight 1/(k+1).
const VOCABULARY: usize = 5_000;
/// Queries per kind, and at once.
const QUERIES: usize = 300;
const CONCURRENCY: usize = 4;
const CJK: [&str; 8] = [
    "東京都",
    "会議室",
    "打ち合わせ",
    "明日",
    "上海",
    "北京大学",
    "안녕하세요",
    "회의",
];

/// A small deterministic generator (xorshift), so every run searches the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word rank with weight 1/(k+1) (inverse of the harmonic CDF, approximately).
    fn zipf(&mut self) -> usize {
        let h = (VOCABULARY as f64).ln() + 0.5772;
        ((self.unit() * h).exp() - 1.0).clamp(0.0, (VOCABULARY - 1) as f64) as usize
    }
}

/// Word `k` of the vocabulary: distinct, pronounceable-ish, 4 to 9 letters.
fn word(k: usize) -> String {
    const SYLLABLES: [&str; 16] = [
        "ka", "lo", "mi", "ne", "tor", "sa", "vu", "rei", "po", "dan", "qui", "ber", "sol", "fi",
        "gra", "hu",
    ];
    let mut out = String::new();
    let mut n = k + 16;
    while n > 0 {
        out.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    out
}

fn text(rng: &mut Rng) -> String {
    let words = 6 + (rng.next() % 8) as usize;
    let mut parts: Vec<String> = (0..words).map(|_| word(rng.zipf())).collect();
    if rng.next().is_multiple_of(10) {
        parts.push(CJK[(rng.next() % CJK.len() as u64) as usize].to_owned());
    }
    parts.join(" ")
}

fn member(g: usize, m: usize) -> String {
    format!("u{}", (g * 7 + m * 13) % USERS)
}

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    progress(&format!("creating {GROUPS} groups"));
    for g in 0..GROUPS {
        let created = GroupCreated {
            group: GroupId::parse(format!("g{g}"))?,
            owner: UserId::parse(member(g, 0))?,
            title: format!("group {g}"),
            members: (1..MEMBERS)
                .map(|m| UserId::parse(member(g, m)))
                .collect::<Result<_, _>>()?,
            direct: false,
        };
        membership_event(&bus, &format!("g{g}"), 0, created).await?;
    }
    progress(&format!("publishing {} messages of text", s.searched));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let messages = (0..s.searched).map(|n| {
        let g = n % GROUPS;
        let conv = ConversationId::parse(format!("g{g}"))?;
        let sender = UserId::parse(member(g, n % MEMBERS))?;
        let device = DeviceId::parse("d")?;
        let sent = MessageSent {
            conv: conv.clone(),
            sender: sender.clone(),
            device: device.clone(),
            client_msg_id: ClientMsgId::parse(format!("m{n}"))?,
            body: Value::String(text(&mut rng)),
            client_ts: 1,
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        };
        let actor = Actor::User {
            user: sender,
            device,
        };
        let event = Envelope::new(EventId::parse(format!("bench:s:{n}"))?, 1, actor, sent);
        Ok((anchorage_schema::subjects::message(&conv), event))
    });
    publish_all(&bus, messages).await?;

    progress("replaying into a fresh SQLite database (with the search index)");
    let sqlite = search_in(
        &bus,
        &format!("sqlite://{}/search.db", env.dir.path().display()),
    )
    .await?;
    progress("replaying into a fresh PostgreSQL database (with the search index)");
    let server = Postgres::start().await?;
    let name = format!("bench_search_{}", unix_ms());
    let postgres = match anchorage_store::database_named(&server.url, &name) {
        Ok(url) => search_in(&bus, &url).await,
        Err(err) => Err(err.into()),
    };
    server.stop().await;
    let postgres = postgres?;
    bus.close().await;
    let ratio = |r: &Searched| r.ours_qps / r.bare_qps;
    Ok(json!({
        "ours": {
            "messages": s.searched,
            "queries_per_sec": sqlite.ours_qps.round(),
            "p50_ms": sqlite.ours_p50,
            "p99_ms": sqlite.ours_p99,
            "by_kind": sqlite.by_kind,
            "replay_with_index_events_per_sec": sqlite.replay_rate.round(),
            "database": "sqlite",
            "postgresql": {
                "queries_per_sec": postgres.ours_qps.round(),
                "p50_ms": postgres.ours_p50,
                "p99_ms": postgres.ours_p99,
                "by_kind": postgres.by_kind,
                "replay_with_index_events_per_sec": postgres.replay_rate.round(),
            },
        },
        "baseline": {
            "bare_index_queries_per_sec": sqlite.bare_qps.round(),
            "bare_index_p99_ms": sqlite.bare_p99,
            "postgresql_bare_index_queries_per_sec": postgres.bare_qps.round(),
            "postgresql_bare_index_p99_ms": postgres.bare_p99,
        },
        "ratio": ratio(&sqlite),
        "ratio_postgresql": ratio(&postgres),
    }))
}

/// One database's figures.
struct Searched {
    replay_rate: f64,
    ours_qps: f64,
    ours_p50: f64,
    ours_p99: f64,
    bare_qps: f64,
    bare_p99: f64,
    by_kind: serde_json::Map<String, Value>,
}

/// Rebuilds the projections into the fresh database at `url` and searches it as users, and
/// the bare index with the same matches.
async fn search_in(bus: &anchorage_bus::Bus, url: &str) -> anyhow::Result<Searched> {
    let (store, replay_rate, _) = super::replay::rebuild(bus, url).await?;
    let postgres = store.backend() == anchorage_store::Backend::Postgres;
    if postgres {
        // As an operator runs it after a bulk load: the planner needs the tables' statistics.
        let raw = sqlx::AnyPool::connect(url).await?;
        sqlx::query("ANALYZE").execute(&raw).await?;
        raw.close().await;
    }

    let kinds: Vec<(&str, Vec<String>)> = vec![
        ("common word", (0..20).map(word).collect()),
        ("middling word", (400..420).map(word).collect()),
        ("rare word", (4000..4020).map(word).collect()),
        (
            "two words",
            (0..20)
                .map(|k| format!("{} {}", word(k), word(k + 40)))
                .collect(),
        ),
        (
            "prefix",
            (0..20).map(|k| word(k + 200)[..3].to_owned()).collect(),
        ),
        ("cjk", CJK.iter().map(|c| c.to_string()).collect()),
    ];
    let bare_sql = if postgres {
        "SELECT seq FROM message_search WHERE terms @@ CAST($1 AS tsquery)
         ORDER BY seq DESC LIMIT 21"
    } else {
        "SELECT rowid FROM message_search WHERE message_search MATCH $1
         ORDER BY rowid DESC LIMIT 21"
    };
    let raw = sqlx::AnyPool::connect(url).await?;
    let mut ours_all = Vec::new();
    let mut bare_all = Vec::new();
    let mut by_kind = serde_json::Map::new();
    let mut found_total = 0;
    let (mut ours_time, mut bare_time) = (Duration::ZERO, Duration::ZERO);
    for (kind, queries) in &kinds {
        progress(&format!("searching: {kind}"));
        let (ours, found, ours_wall) = timed(QUERIES, |i| {
            let store = store.clone();
            let q = queries[i % queries.len()].clone();
            let user = format!("u{}", (i * 31) % USERS);
            async move {
                let query = Query::parse(&q)?;
                let found = store
                    .search(&anchorage_store::search::Search {
                        user: &user,
                        query: &query,
                        conv: None,
                        before: 0,
                        limit: 21,
                    })
                    .await?;
                Ok(found.len())
            }
        })
        .await?;
        let (bare, _, bare_wall) = timed(QUERIES, |i| {
            let raw = raw.clone();
            let q = queries[i % queries.len()].clone();
            async move {
                let query = Query::parse(&q)?;
                let matching = if postgres {
                    query.tsquery()
                } else {
                    query.fts5()
                };
                let rows = sqlx::query(bare_sql).bind(matching).fetch_all(&raw).await?;
                Ok(rows.len())
            }
        })
        .await?;
        found_total += found;
        by_kind.insert(
            (*kind).to_owned(),
            json!({
                "queries_per_sec": rate(ours.len(), ours_wall).round(),
                "bare_index_queries_per_sec": rate(bare.len(), bare_wall).round(),
                "p50_ms": percentile(&sorted(&ours), 0.5),
                "p99_ms": percentile(&sorted(&ours), 0.99),
                "bare_index_p99_ms": percentile(&sorted(&bare), 0.99),
                "results": found,
            }),
        );
        ours_all.extend(ours);
        bare_all.extend(bare);
        ours_time += ours_wall;
        bare_time += bare_wall;
    }
    raw.close().await;
    store.close().await;
    anyhow::ensure!(found_total > 0, "the searches found nothing");
    Ok(Searched {
        replay_rate,
        ours_qps: rate(ours_all.len(), ours_time),
        ours_p50: percentile(&sorted(&ours_all), 0.5),
        ours_p99: percentile(&sorted(&ours_all), 0.99),
        bare_qps: rate(bare_all.len(), bare_time),
        bare_p99: percentile(&sorted(&bare_all), 0.99),
        by_kind,
    })
}

fn sorted(d: &[Duration]) -> Vec<Duration> {
    let mut d = d.to_vec();
    d.sort_unstable();
    d
}

/// Runs `n` queries, [`CONCURRENCY`] at a time: each one's latency, the results found, and
/// how long all took.
async fn timed<F, Fut>(n: usize, query: F) -> anyhow::Result<(Vec<Duration>, usize, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let mut latencies = Vec::with_capacity(n);
    let mut found = 0;
    let start = Instant::now();
    let mut running = futures::stream::iter((0..n).map(|i| {
        let fut = query(i);
        async move {
            let start = Instant::now();
            let r = fut.await;
            r.map(|f| (start.elapsed(), f))
        }
    }))
    .buffer_unordered(CONCURRENCY);
    while let Some(r) = running.next().await {
        let (latency, f) = r?;
        latencies.push(latency);
        found += f;
    }
    Ok((latencies, found, start.elapsed()))
}
