//! A 3-node cluster with R3 streams: killing a node under load loses nothing acknowledged.

use std::time::Duration;

use anchorage_bus::{Bus, StreamSet};
use anchorage_schema::event::MessageSent;
use anchorage_schema::{
    Actor, ClientMsgId, ConversationId, DeviceId, Envelope, EventId, UserId, subjects,
};
use anchorage_tests::{TestCluster, eventually, streams_dir, within};

fn message(n: u32) -> Envelope {
    Envelope::new(
        EventId::parse(format!("d1:m{n}")).unwrap(),
        1,
        Actor::User {
            user: UserId::parse("alice").unwrap(),
            device: DeviceId::parse("d1").unwrap(),
        },
        MessageSent {
            conv: ConversationId::parse("c1").unwrap(),
            sender: UserId::parse("alice").unwrap(),
            device: DeviceId::parse("d1").unwrap(),
            client_msg_id: ClientMsgId::parse(format!("m{n}")).unwrap(),
            body: serde_json::json!(n),
            client_ts: i64::from(n),
            reply_to: None,
            mentions: Vec::new(),
            mention_all: false,
            attachments: Vec::new(),
        },
    )
}

/// Publishes until acknowledged, as the SDK's outbox does: the same event id every time.
async fn publish_until_acked(bus: &Bus, n: u32) -> u64 {
    let subject = subjects::message(&ConversationId::parse("c1").unwrap());
    within(
        Duration::from_secs(60),
        "a publish to be acknowledged",
        async {
            loop {
                match bus.publish_event(&subject, &message(n), None).await {
                    Ok(p) => return p.seq.0,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn killing_a_node_under_load_loses_no_acknowledged_message() {
    let mut cluster = TestCluster::start(3).await.unwrap();
    let config = anchorage_tests::operator_config(&cluster.url());
    let bus = Bus::connect(&anchorage::bus_options(&config, false))
        .await
        .unwrap();
    let set = StreamSet::load(&streams_dir(), 3).unwrap();
    anchorage_tests::apply_when_ready(&bus, &set).await.unwrap();
    assert!(bus.check(&set).await.unwrap().in_sync());

    let mut acked = Vec::new();
    for n in 1..=60 {
        if n == 30 {
            cluster.nodes[0].kill().await.unwrap();
        }
        acked.push((n, publish_until_acked(&bus, n).await));
    }
    // Every acknowledged message is stored once, in publish order.
    let seqs: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let state = eventually(
        Duration::from_secs(30),
        "the stream to report 60 messages",
        || async {
            bus.stream_state("MESSAGES")
                .await
                .ok()
                .filter(|s| s.messages == 60)
        },
    )
    .await
    .unwrap();
    assert_eq!(state.last_seq.0, *seqs.last().unwrap());

    // The killed node comes back and catches up.
    cluster.nodes[0].restart().await.unwrap();
    let solo = anchorage_tests::operator_config(&cluster.nodes[0].url());
    let back = Bus::connect(&anchorage::bus_options(&solo, false))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the restarted node to serve the stream",
        || async {
            back.stream_state("MESSAGES")
                .await
                .ok()
                .filter(|s| s.messages == 60)
        },
    )
    .await
    .unwrap();
}
