//! Helpers shared by the end-to-end tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_schema::event::{GroupCreated, MembersAdded};
use anchorage_schema::subjects;
use anchorage_schema::{Actor, Envelope, Event, EventId, GroupId, SourceId, UserId};
use anchorage_sdk::{Client, ClientEvent, ClientOptions, MemberSyncKind};
use anchorage_store::Store;
use anchorage_tests::{eventually, token};
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub const WAIT: Duration = Duration::from_secs(60);
pub const BIG: &str = "big";
pub const BIG_SIZE: usize = 100_000;
/// Small, so a test can push a copy past it.
pub const HORIZON: u64 = 40;

pub fn user(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

/// An event from the system named `test`, with id `id`, at a fixed time.
pub fn system_event(id: &str, event: impl Into<Event>) -> Envelope {
    Envelope::new(
        EventId::parse(id).unwrap(),
        1_763_840_000_000,
        Actor::System {
            source: SourceId::parse("test").unwrap(),
        },
        event,
    )
}

pub fn member(n: usize) -> String {
    format!("u{n:06}")
}

pub async fn publish(bus: &Bus, group: &str, n: u64, event: impl Into<Event>) -> u64 {
    let g = GroupId::parse(group).unwrap();
    let env = Envelope::new(
        EventId::parse(format!("test:{group}:{n}")).unwrap(),
        anchorage_schema::now_ms(),
        Actor::System {
            source: SourceId::parse("test").unwrap(),
        },
        event,
    );
    bus.publish_event(&subjects::membership(&g), &env, None)
        .await
        .unwrap()
        .seq
        .0
}

/// A group owned by alice with bob and carol, plus `extra` numbered members.
pub async fn create_group(bus: &Bus, group: &str, others: &[&str], extra: usize) -> u64 {
    let mut last = publish(
        bus,
        group,
        0,
        GroupCreated {
            group: GroupId::parse(group).unwrap(),
            owner: UserId::parse("alice").unwrap(),
            title: group.to_owned(),
            members: others.iter().map(|u| UserId::parse(*u).unwrap()).collect(),
            direct: false,
        },
    )
    .await;
    for (i, chunk) in (0..extra).collect::<Vec<_>>().chunks(1000).enumerate() {
        last = publish(
            bus,
            group,
            i as u64 + 1,
            MembersAdded {
                group: GroupId::parse(group).unwrap(),
                members: chunk
                    .iter()
                    .map(|n| UserId::parse(member(*n)).unwrap())
                    .collect(),
            },
        )
        .await;
    }
    last
}

pub async fn projected(store: &Store, group: &str, version: u64) {
    projected_within(store, group, version, WAIT).await;
}

pub async fn projected_within(store: &Store, group: &str, version: u64, limit: Duration) {
    eventually(limit, "the membership projection to catch up", || async {
        let g = store.group_row(group).await.ok()??;
        (g.version >= version).then_some(())
    })
    .await
    .unwrap();
}

pub async fn client(addr: std::net::SocketAddr, dir: &std::path::Path, user: &str) -> Client {
    let u = user.to_owned();
    Client::start(ClientOptions {
        url: format!("ws://{addr}/ws"),
        token: Arc::new(move || token(&u, "d1", 3600)),
        store_path: dir.join(format!("{user}.db")),
    })
    .await
    .unwrap()
}

/// Waits for a member-list sync of `group` by `via` to land.
pub async fn synced_via(
    events: &mut broadcast::Receiver<ClientEvent>,
    group: &str,
    via: MemberSyncKind,
) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(ClientEvent::MembersSynced {
                    group: g, via: v, ..
                }) if g == group && v == via => {
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {via:?} sync of {group}"));
}

/// The client's copy equals the server's list: same digest, same members, same version.
pub async fn assert_in_line(c: &Client, store: &Store, group: &str) {
    let server = store.group_row(group).await.unwrap().unwrap();
    let ok = eventually(WAIT, "the copy to reach the server's version", || async {
        let l = c.member_list(group).await.ok()??;
        (l.version == server.version).then_some(l)
    })
    .await;
    let local = ok.unwrap_or_else(|e| panic!("{group}: {e}"));
    let digest = c.member_digest(group).await.unwrap();
    assert_eq!(
        (digest.sum, digest.count),
        (server.digest_sum, server.member_count),
        "{group}: the digest of the stored members equals the server's"
    );
    assert_eq!(
        local.digest, digest,
        "{group}: the maintained digest agrees"
    );
    let mine: Vec<String> = c
        .members(group)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.user.to_string())
        .collect();
    assert_eq!(
        mine,
        store.member_ids(group).await.unwrap(),
        "{group}: member by member"
    );
}

/// Copies the stream definitions to `to`, with `stream`'s duplicate window set to
/// `duplicate_window_ns` (short, so a test can outlast it).
fn copy_streams(to: &Path, stream: &str, duplicate_window_ns: u64) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    copy(&anchorage_tests::streams_dir(), to);
    let path = to.join(format!("streams/{stream}.json"));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    v["duplicate_window"] = json!(duplicate_window_ns);
    std::fs::write(&path, v.to_string()).unwrap();
}

/// A configuration whose `stream` forgets message ids after one second (so a test can retry
/// past its duplicate window), on a fresh database; keep the two folders while it runs.
pub async fn short_window_config(
    nats_url: &str,
    stream: &str,
) -> (
    anchorage_config::Config,
    tempfile::TempDir,
    tempfile::TempDir,
) {
    let db_dir = tempfile::tempdir().unwrap();
    let streams = tempfile::tempdir().unwrap();
    copy_streams(streams.path(), stream, 1_000_000_000);
    let database = anchorage_tests::fresh_database(db_dir.path())
        .await
        .unwrap();
    let mut config = anchorage_tests::test_config(nats_url, &database);
    config.streams.dir = streams.path().to_owned();
    (config, db_dir, streams)
}

/// A stack (NATS, database, projector, an edge) and a second edge.
pub struct TwoEdges {
    pub nats: anchorage_tests::TestNats,
    pub stack: anchorage_tests::TestStack,
    pub edge2: anchorage_tests::TestEdge,
}

/// A stack and a second edge, on a fresh database, configured by `configure`.
pub async fn two_edges_with(configure: impl FnOnce(&mut anchorage_config::Config)) -> TwoEdges {
    let nats = anchorage_tests::TestNats::start().await.unwrap();
    let db_dir = tempfile::tempdir().unwrap();
    let database = anchorage_tests::fresh_database(db_dir.path())
        .await
        .unwrap();
    let mut config = anchorage_tests::test_config(&nats.url(), &database);
    configure(&mut config);
    let stack = anchorage_tests::TestStack::start_with(config, db_dir)
        .await
        .unwrap();
    let edge2 = anchorage_tests::TestEdge::start(&stack.config)
        .await
        .unwrap();
    TwoEdges { nats, stack, edge2 }
}

/// A projector signed in as `projector`, running until `shutdown`.
pub async fn projector(
    config: &anchorage_config::Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let mut config = config.clone();
    anchorage_tests::sign_in(&mut config, anchorage::nats_auth::PROJECTOR);
    let bus = Bus::connect(&anchorage::bus_options(&config, false))
        .await
        .unwrap();
    let store = anchorage_store::Store::connect(&anchorage::store_options(&config))
        .await
        .unwrap();
    tokio::spawn(anchorage_projector::run(
        bus,
        store,
        anchorage_projector::ProjectorOptions::from_config(&config.projector),
        shutdown,
    ))
}
