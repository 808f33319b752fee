//! Signed HTTP deliveries: the webhook worker ([`worker`]) and the one-off signed call the
//! before-send hook makes ([`Poster`]).
//!
//! Every request is signed per the Standard Webhooks specification: `webhook-id` (the event
//! id, so a receiver deduplicates redeliveries), `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under the
//! endpoint's `whsec_` secret).

pub mod worker;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use worker::run;

/// A Standard Webhooks signing secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a secret is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a signing secret reads whsec_ and base64 of at least 16 bytes")]
pub struct BadSecret;

/// Base64 as secrets are written: padded, any trailing bits.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Longest secret accepted, in characters.
pub const MAX_SECRET: usize = 200;

impl Secret {
    /// Parses `whsec_<base64>` (of 16 bytes or more).
    pub fn parse(s: &str) -> Result<Secret, BadSecret> {
        if s.len() > MAX_SECRET {
            return Err(BadSecret);
        }
        let key = LENIENT
            .decode(s.strip_prefix("whsec_").ok_or(BadSecret)?)
            .map_err(|_| BadSecret)?;
        if key.len() < 16 {
            return Err(BadSecret);
        }
        Ok(Secret(key))
    }

    /// A new random secret (32 bytes), as `whsec_<base64>`.
    pub fn generate() -> Result<String, getrandom::Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(format!("whsec_{}", STANDARD.encode(key)))
    }

    /// The `webhook-signature` of `body` sent as message `id` at `timestamp`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// What a signed post came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status and body.
    Answered { status: u16, body: String },
    /// No answer: connection refused, reset, timed out.
    NoAnswer(String),
}

impl Outcome {
    /// Whether the endpoint took it (2xx).
    pub fn accepted(&self) -> bool {
        matches!(self, Outcome::Answered { status, .. } if (200..300).contains(status))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Answered { status, .. } => write!(f, "HTTP {status}"),
            Outcome::NoAnswer(why) => write!(f, "no answer: {why}"),
        }
    }
}

/// Posts signed JSON (one connection pool per process).
#[derive(Debug, Clone)]
pub struct Poster {
    client: reqwest::Client,
}

/// Longest answer body read back (the before-send hook's verdict).
const MAX_ANSWER: usize = 1024 * 1024;

impl Poster {
    /// A poster whose every call is bounded by `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Poster> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("anchorage/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Poster { client })
    }

    /// Posts `body` to `url` as message `id`, signed with `secret`. An answer is read up to
    /// 1 MiB; a longer one counts as no answer.
    pub async fn post(&self, url: &str, secret: &Secret, id: &str, body: Vec<u8>) -> Outcome {
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = secret.sign(id, timestamp, &body);
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(mut response) => {
                let status = response.status().as_u16();
                // Read at most MAX_ANSWER bytes: an endpoint cannot make the process hold more.
                let mut body = Vec::new();
                loop {
                    match response.chunk().await {
                        Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER => {
                            body.extend_from_slice(&chunk);
                        }
                        Ok(Some(_)) => {
                            return Outcome::NoAnswer(format!(
                                "HTTP {status} with an answer over {MAX_ANSWER} bytes"
                            ));
                        }
                        Ok(None) => break,
                        Err(e) => return Outcome::NoAnswer(without_url(&e)),
                    }
                }
                Outcome::Answered {
                    status,
                    body: String::from_utf8_lossy(&body).into_owned(),
                }
            }
            Err(e) => Outcome::NoAnswer(without_url(&e)),
        }
    }
}

/// An error's text without the URL (which may carry credentials).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = String::new();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    if last.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {last}")
    }
}

/// Checks an endpoint's URL: `http` or `https`, a host, at most 2048 characters, and no user
/// name, password or fragment (credentials in a URL end up in logs and dead letters; an
/// endpoint authenticates deliveries by their signature). The server API's schema says the
/// same: `^https?://[^/?#@\x00-\x20]+([/?][^#\x00-\x20]*)?$`.
pub fn check_url(url: &str) -> Result<(), String> {
    let why = "an http:// or https:// URL with a host, at most 2048 characters, without user, \
               password or #fragment";
    // Controls and the space, as the schema's class says.
    let space = |c: char| c <= ' ';
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err(why.into());
    };
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host = &rest[..host_end];
    let fine = url.chars().count() <= 2048
        && !host.is_empty()
        && !host.contains('@')
        && !url.contains('#')
        && !url.chars().any(space);
    if fine { Ok(()) } else { Err(why.into()) }
}

/// An endpoint's URL as logs and dead letters show it: scheme, host, port and path (a query
/// may carry a token).
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "(not a URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_checked_and_shown_without_secrets() {
        for fine in [
            "https://crm.example.com/hooks",
            "http://127.0.0.1:8080/hook?tenant=7",
        ] {
            assert_eq!(check_url(fine), Ok(()), "{fine}");
        }
        for bad in [
            "http://",
            "http://a b/",
            "ftp://example.com/",
            "https://user:pass@example.com/hook",
            "https://token@example.com/hook",
            "https://example.com/hook#part",
            "example.com/hook",
            "",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_url(&format!("https://example.com/{}", "a".repeat(2048))).is_err());
        // Characters, not bytes, as the schema counts.
        assert!(check_url(&format!("https://example.com/{}", "é".repeat(2000))).is_ok());
        assert_eq!(
            shown_url("https://example.com:8443/hooks/in?token=s3cret"),
            "https://example.com:8443/hooks/in"
        );
    }

    // The example of the Standard Webhooks specification.
    #[test]
    fn signs_like_the_specification() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err(), "too short");
        let fresh = Secret::generate().unwrap();
        assert!(Secret::parse(&fresh).is_ok());
    }
}
