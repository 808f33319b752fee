//! Attachments in object storage.
//!
//! The bytes of a file never pass through NATS or the database: a client asks the edge for an
//! upload URL (`upload`), puts the file there, and sends a message naming it. Members ask for
//! a download URL (`download`) when they want the file. Both URLs are signed and short-lived:
//!
//! - **S3** ([`s3`]): presigned with AWS Signature Version 4. The upload URL signs the media
//!   type and the exact length, so the store itself refuses any other file.
//! - **A folder** ([`fs`]): for `anchorage dev` and single-host setups; the edge serves
//!   `/v1/blobs/<object>` and checks the same things itself, with an HMAC over the URL.
//!
//! An upload is issued for one conversation, one uploader, one media type and one size; the
//! [`AttachmentId`] carries a seal (a MAC) over them, so the edge accepts a message's
//! attachment only from that uploader, in that conversation, as issued — and only once the
//! object is stored with that size ([`Blobs::size_of`]). Revoking a message queues its objects
//! for deletion; [`reap`] deletes them.

#![warn(missing_docs)]

pub mod fs;
pub mod reap;
pub mod s3;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anchorage_config::{AttachmentsConfig, BlobBackend};
use anchorage_schema::attachment::{
    self, Attachment, AttachmentId, BadAttachment, OBJECT_LEN, SEAL_LEN,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use reap::reap;

/// Where attachments are stored, and the key that seals their ids and signs folder URLs.
pub struct Blobs {
    backend: Backend,
    /// Derived from `auth.hmac_secret`, which every edge and projector shares.
    key: [u8; 32],
    max_bytes: u64,
    allowed_types: Vec<String>,
    upload_ttl: u64,
    download_ttl: u64,
    delete_grace: u64,
    http: reqwest::Client,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("backend", &self.backend)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Backend {
    Fs {
        dir: PathBuf,
        /// Prepended to `/v1/blobs/…`: the public URL, or empty for URLs relative to the edge.
        base: String,
    },
    S3(s3::S3),
}

/// A signed URL and how to use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The URL (relative to the edge for a folder without `public_url`).
    pub url: String,
    /// The HTTP method.
    pub method: &'static str,
    /// Headers the request must carry, with these values.
    pub headers: Vec<(String, String)>,
    /// When the URL stops working, Unix milliseconds.
    pub expires_at: i64,
}

/// Why an upload is not issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The name or the media type is malformed.
    #[error("{0}")]
    Invalid(String),
    /// This server does not take files of that type.
    #[error("{0}")]
    NotAllowed(String),
    /// Larger than this server takes.
    #[error("{0}")]
    TooLarge(String),
}

impl From<BadAttachment> for Refusal {
    fn from(err: BadAttachment) -> Self {
        Refusal::Invalid(err.0)
    }
}

/// Why object storage did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The store could not be reached or failed: try again later.
    #[error("object storage: {0}")]
    Unavailable(String),
    /// A folder URL that is not valid (forged, expired, for another file).
    #[error("{0}")]
    BadUrl(&'static str),
}

impl Blobs {
    /// The storage `config` names, or `None` when attachments are off. `secret` is
    /// `auth.hmac_secret`.
    pub fn from_config(config: &AttachmentsConfig, secret: &str) -> anyhow::Result<Option<Blobs>> {
        let backend = match config.backend {
            BlobBackend::Off => return Ok(None),
            BlobBackend::Fs => Backend::Fs {
                dir: config.dir.clone(),
                base: config
                    .public_url
                    .as_deref()
                    .unwrap_or_default()
                    .trim_end_matches('/')
                    .to_owned(),
            },
            BlobBackend::S3 => Backend::S3(s3::S3::new(config.s3.as_ref().ok_or_else(|| {
                anyhow::anyhow!("attachments.backend s3 needs [attachments.s3]")
            })?)?),
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("auth.hmac_secret: {e}"))?;
        mac.update(b"anchorage attachments v1");
        Ok(Some(Blobs {
            backend,
            key: mac.finalize().into_bytes().into(),
            max_bytes: config.max_bytes,
            allowed_types: config.allowed_types.clone(),
            upload_ttl: config.upload_ttl_secs,
            download_ttl: config.download_ttl_secs,
            delete_grace: config.delete_grace_secs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(config.timeout_ms))
                .build()?,
        }))
    }

    /// How long an upload URL works.
    pub fn upload_ttl(&self) -> Duration {
        Duration::from_secs(self.upload_ttl)
    }

    /// How long a released object waits before it is deleted.
    pub fn delete_grace(&self) -> Duration {
        Duration::from_secs(self.delete_grace)
    }

    /// The largest file accepted, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The folder files are kept in, for the `fs` backend.
    pub fn fs_dir(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Fs { dir, .. } => Some(dir),
            Backend::S3(_) => None,
        }
    }

    /// Issues an upload of `size` bytes of `content_type` to `conv` by `uploader`: the
    /// attachment to name in the message once the upload is done, and where to put the file.
    pub fn issue(
        &self,
        conv: &str,
        uploader: &str,
        name: &str,
        content_type: &str,
        size: u64,
    ) -> Result<(Attachment, Grant), Refusal> {
        attachment::check_name(name)?;
        attachment::check_content_type(content_type)?;
        if !attachment::type_allowed(content_type, &self.allowed_types) {
            return Err(Refusal::NotAllowed(format!(
                "files of type {content_type} are not accepted here (allowed: {})",
                self.allowed_types.join(", ")
            )));
        }
        if size > self.max_bytes {
            return Err(Refusal::TooLarge(format!(
                "a file has at most {} bytes; this one has {size}",
                self.max_bytes
            )));
        }
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|e| Refusal::Invalid(e.to_string()))?;
        let object = URL_SAFE_NO_PAD.encode(random);
        let seal = self.seal(conv, uploader, &object, content_type, size);
        let a = Attachment {
            id: AttachmentId::from_parts(&object, &seal)?,
            name: name.to_owned(),
            content_type: content_type.to_owned(),
            size,
        };
        let grant = self.upload_url(&object, content_type, size, now_secs());
        Ok((a, grant))
    }

    /// Whether `a` was issued to `uploader` for `conv`, with its media type and size.
    pub fn verify(&self, conv: &str, uploader: &str, a: &Attachment) -> bool {
        let mac = self.mac(&[
            "seal",
            conv,
            uploader,
            a.id.object(),
            &a.content_type,
            &a.size.to_string(),
        ]);
        let Ok(seal) = URL_SAFE_NO_PAD.decode(a.id.seal()) else {
            return false;
        };
        seal.len() == 16 && mac.verify_truncated_left(&seal).is_ok()
    }

    fn seal(&self, conv: &str, uploader: &str, object: &str, ct: &str, size: u64) -> String {
        let mac = self.mac(&["seal", conv, uploader, object, ct, &size.to_string()]);
        let seal = URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..16]);
        debug_assert_eq!(seal.len(), SEAL_LEN);
        seal
    }

    /// A MAC over `parts`, each followed by a NUL (none of them holds one).
    fn mac(&self, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        for p in parts {
            mac.update(p.as_bytes());
            mac.update(b"\0");
        }
        mac
    }

    fn upload_url(&self, object: &str, content_type: &str, size: u64, now: i64) -> Grant {
        let expires = now + self.upload_ttl as i64;
        let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
        let url = match &self.backend {
            Backend::Fs { base, .. } => {
                let size = size.to_string();
                self.fs_url(base, "PUT", object, expires, &size, content_type, "")
            }
            Backend::S3(s3) => s3.presign(s3::Presign {
                method: "PUT",
                object,
                expires_in: self.upload_ttl,
                query: &[],
                headers: &[
                    ("content-type", content_type),
                    ("content-length", &size.to_string()),
                    // Written once: the store refuses to replace the object.
                    ("if-none-match", "*"),
                ],
                now,
            }),
        };
        if matches!(self.backend, Backend::S3(_)) {
            headers.push(("if-none-match".to_owned(), "*".to_owned()));
        }
        Grant {
            url,
            method: "PUT",
            headers,
            expires_at: expires * 1000,
        }
    }

    /// A download URL for `a`, offered as a file named after it (never shown inline by a
    /// browser on the edge's origin).
    pub fn download(&self, a: &Attachment) -> Grant {
        let now = now_secs();
        let expires = now + self.download_ttl as i64;
        let object = a.id.object();
        let url = match &self.backend {
            Backend::Fs { base, .. } => self.fs_url(
                base,
                "GET",
                object,
                expires,
                &a.size.to_string(),
                &a.content_type,
                &a.name,
            ),
            Backend::S3(s3) => s3.presign(s3::Presign {
                method: "GET",
                object,
                expires_in: self.download_ttl,
                query: &[
                    ("response-content-type", &a.content_type),
                    ("response-content-disposition", &disposition(&a.name)),
                ],
                headers: &[],
                now,
            }),
        };
        Grant {
            url,
            method: "GET",
            headers: Vec::new(),
            expires_at: expires * 1000,
        }
    }

    /// The stored size of `object`, or `None` if it is not stored (not uploaded yet, or
    /// deleted).
    pub async fn size_of(&self, object: &str) -> Result<Option<u64>, BlobError> {
        match &self.backend {
            Backend::Fs { dir, .. } => fs::size_of(dir, object).await,
            Backend::S3(s3) => {
                let url = s3.presign(s3::Presign {
                    method: "HEAD",
                    object,
                    expires_in: 60,
                    query: &[],
                    headers: &[],
                    now: now_secs(),
                });
                let answer = self.http.head(url).send().await.map_err(unavailable)?;
                match answer.status().as_u16() {
                    200 => {
                        let length = answer
                            .headers()
                            .get(reqwest::header::CONTENT_LENGTH)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .ok_or_else(|| {
                                BlobError::Unavailable("HEAD answered no Content-Length".into())
                            })?;
                        Ok(Some(length))
                    }
                    404 => Ok(None),
                    status => Err(BlobError::Unavailable(format!("HEAD answered {status}"))),
                }
            }
        }
    }

    /// Deletes `object`; an object already gone counts as deleted.
    pub async fn delete(&self, object: &str) -> Result<(), BlobError> {
        match &self.backend {
            Backend::Fs { dir, .. } => fs::delete(dir, object).await,
            Backend::S3(s3) => {
                let url = s3.presign(s3::Presign {
                    method: "DELETE",
                    object,
                    expires_in: 60,
                    query: &[],
                    headers: &[],
                    now: now_secs(),
                });
                let answer = self.http.delete(url).send().await.map_err(unavailable)?;
                match answer.status().as_u16() {
                    200 | 204 | 404 => Ok(()),
                    status => Err(BlobError::Unavailable(format!("DELETE answered {status}"))),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fs_url(
        &self,
        base: &str,
        method: &str,
        object: &str,
        expires: i64,
        size: &str,
        content_type: &str,
        name: &str,
    ) -> String {
        let expires = expires.to_string();
        let sig = self.fs_sig(method, object, &expires, size, content_type, name);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("expires", &expires)
            .append_pair("size", size)
            .append_pair("type", content_type);
        if !name.is_empty() {
            query.append_pair("name", name);
        }
        query.append_pair("sig", &sig);
        format!("{base}/v1/blobs/{object}?{}", query.finish())
    }

    fn fs_sig(
        &self,
        method: &str,
        object: &str,
        expires: &str,
        size: &str,
        content_type: &str,
        name: &str,
    ) -> String {
        let mac = self.mac(&["fs", method, object, expires, size, content_type, name]);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Checks a folder URL the edge is asked to serve: signed by this server for `method` on
    /// `object`, not expired. Returns what it was signed for.
    pub fn check_fs_url(
        &self,
        method: &str,
        object: &str,
        q: &fs::UrlQuery,
    ) -> Result<fs::Signed, BlobError> {
        if !matches!(self.backend, Backend::Fs { .. }) {
            return Err(BlobError::BadUrl("this server keeps no files itself"));
        }
        if object.len() != OBJECT_LEN || !attachment::is_object_name(object) {
            return Err(BlobError::BadUrl("no such file"));
        }
        let name = q.name.as_deref().unwrap_or_default();
        let expires = q.expires.to_string();
        let size = q.size.to_string();
        let mac = self.mac(&["fs", method, object, &expires, &size, &q.content_type, name]);
        let sig = URL_SAFE_NO_PAD
            .decode(&q.sig)
            .map_err(|_| BlobError::BadUrl("the URL's signature is not valid"))?;
        if mac.verify_slice(&sig).is_err() {
            return Err(BlobError::BadUrl("the URL's signature is not valid"));
        }
        if q.expires < now_secs() {
            return Err(BlobError::BadUrl("the URL has expired"));
        }
        Ok(fs::Signed {
            size: q.size,
            content_type: q.content_type.clone(),
            disposition: disposition(name),
        })
    }
}

fn unavailable(err: reqwest::Error) -> BlobError {
    BlobError::Unavailable(err.without_url().to_string())
}

fn now_secs() -> i64 {
    anchorage_schema::now_ms() / 1000
}

/// `Content-Disposition` offering the file as a download named `name`: an ASCII fallback and
/// the exact name (RFC 6266, RFC 8187).
pub fn disposition(name: &str) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut exact = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            exact.push(b as char);
        } else {
            exact.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{fallback}\"; filename*=UTF-8''{exact}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(dir: &Path) -> Blobs {
        let config = AttachmentsConfig {
            backend: BlobBackend::Fs,
            dir: dir.to_owned(),
            max_bytes: 1000,
            ..AttachmentsConfig::default()
        };
        Blobs::from_config(&config, "0123456789abcdef0123")
            .expect("config")
            .expect("on")
    }

    #[test]
    fn seals_bind_the_conversation_the_uploader_the_type_and_the_size() {
        let dir = tempfile::tempdir().expect("dir");
        let b = blobs(dir.path());
        let (a, grant) = b
            .issue("g:team", "alice", "cat.png", "image/png", 12)
            .expect("issued");
        assert!(b.verify("g:team", "alice", &a));
        assert!(!b.verify("g:other", "alice", &a));
        assert!(!b.verify("g:team", "bob", &a));
        assert!(!b.verify(
            "g:team",
            "alice",
            &Attachment {
                size: 13,
                ..a.clone()
            }
        ));
        assert!(!b.verify(
            "g:team",
            "alice",
            &Attachment {
                content_type: "image/jpeg".into(),
                ..a.clone()
            }
        ));
        // The name is for display only: not sealed.
        assert!(b.verify(
            "g:team",
            "alice",
            &Attachment {
                name: "renamed.png".into(),
                ..a.clone()
            }
        ));
        // Another server's key seals differently.
        let other = Blobs::from_config(
            &AttachmentsConfig {
                backend: BlobBackend::Fs,
                ..AttachmentsConfig::default()
            },
            "another-secret-of-16",
        )
        .expect("config")
        .expect("on");
        assert!(!other.verify("g:team", "alice", &a));
        assert_eq!(grant.method, "PUT");
        assert!(
            grant
                .url
                .starts_with(&format!("/v1/blobs/{}?", a.id.object()))
        );
    }

    #[test]
    fn limits_come_from_the_config() {
        let dir = tempfile::tempdir().expect("dir");
        let b = blobs(dir.path());
        assert!(b.issue("c", "u", "a.png", "image/png", 1000).is_ok());
        assert!(b.issue("c", "u", "a.png", "image/png", 1001).is_err());
        assert!(b.issue("c", "u", "a.html", "text/html", 1).is_err());
        assert!(b.issue("c", "u", "../a.png", "image/png", 1).is_err());
        assert!(b.issue("c", "u", "a.png", "image/png; x=y", 1).is_err());
    }

    #[test]
    fn folder_urls_are_checked_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let b = blobs(dir.path());
        let (a, _) = b
            .issue("c", "u", "é \"x\".png", "image/png", 12)
            .expect("issued");
        let grant = b.download(&a);
        let query = grant.url.split_once('?').expect("query").1;
        let q: fs::UrlQuery = serde_urlencoded(query);
        let signed = b.check_fs_url("GET", a.id.object(), &q).expect("valid");
        assert_eq!(signed.size, 12);
        assert_eq!(
            signed.disposition,
            "attachment; filename=\"_ _x_.png\"; filename*=UTF-8''%C3%A9%20%22x%22.png"
        );
        // Another method, another object, another size or a late request: refused.
        assert!(b.check_fs_url("PUT", a.id.object(), &q).is_err());
        assert!(b.check_fs_url("GET", "AAAAAAAAAAAAAAAAAAAAAA", &q).is_err());
        let bigger = fs::UrlQuery {
            size: 13,
            ..q.clone()
        };
        assert!(b.check_fs_url("GET", a.id.object(), &bigger).is_err());
        let html = fs::UrlQuery {
            content_type: "text/html".into(),
            ..q.clone()
        };
        assert!(b.check_fs_url("GET", a.id.object(), &html).is_err());
        assert!(b.check_fs_url("GET", "../../etc/passwd", &q).is_err());
        let late = fs::UrlQuery {
            expires: 1,
            ..q.clone()
        };
        assert!(b.check_fs_url("GET", a.id.object(), &late).is_err());
    }

    fn serde_urlencoded(query: &str) -> fs::UrlQuery {
        let pairs: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
        fs::UrlQuery {
            expires: pairs["expires"].parse().expect("expires"),
            size: pairs["size"].parse().expect("size"),
            content_type: pairs["type"].clone(),
            name: pairs.get("name").cloned(),
            sig: pairs["sig"].clone(),
        }
    }
}
