//! `anchorage-bench … --quick --json` (what `anchorage bench` runs) prints one JSON object with
//! our figures and the baseline from the same run. A smoke test of the output's shape — never
//! of speed.

#![allow(clippy::unwrap_used)] // test helpers fail the test on any error

use anchorage_tests::{nats_binary, repo_root};
use serde_json::Value;

fn run(args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_anchorage-bench"));
    command
        .args(args)
        .current_dir(repo_root())
        .env("ANCHORAGE_DEV__NATS_SERVER", nats_binary().unwrap());
    // The PostgreSQL server of the suite, if it runs against one (otherwise `partitions`
    // starts its own).
    if let Ok(url) = std::env::var(anchorage_tests::POSTGRES_ENV) {
        command.env("ANCHORAGE_BENCH_POSTGRES_URL", url);
    }
    command.output().unwrap()
}

fn bench(scenario: &str) -> Value {
    let out = run(&[scenario, "--quick", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn positive(v: &Value, path: &[&str]) {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    assert!(at.as_f64().is_some_and(|x| x > 0.0), "{path:?} in {v}");
}

#[test]
fn raw_send_and_replay_report_figures_with_their_baselines() {
    let raw = bench("raw");
    assert_eq!(raw["scenario"], "raw");
    positive(&raw, &["baseline", "jetstream_publish_msgs_per_sec"]);
    positive(&raw, &["baseline", "jetstream_consume_msgs_per_sec"]);
    positive(&raw, &["baseline", "websocket_push_frames_per_sec"]);
    positive(&raw, &["machine", "cpus"]);

    let send = bench("send");
    positive(&send, &["ours", "accepted_msgs_per_sec"]);
    positive(&send, &["ours", "ack_latency_ms_p99"]);
    positive(&send, &["baseline", "jetstream_publish_msgs_per_sec"]);
    positive(&send, &["baseline", "send_path_msgs_per_sec"]);
    positive(&send, &["ratio"]);
    positive(&send, &["ratio_to_send_path"]);

    let replay = bench("replay");
    positive(&replay, &["ours", "replay_events_per_sec"]);
    positive(&replay, &["baseline", "jetstream_consume_msgs_per_sec"]);
    positive(&replay, &["ratio"]);
    positive(&replay, &["ours", "postgresql_replay_events_per_sec"]);
    positive(&replay, &["ratio_postgresql"]);

    let memory = bench("memory");
    positive(&memory, &["ours", "rss_after_kib"]);
    assert_eq!(memory["ours"]["connections"], 20, "{memory}");
}

#[test]
fn an_unknown_scenario_is_refused_with_the_list_of_scenarios() {
    let out = run(&["dance", "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dance") && err.contains("reconnect"), "{err}");
}

#[test]
fn members_reports_bytes_and_times_next_to_full_pulls() {
    let m = bench("members");
    for key in [
        "unchanged_bytes",
        "one_change_bytes",
        "churn_bytes_per_changed_member",
        "full_bytes_per_member",
        "full_server_ms",
        "batch_bytes",
        "batch_rounds",
    ] {
        positive(&m, &["ours", key]);
    }
    positive(&m, &["baseline", "naive_batch_full_pull_bytes"]);
    positive(&m, &["ratio", "batch_vs_full_pulls"]);
    assert!(m["ours"]["batch_rounds"].as_u64().unwrap() > 1, "{m}");
    // One change in its positional form fits in 64 bytes, and is smaller than the object.
    let one = m["ours"]["one_change_bytes"].as_u64().unwrap();
    assert!(one <= 64, "{m}");
    assert!(
        one < m["ours"]["one_change_object_bytes"].as_u64().unwrap(),
        "{m}"
    );
}

#[test]
fn fanout_and_reconnect_report_delivery_and_resync_times() {
    let f = bench("fanout");
    positive(&f, &["ours", "delivery_ms_p99"]);
    positive(&f, &["ours", "deliveries_per_sec"]);
    positive(&f, &["baseline", "websocket_push_frames_per_sec"]);
    assert_eq!(f["ours"]["missing"], 0, "{f}");

    let r = bench("reconnect");
    positive(&r, &["ours", "all_resynced_s"]);
    positive(&r, &["ours", "rss_peak_mib"]);
    assert_eq!(r["ours"]["failures"], 0, "{r}");
    assert_eq!(r["ours"]["resynced"], r["ours"]["clients"], "{r}");
}

#[test]
fn signals_counts_reactions_and_typing_frames_next_to_one_push_per_reaction() {
    let s = bench("signals");
    positive(&s, &["ours", "reactions_per_sec"]);
    positive(&s, &["baseline", "raw_jetstream_publish_per_sec"]);
    positive(&s, &["ratio"]);
    let online = s["sizes"]["online"].as_u64().unwrap();
    assert_eq!(s["ours"]["members_complete"], online, "{s}");
    let frames = s["ours"]["reaction_frames"].as_u64().unwrap();
    let naive = s["baseline"]["frames_one_push_per_reaction_per_member"]
        .as_u64()
        .unwrap();
    assert!(frames > 0 && frames < naive, "{s}");
    assert_eq!(s["ours"]["typing_receivers"], s["sizes"]["viewers"], "{s}");
}

#[test]
fn ingest_reports_events_from_another_system_until_projected() {
    let i = bench("ingest");
    positive(&i, &["ours", "events_per_sec"]);
    positive(&i, &["ours", "system_posts_per_sec"]);
    positive(&i, &["baseline", "jetstream_publish_msgs_per_sec"]);
    positive(&i, &["ratio"]);
    let users = i["sizes"]["users"].as_u64().unwrap();
    // The users, the group and its member chunks.
    assert_eq!(
        i["ours"]["events"].as_u64().unwrap(),
        users + 1 + (users - 1).div_ceil(1000),
        "{i}"
    );
}

#[test]
fn partitions_project_the_same_messages_in_one_two_and_four_partitions() {
    let p = bench("partitions");
    for count in [1, 2, 4] {
        positive(&p, &["ours", &format!("partitions_{count}_events_per_sec")]);
    }
    positive(&p, &["baseline", "jetstream_consume_msgs_per_sec"]);
    positive(&p, &["ratio", "four_vs_one"]);
    assert_eq!(p["ours"]["database"], "postgresql", "{p}");
}

#[test]
fn sdk_puts_the_typescript_sdk_next_to_the_rust_sdk_in_one_run() {
    let s = bench("sdk");
    for side in ["ours", "baseline"] {
        positive(&s, &[side, "send", "accepted_msgs_per_sec"]);
        positive(&s, &[side, "send", "queued_to_acked_ms_p99"]);
        positive(&s, &[side, "reconnect", "all_resynced_s"]);
        let r = &s[side]["reconnect"];
        assert_eq!(r["failures"], 0, "{s}");
        assert_eq!(r["resynced"], s["sizes"]["reconnecting_clients"], "{s}");
        // Every client lost its connection at the restart, and came back.
        assert!(
            r["disconnects"].as_u64().unwrap() >= r["clients"].as_u64().unwrap(),
            "{s}"
        );
    }
    assert_eq!(s["ours"]["sdk"], "typescript");
    assert_eq!(s["baseline"]["sdk"], "rust");
    positive(&s, &["ratio", "send"]);
    positive(&s, &["ratio", "reconnect_p50"]);
}
