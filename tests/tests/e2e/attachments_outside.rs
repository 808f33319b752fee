//! Attachments attacked from outside, and from a failing datacenter: clients written from
//! PROTOCOL.md ("Files (attachments)") and API.md, talking to the server only through the
//! WebSocket and HTTP. Computed and colliding ids, bent folder URLs, cut, stalled and racing
//! uploads, who may download, revokes while the store is down or while a send naming the same
//! file is on its way, retries and repeats, and the server API with hostile bodies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anchorage_config::BlobBackend;
use anchorage_protocol::request::{
    Download, Hide, OpenDirect, RemoveMembers, Revoke, SendMessage, Sync,
};
use anchorage_protocol::{ErrorCode, ReplyBody, ServerFrame};
use anchorage_schema::admin::Scope;
use anchorage_schema::attachment::{Attachment, AttachmentId};
use anchorage_tests::{
    WsClient, api_key, conv_id, create_group, eventually, group_id, send_message, user_id, user_ids,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::files::{Files, Kind, MAX, PNG, download, refused, upload, with_files};

const WAIT: Duration = Duration::from_secs(20);
/// As long as [`PNG`], other bytes.
const EVIL: &[u8] = b"EVIL-EVIL-EVIL!";

async fn open_direct(c: &mut WsClient, peer: &str) -> String {
    match c
        .reply(OpenDirect {
            peer: user_id(peer),
        })
        .await
        .unwrap()
    {
        ReplyBody::Ok(done) => done.conv.unwrap().as_str().to_owned(),
        other => panic!("not ok: {other:?}"),
    }
}

/// One HTTP/1.1 exchange on a fresh connection, written byte for byte (no client normalizes
/// the target): status and the whole answer as text.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the body is read.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A request head; `extra` lines end with CRLF.
fn head(method: &str, target: &str, addr: SocketAddr, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n")
}

/// `body` in chunked transfer encoding, `piece` bytes a chunk.
fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// The problem body of an answer's text (after the head), if it is one.
fn problem_of(text: &str) -> Option<Value> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.to_ascii_lowercase()
        .contains("content-type: application/problem+json")
        .then(|| serde_json::from_str(body).ok())
        .flatten()
}

/// Asks `download` until it is refused with `code` (a change that reaches the edge a moment
/// after it was stored), failing after [`WAIT`].
async fn until_refused(c: &mut WsClient, body: Download, code: ErrorCode, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let frame = c.request(body.clone()).await.unwrap();
        if matches!(&frame, ServerFrame::Error(e) if e.code == code) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still {frame:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The user's own messages of `conv`, as `sync` returns them.
async fn history(c: &mut WsClient, conv: &str) -> Vec<anchorage_protocol::Message> {
    c.messages(Sync {
        conv: conv_id(conv),
        after: 0,
        limit: None,
    })
    .await
    .unwrap()
    .messages
}

// ------------------------------------------------------------------------------------------
// 1. Computed and colliding ids.
// ------------------------------------------------------------------------------------------

/// Ids seen in someone else's message, carried into another group or a 1:1, retyped,
/// resized, swapped between two of one's own files, with made-up or non-canonical seals, or
/// odd in the JSON: none is taken; nothing refused is stored; the connection carries on.
async fn ids_cannot_be_forged_reused_or_carried(kind: Kind) {
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
    let dm = open_direct(&mut alice, "bob").await;
    assert!(dm.starts_with("dm-"), "{dm}");

    // Bob's file, as alice sees it in his message.
    let (b, _) = f.uploaded(&mut bob, "team", "bob.png", PNG).await;
    let b_seq = bob
        .ack(with_files("team", "b1", vec![b.clone()]))
        .await
        .unwrap()
        .seq;
    let seen = history(&mut alice, "team")
        .await
        .into_iter()
        .find(|m| m.seq == b_seq)
        .unwrap()
        .attachments;
    assert_eq!(seen, vec![b.clone()]);
    for conv in ["team", "side", dm.as_str()] {
        assert_eq!(
            refused(&mut alice, with_files(conv, "steal", seen.clone())).await,
            ErrorCode::Forbidden,
            "bob's id reused by alice in {conv}"
        );
    }

    // Alice's own files, carried elsewhere.
    let (a1, _) = f.uploaded(&mut alice, "team", "a1.png", PNG).await;
    let (a2, _) = f
        .uploaded(&mut alice, "team", "a2.png", b"another-file")
        .await;
    let (d, _) = f.uploaded(&mut alice, &dm, "dm.png", PNG).await;
    assert_eq!(
        refused(&mut alice, with_files(&dm, "carry1", vec![a1.clone()])).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut alice, with_files("team", "carry2", vec![d.clone()])).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut bob, with_files(&dm, "carry3", vec![d.clone()])).await,
        ErrorCode::Forbidden,
        "the other side of the 1:1 naming alice's file"
    );

    // Retyped, resized.
    for (n, changed) in [
        Attachment {
            size: a1.size + 1,
            ..a1.clone()
        },
        Attachment {
            size: a1.size - 1,
            ..a1.clone()
        },
        Attachment {
            size: 0,
            ..a1.clone()
        },
        Attachment {
            content_type: "image/gif".into(),
            ..a1.clone()
        },
        Attachment {
            content_type: "text/plain".into(),
            ..a1.clone()
        },
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            refused(
                &mut alice,
                with_files("team", &format!("alter{n}"), vec![changed.clone()])
            )
            .await,
            ErrorCode::Forbidden,
            "{changed:?}"
        );
    }

    // Object and seal swapped between two of alice's own files, with either's type and size.
    let swaps = [
        AttachmentId::from_parts(a1.id.object(), a2.id.seal()).unwrap(),
        AttachmentId::from_parts(a2.id.object(), a1.id.seal()).unwrap(),
    ];
    let mut n = 0;
    for id in &swaps {
        for like in [&a1, &a2] {
            n += 1;
            let swapped = Attachment {
                id: id.clone(),
                ..like.clone()
            };
            assert_eq!(
                refused(
                    &mut alice,
                    with_files("team", &format!("swap{n}"), vec![swapped])
                )
                .await,
                ErrorCode::Forbidden,
                "{id}"
            );
        }
    }

    // Made-up seals: constant, bob's, and alice's own with other unused trailing bits (22
    // base64url characters carry 132 bits for 128: the last character has 4 spare).
    let seal = a1.id.seal().to_owned();
    let last = seal.chars().last().unwrap();
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let at = alphabet.find(last).unwrap();
    let sibling = alphabet.as_bytes()[(at & !0xf) | ((at + 1) & 0xf)] as char;
    let non_canonical = format!("{}{sibling}", &seal[..seal.len() - 1]);
    let object = a1.id.object().to_owned();
    let object_last = object.chars().last().unwrap();
    let object_at = alphabet.find(object_last).unwrap();
    let object_sibling = alphabet.as_bytes()[(object_at & !0xf) | ((object_at + 1) & 0xf)] as char;
    let non_canonical_object = format!("{}{object_sibling}", &object[..object.len() - 1]);
    for (n, id) in [
        AttachmentId::from_parts(&object, "AAAAAAAAAAAAAAAAAAAAAA").unwrap(),
        AttachmentId::from_parts(&object, &"_".repeat(22)).unwrap(),
        AttachmentId::from_parts(&object, b.id.seal()).unwrap(),
        AttachmentId::from_parts(&object, &non_canonical).unwrap(),
        AttachmentId::from_parts(&non_canonical_object, &seal).unwrap(),
        AttachmentId::from_parts(&object.to_ascii_lowercase(), &seal).unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        if id == a1.id {
            continue;
        }
        assert_eq!(
            refused(
                &mut alice,
                with_files(
                    "team",
                    &format!("forge{n}"),
                    vec![Attachment {
                        id: id.clone(),
                        ..a1.clone()
                    }]
                )
            )
            .await,
            ErrorCode::Forbidden,
            "{id}"
        );
    }

    // Odd JSON: refused as frames, and the connection carries on.
    let good = a1.id.as_str().to_owned();
    let frame = |id: u64, cmid: &str, file: Value| {
        json!({"type": "send", "id": id, "conv": "team", "client_msg_id": cmid,
            "body": "x", "client_ts": 1, "attachments": [file]})
        .to_string()
    };
    let file = |id: Value| json!({"id": id, "name": "a.png", "content_type": "image/png", "size": a1.size});
    let odd: Vec<(&str, String)> = vec![
        (
            "trailing space",
            frame(900, "odd0", file(json!(format!("{good} ")))),
        ),
        (
            "NUL inside",
            frame(
                901,
                "odd1",
                file(json!(format!("{}\u{0}{}", &good[..5], &good[6..]))),
            ),
        ),
        (
            "full-width letter",
            frame(902, "odd2", file(json!(format!("Ａ{}", &good[1..])))),
        ),
        (
            "three parts",
            frame(903, "odd3", file(json!(format!("{good}.{seal}")))),
        ),
        ("a number", frame(904, "odd4", file(json!(42)))),
        ("null", frame(905, "odd5", file(json!(null)))),
        (
            "percent-encoded dot",
            frame(906, "odd6", file(json!(good.replace('.', "%2E")))),
        ),
        (
            "an extra field",
            frame(
                907,
                "odd7",
                json!({"id": good, "name": "a.png", "content_type": "image/png",
                "size": a1.size, "url": "http://evil/"}),
            ),
        ),
        (
            "a float size",
            frame(
                908,
                "odd8",
                json!({"id": good, "name": "a.png", "content_type": "image/png",
                "size": a1.size as f64 + 0.5}),
            ),
        ),
        (
            "a negative size",
            frame(
                909,
                "odd9",
                json!({"id": good, "name": "a.png", "content_type": "image/png",
                "size": -1}),
            ),
        ),
        (
            "a size past u64",
            format!(
                r#"{{"type":"send","id":910,"conv":"team","client_msg_id":"odd10","body":"x","client_ts":1,"attachments":[{{"id":"{good}","name":"a.png","content_type":"image/png","size":18446744073709551616}}]}}"#
            ),
        ),
        (
            "attachments as an object",
            json!({"type": "send", "id": 911, "conv": "team", "client_msg_id": "odd11",
                "body": "x", "client_ts": 1, "attachments": {"0": good}})
            .to_string(),
        ),
        (
            "a control character in the name",
            frame(
                912,
                "odd12",
                json!({"id": good, "name": "a\u{1b}[31m.png",
                "content_type": "image/png", "size": a1.size}),
            ),
        ),
        (
            "a slash in the name",
            frame(
                913,
                "odd13",
                json!({"id": good, "name": "../../a.png",
                "content_type": "image/png", "size": a1.size}),
            ),
        ),
    ];
    for (what, text) in odd {
        alice.send_text(text).await.unwrap();
        match alice.next_answer().await.unwrap() {
            ServerFrame::Error(e) => {
                assert_eq!(e.code, ErrorCode::InvalidRequest, "{what}: {e:?}")
            }
            other => panic!("{what}: not refused: {other:?}"),
        }
    }
    // The same file named twice, once renamed: still the same file twice.
    assert_eq!(
        refused(
            &mut alice,
            with_files(
                "team",
                "twice",
                vec![
                    a1.clone(),
                    Attachment {
                        name: "other.png".into(),
                        ..a1.clone()
                    }
                ]
            )
        )
        .await,
        ErrorCode::InvalidRequest
    );
    // The id written with JSON escapes is the same id: taken.
    let escaped = format!(
        r#"{{"type":"send","id":950,"conv":"team","client_msg_id":"esc","body":"x","client_ts":1,"attachments":[{{"id":"\u{:04x}{}","name":"a.png","content_type":"image/png","size":{}}}]}}"#,
        good.as_bytes()[0],
        &good[1..],
        a1.size
    );
    alice.send_text(escaped).await.unwrap();
    let esc_seq = match alice.next_answer().await.unwrap() {
        ServerFrame::Reply(r) => match r.body {
            ReplyBody::Ack(ack) => ack.seq,
            other => panic!("not an ack: {other:?}"),
        },
        other => panic!("escaped id refused: {other:?}"),
    };
    // Only bob's message and that one are stored, and bob gets alice's file through it.
    let stored: Vec<_> = history(&mut bob, "team")
        .await
        .into_iter()
        .filter(|m| !m.attachments.is_empty())
        .map(|m| (m.seq, m.attachments))
        .collect();
    assert_eq!(
        stored,
        vec![
            (b_seq, vec![b.clone()]),
            (
                esc_seq,
                vec![Attachment {
                    name: "a.png".into(),
                    ..a1.clone()
                }]
            )
        ]
    );
    assert_eq!(
        f.fetch(&mut bob, "team", esc_seq, &a1.id).await,
        (200, PNG.to_vec())
    );
    assert!(
        history(&mut bob, &dm)
            .await
            .iter()
            .all(|m| m.attachments.is_empty())
    );
    if let Some(s3) = &f.s3 {
        assert_eq!(s3.refusals(), Vec::<String>::new());
    }
}

#[tokio::test]
async fn ids_cannot_be_forged_reused_or_carried_fs() {
    ids_cannot_be_forged_reused_or_carried(Kind::Fs).await;
}

#[tokio::test]
async fn ids_cannot_be_forged_reused_or_carried_s3() {
    ids_cannot_be_forged_reused_or_carried(Kind::S3).await;
}

// ------------------------------------------------------------------------------------------
// 2. Folder URLs.
// ------------------------------------------------------------------------------------------

/// A folder upload URL with any parameter changed, removed, doubled or added, for another
/// object, on a path that climbs out of the folder, with the other method, the wrong length,
/// type or encoding, or late: refused with a problem, and nothing is stored.
#[tokio::test]
async fn fs_urls_take_only_what_they_were_signed_for() {
    let f = Files::start_with(Kind::Fs, |c| c.attachments.upload_ttl_secs = 6).await;
    let edge = f.edge();
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let g = f
        .grant(&mut alice, "team", "cat.png", "image/png", PNG.len() as u64)
        .await;
    let object = g.attachment.id.object().to_owned();
    let (path, query) = g.url.split_once('?').unwrap();
    assert_eq!(path, format!("/v1/blobs/{object}"));
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let value = |k: &str| pairs.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let with = |changes: &[(&str, Option<String>)], extra: &[(&str, &str)]| -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            match changes.iter().find(|(n, _)| n == k) {
                Some((_, Some(new))) => {
                    q.append_pair(k, new);
                }
                Some((_, None)) => {}
                None => {
                    q.append_pair(k, v);
                }
            }
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        q.finish()
    };
    let expires: i64 = value("expires").parse().unwrap();
    let sig = value("sig");
    let flipped = {
        let mut s = sig.clone().into_bytes();
        s[0] = if s[0] == b'A' { b'B' } else { b'A' };
        String::from_utf8(s).unwrap()
    };
    let tampered: Vec<(&str, String)> = vec![
        (
            "later expiry",
            with(&[("expires", Some((expires + 3600).to_string()))], &[]),
        ),
        (
            "expiry not a number",
            with(&[("expires", Some("soon".into()))], &[]),
        ),
        (
            "larger size",
            with(&[("size", Some((PNG.len() + 1).to_string()))], &[]),
        ),
        ("negative size", with(&[("size", Some("-1".into()))], &[])),
        (
            "other type",
            with(&[("type", Some("text/html".into()))], &[]),
        ),
        ("flipped signature", with(&[("sig", Some(flipped))], &[])),
        (
            "short signature",
            with(&[("sig", Some(sig[..20].to_owned()))], &[]),
        ),
        ("no signature", with(&[("sig", None)], &[])),
        ("no expiry", with(&[("expires", None)], &[])),
        ("a name added", with(&[], &[("name", "x.png")])),
        ("size given twice", with(&[], &[("size", "1")])),
        ("signature given twice", with(&[], &[("sig", "AAAA")])),
    ];
    for (what, q) in &tampered {
        let url = format!("{path}?{q}");
        let answer = f
            .http
            .put(f.absolute(&url))
            .header("content-type", "image/png")
            .body(PNG.to_vec())
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let ct = answer
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(status, 403, "{what}: {url}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"), "{what}");
    }
    // Another object under this signature, and paths that are not objects.
    let other = format!(
        "/v1/blobs/{}?{query}",
        if object.starts_with('A') {
            object.replacen('A', "B", 1)
        } else {
            format!("A{}", &object[1..])
        }
    );
    assert_eq!(f.put(&other, "image/png", PNG).await, 403);
    let traversals = [
        format!("/v1/blobs/..%2F..%2Fescape?{query}"),
        format!("/v1/blobs/%2e%2e?{query}"),
        format!("/v1/blobs/%2E%2E%2F%2E%2E%2Fescape?{query}"),
        format!("/v1/blobs/{object}%2F..?{query}"),
        format!("/v1/blobs/..%2F{object}?{query}"),
        format!("/v1/blobs/..%5C..%5Cescape?{query}"),
        format!("/v1/blobs/../../escape?{query}"),
        format!("/v1/blobs/{object}/..?{query}"),
        format!("/v1/blobs/{object}/?{query}"),
        format!("/v1/blobs/%252e%252e%252fescape?{query}"),
        format!("/v1/blobs/.{object}.0000000000000000.part?{query}"),
        format!("/v1/blobs/{object}%00?{query}"),
    ];
    for target in &traversals {
        let extra = format!(
            "Content-Type: image/png\r\nContent-Length: {}\r\n",
            PNG.len()
        );
        let (status, text) = raw(edge, &head("PUT", target, edge, &extra), PNG).await;
        assert!(
            (400..500).contains(&status),
            "PUT {target}: {status}\n{text}"
        );
        let (status, text) = raw(edge, &head("GET", target, edge, ""), b"").await;
        assert!(
            (400..500).contains(&status),
            "GET {target}: {status}\n{text}"
        );
    }
    assert!(
        !f.dir.path().join("escape").exists() && !PathBuf::from("/tmp/escape").exists(),
        "a file was written outside the folder"
    );

    // The upload URL does not read.
    assert_eq!(f.get(&g.url).await.0, 403);

    // The wrong length: declared, or streamed in chunks without a length.
    let longer = [PNG, b"!"].concat();
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "Content-Length one more",
            format!(
                "Content-Type: image/png\r\nContent-Length: {}\r\n",
                longer.len()
            ),
            longer.clone(),
        ),
        (
            "Content-Length one less",
            format!(
                "Content-Type: image/png\r\nContent-Length: {}\r\n",
                PNG.len() - 1
            ),
            PNG[1..].to_vec(),
        ),
        (
            "chunked, one more",
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n".into(),
            chunked(&longer, 5),
        ),
        (
            "chunked, one less",
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n".into(),
            chunked(&PNG[1..], 5),
        ),
        (
            "no Content-Type",
            format!("Content-Length: {}\r\n", PNG.len()),
            PNG.to_vec(),
        ),
        (
            "another Content-Type",
            format!(
                "Content-Type: image/gif\r\nContent-Length: {}\r\n",
                PNG.len()
            ),
            PNG.to_vec(),
        ),
        (
            "Content-Type with a parameter",
            format!(
                "Content-Type: image/png; charset=binary\r\nContent-Length: {}\r\n",
                PNG.len()
            ),
            PNG.to_vec(),
        ),
        (
            "Content-Type in upper case",
            format!(
                "Content-Type: IMAGE/PNG\r\nContent-Length: {}\r\n",
                PNG.len()
            ),
            PNG.to_vec(),
        ),
    ];
    for (what, extra, body) in &cases {
        let (status, text) = raw(edge, &head("PUT", &g.url, edge, extra), body).await;
        assert!((400..500).contains(&status), "{what}: {status}\n{text}");
        let problem = problem_of(&text);
        assert!(problem.is_some(), "{what}: not a problem: {text}");
    }
    // Nothing of all that is stored: no message names the file, the folder holds nothing.
    assert_eq!(
        refused(
            &mut alice,
            with_files("team", "m0", vec![g.attachment.clone()])
        )
        .await,
        ErrorCode::NotFound
    );
    assert_eq!(f.folder_entries(), Vec::<String>::new());

    // Streamed in chunks without a length, exactly the size: stored.
    let (status, text) = raw(
        edge,
        &head(
            "PUT",
            &g.url,
            edge,
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n",
        ),
        &chunked(PNG, 3),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let seq = alice
        .ack(with_files("team", "m1", vec![g.attachment.clone()]))
        .await
        .unwrap()
        .seq;
    let d = f.download(&mut alice, "team", seq, &g.attachment.id).await;
    assert_eq!(f.get(&d.url).await, (200, PNG.to_vec()));
    // The download URL does not write.
    assert_eq!(f.put(&d.url, "image/png", EVIL).await, 403);
    assert_eq!(f.get(&d.url).await, (200, PNG.to_vec()));

    // Late: a fresh upload URL used after it expired.
    let late = f
        .grant(
            &mut alice,
            "team",
            "late.png",
            "image/png",
            PNG.len() as u64,
        )
        .await;
    let wait = late.expires_at - anchorage_schema::now_ms() + 1500;
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    assert_eq!(f.put(&late.url, "image/png", PNG).await, 403);
    assert_eq!(
        refused(&mut alice, with_files("team", "m2", vec![late.attachment])).await,
        ErrorCode::NotFound
    );
}

/// Presigned S3 URLs: the upload URL does not read, takes no chunked body (the length is
/// signed), no other type, no longer expiry; the download URL neither writes nor deletes. The
/// store refuses each for its signature, and only the file as issued is stored.
#[tokio::test]
async fn s3_urls_take_only_what_they_were_signed_for() {
    let f = Files::start(Kind::S3).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let g = f
        .grant(&mut alice, "team", "cat.png", "image/png", PNG.len() as u64)
        .await;
    let put = url::Url::parse(&g.url).unwrap();
    let store: SocketAddr = format!("{}:{}", put.host_str().unwrap(), put.port().unwrap())
        .parse()
        .unwrap();
    let target = &g.url[g.url.find(put.path()).unwrap()..];
    assert_eq!(f.get(&g.url).await.0, 403);
    let (status, text) = raw(
        store,
        &head(
            "PUT",
            target,
            store,
            "Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n",
        ),
        &chunked(PNG, 4),
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert_eq!(f.put(&g.url, "image/png; x=1", PNG).await, 403);
    let longer = g.url.replace("X-Amz-Expires=900", "X-Amz-Expires=86400");
    assert_ne!(longer, g.url);
    assert_eq!(f.put(&longer, "image/png", PNG).await, 403);
    assert_eq!(
        refused(
            &mut alice,
            with_files("team", "m0", vec![g.attachment.clone()])
        )
        .await,
        ErrorCode::NotFound
    );
    assert_eq!(f.put(&g.url, "image/png", PNG).await, 200);
    let seq = alice
        .ack(with_files("team", "m1", vec![g.attachment.clone()]))
        .await
        .unwrap()
        .seq;
    let d = f.download(&mut alice, "team", seq, &g.attachment.id).await;
    assert_eq!(f.put(&d.url, "image/png", EVIL).await, 403);
    let deleted = f
        .http
        .delete(&d.url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(deleted, 403);
    assert_eq!(f.get(&d.url).await, (200, PNG.to_vec()));
    let refusals = f.s3.as_ref().unwrap().refusals();
    assert_eq!(refusals.len(), 6, "{refusals:#?}");
}

/// Files up to `attachments.max_bytes` go through the edge whole, in one piece or in many
/// slow pieces (no frame or body limit of the API stands in the way).
#[tokio::test]
async fn fs_uploads_up_to_the_limit_go_through_slow_or_fast() {
    let big = 4 * 1024 * 1024;
    let f = Files::start_with(Kind::Fs, |c| c.attachments.max_bytes = big).await;
    let edge = f.edge();
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let file: Vec<u8> = (0..big).map(|i| (i * 7 % 251) as u8).collect();
    let (a, _) = f.uploaded(&mut alice, "team", "big.png", &file).await;
    let seq = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;
    assert_eq!(f.fetch(&mut alice, "team", seq, &a.id).await, (200, file));

    // A slow client: 10 pieces, 150 ms apart.
    let slow: Vec<u8> = (0..20_000u32).map(|i| (i % 13) as u8).collect();
    let g = f
        .grant(
            &mut alice,
            "team",
            "slow.png",
            "image/png",
            slow.len() as u64,
        )
        .await;
    let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
    let extra = format!(
        "Content-Type: image/png\r\nContent-Length: {}\r\n",
        slow.len()
    );
    s.write_all(head("PUT", &g.url, edge, &extra).as_bytes())
        .await
        .unwrap();
    for piece in slow.chunks(2_000) {
        s.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let seq = alice
        .ack(with_files("team", "m2", vec![g.attachment.clone()]))
        .await
        .unwrap()
        .seq;
    assert_eq!(
        f.fetch(&mut alice, "team", seq, &g.attachment.id).await,
        (200, slow)
    );
}

/// An upload whose connection drops half way leaves nothing behind — nothing to download,
/// nothing to name, no part file in the folder — and the same URL takes the whole file after.
#[tokio::test]
async fn fs_a_cut_upload_leaves_nothing_behind() {
    let f = Files::start(Kind::Fs).await;
    let edge = f.edge();
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let file: Vec<u8> = (0..40_000u32).map(|i| (i % 97) as u8).collect();
    let g = f
        .grant(
            &mut alice,
            "team",
            "cut.png",
            "image/png",
            file.len() as u64,
        )
        .await;
    for round in 0..3 {
        let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
        let extra = format!(
            "Content-Type: image/png\r\nContent-Length: {}\r\n",
            file.len()
        );
        s.write_all(head("PUT", &g.url, edge, &extra).as_bytes())
            .await
            .unwrap();
        s.write_all(&file[..10_000 * (round + 1)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        refused(
            &mut alice,
            with_files("team", "m0", vec![g.attachment.clone()])
        )
        .await,
        ErrorCode::NotFound
    );
    assert_eq!(
        f.folder_entries(),
        Vec::<String>::new(),
        "cut uploads left files in the folder"
    );
    assert_eq!(f.put(&g.url, "image/png", &file).await, 200);
    let seq = alice
        .ack(with_files("team", "m1", vec![g.attachment.clone()]))
        .await
        .unwrap()
        .seq;
    assert_eq!(
        f.fetch(&mut bob, "team", seq, &g.attachment.id).await,
        (200, file)
    );
    assert_eq!(
        f.folder_entries(),
        vec![g.attachment.id.object().to_owned()]
    );
}

/// Two uploads to one URL at the same time, with different bodies, sent in interleaved
/// pieces: what is stored is one of them whole, never a mix, and nothing else is left.
#[tokio::test]
async fn fs_racing_uploads_store_one_whole_body() {
    let f = Files::start(Kind::Fs).await;
    let edge = f.edge();
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let size = 48_000usize;
    for round in 0..3 {
        let g = f
            .grant(&mut alice, "team", "race.png", "image/png", size as u64)
            .await;
        let send = |fill: u8, delay: u64| {
            let url = g.url.clone();
            async move {
                let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
                let extra = format!("Content-Type: image/png\r\nContent-Length: {size}\r\n");
                s.write_all(head("PUT", &url, edge, &extra).as_bytes())
                    .await
                    .unwrap();
                for _ in 0..12 {
                    s.write_all(&vec![fill; size / 12]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let mut out = Vec::new();
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
                String::from_utf8_lossy(&out)
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok())
                    .unwrap_or(0)
            }
        };
        let (a, b) = tokio::join!(send(b'a', 20 + round), send(b'b', 23));
        assert!(a == 200 || b == 200, "{a} {b}");
        let seq = alice
            .ack(with_files(
                "team",
                &format!("r{round}"),
                vec![g.attachment.clone()],
            ))
            .await
            .unwrap()
            .seq;
        let (status, bytes) = f.fetch(&mut alice, "team", seq, &g.attachment.id).await;
        assert_eq!(status, 200);
        assert_eq!(bytes.len(), size);
        assert!(
            bytes.iter().all(|&c| c == b'a') || bytes.iter().all(|&c| c == b'b'),
            "a mix of two uploads was stored"
        );
    }
    assert!(
        f.folder_entries().iter().all(|e| !e.starts_with('.')),
        "{:?}",
        f.folder_entries()
    );
}

/// Uploads that stall half way (a valid URL, half a body, then silence) do not hold the
/// edge's HTTP connections forever: like silent or half-sent request heads, they are cut, and
/// the edge serves new connections again.
#[tokio::test]
async fn fs_stalled_uploads_do_not_hold_the_edge() {
    let f = Files::start_with(Kind::Fs, |c| {
        c.edge.max_connections = 2;
        c.edge.max_pending = 2;
        c.edge.http_header_timeout_ms = 1000;
    })
    .await;
    let edge = f.edge();
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let g = f
        .grant(&mut alice, "team", "stall.png", "image/png", 40_000)
        .await;
    // The edge serves before.
    assert_eq!(
        raw(edge, &head("GET", "/livez", edge, ""), b"").await.0,
        200
    );
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
        let extra = "Content-Type: image/png\r\nContent-Length: 40000\r\n";
        s.write_all(head("PUT", &g.url, edge, extra).as_bytes())
            .await
            .unwrap();
        s.write_all(&[0u8; 100]).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Within ten times the time a client has to send its request head, the edge answers again.
    let served = eventually(
        Duration::from_secs(10),
        "the edge to serve again",
        || async {
            let (status, _) = tokio::time::timeout(
                Duration::from_secs(2),
                raw(edge, &head("GET", "/livez", edge, ""), b""),
            )
            .await
            .ok()?;
            (status == 200).then_some(())
        },
    )
    .await;
    drop(stalled);
    served.unwrap();
}

// ------------------------------------------------------------------------------------------
// "The URL takes only that file … once."
// ------------------------------------------------------------------------------------------

/// The upload URL takes the file once: after the message was sent (and others saw the file),
/// the uploader cannot swap other bytes of the same size in under the same URL.
async fn an_upload_url_takes_the_file_once(kind: Kind) {
    let f = Files::start(kind).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let (a, url) = f.uploaded(&mut alice, "team", "cat.png", PNG).await;
    let seq = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;
    assert_eq!(
        f.fetch(&mut bob, "team", seq, &a.id).await,
        (200, PNG.to_vec())
    );
    assert_eq!(EVIL.len(), PNG.len());
    let again = f.put(&url, "image/png", EVIL).await;
    let now = f.fetch(&mut bob, "team", seq, &a.id).await;
    assert!(
        again >= 400 && now == (200, PNG.to_vec()),
        "the upload URL was used a second time ({again}) and members now get {:?}",
        String::from_utf8_lossy(&now.1)
    );
}

#[tokio::test]
async fn an_upload_url_takes_the_file_once_fs() {
    an_upload_url_takes_the_file_once(Kind::Fs).await;
}

#[tokio::test]
async fn an_upload_url_takes_the_file_once_s3() {
    an_upload_url_takes_the_file_once(Kind::S3).await;
}

/// A file deleted with its revoked message stays deleted: a new message naming it is
/// `not_found`, and the old upload URL does not bring it back for one. (The folder refuses
/// the upload; S3 takes it, and the object is deleted again once that URL has expired.)
async fn a_deleted_file_does_not_come_back(kind: Kind) {
    let f = Files::start_with(kind, |c| c.attachments.upload_ttl_secs = 8).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let (a, put_url) = f.uploaded(&mut alice, "team", "cat.png", PNG).await;
    let seq = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;
    let url = f
        .download_when_projected(&mut bob, "team", seq, &a.id)
        .await
        .url;
    alice
        .ok(Revoke {
            conv: conv_id("team"),
            seq,
        })
        .await
        .unwrap();
    f.gone(&url).await;
    f.deletions_done().await;
    assert_eq!(
        refused(&mut alice, with_files("team", "m2", vec![a.clone()])).await,
        ErrorCode::NotFound
    );
    // The upload URL has not expired yet (15 minutes).
    let again = f.put(&put_url, "image/png", PNG).await;
    let answer = alice
        .request(with_files("team", "m3", vec![a.clone()]))
        .await
        .unwrap();
    let revived = matches!(&answer, ServerFrame::Reply(_));
    assert!(
        (again >= 400 || kind == Kind::S3) && !revived,
        "the old upload URL stored the deleted file again ({again}), and a new message \
         names it: {answer:?}"
    );
    // Whatever the URL stored is deleted again once it has expired.
    f.gone(&url).await;
}

#[tokio::test]
async fn a_deleted_file_does_not_come_back_fs() {
    a_deleted_file_does_not_come_back(Kind::Fs).await;
}

#[tokio::test]
async fn a_deleted_file_does_not_come_back_s3() {
    a_deleted_file_does_not_come_back(Kind::S3).await;
}

// ------------------------------------------------------------------------------------------
// 3. Download authorization.
// ------------------------------------------------------------------------------------------

/// Only members who can read the message get its file: not a stranger, not a removed
/// member, not one who hid it, not after a revoke, not under another seq or another
/// conversation's seq, not for a file of another message.
#[tokio::test]
async fn downloads_are_for_readers_of_the_message_only() {
    let f = Files::start(Kind::Fs).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob", "dave", "erin"]))
        .await
        .unwrap();
    alice
        .ok(create_group("side", "Side", &["carol"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let mut carol = f.device("carol", "d1").await;
    let mut dave = f.device("dave", "d1").await;
    let mut erin = f.device("erin", "d1").await;
    let (a, _) = f.uploaded(&mut alice, "team", "a.png", PNG).await;
    let (b, _) = f.uploaded(&mut alice, "team", "b.png", b"bbbb").await;
    let (c, _) = f.uploaded(&mut alice, "side", "c.png", b"cccc").await;
    let m1 = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;
    let m2 = alice
        .ack(with_files("team", "m2", vec![b.clone()]))
        .await
        .unwrap()
        .seq;
    let s1 = alice
        .ack(with_files("side", "s1", vec![c.clone()]))
        .await
        .unwrap()
        .seq;
    assert_eq!(f.fetch(&mut erin, "team", m2, &b.id).await.0, 200);
    assert_eq!(f.fetch(&mut carol, "side", s1, &c.id).await.0, 200);

    // A stranger to team.
    assert_eq!(
        refused(&mut carol, download("team", m1, &a.id)).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut carol, upload("team", "x.png", "image/png", 1)).await,
        ErrorCode::Forbidden
    );
    // Another conversation's seq, or its file, under a conversation one is in.
    assert_eq!(
        refused(&mut carol, download("side", m1, &a.id)).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(&mut bob, download("team", s1, &c.id)).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(&mut carol, download("side", s1, &a.id)).await,
        ErrorCode::NotFound
    );
    // Another message's file; seqs that are no message.
    assert_eq!(
        refused(&mut bob, download("team", m1, &b.id)).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        refused(&mut bob, download("team", m2, &a.id)).await,
        ErrorCode::NotFound
    );
    for seq in [0, m2 + 1000, i64::MAX as u64] {
        assert_eq!(
            refused(&mut bob, download("team", seq, &a.id)).await,
            ErrorCode::NotFound,
            "seq {seq}"
        );
    }
    // Past the largest number a frame carries.
    for seq in [i64::MAX as u64 + 1, u64::MAX] {
        assert_eq!(
            refused(&mut bob, download("team", seq, &a.id)).await,
            ErrorCode::InvalidRequest,
            "seq {seq}"
        );
    }
    // Seqs as JSON a client should not send.
    for (n, seq) in ["-1", "1.5", "\"1\"", "18446744073709551616", "null"]
        .iter()
        .enumerate()
    {
        let text = format!(
            r#"{{"type":"download","id":{},"conv":"team","seq":{seq},"attachment":"{}"}}"#,
            700 + n,
            a.id
        );
        bob.send_text(text).await.unwrap();
        match bob.next_answer().await.unwrap() {
            ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest, "{seq}"),
            other => panic!("seq {seq}: {other:?}"),
        }
    }

    // Dave hides m1: not his to download any more; m2 still is, and bob still gets m1.
    dave.ok(Hide {
        conv: conv_id("team"),
        seqs: vec![m1],
    })
    .await
    .unwrap();
    until_refused(
        &mut dave,
        download("team", m1, &a.id),
        ErrorCode::NotFound,
        "m1 hidden for dave",
    )
    .await;
    assert_eq!(f.fetch(&mut dave, "team", m2, &b.id).await.0, 200);
    assert_eq!(f.fetch(&mut bob, "team", m1, &a.id).await.0, 200);

    // Erin removed: no download, no upload.
    alice
        .ok(RemoveMembers {
            group: group_id("team"),
            members: user_ids(&["erin"]),
        })
        .await
        .unwrap();
    until_refused(
        &mut erin,
        download("team", m2, &b.id),
        ErrorCode::Forbidden,
        "erin removed",
    )
    .await;
    assert_eq!(
        refused(&mut erin, upload("team", "x.png", "image/png", 1)).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut erin, download("team", m1, &a.id)).await,
        ErrorCode::Forbidden
    );

    // Revoked: not found for everyone.
    alice
        .ok(Revoke {
            conv: conv_id("team"),
            seq: m2,
        })
        .await
        .unwrap();
    for c in [&mut bob, &mut alice, &mut dave] {
        until_refused(
            c,
            download("team", m2, &b.id),
            ErrorCode::NotFound,
            "m2 revoked",
        )
        .await;
    }
}

// ------------------------------------------------------------------------------------------
// 4. Revokes and deletions.
// ------------------------------------------------------------------------------------------

/// Revoked while the store is down: the file another message names stays, the other is
/// deleted once the store is back, and then no new message can name it.
#[tokio::test]
async fn a_revoke_while_the_store_is_down_deletes_only_the_unnamed_file_once_it_is_back() {
    let mut f = Files::start(Kind::S3).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let (x, _) = f.uploaded(&mut alice, "team", "x.png", PNG).await;
    let (y, _) = f.uploaded(&mut alice, "team", "y.png", b"yyyy").await;
    let m1 = alice
        .ack(with_files("team", "m1", vec![x.clone(), y.clone()]))
        .await
        .unwrap()
        .seq;
    let m2 = alice
        .ack(with_files("team", "m2", vec![y.clone()]))
        .await
        .unwrap()
        .seq;
    let x_url = f
        .download_when_projected(&mut bob, "team", m1, &x.id)
        .await
        .url;
    let y_url = f
        .download_when_projected(&mut bob, "team", m2, &y.id)
        .await
        .url;

    f.s3.as_mut().unwrap().stop().await;
    alice
        .ok(Revoke {
            conv: conv_id("team"),
            seq: m1,
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
    // Meanwhile the revoked message gives no file.
    assert_eq!(
        refused(&mut bob, download("team", m1, &x.id)).await,
        ErrorCode::NotFound
    );
    f.s3.as_mut().unwrap().resume().await;
    f.gone(&x_url).await;
    f.deletions_done().await;
    assert_eq!(f.get(&y_url).await, (200, b"yyyy".to_vec()));
    assert_eq!(
        f.fetch(&mut bob, "team", m2, &y.id).await,
        (200, b"yyyy".to_vec())
    );
    assert_eq!(
        refused(&mut alice, with_files("team", "m3", vec![x.clone()])).await,
        ErrorCode::NotFound
    );
    assert_eq!(f.s3.as_ref().unwrap().refusals(), Vec::<String>::new());
}

/// A store that hangs (it takes connections and never answers) rather than refusing: a send
/// naming a file is refused `overloaded` promptly, and the connection's other requests are
/// not held behind the store meanwhile.
#[tokio::test]
async fn a_hanging_store_does_not_hold_the_connection() {
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            open.push(s);
        }
    });
    let f = Files::start_with(Kind::Fs, |c| {
        c.attachments.backend = BlobBackend::S3;
        c.attachments.s3 = Some(anchorage_config::S3Config {
            endpoint: format!("http://{hang_addr}"),
            region: "us-east-1".into(),
            bucket: "attachments".into(),
            prefix: "files/".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "secret".into(),
            path_style: true,
        });
    })
    .await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    // Issuing needs no call to the store.
    let g = f
        .grant(&mut alice, "team", "a.png", "image/png", PNG.len() as u64)
        .await;
    let started = tokio::time::Instant::now();
    alice
        .send_request(600, with_files("team", "m1", vec![g.attachment.clone()]))
        .await
        .unwrap();
    alice
        .send_request(601, anchorage_protocol::RequestBody::Ping {})
        .await
        .unwrap();
    let mut answers = Vec::new();
    while answers.len() < 2 && started.elapsed() < Duration::from_secs(15) {
        match tokio::time::timeout(Duration::from_secs(1), alice.next_answer()).await {
            Ok(Ok(frame)) => answers.push((started.elapsed().as_millis(), frame)),
            Ok(Err(e)) => panic!("{e:#}"),
            Err(_) => {}
        }
    }
    held.abort();
    let late: Vec<_> = answers.iter().filter(|(ms, _)| *ms > 5_000).collect();
    assert!(
        answers.len() == 2 && late.is_empty(),
        "answers after ms: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .any(|(_, a)| matches!(a, ServerFrame::Error(e) if e.code == ErrorCode::Overloaded)),
        "{answers:?}"
    );
}

/// A moderation hook that takes its time (within its budget).
async fn slow_hook() -> (SocketAddr, tokio_util::sync::CancellationToken) {
    async fn verdict(body: axum::body::Bytes) -> String {
        let draft: Value = serde_json::from_slice(&body).unwrap_or_default();
        if draft["body"] == "slow" {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        json!({"action": "allow"}).to_string()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/hook", axum::routing::post(verdict));
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { until.cancelled().await })
            .await
            .unwrap();
    });
    (addr, stop)
}

/// A send naming a file, and the revoke of the only other message naming it, at the same
/// time (the send's moderation hook takes a second and a half, within its budget): either
/// the send is refused, or the file stays — never a stored message whose file was deleted.
#[tokio::test]
async fn a_send_racing_the_revoke_of_its_file_never_names_a_deleted_file() {
    let (hook, stop) = slow_hook().await;
    let f = Files::start_with(Kind::Fs, |c| {
        c.hooks.before_send = Some(anchorage_config::BeforeSendConfig {
            url: format!("http://{hook}/hook"),
            secret: anchorage_webhooks::Secret::generate().unwrap(),
            timeout_ms: 4000,
            on_failure: anchorage_config::OnFailure::FailClosed,
        });
    })
    .await;
    let mut alice = f.device("alice", "d1").await;
    let mut alice2 = f.device("alice", "d2").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let (x, _) = f.uploaded(&mut alice, "team", "x.png", PNG).await;
    let m1 = alice
        .ack(with_files("team", "m1", vec![x.clone()]))
        .await
        .unwrap()
        .seq;
    let url = f
        .download_when_projected(&mut bob, "team", m1, &x.id)
        .await
        .url;

    let m2 = SendMessage {
        attachments: vec![x.clone()],
        ..send_message("team", "m2", json!("slow"))
    };
    alice.send_request(500, m2).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice2
        .ok(Revoke {
            conv: conv_id("team"),
            seq: m1,
        })
        .await
        .unwrap();
    let answer = alice.next_answer().await.unwrap();
    match answer {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::NotFound, "{e:?}"),
        ServerFrame::Reply(r) => {
            let ReplyBody::Ack(ack) = r.body else {
                panic!("not an ack: {r:?}")
            };
            // Stored: its file must stay, also once the deletion worker had its turn.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            f.deletions_done().await;
            let fetched = f.fetch(&mut bob, "team", ack.seq, &x.id).await;
            assert_eq!(
                fetched.0,
                200,
                "message {} was stored naming {}, and the file was deleted under it \
                 (the m1 URL answers {})",
                ack.seq,
                x.id,
                f.get(&url).await.0
            );
        }
        other => panic!("{other:?}"),
    }
    stop.cancel();
}

/// Sends naming a file pipelined right behind the revoke of the message that named it, many
/// times over: every send that was stored keeps its file. (Without a hook the window is a few
/// milliseconds between the edge's check and the projection; this finds it now and then —
/// `a_send_racing_the_revoke_of_its_file_never_names_a_deleted_file` finds it every time.)
#[tokio::test]
async fn sends_pipelined_behind_a_revoke_keep_their_files() {
    let f = Files::start_with(Kind::Fs, |c| {
        c.edge.rate_per_sec = 1000;
        c.edge.rate_burst = 1000;
        c.edge.user_rate_per_sec = 1000;
    })
    .await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let mut stored = Vec::new();
    for round in 0..35u64 {
        let (x, _) = f.uploaded(&mut alice, "team", "x.png", PNG).await;
        let m1 = alice
            .ack(with_files("team", &format!("a{round}"), vec![x.clone()]))
            .await
            .unwrap()
            .seq;
        alice
            .send_request(
                10_000 + round * 2,
                Revoke {
                    conv: conv_id("team"),
                    seq: m1,
                },
            )
            .await
            .unwrap();
        // Let the deletion worker's rounds (every half second) fall anywhere in between.
        tokio::time::sleep(Duration::from_millis(round * 23 % 500)).await;
        alice
            .send_request(
                10_001 + round * 2,
                with_files("team", &format!("b{round}"), vec![x.clone()]),
            )
            .await
            .unwrap();
        for _ in 0..2 {
            if let ServerFrame::Reply(r) = alice.next_answer().await.unwrap()
                && let ReplyBody::Ack(ack) = r.body
            {
                stored.push((ack.seq, x.clone()));
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    f.deletions_done().await;
    let mut lost = Vec::new();
    for (seq, x) in &stored {
        let (status, _) = f.fetch(&mut bob, "team", *seq, &x.id).await;
        if status != 200 {
            lost.push(*seq);
        }
    }
    assert_eq!(lost, Vec::<u64>::new(), "of {} stored", stored.len());
}

// ------------------------------------------------------------------------------------------
// 5. Retries.
// ------------------------------------------------------------------------------------------

/// A retry of a stored send — flagged, or unflagged inside the stream's duplicate window —
/// gets the first seq as a duplicate whatever files it names now (others, none, forged,
/// not uploaded), and nothing is stored twice; the other files stay usable.
#[tokio::test]
async fn a_retry_with_other_files_is_the_first_message() {
    let f = Files::start(Kind::Fs).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let (a, _) = f.uploaded(&mut alice, "team", "a.png", PNG).await;
    let (b, _) = f.uploaded(&mut alice, "team", "b.png", b"bbbb").await;
    let c = f
        .grant(&mut alice, "team", "c.png", "image/png", 4)
        .await
        .attachment;
    let first = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap();
    assert!(!first.duplicate);
    let forged = Attachment {
        id: AttachmentId::from_parts(a.id.object(), "AAAAAAAAAAAAAAAAAAAAAA").unwrap(),
        ..a.clone()
    };
    for files in [
        vec![a.clone()],
        vec![b.clone()],
        vec![a.clone(), b.clone()],
        vec![],
        vec![c.clone()],
        vec![forged.clone()],
    ] {
        let mut again = with_files("team", "m1", files.clone());
        again.retry = true;
        let ack = alice.ack(again).await.unwrap();
        assert!(ack.duplicate && ack.seq == first.seq, "{files:?}: {ack:?}");
    }
    // Unflagged and fresh (within the stream's duplicate window), with other files that are
    // uploaded.
    let fresh = SendMessage {
        client_ts: anchorage_schema::now_ms(),
        ..with_files("team", "m1", vec![b.clone()])
    };
    let ack = alice.ack(fresh).await.unwrap();
    assert!(ack.duplicate && ack.seq == first.seq, "{ack:?}");
    let mine: Vec<_> = history(&mut bob, "team")
        .await
        .into_iter()
        .filter(|m| m.client_msg_id == "m1")
        .map(|m| (m.seq, m.attachments))
        .collect();
    assert_eq!(mine, vec![(first.seq, vec![a.clone()])]);
    assert_eq!(
        refused(&mut bob, download("team", first.seq, &b.id)).await,
        ErrorCode::NotFound
    );
    // b was not used up by the retries.
    let seq = alice
        .ack(with_files("team", "m2", vec![b.clone()]))
        .await
        .unwrap()
        .seq;
    assert_eq!(
        f.fetch(&mut bob, "team", seq, &b.id).await,
        (200, b"bbbb".to_vec())
    );
}

/// A flagged retry of a stored send with files, while the store is down: the duplicate
/// (the history says it was stored; the store need not be asked).
#[tokio::test]
async fn a_retry_while_the_store_is_down_is_the_first_message() {
    let mut f = Files::start(Kind::S3).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let (a, _) = f.uploaded(&mut alice, "team", "a.png", PNG).await;
    let first = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap();
    f.s3.as_mut().unwrap().stop().await;
    let mut again = with_files("team", "m1", vec![a.clone()]);
    again.retry = true;
    let ack = alice.ack(again).await.unwrap();
    assert!(ack.duplicate && ack.seq == first.seq, "{ack:?}");
    f.s3.as_mut().unwrap().resume().await;
}

// ------------------------------------------------------------------------------------------
// 6. The server API with hostile bodies.
// ------------------------------------------------------------------------------------------

struct Api {
    edge: SocketAddr,
    auth: String,
}

impl Api {
    async fn new(f: &Files, scope: Scope) -> Api {
        let (key, _) = api_key(&f.nats.url(), scope, 10_000).await;
        Api {
            edge: f.edge(),
            auth: format!("Bearer {key}"),
        }
    }

    /// A request with a raw body (JSON content type unless `content_type` says otherwise):
    /// status, problem or answer body as JSON, and the content type.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        content_type: Option<&str>,
    ) -> (u16, Value, String) {
        let mut extra = format!("Authorization: {}\r\n", self.auth);
        if let Some(b) = body {
            if let Some(ct) = content_type
                .or(Some("application/json"))
                .filter(|c| !c.is_empty())
            {
                extra.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            extra.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        let (status, text) = raw(
            self.edge,
            &head(method, path, self.edge, &extra),
            body.unwrap_or_default().as_bytes(),
        )
        .await;
        let (head_text, body_text) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let ct = head_text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-type:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        (
            status,
            serde_json::from_str(body_text).unwrap_or(Value::Null),
            ct,
        )
    }

    async fn json(&self, method: &str, path: &str, body: Value) -> (u16, Value, String) {
        self.call(method, path, Some(&body.to_string()), None).await
    }
}

/// Every hostile body, path and parameter is refused with the precise 4xx problem (its
/// `code`, as `application/problem+json`), never a 5xx; and what is well formed works.
#[tokio::test]
async fn the_server_api_refuses_hostile_bodies_precisely() {
    let f = Files::start(Kind::Fs).await;
    let api = Api::new(&f, Scope::Admin).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let dm = open_direct(&mut alice, "bob").await;
    let up = "/v1/conversations/team/attachments";
    let ok_upload = |size: Value| json!({"sender": "alice", "name": "a.png", "content_type": "image/png", "size": size});
    let named = |name: Value| json!({"sender": "alice", "name": name, "content_type": "image/png", "size": 4});
    let typed = |t: &str| json!({"sender": "alice", "name": "a.png", "content_type": t, "size": 4});
    let long = "x".repeat(256);
    let huge = "x".repeat(100_000);
    let cases: Vec<(&str, u16, &str, String, Option<&str>)> = vec![
        ("size 1.5", 400, "invalid_request", ok_upload(json!(1.5)).to_string(), None),
        ("size -1", 400, "invalid_request", ok_upload(json!(-1)).to_string(), None),
        ("size as text", 400, "invalid_request", ok_upload(json!("4")).to_string(), None),
        ("size null", 400, "invalid_request", ok_upload(json!(null)).to_string(), None),
        ("size missing", 400, "invalid_request", json!({"sender": "alice", "name": "a.png", "content_type": "image/png"}).to_string(), None),
        ("size 1e400", 400, "invalid_request", r#"{"sender":"alice","name":"a.png","content_type":"image/png","size":1e400}"#.into(), None),
        ("size past the limit", 413, "too_large", ok_upload(json!(MAX + 1)).to_string(), None),
        ("empty name", 400, "invalid_request", named(json!("")).to_string(), None),
        ("name of 256", 400, "invalid_request", named(json!(long)).to_string(), None),
        ("name of 100000", 413, "too_large", named(json!(huge)).to_string(), None),
        ("name with NUL", 400, "invalid_request", named(json!("a\u{0}.png")).to_string(), None),
        ("name with ESC", 400, "invalid_request", named(json!("a\u{1b}[2J.png")).to_string(), None),
        ("name with newline", 400, "invalid_request", named(json!("a\r\nX-Evil: 1.png")).to_string(), None),
        ("name with DEL", 400, "invalid_request", named(json!("a\u{7f}.png")).to_string(), None),
        ("name with NEL", 400, "invalid_request", named(json!("a\u{85}.png")).to_string(), None),
        ("name with a slash", 400, "invalid_request", named(json!("../a.png")).to_string(), None),
        ("name with a backslash", 400, "invalid_request", named(json!("..\\a.png")).to_string(), None),
        ("name only dots", 400, "invalid_request", named(json!("..")).to_string(), None),
        ("name dots and spaces", 400, "invalid_request", named(json!(" . . ")).to_string(), None),
        ("name a number", 400, "invalid_request", named(json!(5)).to_string(), None),
        ("type upper case", 400, "invalid_request", typed("IMAGE/PNG").to_string(), None),
        ("type with a parameter", 400, "invalid_request", typed("image/png; q=1").to_string(), None),
        ("type with CRLF", 400, "invalid_request", typed("image/png\r\nx-evil: 1").to_string(), None),
        ("type empty", 400, "invalid_request", typed("").to_string(), None),
        ("type wildcard", 400, "invalid_request", typed("image/*").to_string(), None),
        ("type not allowed", 403, "forbidden", typed("text/html").to_string(), None),
        ("sender not a member", 403, "forbidden", json!({"sender": "mallory", "name": "a.png", "content_type": "image/png", "size": 4}).to_string(), None),
        ("sender malformed", 400, "invalid_request", json!({"sender": "../alice", "name": "a.png", "content_type": "image/png", "size": 4}).to_string(), None),
        ("sender missing", 400, "invalid_request", json!({"name": "a.png", "content_type": "image/png", "size": 4}).to_string(), None),
        ("an unknown field", 400, "invalid_request", json!({"sender": "alice", "name": "a.png", "content_type": "image/png", "size": 4, "url": "http://evil"}).to_string(), None),
        ("an array", 400, "invalid_request", "[1,2]".into(), None),
        ("not JSON", 400, "invalid_request", "{\"sender\":".into(), None),
        ("no content type", 400, "invalid_request", ok_upload(json!(4)).to_string(), Some("")),
        ("a form", 400, "invalid_request", "sender=alice".into(), Some("application/x-www-form-urlencoded")),
    ];
    // Every answer that is not the precise problem, to see them all at once.
    let mut wrong: Vec<String> = Vec::new();
    for (what, status, code, body, ct) in &cases {
        let (got, problem, content_type) = api.call("POST", up, Some(body), *ct).await;
        if !(got == *status
            && problem["code"] == *code
            && content_type == "application/problem+json")
        {
            wrong.push(format!(
                "upload, {what}: want {status} {code}, got {got} {problem} ({content_type})"
            ));
        }
    }
    // Paths.
    for (path, status) in [
        ("/v1/conversations/no%20such/attachments", 400),
        ("/v1/conversations/ghost/attachments", 403),
        ("/v1/conversations/..%2Fteam/attachments", 400),
    ] {
        let (got, problem, _) = api.json("POST", path, ok_upload(json!(4))).await;
        if !(got == status && problem["code"].is_string()) {
            wrong.push(format!("POST {path}: want {status}, got {got} {problem}"));
        }
    }
    // Documented: 5.0 is a size; a DM sender is a member of it.
    let (got, grant, _) = api.json("POST", up, ok_upload(json!(4.0))).await;
    assert_eq!(got, 201, "{grant}");
    assert_eq!(grant["attachment"]["size"], 4);
    let (got, dm_grant, _) = api
        .json(
            "POST",
            &format!("/v1/conversations/{dm}/attachments"),
            ok_upload(json!(4)),
        )
        .await;
    assert_eq!(got, 201, "{dm_grant}");
    let file = grant["attachment"].clone();
    let url = grant["url"].as_str().unwrap().to_owned();

    // Posts.
    let posts = "/v1/conversations/team/messages";
    let with = |files: Value| json!({"sender": "alice", "body": "x", "attachments": files});
    let mut eleven = Vec::new();
    for _ in 0..11 {
        let (_, g, _) = api.json("POST", up, ok_upload(json!(4))).await;
        eleven.push(g["attachment"].clone());
    }
    let post_cases: Vec<(&str, u16, &str, Value)> = vec![
        (
            "a system post with files",
            403,
            "forbidden",
            json!({"body": "x", "attachments": [file]}),
        ),
        (
            "files not a list",
            400,
            "invalid_request",
            with(json!({"0": file})),
        ),
        (
            "a file id malformed",
            400,
            "invalid_request",
            with(json!([{"id": "x", "name": "a.png", "content_type": "image/png", "size": 4}])),
        ),
        (
            "a file id with a slash",
            400,
            "invalid_request",
            with(
                json!([{"id": format!("{}/", &file["id"].as_str().unwrap()[..44]), "name": "a.png", "content_type": "image/png", "size": 4}]),
            ),
        ),
        (
            "a file size -1",
            400,
            "invalid_request",
            with(
                json!([{"id": file["id"], "name": "a.png", "content_type": "image/png", "size": -1}]),
            ),
        ),
        (
            "a file size 4.5",
            400,
            "invalid_request",
            with(
                json!([{"id": file["id"], "name": "a.png", "content_type": "image/png", "size": 4.5}]),
            ),
        ),
        (
            "a file name with ESC",
            400,
            "invalid_request",
            with(
                json!([{"id": file["id"], "name": "a\u{1b}.png", "content_type": "image/png", "size": 4}]),
            ),
        ),
        (
            "a file with an unknown field",
            400,
            "invalid_request",
            with(
                json!([{"id": file["id"], "name": "a.png", "content_type": "image/png", "size": 4, "url": "x"}]),
            ),
        ),
        ("eleven files", 400, "invalid_request", with(json!(eleven))),
        (
            "a file twice",
            400,
            "invalid_request",
            with(json!([file, file])),
        ),
        (
            "a file resized",
            403,
            "forbidden",
            with(
                json!([{"id": file["id"], "name": "a.png", "content_type": "image/png", "size": 5}]),
            ),
        ),
        (
            "a forged id",
            403,
            "forbidden",
            with(
                json!([{"id": format!("{}.AAAAAAAAAAAAAAAAAAAAAA", &file["id"].as_str().unwrap()[..22]), "name": "a.png", "content_type": "image/png", "size": 4}]),
            ),
        ),
        (
            "a file of the 1:1 carried here",
            403,
            "forbidden",
            with(json!([dm_grant["attachment"]])),
        ),
        (
            "for bob, alice's file",
            403,
            "forbidden",
            json!({"sender": "bob", "body": "x", "attachments": [file]}),
        ),
        (
            "a file not uploaded yet",
            404,
            "not_found",
            with(json!([file])),
        ),
    ];
    for (what, status, code, body) in &post_cases {
        let (got, problem, content_type) = api.json("POST", posts, body.clone()).await;
        if !(got == *status
            && problem["code"] == *code
            && content_type == "application/problem+json")
        {
            wrong.push(format!(
                "post, {what}: want {status} {code}, got {got} {problem}"
            ));
        }
    }
    assert_eq!(f.put(&url, "image/png", b"four").await, 200);
    let (got, posted, _) = api.json("POST", posts, with(json!([file]))).await;
    assert_eq!(got, 201, "{posted}");
    let seq = posted["seq"].as_u64().unwrap();
    // Downloads.
    let id = file["id"].as_str().unwrap();
    for (path, status, code) in [
        (
            format!("/v1/conversations/team/messages/0/attachments/{id}"),
            404,
            "not_found",
        ),
        (
            format!("/v1/conversations/team/messages/-1/attachments/{id}"),
            400,
            "invalid_request",
        ),
        (
            format!("/v1/conversations/team/messages/1.5/attachments/{id}"),
            400,
            "invalid_request",
        ),
        (
            format!("/v1/conversations/team/messages/abc/attachments/{id}"),
            400,
            "invalid_request",
        ),
        (
            format!("/v1/conversations/team/messages/99999999999999999999/attachments/{id}"),
            400,
            "invalid_request",
        ),
        (
            format!("/v1/conversations/team/messages/18446744073709551615/attachments/{id}"),
            404,
            "not_found",
        ),
        (
            format!(
                "/v1/conversations/team/messages/{}/attachments/{id}",
                seq + 100
            ),
            404,
            "not_found",
        ),
        (
            format!("/v1/conversations/team/messages/{seq}/attachments/x"),
            400,
            "invalid_request",
        ),
        (
            format!(
                "/v1/conversations/team/messages/{seq}/attachments/{}%2F..",
                &id[..44]
            ),
            400,
            "invalid_request",
        ),
        (
            format!(
                "/v1/conversations/team/messages/{seq}/attachments/{}%00",
                &id[..44]
            ),
            400,
            "invalid_request",
        ),
        (
            format!(
                "/v1/conversations/team/messages/{seq}/attachments/AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB"
            ),
            404,
            "not_found",
        ),
        (
            format!("/v1/conversations/{dm}/messages/{seq}/attachments/{id}"),
            404,
            "not_found",
        ),
    ] {
        let (got, problem, content_type) = api.call("GET", &path, None, None).await;
        if !(got == status && problem["code"] == code && content_type == "application/problem+json")
        {
            wrong.push(format!(
                "GET {path}: want {status} {code}, got {got} {problem}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let (got, d, _) = api
        .call(
            "GET",
            &format!("/v1/conversations/team/messages/{seq}/attachments/{id}"),
            None,
            None,
        )
        .await;
    assert_eq!(got, 200, "{d}");
    assert_eq!(
        f.get(d["url"].as_str().unwrap()).await,
        (200, b"four".to_vec())
    );
}

/// A size past `attachments.max_bytes` is `413 too_large` as documented, also when it is
/// past what a 64-bit signed integer holds or written as a whole float — not `400` calling
/// a whole number "not a whole number".
#[tokio::test]
async fn an_api_upload_of_a_huge_whole_size_is_too_large() {
    let f = Files::start(Kind::Fs).await;
    let api = Api::new(&f, Scope::Admin).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut answers = Vec::new();
    for size in [
        "65537",
        "9223372036854775807",
        "18446744073709551615",
        "1e16",
        "1e30",
    ] {
        let body = format!(
            r#"{{"sender":"alice","name":"a.png","content_type":"image/png","size":{size}}}"#
        );
        let (got, problem, _) = api
            .call(
                "POST",
                "/v1/conversations/team/attachments",
                Some(&body),
                None,
            )
            .await;
        answers.push(format!(
            "{size}: {got} {} ({})",
            problem["code"], problem["detail"]
        ));
    }
    let wrong: Vec<&String> = answers
        .iter()
        .filter(|a| !a.contains(": 413 \"too_large\""))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Edits change the body, not the files: an edit naming files is refused as a frame, and
/// after an edit the message carries its files as before.
#[tokio::test]
async fn edits_change_the_body_not_the_files() {
    let f = Files::start(Kind::Fs).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let (a, _) = f.uploaded(&mut alice, "team", "a.png", PNG).await;
    let (b, _) = f.uploaded(&mut alice, "team", "b.png", b"bbbb").await;
    let seq = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;
    let frame = json!({"type": "edit", "id": 800, "conv": "team", "seq": seq, "body": "edited",
        "attachments": [b]});
    alice.send_text(frame.to_string()).await.unwrap();
    match alice.next_answer().await.unwrap() {
        ServerFrame::Error(e) => assert_eq!(e.code, ErrorCode::InvalidRequest, "{e:?}"),
        other => panic!("an edit naming files: {other:?}"),
    }
    alice
        .ok(anchorage_protocol::request::Edit {
            conv: conv_id("team"),
            seq,
            body: json!("edited"),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let m = loop {
        let m = history(&mut bob, "team")
            .await
            .into_iter()
            .find(|m| m.seq == seq)
            .unwrap();
        if m.body == json!("edited") {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edit never showed: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(m.attachments, vec![a.clone()]);
    assert_eq!(
        f.fetch(&mut bob, "team", seq, &a.id).await,
        (200, PNG.to_vec())
    );
    assert_eq!(
        refused(&mut bob, download("team", seq, &b.id)).await,
        ErrorCode::NotFound
    );
}

/// A dismissed group takes no more files, over the socket or the server API, and its files
/// are not downloaded by its former members.
#[tokio::test]
async fn a_dismissed_group_takes_no_files() {
    let f = Files::start(Kind::Fs).await;
    let api = Api::new(&f, Scope::Admin).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let mut bob = f.device("bob", "d1").await;
    let (a, _) = f.uploaded(&mut alice, "team", "a.png", PNG).await;
    let seq = alice
        .ack(with_files("team", "m1", vec![a.clone()]))
        .await
        .unwrap()
        .seq;
    assert_eq!(f.fetch(&mut bob, "team", seq, &a.id).await.0, 200);
    alice
        .ok(anchorage_protocol::request::DismissGroup {
            group: group_id("team"),
        })
        .await
        .unwrap();
    until_refused(
        &mut bob,
        download("team", seq, &a.id),
        ErrorCode::Forbidden,
        "dismissed",
    )
    .await;
    assert_eq!(
        refused(&mut alice, upload("team", "b.png", "image/png", 4)).await,
        ErrorCode::Forbidden
    );
    let (got, answer, _) = api
        .json(
            "POST",
            "/v1/conversations/team/attachments",
            json!({"sender": "alice", "name": "b.png", "content_type": "image/png", "size": 4}),
        )
        .await;
    assert!(
        got == 403 || got == 404,
        "an upload into a dismissed group: {got} {answer}"
    );
}

/// The same idempotency key with other files is `409`, whatever those files are (uploaded,
/// not uploaded yet, someone else's): the key names the first post.
#[tokio::test]
async fn an_api_repeat_with_other_files_is_a_conflict() {
    let f = Files::start(Kind::Fs).await;
    let api = Api::new(&f, Scope::Admin).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let up = "/v1/conversations/team/attachments";
    let upload = |name: &str| json!({"sender": "alice", "name": name, "content_type": "text/plain", "size": 4});
    let mut files = Vec::new();
    for name in ["a.txt", "b.txt", "c.txt"] {
        let (got, g, _) = api.json("POST", up, upload(name)).await;
        assert_eq!(got, 201);
        files.push(g);
    }
    for g in &files[..2] {
        assert_eq!(
            f.put(g["url"].as_str().unwrap(), "text/plain", b"text")
                .await,
            200
        );
    }
    let (a, b, c) = (
        files[0]["attachment"].clone(),
        files[1]["attachment"].clone(),
        files[2]["attachment"].clone(),
    );
    let posts = "/v1/conversations/team/messages";
    let post = |files: Value| json!({"sender": "alice", "body": "report", "client_msg_id": "r1", "attachments": files});
    let (got, first, _) = api.json("POST", posts, post(json!([a]))).await;
    assert_eq!(got, 201, "{first}");
    let (got, again, _) = api.json("POST", posts, post(json!([a]))).await;
    assert_eq!(
        (got, &again["seq"], &again["duplicate"]),
        (201, &first["seq"], &json!(true))
    );
    let forged = json!({"id": format!("{}.AAAAAAAAAAAAAAAAAAAAAA", &a["id"].as_str().unwrap()[..22]),
        "name": "a.txt", "content_type": "text/plain", "size": 4});
    let mut answers = Vec::new();
    for (what, files) in [
        ("another uploaded file", json!([b])),
        ("a file not uploaded yet", json!([c])),
        ("a forged id", json!([forged])),
    ] {
        let (got, problem, _) = api.json("POST", posts, post(files)).await;
        answers.push(format!("{what}: {got} {}", problem["code"]));
    }
    assert_eq!(
        answers,
        vec![
            "another uploaded file: 409 \"conflict\"",
            "a file not uploaded yet: 409 \"conflict\"",
            "a forged id: 409 \"conflict\"",
        ]
    );
}

/// A repeat of a stored post with files, while the store is down: answered from the history
/// (`201`, the first seq), as it is without files — the store need not be asked.
#[tokio::test]
async fn an_api_repeat_while_the_store_is_down_is_the_first_post() {
    let mut f = Files::start(Kind::S3).await;
    let api = Api::new(&f, Scope::Admin).await;
    let mut alice = f.device("alice", "d1").await;
    alice
        .ok(create_group("team", "Team", &["bob"]))
        .await
        .unwrap();
    let (got, g, _) = api
        .json(
            "POST",
            "/v1/conversations/team/attachments",
            json!({"sender": "alice", "name": "a.txt", "content_type": "text/plain", "size": 4}),
        )
        .await;
    assert_eq!(got, 201);
    assert_eq!(
        f.put(g["url"].as_str().unwrap(), "text/plain", b"text")
            .await,
        200
    );
    let post = json!({"sender": "alice", "body": "report", "client_msg_id": "r1",
        "attachments": [g["attachment"]]});
    let posts = "/v1/conversations/team/messages";
    let (got, first, _) = api.json("POST", posts, post.clone()).await;
    assert_eq!(got, 201, "{first}");
    f.s3.as_mut().unwrap().stop().await;
    let (got, again, _) = api.json("POST", posts, post).await;
    f.s3.as_mut().unwrap().resume().await;
    assert_eq!(
        (got, &again["seq"], &again["duplicate"]),
        (201, &first["seq"], &json!(true)),
        "{again}"
    );
}
