//! What operators see: every metric moves when its event happens.

use std::time::Duration;

use anchorage_protocol::ErrorCode;
use anchorage_schema::admin::Scope;
use anchorage_schema::{ConversationId, subjects};
use anchorage_tests::{
    TestNats, TestStack, WsClient, api_key, create_group, eventually, http, metric, scrape,
    send_message, sync,
};
use serde_json::json;

// Connections, requests by type and code, send-to-ack latency, server API requests, dead
// letters by code, projection lag, consumer pending, queued bytes and NATS reconnects: each
// counted where it happens and shown at /metrics.
#[tokio::test]
async fn every_metric_moves_when_its_event_happens() {
    let mut nats = TestNats::start().await.unwrap();
    let stack = TestStack::start(&nats.url()).await.unwrap();
    let addr = stack.edge_addr();
    let before = scrape(addr).await;
    let count = |text: &str, name: &str, labels: &[(&str, &str)]| metric(text, name, labels);

    let (mut alice, _) = WsClient::signed_in(addr, "alice", "d").await.unwrap();
    alice.ok(create_group("g", "G", &[])).await.unwrap();
    alice
        .ack(send_message("g", "m1", json!("hi")))
        .await
        .unwrap();
    let refused = alice.refused(sync("elsewhere", 0)).await.unwrap();
    assert_eq!(refused.code, ErrorCode::Forbidden);
    let (key, _) = api_key(&nats.url(), Scope::Read, 100).await;
    let auth = format!("Bearer {key}");
    let answer = http(
        addr,
        "GET",
        "/v1/groups/g",
        &[("Authorization", &auth)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    http(addr, "GET", "/v1/groups/g", &[], None).await.unwrap();
    // A made-up method names no series of its own.
    http(addr, "FROBNICATE", "/v1/groups/g", &[], None)
        .await
        .unwrap();
    // A poison event: set aside with its code.
    let conv = ConversationId::parse("g").unwrap();
    stack
        .stack
        .bus
        .publish_raw(
            &subjects::message(&conv),
            Some("junk"),
            b"{not json".to_vec(),
        )
        .await
        .unwrap();

    let after = eventually(
        Duration::from_secs(20),
        "the dead letter counted",
        || async {
            let text = scrape(addr).await;
            (count(
                &text,
                "anchorage_dead_letters_total",
                &[("stream", "MESSAGES")],
            ) > count(
                &before,
                "anchorage_dead_letters_total",
                &[("stream", "MESSAGES")],
            ))
            .then_some(text)
        },
    )
    .await
    .unwrap();
    let moved = |name: &str, labels: &[(&str, &str)]| {
        count(&after, name, labels) > count(&before, name, labels)
    };
    assert!(
        count(&after, "anchorage_connections", &[]) >= 1.0,
        "{after}"
    );
    assert!(moved(
        "anchorage_requests_total",
        &[("type", "send"), ("code", "ok")]
    ));
    assert!(moved(
        "anchorage_requests_total",
        &[("type", "create_group"), ("code", "ok")]
    ));
    assert!(moved(
        "anchorage_requests_total",
        &[("type", "sync"), ("code", "forbidden")]
    ));
    assert!(moved("anchorage_send_ack_seconds_count", &[]));
    assert!(moved(
        "anchorage_send_ack_seconds_bucket",
        &[("le", "+Inf")]
    ));
    assert!(moved(
        "anchorage_api_requests_total",
        &[("route", "/v1/groups/{group}"), ("status", "200")]
    ));
    assert!(moved(
        "anchorage_api_requests_total",
        &[("route", "/v1/groups/{group}"), ("status", "401")]
    ));
    assert!(moved(
        "anchorage_api_request_seconds_count",
        &[("route", "/v1/groups/{group}")]
    ));
    assert!(
        moved(
            "anchorage_dead_letters_total",
            &[("stream", "MESSAGES"), ("code", "malformed")]
        ),
        "{after}"
    );
    for projection in ["messages", "membership", "reads", "users", "ingest"] {
        assert!(
            after.contains(&format!(
                "anchorage_projection_lag{{projection=\"{projection}\"}}"
            )),
            "{projection}: {after}"
        );
    }
    assert!(after.contains("anchorage_consumer_pending{"), "{after}");
    assert!(after.contains("anchorage_queued_bytes "), "{after}");

    // A connection that ends is no longer counted.
    let connected = count(&after, "anchorage_connections", &[]);
    drop(alice);
    eventually(
        Duration::from_secs(10),
        "the connection uncounted",
        || async {
            (count(&scrape(addr).await, "anchorage_connections", &[]) < connected).then_some(())
        },
    )
    .await
    .unwrap();

    // NATS goes away and comes back: one reconnect at least.
    nats.server.stop(Duration::from_secs(5)).await.unwrap();
    nats.server.restart().await.unwrap();
    eventually(Duration::from_secs(30), "the reconnect counted", || async {
        let text = scrape(addr).await;
        (count(&text, "anchorage_nats_reconnects_total", &[])
            > count(&before, "anchorage_nats_reconnects_total", &[]))
        .then_some(())
    })
    .await
    .unwrap();
    stack.stack.stop().await.unwrap();
}

// The dashboard under deploy/ and the metrics table in deploy/OBSERVABILITY.md name only
// metrics the code records, and the table names every one the dashboard uses.
#[test]
fn the_dashboard_and_the_docs_name_metrics_that_exist() {
    fn names(text: &str) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("anchorage_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            let name = tail[..end]
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum");
            out.insert(name.to_owned());
            rest = &tail[end..];
        }
        out
    }
    let root = anchorage_tests::repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/anchorage.json")).unwrap();
    let used = names(&dashboard.to_string());
    let documented = names(&read("deploy/OBSERVABILITY.md"));
    let mut code = String::new();
    for file in [
        "services/edge/src/metrics.rs",
        "services/edge/src/hook.rs",
        "services/edge/src/ws.rs",
        "services/webhooks/src/worker.rs",
        "services/push/src/lib.rs",
        "shared/blobs/src/reap.rs",
        "services/projector/src/lib.rs",
        "services/anchorage/src/telemetry.rs",
        "shared/bus/src/lib.rs",
        "shared/bus/src/consume.rs",
    ] {
        code.push_str(&read(file));
    }
    let recorded: std::collections::BTreeSet<String> = names(&code)
        .into_iter()
        .filter(|n| code.contains(&format!("\"{n}\"")))
        .collect();
    assert!(used.len() >= 15, "{used:?}");
    for name in &used {
        assert!(
            recorded.contains(name),
            "the dashboard uses {name}, which nothing records"
        );
        assert!(
            documented.contains(name),
            "{name} is not in deploy/OBSERVABILITY.md"
        );
    }
    for name in &documented {
        assert!(
            recorded.contains(name),
            "deploy/OBSERVABILITY.md names {name}, which nothing records"
        );
    }
}
