//! Two edge processes: one in this process (with the projector), one a separate
//! `anchorage edge` process on the same NATS and database. Users on different edges chat,
//! and a user's read on one edge reaches their device on the other.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use std::process::Stdio;
use std::time::Duration;

use anchorage::natsd::free_port;
use anchorage_tests::{TestNats, TestStack, WsClient, eventually, http_get};
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
    let created = alice
        .request(json!({"type": "create_group", "group": "g", "title": "G", "members": ["bob"]}))
        .await
        .unwrap();
    assert_eq!(created["type"], "ok", "{created}");
    bob_phone.push(|f| f["type"] == "membership").await.unwrap();

    let ack = alice
        .request(json!({"type": "send", "conv": "g", "client_msg_id": "m1", "body": "hello", "client_ts": 1}))
        .await
        .unwrap();
    let seq = ack["seq"].as_u64().unwrap();
    let pushed = bob_phone.push(|f| f["type"] == "message").await.unwrap();
    assert_eq!(pushed["message"]["seq"].as_u64(), Some(seq));
    assert_eq!(pushed["prev"].as_u64(), Some(0));

    // Bob answers from the other process; alice gets it.
    let reply = bob_phone
        .request(json!({"type": "send", "conv": "g", "client_msg_id": "r1", "body": "hi!", "client_ts": 2}))
        .await
        .unwrap();
    let got = alice
        .push(|f| f["type"] == "message" && f["message"]["sender"] == "bob")
        .await
        .unwrap();
    assert_eq!(got["message"]["seq"], reply["seq"]);
    assert_eq!(got["prev"].as_u64(), Some(seq));

    // A read on the phone (other process) reaches the laptop (this process).
    bob_phone
        .request(json!({"type": "read", "conv": "g", "seq": reply["seq"]}))
        .await
        .unwrap();
    let read = bob_laptop.push(|f| f["type"] == "read").await.unwrap();
    assert_eq!(read["seq"], reply["seq"]);

    edge.start_kill().unwrap();
    edge.wait().await.unwrap();
    stack.stack.stop().await.unwrap();
}
