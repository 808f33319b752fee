//! `anchorage dev` as a user runs it: a separate process that starts nats-server, becomes
//! ready, and on SIGTERM stops everything, its nats-server included.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anchorage::natsd::free_ports;
use anchorage_tests::{eventually, http_get, nats_binary, streams_dir, within};
use tokio::io::AsyncReadExt;

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
}

/// The pid of the nats-server `anchorage dev` started, from its ports file name.
fn nats_pid(data_dir: &Path) -> Option<u32> {
    std::fs::read_dir(data_dir.join("nats/run"))
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".ports")?
                .rsplit('_')
                .next()?
                .parse()
                .ok()
        })
}

/// Starts `anchorage dev` in `dir` on free ports; returns the child and the edge address.
fn start_dev(dir: &Path) -> (tokio::process::Child, std::net::SocketAddr) {
    let ports = free_ports(2).unwrap();
    start_dev_on(dir, ports[0], ports[1])
}

/// Starts `anchorage dev` in `dir` with its edge and nats-server on the given ports.
fn start_dev_on(
    dir: &Path,
    edge_port: u16,
    nats_port: u16,
) -> (tokio::process::Child, std::net::SocketAddr) {
    let data_dir = dir.join("data");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .arg("dev")
        .current_dir(dir)
        .env("ANCHORAGE_DEV__DATA_DIR", &data_dir)
        .env("ANCHORAGE_DEV__NATS_PORT", nats_port.to_string())
        .env("ANCHORAGE_DEV__NATS_SERVER", nats_binary().unwrap())
        .env("ANCHORAGE_EDGE__LISTEN", format!("127.0.0.1:{edge_port}"))
        .env(
            "ANCHORAGE_DATABASE__URL",
            format!("sqlite://{}/anchorage.db", data_dir.display()),
        )
        .env("ANCHORAGE_STREAMS__DIR", streams_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, format!("127.0.0.1:{edge_port}").parse().unwrap())
}

/// Waits for readiness, sends SIGTERM, and checks that everything stopped; returns stdout.
async fn run_until_ready_then_terminate(dir: &Path) -> String {
    let (mut child, addr) = start_dev(dir);
    let body = eventually(
        Duration::from_secs(60),
        "anchorage dev to be ready",
        || async {
            let (status, body) = http_get(addr, "/readyz").await.ok()?;
            (status == 200).then_some(body)
        },
    )
    .await
    .unwrap();
    assert!(body.contains("\"ready\":true"), "{body}");
    let pid = nats_pid(&dir.join("data")).expect("a nats-server ports file");
    assert!(alive(pid));

    crate::crash::signal(child.id().unwrap(), "-TERM");
    let exit = within(
        Duration::from_secs(30),
        "anchorage dev to exit",
        child.wait(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(exit.success(), "{exit}");
    assert!(!alive(pid), "nats-server {pid} outlived anchorage dev");

    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(out.contains("Anchorage is running."), "{out}");
    assert!(out.contains("anchorage token --user"), "{out}");
    assert!(out.contains("stopped; data kept in"), "{out}");
    out
}

#[tokio::test]
async fn dev_becomes_ready_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let first = run_until_ready_then_terminate(dir.path()).await;
    assert!(first.contains("stream MESSAGES: created"), "{first}");
    // Started again on the same data, the streams are found as they were left.
    let second = run_until_ready_then_terminate(dir.path()).await;
    assert!(second.contains("stream MESSAGES: unchanged"), "{second}");
    assert!(
        !second.contains("created") && !second.contains("updated"),
        "{second}"
    );
}

#[tokio::test]
async fn a_bad_setting_fails_at_start_naming_the_key() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .args(["config", "show"])
        .env("ANCHORAGE_EDGE__MAX_FRAME_BYTES", "12")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("edge.max_frame_bytes"), "{err}");
}

#[tokio::test]
async fn token_mints_a_verifiable_device_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .args([
            "token", "--user", "alice", "--device", "laptop", "--ttl", "60",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let claims =
        anchorage_edge::auth::verify_hs256(anchorage_config::DEV_HMAC_SECRET, &token).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.device.as_str()),
        ("alice", "laptop")
    );

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .args(["token", "--user", "al.ice", "--device", "laptop"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("user id contains '.'"));
}

#[tokio::test]
async fn an_edge_refuses_to_serve_with_the_public_development_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
            .arg("edge")
            .current_dir(dir.path())
            .env("ANCHORAGE_EDGE__LISTEN", "127.0.0.1:0")
            .output(),
    )
    .await
    .expect("the edge stops at once")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.hmac_secret is the public development secret"),
        "{err}"
    );
}

#[tokio::test]
async fn config_show_prints_no_secret() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anchorage"))
        .args(["config", "show"])
        .env("ANCHORAGE_AUTH__HMAC_SECRET", "s3cr3t-hmac-s3cr3t-hmac")
        .env(
            "ANCHORAGE_DATABASE__URL",
            "postgres://chat:hunter2@db.internal/chat",
        )
        .env("ANCHORAGE_NATS__USER", "edge")
        .env("ANCHORAGE_NATS__PASSWORD", "nats-pass-123")
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    for secret in ["s3cr3t-hmac", "hunter2", "nats-pass-123"] {
        assert!(!shown.contains(secret), "{secret} shown:\n{shown}");
    }
    assert!(
        shown.contains("postgres://chat:<redacted>@db.internal/chat"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_killed_dev_leaves_no_server_in_the_way_of_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2).unwrap();
    let ready = |addr: std::net::SocketAddr| async move {
        eventually(
            Duration::from_secs(60),
            "anchorage dev to be ready",
            || async { (http_get(addr, "/readyz").await.ok()?.0 == 200).then_some(()) },
        )
        .await
        .unwrap();
    };
    let (mut first, addr) = start_dev_on(dir.path(), ports[0], ports[1]);
    ready(addr).await;
    let leftover = nats_pid(&dir.path().join("data")).expect("a nats-server ports file");
    // kill -9: the nats-server child is left running, on the port and the store.
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    assert!(
        alive(leftover),
        "the situation under test: a leftover server"
    );
    let (mut second, addr) = start_dev_on(dir.path(), ports[0], ports[1]);
    ready(addr).await;
    assert!(!alive(leftover), "the leftover was stopped");
    crate::crash::signal(second.id().unwrap(), "-TERM");
    let exit = within(
        Duration::from_secs(30),
        "anchorage dev to exit",
        second.wait(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(exit.success(), "{exit}");
}
