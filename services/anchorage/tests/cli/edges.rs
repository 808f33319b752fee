//! Two edge processes: one in this process (with the projector), one a separate
//! `anchorage edge` process on the same NATS and database. Users on different edges chat,
//! and a user's read on one edge reaches their device on the other.

use std::process::Stdio;
use std::time::Duration;

use anchorage::natsd::free_port;
use anchorage_protocol::request::MarkRead;
use anchorage_protocol::{LiveMessage, MembershipChanged, ReadMoved};
use anchorage_tests::{
    TestNats, TestStack, WsClient, conv_id, create_group, eventually, http_get, send_message,
};
use serde_json::json;

#[tokio::test]
async fn users_on_two_edge_processes_chat_and_sync_reads() {
    let nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let port = free_port().unwrap();
    let mut edge = tokio::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .arg("edge")
        .env("ANCHORAGE_NATS__URL", &stack.config.nats.url)
        .env("ANCHORAGE_DATABASE__URL", &stack.config.database.url)
        .env("ANCHORAGE_STREAMS__DIR", &stack.config.streams.dir)
        .env("ANCHORAGE_EDGE__LISTEN", format!("127.0.0.1:{port}"))
        .env("ANCHORAGE_AUTH__ALLOW_DEV_SECRET", "true")
        .env("ANCHORAGE_NATS__USER", "edge")
        .env(
            "ANCHORAGE_NATS__PASSWORD",
            anchorage_tests::credentials().password("edge").unwrap(),
        )
        .env("ANCHORAGE_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let other = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(
        Duration::from_secs(30),
        "the edge process to be ready",
        || async { (http_get(other, "/readyz").await.ok()?.0 == 200).then_some(()) },
    )
    .await
    .unwrap();

    let (mut alice, _) = WsClient::signed_in(stack.edge_addr(), "alice", "laptop")
        .await
        .unwrap();
    let (mut bob_phone, _) = WsClient::signed_in(other, "bob", "phone").await.unwrap();
    let (mut bob_laptop, _) = WsClient::signed_in(stack.edge_addr(), "bob", "laptop")
        .await
        .unwrap();
    alice.ok(create_group("g", "G", &["bob"])).await.unwrap();
    bob_phone
        .pushed(|_: &MembershipChanged| true)
        .await
        .unwrap();

    let ack = alice
        .ack(send_message("g", "m1", json!("hello")))
        .await
        .unwrap();
    let seq = ack.seq;
    let pushed: LiveMessage = bob_phone.pushed(|_| true).await.unwrap();
    assert_eq!(pushed.message.seq, seq);
    assert_eq!(pushed.prev, 0);

    // Bob answers from the other process; alice gets it.
    let reply = bob_phone
        .ack(anchorage_protocol::request::SendMessage {
            client_ts: 2,
            ..send_message("g", "r1", json!("hi!"))
        })
        .await
        .unwrap();
    let got = alice
        .pushed(|m: &LiveMessage| m.message.sender == "bob")
        .await
        .unwrap();
    assert_eq!(got.message.seq, reply.seq);
    assert_eq!(got.prev, seq);

    // A read on the phone (other process) reaches the laptop (this process).
    bob_phone
        .request(MarkRead {
            conv: conv_id("g"),
            seq: reply.seq,
        })
        .await
        .unwrap();
    let read: ReadMoved = bob_laptop.pushed(|_| true).await.unwrap();
    assert_eq!(read.seq, reply.seq);

    edge.start_kill().unwrap();
    edge.wait().await.unwrap();
    stack.stack.stop().await.unwrap();
}
