//! Logs and traces of a real `anchorage dev`: JSON log lines without colour codes when stderr
//! is not a terminal, and spans exported with OTLP to a receiver started by the test.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anchorage::natsd::free_ports;
use anchorage_tests::{
    WsClient, create_group, eventually, http_get, nats_binary, send_message, streams_dir,
};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn json_logs_and_otlp_spans_with_who_and_which_request() {
    // The collector: keeps every OTLP/HTTP JSON body it is sent.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let store = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let store = store.clone();
            async move {
                store
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                "{}"
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let data_dir = dir.path().join("data");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .arg("dev")
        .current_dir(dir.path())
        .env("ANCHORAGE_DEV__DATA_DIR", &data_dir)
        .env("ANCHORAGE_DEV__NATS_PORT", ports[1].to_string())
        .env("ANCHORAGE_DEV__NATS_SERVER", nats_binary().unwrap())
        .env("ANCHORAGE_EDGE__LISTEN", format!("127.0.0.1:{}", ports[0]))
        .env("ANCHORAGE_STREAMS__DIR", streams_dir())
        .env("ANCHORAGE_LOG__FORMAT", "json")
        .env(
            "ANCHORAGE_LOG__OTLP_ENDPOINT",
            format!("http://{collector}"),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    eventually(Duration::from_secs(60), "anchorage dev ready", || async {
        let (status, _) = http_get(addr, "/readyz").await.ok()?;
        (status == 200).then_some(())
    })
    .await
    .unwrap();

    let (mut alice, _) = WsClient::signed_in(addr, "alice", "laptop").await.unwrap();
    alice.ok(create_group("g", "G", &[])).await.unwrap();
    let ack = alice
        .ack(send_message("g", "m1", json!("hi")))
        .await
        .unwrap();
    assert!(ack.seq > 0);

    let span = eventually(
        Duration::from_secs(20),
        "the send's span exported",
        || async {
            let bodies = received.lock().unwrap().clone();
            bodies.iter().find_map(|b| {
                let spans = b["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array()?;
                spans
                    .iter()
                    .find(|s| {
                        let attr = |k: &str| {
                            s["attributes"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .find(|a| a["key"] == k)
                                .map(|a| a["value"].clone())
                        };
                        attr("kind") == Some(json!({"stringValue": "send"}))
                            && attr("user") == Some(json!({"stringValue": "alice"}))
                            && attr("device") == Some(json!({"stringValue": "laptop"}))
                            && attr("conn").is_some()
                            && attr("request").is_some()
                    })
                    .cloned()
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(span["traceId"].as_str().unwrap().len(), 32, "{span}");
    assert_eq!(span["spanId"].as_str().unwrap().len(), 16, "{span}");
    let service =
        received.lock().unwrap()[0]["resourceSpans"][0]["resource"]["attributes"][0].clone();
    assert_eq!(
        service,
        json!({"key": "service.name", "value": {"stringValue": "anchorage"}})
    );

    // SIGTERM, then every log line is one JSON object and none carries colour codes.
    let pid = child.id().unwrap();
    crate::crash::signal(pid, "-TERM");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    child.wait().await.unwrap();
    assert!(!stderr.contains('\u{1b}'), "no ANSI codes off a terminal");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() > 5, "{stderr}");
    for line in lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
}
