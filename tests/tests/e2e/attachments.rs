//! Attachments on both backends — a folder served by the edge, and s3rver (an S3-compatible
//! server that checks AWS Signature Version 4) — driven as a client would from the protocol:
//! `upload`, an HTTP PUT to the URL given, `send`, `download`, an HTTP GET. Who may upload and
//! download, what a URL allows and for how long, ids that are forged, altered or carried
//! elsewhere, revokes that delete the files (and keep those another message still names),
//! a store that is down for a while, and the Rust SDK.

use std::time::Duration;

use anchorage_protocol::request::{Revoke, Sync};
use anchorage_protocol::{ErrorCode, Push};
use anchorage_schema::attachment::{Attachment, AttachmentId};
use anchorage_sdk::Refs;
use anchorage_tests::{
    TestNats, TestStack, WsClient, conv_id, create_group, eventually, send_message,
};
use serde_json::json;

use crate::common;
use crate::files::{Files, Kind, MAX, PNG, download, refused, upload, with_files};

const WAIT: Duration = Duration::from_secs(30);

/// A file reaches the members of the conversation — in the live message, in `sync`, as a
/// download with its type and name — and nobody else.
async fn a_file_reaches_the_members_and_only_them(kind: Kind) {
    let f = Files::start(kind).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let mut carol = f.device("carol", "d1").await;

    let a = f
        .uploaded(&mut alice, "team", "Ünïcødé cat.png", PNG)
        .await
        .0;
    assert_eq!(a.size, PNG.len() as u64);
    let seq = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;

    let live = bob
        .push(|p| matches!(p, Push::Message(m) if m.message.seq == seq))
        .await
        .unwrap();
    let Push::Message(live) = live else {
        unreachable!()
    };
    assert_eq!(live.message.attachments, vec![a.clone()]);
    let page = bob
        .messages(Sync {
            conv: conv_id("team"),
            after: 0,
            limit: None,
        })
        .await
        .unwrap();
    let stored = page.messages.iter().find(|m| m.seq == seq).unwrap();
    assert_eq!(stored.attachments, vec![a.clone()]);

    let g = f.download(&mut bob, "team", seq, &a.id).await;
    assert_eq!(g.attachment, a);
    assert!(g.expires_at > anchorage_schema::now_ms());
    let (status, headers, bytes) = f.get_with_headers(&g.url).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, PNG);
    assert_eq!(headers["content-type"], "image/png");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(
        disposition.contains("%C3%9Cn%C3%AFc%C3%B8d%C3%A9%20cat.png"),
        "{disposition}"
    );

    // Not a member: no upload into the conversation, no download from it.
    assert_eq!(
        refused(&mut carol, download("team", seq, &a.id)).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut carol, upload("team", "x.png", "image/png", 1)).await,
        ErrorCode::Forbidden
    );
    // Another message, another id, a seq past the end: nothing.
    let other = f.uploaded(&mut alice, "team", "dog.png", b"dog").await.0;
    assert_eq!(
        refused(&mut bob, download("team", seq, &other.id)).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(&mut bob, download("team", seq + 50, &a.id)).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(&mut bob, download("team", 0, &a.id)).await,
        ErrorCode::NotFound
    );
    // Every call to the store — the clients' and the server's own — was signed as S3 requires.
    if let Some(s3) = &f.s3 {
        assert_eq!(s3.refusals(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn a_file_reaches_the_members_and_only_them_fs() {
    a_file_reaches_the_members_and_only_them(Kind::Fs).await;
}

#[tokio::test]
async fn a_file_reaches_the_members_and_only_them_s3() {
    a_file_reaches_the_members_and_only_them(Kind::S3).await;
}

/// An upload is issued for one conversation, one uploader, one type and one size: the store
/// takes nothing else under its URL, and a message names it only as issued, only once it is
/// stored, only by its uploader, only in its conversation.
async fn files_are_held_to_what_was_issued(kind: Kind) {
    let f = Files::start(kind).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    alice
        .ok(create_group("side", "Side", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;

    // The limits of the configuration, and names that are not file names.
    assert_eq!(
        refused(&mut alice, upload("team", "big.png", "image/png", MAX + 1)).await,
        ErrorCode::TooLarge
    );
    assert_eq!(
        refused(&mut alice, upload("team", "x.html", "text/html", 10)).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut alice, upload("team", "x.png", "image/png; x=1", 10)).await,
        ErrorCode::InvalidRequest
    );
    for name in ["../../etc/passwd", "a\u{0}b.png", "", " "] {
        assert_eq!(
            refused(&mut alice, upload("team", name, "image/png", 10)).await,
            ErrorCode::InvalidRequest,
            "{name:?}"
        );
    }

    // The URL takes only the issued size and type.
    let g = f
        .grant(&mut alice, "team", "cat.png", "image/png", PNG.len() as u64)
        .await;
    let longer = [PNG, b"!"].concat();
    assert!(f.put(&g.url, "image/png", &longer).await >= 400);
    assert!(f.put(&g.url, "image/png", &PNG[1..]).await >= 400);
    assert!(f.put(&g.url, "text/html", PNG).await >= 400);
    // Nothing is stored yet, so no message names it.
    assert_eq!(
        refused(
            &mut alice,
            with_files("team", "m0", vec![g.attachment.clone()])
        )
        .await,
        ErrorCode::NotFound
    );
    assert_eq!(f.put(&g.url, "image/png", PNG).await, 200);
    let a = g.attachment;
    if let Some(s3) = &f.s3 {
        // The store itself refused the three uploads: the length and the type are signed.
        let refusals = s3.refusals();
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert!(
            refusals
                .iter()
                .all(|r| r.ends_with("SignatureDoesNotMatch")),
            "{refusals:?}"
        );
    }

    // Named otherwise than issued: refused.
    let bigger = Attachment {
        size: a.size + 1,
        ..a.clone()
    };
    assert_eq!(
        refused(&mut alice, with_files("team", "m1", vec![bigger])).await,
        ErrorCode::Forbidden
    );
    let retyped = Attachment {
        content_type: "image/gif".into(),
        ..a.clone()
    };
    assert_eq!(
        refused(&mut alice, with_files("team", "m2", vec![retyped])).await,
        ErrorCode::Forbidden
    );
    // In another conversation, or by another member who saw the id: refused.
    assert_eq!(
        refused(&mut alice, with_files("side", "m3", vec![a.clone()])).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut bob, with_files("team", "b1", vec![a.clone()])).await,
        ErrorCode::Forbidden
    );
    // A computed id (another object under the same seal, or a made-up seal): refused.
    let forged = AttachmentId::from_parts("AAAAAAAAAAAAAAAAAAAAAA", a.id.seal()).unwrap();
    assert_eq!(
        refused(
            &mut alice,
            with_files(
                "team",
                "m4",
                vec![Attachment {
                    id: forged,
                    ..a.clone()
                }]
            )
        )
        .await,
        ErrorCode::Forbidden
    );
    let made_up = AttachmentId::from_parts(a.id.object(), "BBBBBBBBBBBBBBBBBBBBBB").unwrap();
    assert_eq!(
        refused(
            &mut alice,
            with_files(
                "team",
                "m5",
                vec![Attachment {
                    id: made_up,
                    ..a.clone()
                }]
            )
        )
        .await,
        ErrorCode::Forbidden
    );
    // Too many, or the same twice.
    assert_eq!(
        refused(&mut alice, with_files("team", "m6", vec![a.clone(); 11])).await,
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        refused(
            &mut alice,
            with_files("team", "m7", vec![a.clone(), a.clone()])
        )
        .await,
        ErrorCode::InvalidRequest
    );
    // A frame with a malformed id is refused as a frame, and the connection carries on.
    let frame = json!({"type": "send", "id": 999, "conv": "team", "client_msg_id": "m8",
        "body": "x", "client_ts": 1,
        "attachments": [{"id": "../../x", "name": "a", "content_type": "image/png", "size": 1}]});
    alice.send_text(frame.to_string()).await.unwrap();
    match alice.next_answer().await.unwrap() {
        anchorage_protocol::ServerFrame::Error(e) => {
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}");
        }
        other => panic!("not refused: {other:?}"),
    }

    // As issued, renamed for display: stored, and the refusals held nothing back.
    let renamed = Attachment {
        name: "kitten.png".into(),
        ..a.clone()
    };
    let seq = alice
        .ack(with_files("team", "m9", vec![renamed.clone()]))
        .await
        .unwrap()
        .seq;
    let g = f.download(&mut bob, "team", seq, &a.id).await;
    assert_eq!(g.attachment.name, "kitten.png");
    assert_eq!(f.get(&g.url).await.1, PNG);
}

#[tokio::test]
async fn files_are_held_to_what_was_issued_fs() {
    files_are_held_to_what_was_issued(Kind::Fs).await;
}

#[tokio::test]
async fn files_are_held_to_what_was_issued_s3() {
    files_are_held_to_what_was_issued(Kind::S3).await;
}

/// A download URL works for a short while, for that file as issued: altering any part of it,
/// or using it late, is refused by the store.
async fn download_urls_expire_and_cannot_be_altered(kind: Kind) {
    let f = Files::start_with(kind, |c| c.attachments.download_ttl_secs = 2).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let a = f.uploaded(&mut alice, "team", "cat.png", PNG).await.0;
    let seq = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;
    let g = f.download(&mut alice, "team", seq, &a.id).await;
    assert_eq!(f.get(&g.url).await.0, 200);

    let (param, value) = match kind {
        Kind::Fs => ("type", "text/html"),
        Kind::S3 => ("response-content-type", "text/html"),
    };
    let mut url = url_of(&f.absolute(&g.url));
    let altered: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == param {
                value.to_owned()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(altered);
    assert_eq!(f.get(url.as_str()).await.0, 403, "{url}");
    // Another object under the same signature.
    let other = f
        .absolute(&g.url)
        .replace(a.id.object(), "AAAAAAAAAAAAAAAAAAAAAA");
    assert_eq!(f.get(&other).await.0, 403);
    if kind == Kind::Fs {
        // Paths that are not objects, and a PUT with a GET's signature.
        let (_, query) = g.url.split_once('?').unwrap();
        for path in [
            "/v1/blobs/..%2F..%2Fetc%2Fpasswd",
            "/v1/blobs/.",
            "/v1/blobs/%2e%2e",
        ] {
            let status = f.get(&format!("{path}?{query}")).await.0;
            assert!(status == 403 || status == 404, "{path}: {status}");
        }
        assert_eq!(f.put(&g.url, "image/png", PNG).await, 403);
        assert_eq!(
            f.put(&format!("/v1/blobs/{}", a.id.object()), "image/png", PNG)
                .await,
            403
        );
    }
    // Late.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(f.get(&g.url).await.0, 403);
    if let Some(s3) = &f.s3 {
        let refusals = s3.refusals();
        assert_eq!(refusals.len(), 3, "{refusals:?}");
        assert!(refusals[2].ends_with("Request has expired"), "{refusals:?}");
    }
    // A new one works again.
    let g = f.download(&mut alice, "team", seq, &a.id).await;
    assert_eq!(f.get(&g.url).await.1, PNG);
}

fn url_of(s: &str) -> reqwest::Url {
    reqwest::Url::parse(s).unwrap()
}

#[tokio::test]
async fn download_urls_expire_and_cannot_be_altered_fs() {
    download_urls_expire_and_cannot_be_altered(Kind::Fs).await;
}

#[tokio::test]
async fn download_urls_expire_and_cannot_be_altered_s3() {
    download_urls_expire_and_cannot_be_altered(Kind::S3).await;
}

/// Revoking a message deletes its files from the store — except one another message still
/// names — and its tombstone names none.
async fn revoking_deletes_files_no_other_message_names(kind: Kind) {
    let f = Files::start(kind).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let shared = f.uploaded(&mut alice, "team", "shared.png", PNG).await.0;
    let own = f.uploaded(&mut alice, "team", "own.png", b"own").await.0;
    let m1 = alice
        .ack(with_files("team", "m1", vec![shared.clone(), own.clone()]))
        .await
        .unwrap()
        .seq;
    let m2 = alice
        .ack(with_files("team", "m2", vec![shared.clone()]))
        .await
        .unwrap()
        .seq;
    let own_url = f.download(&mut bob, "team", m1, &own.id).await.url;
    let shared_url = f.download(&mut bob, "team", m2, &shared.id).await.url;

    alice
        .ok(Revoke {
            conv: conv_id("team"),
            seq: m1,
        })
        .await
        .unwrap();
    f.gone(&own_url).await;
    // m2 still names the shared file: it stays.
    assert_eq!(f.get(&shared_url).await.0, 200);
    assert_eq!(
        refused(&mut bob, download("team", m1, &shared.id)).await,
        ErrorCode::NotFound
    );
    let page = bob
        .messages(Sync {
            conv: conv_id("team"),
            after: 0,
            limit: None,
        })
        .await
        .unwrap();
    let tomb = page.messages.iter().find(|m| m.seq == m1).unwrap();
    assert!(tomb.revoked && tomb.attachments.is_empty(), "{tomb:?}");
    // A rebuild from the streams holds the same files and tombstones.
    let store = &f.t.stack.store;
    let (_rebuilt_dir, rebuilt, _) = anchorage_tests::rebuilt(&f.t.config, &f.t.stack.bus, 5).await;
    assert_eq!(
        anchorage_tests::rebuild_differences(store, &rebuilt).await,
        Vec::<String>::new()
    );
    assert_eq!(
        rebuilt
            .message("team", m2)
            .await
            .unwrap()
            .unwrap()
            .attachments,
        vec![shared.clone()]
    );

    alice
        .ok(Revoke {
            conv: conv_id("team"),
            seq: m2,
        })
        .await
        .unwrap();
    f.gone(&shared_url).await;
    eventually(WAIT, "the deletion queue to empty", || async {
        (store.deletion_backlog().await.ok()?.0 == 0).then_some(())
    })
    .await
    .unwrap();
    if kind == Kind::Fs {
        let left: Vec<_> = std::fs::read_dir(f.folder()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[tokio::test]
async fn revoking_deletes_files_no_other_message_names_fs() {
    revoking_deletes_files_no_other_message_names(Kind::Fs).await;
}

#[tokio::test]
async fn revoking_deletes_files_no_other_message_names_s3() {
    revoking_deletes_files_no_other_message_names(Kind::S3).await;
}

/// While the store is down, a send naming a file is refused for a while (`overloaded`, and
/// later sends wait behind it), and a revoke's deletion waits; both complete once it is back.
#[tokio::test]
async fn a_store_that_is_down_delays_sends_and_deletions_but_loses_nothing() {
    let mut f = Files::start(Kind::S3).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let a = f.uploaded(&mut alice, "team", "cat.png", PNG).await.0;

    f.s3.as_mut().unwrap().stop().await;
    let e = alice
        .refused(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap();
    assert_eq!(e.code, ErrorCode::Overloaded);
    assert!(e.retry_after_ms.is_some());
    assert_eq!(
        refused(&mut alice, send_message("team", "m2", json!("after"))).await,
        ErrorCode::OutOfOrder
    );
    f.s3.as_mut().unwrap().resume().await;
    let mut again = with_files("team", "m1", vec![a.clone()]);
    again.retry = true;
    let seq = alice.ack(again).await.unwrap().seq;
    alice
        .ack(send_message("team", "m2", json!("after")))
        .await
        .unwrap();
    let url = f.download(&mut alice, "team", seq, &a.id).await.url;

    f.s3.as_mut().unwrap().stop().await;
    alice
        .ok(Revoke {
            conv: conv_id("team"),
            seq,
        })
        .await
        .unwrap();
    let store = &f.t.stack.store;
    eventually(WAIT, "a failed deletion attempt", || async {
        let due = store.due_deletions(i64::MAX, i64::MAX, 10).await.ok()?;
        due.iter().any(|d| d.attempts > 0).then_some(())
    })
    .await
    .unwrap();
    f.s3.as_mut().unwrap().resume().await;
    f.gone(&url).await;
    eventually(WAIT, "the deletion queue to empty", || async {
        (store.deletion_backlog().await.ok()?.0 == 0).then_some(())
    })
    .await
    .unwrap();
}

/// With attachments off, `upload` and a send naming a file are refused, and nothing else is.
#[tokio::test]
async fn without_storage_files_are_refused() {
    let nats = TestNats::start().await.unwrap();
    let t = TestStack::start(&nats.url()).await.unwrap();
    let mut alice = WsClient::signed_in(t.edge_addr(), "alice", "d1")
        .await
        .unwrap()
        .0;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    assert_eq!(
        refused(&mut alice, upload("team", "a.png", "image/png", 3)).await,
        ErrorCode::Forbidden
    );
    let a = Attachment {
        id: AttachmentId::parse("AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB").unwrap(),
        name: "a.png".into(),
        content_type: "image/png".into(),
        size: 3,
    };
    assert_eq!(
        refused(&mut alice, with_files("team", "m1", vec![a.clone()])).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut alice, download("team", 1, &a.id)).await,
        ErrorCode::Forbidden
    );
    alice
        .ack(send_message("team", "m2", json!("plain")))
        .await
        .unwrap();
}

/// The Rust SDK uploads a file, sends it with a message through its outbox, and another
/// member's SDK downloads it.
#[tokio::test]
async fn the_sdk_uploads_sends_and_downloads_files() {
    let f = Files::start(Kind::Fs).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = common::client(f.edge(), dir.path(), "alice").await;
    let bob = common::client(f.edge(), dir.path(), "bob").await;
    let mut ws = f.device("alice", "d1").await;
    ws.ok(create_group("team", "Team", &["bob"])).await.unwrap();

    let file: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let a = eventually(WAIT, "the upload", || async {
        alice
            .upload("team", "photo.png", "image/png", file.clone())
            .await
            .ok()
    })
    .await
    .unwrap();
    let id = alice
        .send_with(
            "team",
            json!("holiday"),
            Refs {
                attachments: vec![a.clone()],
                ..Refs::default()
            },
        )
        .await
        .unwrap();
    let seq = eventually(WAIT, "the send to be acknowledged", || async {
        let e = alice.outbox(&id).await.ok()??;
        e.seq
    })
    .await
    .unwrap();
    let got = eventually(WAIT, "bob to hold the message", || async {
        let m = bob.messages("team").await.ok()?;
        m.into_iter().find(|m| m.seq == Some(seq))
    })
    .await
    .unwrap();
    assert_eq!(got.refs.attachments, vec![a.clone()]);
    assert_eq!(bob.download("team", seq, &a.id).await.unwrap(), file);
    // Too large for the server: refused before anything is sent.
    let err = alice
        .upload("team", "huge.png", "image/png", vec![0; MAX as usize + 1])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
}

/// The server API: an app's backend uploads a file for a message it posts for a user, the
/// members' devices see it, and the backend gets a download URL; what the API refuses.
#[tokio::test]
async fn the_server_api_uploads_posts_and_downloads_files() {
    use anchorage_schema::admin::Scope;
    use anchorage_tests::{api_key, http};

    let f = Files::start(Kind::Fs).await;
    let (key, _) = api_key(&f.nats.url(), Scope::Admin, 1000).await;
    let (reader, _) = api_key(&f.nats.url(), Scope::Read, 1000).await;
    let auth = format!("Bearer {key}");
    let call = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let auth = auth.clone();
        let edge = f.edge();
        async move {
            http(
                edge,
                method,
                &path,
                &[("Authorization", auth.as_str())],
                body.as_ref(),
            )
            .await
            .unwrap()
        }
    };
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;

    let grant = call(
        "POST",
        "/v1/conversations/team/attachments".into(),
        Some(json!({"sender": "alice", "name": "report.txt", "content_type": "text/plain", "size": 5})),
    )
    .await;
    assert_eq!(grant.status, 201, "{grant:?}");
    let url = grant.body["url"].as_str().unwrap().to_owned();
    assert_eq!(grant.body["headers"]["content-type"], "text/plain");
    assert_eq!(f.put(&url, "text/plain", b"hello").await, 200);
    let file = grant.body["attachment"].clone();

    let posted = call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"sender": "alice", "body": "the report", "attachments": [file], "client_msg_id": "r1"})),
    )
    .await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let seq = posted.body["seq"].as_u64().unwrap();
    let live = bob
        .push(|p| matches!(p, Push::Message(m) if m.message.seq == seq))
        .await
        .unwrap();
    let Push::Message(live) = live else {
        unreachable!()
    };
    assert_eq!(live.message.attachments.len(), 1);
    assert_eq!(live.message.attachments[0].id.as_str(), file["id"]);

    let history = call("GET", "/v1/conversations/team/messages".into(), None).await;
    assert_eq!(
        history.body["messages"][0]["attachments"][0], file,
        "{history:?}"
    );
    let id = file["id"].as_str().unwrap();
    let got = call(
        "GET",
        format!("/v1/conversations/team/messages/{seq}/attachments/{id}"),
        None,
    )
    .await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(f.get(got.body["url"].as_str().unwrap()).await.1, b"hello");

    // A system message carries no files; a sender who is not a member gets no upload; a
    // read-only key uploads nothing; the same key with other files is another message.
    let system = call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"body": "x", "attachments": [file]})),
    )
    .await;
    assert_eq!(
        (system.status, system.body["code"].as_str()),
        (403, Some("forbidden")),
        "{system:?}"
    );
    let stranger = call(
        "POST",
        "/v1/conversations/team/attachments".into(),
        Some(json!({"sender": "carol", "name": "a.txt", "content_type": "text/plain", "size": 1})),
    )
    .await;
    assert_eq!(stranger.status, 403, "{stranger:?}");
    let read_only = http(
        f.edge(),
        "POST",
        "/v1/conversations/team/attachments",
        &[("Authorization", &format!("Bearer {reader}"))],
        Some(&json!({"sender": "alice", "name": "a.txt", "content_type": "text/plain", "size": 1})),
    )
    .await
    .unwrap();
    assert_eq!(read_only.status, 403, "{read_only:?}");
    let as_bob = call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"sender": "bob", "body": "mine", "attachments": [file]})),
    )
    .await;
    assert_eq!(as_bob.status, 403, "{as_bob:?}");
    let repeat = call(
        "POST",
        "/v1/conversations/team/messages".into(),
        Some(json!({"sender": "alice", "body": "the report", "attachments": [], "client_msg_id": "r1"})),
    )
    .await;
    assert_eq!(repeat.status, 409, "{repeat:?}");
    let unknown = call(
        "GET",
        format!("/v1/conversations/team/messages/{seq}/attachments/AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB"),
        None,
    )
    .await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
}
