//! Web Push (RFC 8030): the payload encrypted for the browser (RFC 8291, `aes128gcm` of
//! RFC 8188) and the server identified by VAPID (RFC 8292).

use std::time::Duration;

use anchorage_config::WebPushConfig;
use anchorage_schema::push::{decode_key, web_push_allowed, web_push_host};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SecureRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use ring::{aead, agreement, hkdf};

use crate::{Notification, Refusal, Sent, refusal};

/// Record size written in the header: one record holds the whole payload.
const RECORD_SIZE: u32 = 4096;
/// Longest plaintext one record holds (the record, less the tag and the delimiter).
pub const MAX_PLAINTEXT: usize = RECORD_SIZE as usize - 16 - 1;

/// Why a payload cannot be encrypted for a subscription.
#[derive(Debug, thiserror::Error)]
pub enum EncryptError {
    #[error("the subscription's keys are not a P-256 point and a 16-byte secret")]
    BadKeys,
    #[error("the payload has {0} bytes; one record holds {MAX_PLAINTEXT}")]
    TooLong(usize),
    #[error("the system's random source failed")]
    Random,
}

/// An HKDF output length.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, info: &[&[u8]], out: &mut [u8]) -> Result<(), EncryptError> {
    prk.expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out))
        .map_err(|_| EncryptError::BadKeys)
}

/// Encrypts `plaintext` for the browser whose public key is `ua_public` (65 bytes) and whose
/// authentication secret is `auth` (16 bytes), with a fresh key pair and salt from `rng`:
/// the body of the push message (salt, record size, the server's public key, one record).
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, EncryptError> {
    let key = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, rng)
        .map_err(|_| EncryptError::Random)?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EncryptError::Random)?;
    encrypt_with(plaintext, ua_public, auth, key, salt)
}

fn encrypt_with(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    key: agreement::EphemeralPrivateKey,
    salt: [u8; 16],
) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLong(plaintext.len()));
    }
    if ua_public.len() != 65 || auth.len() != 16 {
        return Err(EncryptError::BadKeys);
    }
    let as_public = key.compute_public_key().map_err(|_| EncryptError::Random)?;
    let as_public = as_public.as_ref().to_vec();
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, ua_public);
    let mut ikm = [0u8; 32];
    agreement::agree_ephemeral(key, &peer, |ecdh_secret| -> Result<(), EncryptError> {
        // RFC 8291 §3.3: the input keying material from the shared secret and both keys.
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, auth).extract(ecdh_secret);
        expand(&prk, &[b"WebPush: info\0", ua_public, &as_public], &mut ikm)
    })
    .map_err(|_| EncryptError::BadKeys)??;
    // RFC 8188 §2.2–2.3: the content encryption key and nonce.
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(&ikm);
    let mut cek = [0u8; 16];
    expand(&prk, &[b"Content-Encoding: aes128gcm\0"], &mut cek)?;
    let mut nonce = [0u8; 12];
    expand(&prk, &[b"Content-Encoding: nonce\0"], &mut nonce)?;
    let sealing = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &cek).map_err(|_| EncryptError::BadKeys)?,
    );
    let mut record = Vec::with_capacity(plaintext.len() + 17);
    record.extend_from_slice(plaintext);
    // The last (and only) record's delimiter.
    record.push(2);
    sealing
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::empty(),
            &mut record,
        )
        .map_err(|_| EncryptError::BadKeys)?;
    let mut body = Vec::with_capacity(16 + 4 + 1 + 65 + record.len());
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&record);
    Ok(body)
}

/// This server's VAPID identity.
#[derive(Debug)]
pub struct Vapid {
    key: jsonwebtoken::EncodingKey,
    /// The public key, uncompressed, base64url: the `k` of every request, and the
    /// `applicationServerKey` browsers subscribe with.
    public: String,
    subject: String,
}

impl Vapid {
    /// Reads a P-256 PKCS#8 PEM key.
    pub fn from_pem(pem: &str, subject: &str) -> anyhow::Result<Vapid> {
        let der: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = STANDARD
            .decode(der.trim())
            .map_err(|e| anyhow::anyhow!("the VAPID key is not PEM: {e}"))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
            .map_err(|e| anyhow::anyhow!("the VAPID key is not a P-256 PKCS#8 key: {e}"))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())?;
        anyhow::ensure!(
            subject.starts_with("mailto:") || subject.starts_with("https://"),
            "push.web_push.subject is a mailto: or https: URL"
        );
        Ok(Vapid {
            key,
            public: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            subject: subject.to_owned(),
        })
    }

    /// The public key browsers subscribe with (base64url).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The `Authorization` header for a request to `endpoint`, valid for 12 hours.
    pub fn authorization(&self, endpoint: &str) -> anyhow::Result<String> {
        let origin = origin(endpoint).ok_or_else(|| anyhow::anyhow!("no origin"))?;
        let claims = serde_json::json!({
            "aud": origin,
            "exp": anchorage_schema::now_ms() / 1000 + 12 * 3600,
            "sub": self.subject,
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
            &claims,
            &self.key,
        )?;
        Ok(format!("vapid t={token}, k={}", self.public))
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    Some(format!("{scheme}://{host}"))
}

/// Sends Web Push messages.
#[derive(Debug)]
pub struct WebPush {
    client: reqwest::Client,
    vapid: Vapid,
    config: WebPushConfig,
    rng: ring::rand::SystemRandom,
}

impl WebPush {
    /// From `[push.web_push]`, reading the VAPID key.
    pub fn new(config: &WebPushConfig, timeout: Duration) -> anyhow::Result<WebPush> {
        let pem = std::fs::read_to_string(&config.vapid_key).map_err(|e| {
            anyhow::anyhow!(
                "push.web_push.vapid_key {}: {e}",
                config.vapid_key.display()
            )
        })?;
        Ok(WebPush {
            client: crate::http_client(timeout, false)?,
            vapid: Vapid::from_pem(&pem, &config.subject)?,
            config: config.clone(),
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// Sends `n` to the subscription.
    pub async fn send(&self, endpoint: &str, p256dh: &str, auth: &str, n: &Notification) -> Sent {
        // Checked at registration too; the allowed hosts may have changed since.
        if !web_push_allowed(
            endpoint,
            &self.config.allowed_hosts,
            &self.config.allowed_http_hosts,
        ) {
            return Sent::Failed(
                "the push service is not among push.web_push.allowed_hosts".into(),
            );
        }
        // What the HTTP client will connect to must be the host that was checked.
        let parsed = reqwest::Url::parse(endpoint).ok().and_then(|u| {
            let host = u.host_str()?.to_owned();
            Some(match u.port() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        });
        if parsed.is_none() || parsed.as_deref() != web_push_host(endpoint).ok().as_deref() {
            return Sent::Failed("the endpoint's host is not the one it names".into());
        }
        let (Some(ua_public), Some(secret)) = (decode_key(p256dh), decode_key(auth)) else {
            return Sent::Rejected("the subscription's keys do not decode".into());
        };
        let payload = n.web_payload();
        let body = match encrypt(payload.as_bytes(), &ua_public, &secret, &self.rng) {
            Ok(body) => body,
            Err(EncryptError::BadKeys) => return Sent::Rejected("the subscription's keys".into()),
            Err(e) => return Sent::Failed(e.to_string()),
        };
        let authorization = match self.vapid.authorization(endpoint) {
            Ok(a) => a,
            Err(e) => return Sent::Failed(format!("VAPID: {e}")),
        };
        let answer = self
            .client
            .post(endpoint)
            .header("authorization", authorization)
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("ttl", "86400")
            .header("urgency", if n.urgent() { "high" } else { "normal" })
            .header("topic", n.collapse_key())
            .body(body)
            .send()
            .await;
        let Refusal { status, wait, text } = match refusal(answer).await {
            Ok(r) => r,
            Err(settled) => return settled,
        };
        match status {
            // The subscription expired or was unsubscribed.
            404 | 410 => Sent::Rejected(format!("HTTP {status}")),
            429 | 500..=599 => Sent::Retry(format!("HTTP {status}"), wait),
            _ => Sent::Failed(format!("HTTP {status} {}", crate::short(&text))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 8291 §5: the example message, with its keys and salt.
    #[test]
    #[allow(deprecated)]
    fn rfc_8291_example() {
        let plaintext = b"When I grow up, I want to be a watermelon";
        let as_private = b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw");
        let ua_public = b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        );
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let rng = ring::test::rand::FixedSliceRandom { bytes: &as_private };
        let key = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
        let body = encrypt_with(plaintext, &ua_public, &auth, key, salt).unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&body),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
    }

    #[test]
    fn refuses_what_one_record_cannot_hold() {
        let rng = ring::rand::SystemRandom::new();
        let ua = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng).unwrap();
        let ua_public = ua.compute_public_key().unwrap();
        let long = vec![b'x'; MAX_PLAINTEXT + 1];
        assert!(matches!(
            encrypt(&long, ua_public.as_ref(), &[0; 16], &rng),
            Err(EncryptError::TooLong(_))
        ));
        assert!(encrypt(&long[..MAX_PLAINTEXT], ua_public.as_ref(), &[0; 16], &rng).is_ok());
        assert!(matches!(
            encrypt(b"x", &[4; 10], &[0; 16], &rng),
            Err(EncryptError::BadKeys)
        ));
    }

    #[test]
    fn origin_of_an_endpoint() {
        assert_eq!(
            origin("https://fcm.googleapis.com/fcm/send/abc").as_deref(),
            Some("https://fcm.googleapis.com")
        );
        assert_eq!(
            origin("http://127.0.0.1:9000/p?x").as_deref(),
            Some("http://127.0.0.1:9000")
        );
    }
}
