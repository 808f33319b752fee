//! The test vectors other clients check their digest against (the TypeScript SDK reads
//! `shared/sdk-ts/test/digest-vectors.json`): member hashes of ids of every length class xxh3
//! treats apart, set digests, and the compact bucket-digest form. The committed file must be
//! what this crate computes; `ANCHORAGE_WRITE_VECTORS=1 cargo test -p anchorage-digest
//! --test vectors` writes it anew.

use anchorage_digest::{BucketedDigest, SetDigest, bucket_of, member_hash};
use serde_json::json;

fn ids() -> Vec<String> {
    let mut ids: Vec<String> = vec![
        String::new(),
        "a".into(),
        "ab".into(),
        "abc".into(),
        "alice".into(),
        "u000001".into(),
        "bob_the-builder".into(),
        "élodie".into(),
        "用户名".into(),
        "emoji-😀".into(),
    ];
    // Every length up to 260 bytes: xxh3 treats 0, 1–3, 4–8, 9–16, 17–128, 129–240 and
    // longer inputs apart.
    for len in 1..=260usize {
        ids.push(
            (0..len)
                .map(|i| char::from(b'a' + ((i * 7 + len) % 26) as u8))
                .collect(),
        );
    }
    ids.push("x".repeat(1024));
    ids.push("y".repeat(1500));
    ids
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

fn vectors() -> serde_json::Value {
    let hashes: Vec<_> = ids()
        .iter()
        .map(|id| json!({"id": id, "hash": hex(member_hash(id)), "bucket": bucket_of(id)}))
        .collect();
    let members: Vec<String> = (0..1000).map(|i| format!("u{i:06}")).collect();
    let set = SetDigest::of(members.iter().map(String::as_str));
    let bucketed = BucketedDigest::of(members.iter().map(String::as_str));
    let few = ["alice", "bob", "carol"];
    json!({
        "hashes": hashes,
        "sets": [
            {"members": [], "digest": SetDigest::EMPTY.to_wire()},
            {"members": few, "digest": SetDigest::of(few).to_wire()},
            {"members_pattern": "u{i:06} for i in 0..1000", "digest": set.to_wire(),
             "buckets": bucketed.to_wire()},
        ],
        "buckets_of_few": BucketedDigest::of(few).to_wire(),
    })
}

#[test]
fn the_committed_vectors_are_this_crates() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sdk-ts/test/digest-vectors.json"
    );
    let text = serde_json::to_string_pretty(&vectors()).unwrap() + "\n";
    if std::env::var_os("ANCHORAGE_WRITE_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == text,
        "{path} is not what the digest crate computes: ANCHORAGE_WRITE_VECTORS=1 cargo test -p anchorage-digest --test vectors"
    );
}
