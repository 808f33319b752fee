//! Streams as code: `streams apply` is idempotent, `--check` names drift, destructive changes
//! are refused — against a real nats-server.

use std::path::Path;
use std::process::ExitCode;

use anchorage::cli::{Cli, run};
use anchorage_bus::{Bus, Change, StreamSet};
use anchorage_tests::{TestNats, streams_dir};
use clap::Parser;

async fn bus(nats: &TestNats) -> Bus {
    let config = anchorage_tests::operator_config(&nats.url());
    Bus::connect(&anchorage::bus_options(&config, false))
        .await
        .unwrap()
}

/// Copies the repository's definitions, so a test can edit them.
fn copy_streams(to: &Path) {
    for sub in ["streams", "consumers"] {
        copy_dir(&streams_dir().join(sub), &to.join(sub));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

async fn cli(config_file: &Path, args: &[&str]) -> ExitCode {
    let mut argv = vec!["anchorage", "--config", config_file.to_str().unwrap()];
    argv.extend_from_slice(args);
    run(Cli::parse_from(argv)).await.unwrap()
}

#[tokio::test]
async fn apply_twice_changes_nothing_the_second_time() {
    let nats = TestNats::start().await.unwrap();
    let bus = bus(&nats).await;
    let set = StreamSet::load(&streams_dir(), 1).unwrap();
    assert!(set.streams.len() >= 6 && set.consumers.len() >= 5);

    let first = bus.apply(&set).await.unwrap();
    assert!(
        first.outcomes.iter().all(|o| o.change == Change::Created),
        "{first}"
    );

    let second = bus.apply(&set).await.unwrap();
    assert!(
        second.in_sync(),
        "second apply changed something:\n{second}"
    );
    assert!(!second.changed());
    assert!(bus.check(&set).await.unwrap().in_sync());

    // Epochs are the creation times; they do not move on a no-op apply.
    let before = bus.stream_state("MESSAGES").await.unwrap().epoch;
    bus.apply(&set).await.unwrap();
    assert_eq!(bus.stream_state("MESSAGES").await.unwrap().epoch, before);
    assert!(before.0 > 0);
}

#[tokio::test]
async fn check_names_each_drift_and_apply_fixes_it() {
    let nats = TestNats::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_streams(dir.path());
    let config_file = dir.path().join("anchorage.toml");
    std::fs::write(
        &config_file,
        format!(
            "[nats]\nurl = \"{}\"\nuser = \"operator\"\npassword = \"{}\"\n[streams]\ndir = \"{}\"\n",
            nats.url(),
            anchorage_tests::credentials().password("operator").unwrap(),
            dir.path().display()
        ),
    )
    .unwrap();

    assert_eq!(
        cli(&config_file, &["streams", "apply", "--check"]).await,
        ExitCode::FAILURE
    );
    assert_eq!(
        cli(&config_file, &["streams", "apply"]).await,
        ExitCode::SUCCESS
    );
    assert_eq!(
        cli(&config_file, &["streams", "apply", "--check"]).await,
        ExitCode::SUCCESS
    );

    // Edit a stream and a consumer file.
    edit_json(&dir.path().join("streams/MESSAGES.json"), |v| {
        v["duplicate_window"] = serde_json::json!(300_000_000_000u64);
    });
    edit_json(
        &dir.path().join("consumers/READS/projector_reads.json"),
        |v| {
            v["max_ack_pending"] = serde_json::json!(77);
        },
    );
    let set = StreamSet::load(dir.path(), 1).unwrap();
    let bus = bus(&nats).await;
    let report = bus.check(&set).await.unwrap();
    let text = report.to_string();
    assert!(
        text.contains("stream MESSAGES: updated")
            && text.contains("duplicate_window: file 300000000000 != server 120000000000"),
        "{text}"
    );
    assert!(
        text.contains("max_ack_pending: file 77 != server 1024"),
        "{text}"
    );
    assert_eq!(
        report
            .outcomes
            .iter()
            .filter(|o| o.change != Change::Unchanged)
            .count(),
        2,
        "{text}"
    );
    assert_eq!(
        cli(&config_file, &["streams", "apply", "--check"]).await,
        ExitCode::FAILURE
    );

    // Check changed nothing; apply does, once.
    assert!(!bus.check(&set).await.unwrap().in_sync());
    assert!(bus.apply(&set).await.unwrap().changed());
    assert!(bus.check(&set).await.unwrap().in_sync());
}

#[tokio::test]
async fn destructive_changes_are_refused_and_nothing_is_deleted() {
    let nats = TestNats::start().await.unwrap();
    let bus = bus(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    copy_streams(dir.path());
    bus.apply(&StreamSet::load(dir.path(), 1).unwrap())
        .await
        .unwrap();

    edit_json(&dir.path().join("streams/MESSAGES.json"), |v| {
        v["subjects"] = serde_json::json!(["message.*"]);
        v["max_msgs"] = serde_json::json!(10);
    });
    edit_json(
        &dir.path().join("consumers/USERS/projector_users.json"),
        |v| {
            v["deliver_policy"] = serde_json::json!("new");
        },
    );
    // Dropping a file never deletes what it defined.
    std::fs::remove_file(dir.path().join("streams/DEADLETTER.json")).unwrap();

    let set = StreamSet::load(dir.path(), 1).unwrap();
    let report = bus.apply(&set).await.unwrap();
    assert!(report.refused(), "{report}");
    let text = report.to_string();
    assert!(text.contains("stream MESSAGES: REFUSED"), "{text}");
    assert!(text.contains("subjects: removing [\"msg.*\"]"), "{text}");
    assert!(
        text.contains("max_msgs: lowering the limit from -1 to 10"),
        "{text}"
    );
    assert!(
        text.contains("consumer USERS/projector_users: REFUSED"),
        "{text}"
    );
    assert!(text.contains("deliver_policy"), "{text}");

    // The server still has the original definitions and every stream.
    let original = StreamSet::load(&streams_dir(), 1).unwrap();
    assert!(bus.check(&original).await.unwrap().in_sync());
}

#[tokio::test]
async fn a_broken_definition_names_its_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_streams(dir.path());
    edit_json(&dir.path().join("streams/READS.json"), |v| {
        v["storage"] = serde_json::json!("floppy");
    });
    let err = StreamSet::load(dir.path(), 1).unwrap_err().to_string();
    assert!(
        err.contains("READS.json") && err.contains("floppy"),
        "{err}"
    );
}

#[tokio::test]
async fn deploy_configs_are_accepted_by_the_pinned_server() {
    let binary = anchorage_tests::nats_binary().unwrap();
    let root = anchorage_tests::repo_root();
    // The users and permissions in deploy/nats/auth.conf are what the code defines.
    let rendered =
        anchorage::nats_auth::render_for_deploy(&["crm=MEMBERSHIP,USERS".to_owned()]).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("deploy/nats/auth.conf")).unwrap(),
        rendered,
        "deploy/nats/auth.conf is stale: anchorage nats-auth --integration \
         crm=MEMBERSHIP,USERS > deploy/nats/auth.conf"
    );
    let certs = tempfile::tempdir().unwrap();
    let tls = anchorage_tests::certificates(certs.path());
    for conf in [
        "single.conf",
        "cluster/n1.conf",
        "cluster/n2.conf",
        "cluster/n3.conf",
    ] {
        let mut check = std::process::Command::new(&binary);
        check
            .arg("-t")
            .arg("-c")
            .arg(root.join("deploy/nats").join(conf))
            .env("ANCHORAGE_NATS_TLS_CERT", &tls.cert)
            .env("ANCHORAGE_NATS_TLS_KEY", &tls.key)
            .env("ANCHORAGE_NATS_TLS_CA", &tls.ca);
        for user in ["EDGE", "PROJECTOR", "OPERATOR", "EXT_CRM"] {
            check.env(format!("ANCHORAGE_NATS_{user}_PASSWORD"), "a-password");
        }
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "{conf}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_subscription_is_in_place_on_the_server_once_flush_returns() {
    // What the edges rely on: once `flush` returns, an event another connection publishes
    // reaches the new subscription — it is never published before the server knows of it.
    let nats = TestNats::start().await.unwrap();
    let (listener, publisher) = (bus(&nats).await, bus(&nats).await);
    for round in 0..300 {
        let subject = format!("notify.grp.flush{round}");
        let mut sub = listener.subscribe_notices(&subject).await.unwrap();
        listener.flush().await.unwrap();
        publisher.notify(&subject, round.to_string()).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(2), sub.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the subscription missed the publish"))
            .unwrap();
        assert_eq!(got.1, round.to_string().as_bytes());
    }
}
