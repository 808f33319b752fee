//! The attachment tests' harness: a stack with a file store (a folder, or s3rver behind a
//! Signature Version 4 check), and a client's steps written from PROTOCOL.md — `upload`, a
//! PUT to the URL given, `send`, `download`, a GET.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anchorage_config::{AttachmentsConfig, BlobBackend, Config};
use anchorage_protocol::request::{Download, SendMessage, Upload};
use anchorage_protocol::{DownloadGrant, ErrorCode, ReplyBody, ServerFrame, UploadGrant};
use anchorage_schema::attachment::{Attachment, AttachmentId};
use anchorage_tests::s3::S3rver;
use anchorage_tests::{
    TestNats, TestStack, WsClient, conv_id, eventually, fresh_database, send_message, test_config,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);
/// The largest file the stores take in these tests.
pub const MAX: u64 = 64 * 1024;
/// A small file.
pub const PNG: &[u8] = b"\x89PNG\r\n\x1a\n-a-cat-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A folder served by the edge.
    Fs,
    /// s3rver, every request's signature checked.
    S3,
}

/// A stack with a file store.
pub struct Files {
    pub nats: TestNats,
    pub t: TestStack,
    pub s3: Option<S3rver>,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

impl Files {
    pub async fn start(kind: Kind) -> Files {
        Self::start_with(kind, |_| {}).await
    }

    pub async fn start_with(kind: Kind, tweak: impl FnOnce(&mut Config)) -> Files {
        let nats = TestNats::start().await.unwrap();
        let db_dir = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(&nats.url(), &fresh_database(db_dir.path()).await.unwrap());
        let s3 = match kind {
            Kind::S3 => Some(S3rver::start().await),
            Kind::Fs => None,
        };
        config.attachments = AttachmentsConfig {
            backend: match kind {
                Kind::Fs => BlobBackend::Fs,
                Kind::S3 => BlobBackend::S3,
            },
            max_bytes: MAX,
            allowed_types: vec!["image/*".into(), "text/plain".into()],
            download_ttl_secs: 300,
            delete_grace_secs: 1,
            dir: dir.path().join("files"),
            s3: s3.as_ref().map(S3rver::config),
            ..AttachmentsConfig::default()
        };
        tweak(&mut config);
        let t = TestStack::start_with(config, db_dir).await.unwrap();
        Files {
            nats,
            t,
            s3,
            dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn edge(&self) -> SocketAddr {
        self.t.edge_addr()
    }

    /// The folder of the `fs` backend.
    pub fn folder(&self) -> PathBuf {
        self.dir.path().join("files")
    }

    /// Every entry of the folder (hidden ones too).
    pub fn folder_entries(&self) -> Vec<String> {
        match std::fs::read_dir(self.folder()) {
            Ok(entries) => entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    pub async fn device(&self, user: &str, device: &str) -> WsClient {
        WsClient::signed_in(self.edge(), user, device)
            .await
            .unwrap()
            .0
    }

    /// A URL as a client resolves it: absolute, or a path on the edge it is connected to.
    pub fn absolute(&self, url: &str) -> String {
        if url.starts_with('/') {
            format!("http://{}{url}", self.edge())
        } else {
            url.to_owned()
        }
    }

    /// A PUT with the headers an upload grant gives: the type, and for S3 the signed
    /// `if-none-match: *` (the store takes the object once; the folder ignores it).
    pub async fn put(&self, url: &str, content_type: &str, bytes: &[u8]) -> u16 {
        self.http
            .put(self.absolute(url))
            .header("content-type", content_type)
            .header("if-none-match", "*")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub async fn get(&self, url: &str) -> (u16, Vec<u8>) {
        let (status, _, bytes) = self.get_with_headers(url).await;
        (status, bytes)
    }

    pub async fn get_with_headers(&self, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let answer = self.http.get(self.absolute(url)).send().await.unwrap();
        let (status, headers) = (answer.status().as_u16(), answer.headers().clone());
        (status, headers, answer.bytes().await.unwrap().to_vec())
    }

    pub async fn grant(
        &self,
        c: &mut WsClient,
        conv: &str,
        name: &str,
        ct: &str,
        size: u64,
    ) -> UploadGrant {
        match c.reply(upload(conv, name, ct, size)).await.unwrap() {
            ReplyBody::Upload(g) => g,
            other => panic!("not an upload grant: {other:?}"),
        }
    }

    /// A PNG file uploaded as the grant says: the attachment and its upload URL.
    pub async fn uploaded(
        &self,
        c: &mut WsClient,
        conv: &str,
        name: &str,
        bytes: &[u8],
    ) -> (Attachment, String) {
        let g = self
            .grant(c, conv, name, "image/png", bytes.len() as u64)
            .await;
        assert_eq!(g.method, "PUT");
        // What `put` sends: the type, and the write-once condition S3 signs.
        assert!(
            g.headers
                .iter()
                .all(|(k, v)| (k == "content-type" && v == "image/png")
                    || (k == "if-none-match" && v == "*")),
            "{:?}",
            g.headers
        );
        assert_eq!(self.put(&g.url, "image/png", bytes).await, 200);
        (g.attachment, g.url)
    }

    pub async fn download(
        &self,
        c: &mut WsClient,
        conv: &str,
        seq: u64,
        id: &AttachmentId,
    ) -> DownloadGrant {
        match c.reply(download(conv, seq, id)).await.unwrap() {
            ReplyBody::Download(g) => g,
            other => panic!("not a download grant: {other:?}"),
        }
    }

    /// A download grant once the message is in the history (`overloaded` until then).
    pub async fn download_when_projected(
        &self,
        c: &mut WsClient,
        conv: &str,
        seq: u64,
        id: &AttachmentId,
    ) -> DownloadGrant {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match c.request(download(conv, seq, id)).await.unwrap() {
                ServerFrame::Reply(r) => match r.body {
                    ReplyBody::Download(g) => return g,
                    other => panic!("not a download grant: {other:?}"),
                },
                ServerFrame::Error(e)
                    if e.code == ErrorCode::Overloaded
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("download of {seq} refused: {other:?}"),
            }
        }
    }

    /// The file of message `seq` as a member fetches it: status and bytes.
    pub async fn fetch(
        &self,
        c: &mut WsClient,
        conv: &str,
        seq: u64,
        id: &AttachmentId,
    ) -> (u16, Vec<u8>) {
        let g = self.download_when_projected(c, conv, seq, id).await;
        self.get(&g.url).await
    }

    /// Waits until `url` (issued before the file was deleted) finds nothing.
    pub async fn gone(&self, url: &str) {
        eventually(WAIT, "the file to be deleted", || async {
            (self.get(url).await.0 == 404).then_some(())
        })
        .await
        .unwrap();
    }

    /// Waits until no deletion is queued.
    pub async fn deletions_done(&self) {
        let store = &self.t.stack.store;
        eventually(WAIT, "the deletion queue to empty", || async {
            (store.deletion_backlog().await.ok()?.0 == 0).then_some(())
        })
        .await
        .unwrap();
    }
}

pub fn upload(conv: &str, name: &str, content_type: &str, size: u64) -> Upload {
    Upload {
        conv: conv_id(conv),
        name: name.into(),
        content_type: content_type.into(),
        size,
    }
}

pub fn download(conv: &str, seq: u64, id: &AttachmentId) -> Download {
    Download {
        conv: conv_id(conv),
        seq,
        attachment: id.clone(),
    }
}

pub fn with_files(conv: &str, id: &str, files: Vec<Attachment>) -> SendMessage {
    SendMessage {
        attachments: files,
        ..send_message(conv, id, json!("see attached"))
    }
}

pub async fn refused(
    c: &mut WsClient,
    body: impl Into<anchorage_protocol::RequestBody>,
) -> ErrorCode {
    c.refused(body).await.unwrap().code
}
