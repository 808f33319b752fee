//! Push targets: where a device is reached while it is not connected, as registered by the
//! device and stored in its `device.push_set` event.
//!
//! A target names a provider and the address the provider gave the device: an FCM
//! registration token, an APNs device token, or a Web Push subscription (endpoint and the
//! browser's keys). [`PushTarget::check`] is the one validation every writer runs, so nothing a
//! reader takes from the streams is malformed.

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use serde::{Deserialize, Serialize};

/// Longest FCM or APNs token accepted, in bytes.
pub const MAX_TOKEN: usize = 4096;
/// Longest Web Push endpoint accepted, in bytes.
pub const MAX_ENDPOINT: usize = 2048;

/// A device's address at a push provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum PushTarget {
    /// Firebase Cloud Messaging (HTTP v1): the app's registration token.
    Fcm {
        /// The registration token.
        token: String,
    },
    /// Apple Push Notification service: the device token in hex.
    Apns {
        /// The device token (hexadecimal).
        token: String,
        /// Registered by a development build: sent to the sandbox environment.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sandbox: bool,
    },
    /// Web Push (RFC 8030): a browser's subscription.
    WebPush {
        /// The push service URL the subscription named (`https://`).
        endpoint: String,
        /// The browser's P-256 public key, uncompressed, base64url (RFC 8291 `p256dh`).
        p256dh: String,
        /// The browser's 16-byte authentication secret, base64url.
        auth: String,
    },
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadTarget(pub String);

fn bad(why: impl Into<String>) -> BadTarget {
    BadTarget(why.into())
}

impl PushTarget {
    /// The provider's name, as in `provider`.
    pub fn provider(&self) -> &'static str {
        match self {
            PushTarget::Fcm { .. } => "fcm",
            PushTarget::Apns { .. } => "apns",
            PushTarget::WebPush { .. } => "web_push",
        }
    }

    /// The address at the provider: what names one app install there (token or endpoint).
    pub fn address(&self) -> &str {
        match self {
            PushTarget::Fcm { token } | PushTarget::Apns { token, .. } => token,
            PushTarget::WebPush { endpoint, .. } => endpoint,
        }
    }

    /// Checks the target's shape: tokens of printable ASCII within bounds (APNs: hex), a Web
    /// Push endpoint `https://` with a host, a P-256 point and a 16-byte secret.
    pub fn check(&self) -> Result<(), BadTarget> {
        match self {
            PushTarget::Fcm { token } => {
                if token.is_empty() || token.len() > MAX_TOKEN {
                    return Err(bad("an FCM token has 1 to 4096 bytes"));
                }
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(bad("an FCM token is printable ASCII"));
                }
            }
            PushTarget::Apns { token, .. } => {
                if token.len() < 32 || token.len() > 200 || token.len() % 2 != 0 {
                    return Err(bad("an APNs device token is 32 to 200 hex digits"));
                }
                if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("an APNs device token is hexadecimal"));
                }
            }
            PushTarget::WebPush {
                endpoint,
                p256dh,
                auth,
            } => {
                web_push_host(endpoint)?;
                let key = decode_key(p256dh).ok_or_else(|| bad("p256dh is not base64url"))?;
                if key.len() != 65 || key[0] != 0x04 {
                    return Err(bad("p256dh is an uncompressed P-256 point (65 bytes)"));
                }
                let secret = decode_key(auth).ok_or_else(|| bad("auth is not base64url"))?;
                if secret.len() != 16 {
                    return Err(bad("auth is 16 bytes"));
                }
            }
        }
        Ok(())
    }
}

/// Base64url as browsers hand keys out: with or without padding, whatever the unused bits of
/// the last character.
const KEYS: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// A key of a Web Push subscription (base64url).
pub fn decode_key(text: &str) -> Option<Vec<u8>> {
    if text.len() > 200 {
        return None;
    }
    KEYS.decode(text).ok()
}

/// The host (and port, if given) of a Web Push endpoint: `https://host[:port]/…`, no user
/// info, no fragment; the host in lower case.
pub fn web_push_host(endpoint: &str) -> Result<String, BadTarget> {
    if endpoint.len() > MAX_ENDPOINT {
        return Err(bad("a Web Push endpoint has at most 2048 bytes"));
    }
    if !endpoint.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("a Web Push endpoint is printable ASCII"));
    }
    let rest = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"))
        .ok_or_else(|| bad("a Web Push endpoint is an https:// URL"))?;
    // URL parsers read a backslash as `/` in http(s) URLs: it ends the host as surely.
    let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || endpoint.contains('#') {
        return Err(bad(
            "a Web Push endpoint names a host, without user or fragment",
        ));
    }
    // A host name and an optional port: nothing a URL parser could read differently.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !host_ok || !port_ok {
        return Err(bad(
            "a Web Push endpoint names a host (letters, digits, dots, dashes) and a port",
        ));
    }
    Ok(authority.to_ascii_lowercase())
}

/// Whether a Web Push endpoint may be called: `https://` on a host of `allowed` (each entry a
/// host, or `.suffix` for its subdomains; `host:port` names a port) — or plain `http://` on one
/// of `allowed_http` (a local push service, tests). A user registers the endpoint, so the
/// server never posts to a host an operator did not name.
pub fn web_push_allowed(endpoint: &str, allowed: &[String], allowed_http: &[String]) -> bool {
    let Ok(authority) = web_push_host(endpoint) else {
        return false;
    };
    let matches = |list: &[String]| {
        list.iter().any(|a| {
            let a = a.to_ascii_lowercase();
            match a.strip_prefix('.') {
                Some(suffix) => {
                    let host = authority.split(':').next().unwrap_or_default();
                    host.ends_with(&format!(".{suffix}")) && !authority.contains(':')
                }
                None => authority == a,
            }
        })
    };
    if endpoint.starts_with("https://") {
        matches(allowed)
    } else {
        matches(allowed_http)
    }
}

/// The push services of the browsers, as `push.web_push.allowed_hosts` defaults to.
pub const BROWSER_PUSH_SERVICES: &[&str] = &[
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    ".notify.windows.com",
    "web.push.apple.com",
];

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn web(endpoint: &str) -> PushTarget {
        PushTarget::WebPush {
            endpoint: endpoint.into(),
            p256dh: URL_SAFE_NO_PAD.encode([4u8; 65]),
            auth: URL_SAFE_NO_PAD.encode([1u8; 16]),
        }
    }

    #[test]
    fn shapes_are_checked() {
        assert!(
            PushTarget::Fcm {
                token: "abc:DEF-1".into()
            }
            .check()
            .is_ok()
        );
        assert!(
            PushTarget::Fcm {
                token: "a b".into()
            }
            .check()
            .is_err()
        );
        assert!(
            PushTarget::Fcm {
                token: String::new()
            }
            .check()
            .is_err()
        );
        let hex = "ab".repeat(32);
        assert!(
            PushTarget::Apns {
                token: hex.clone(),
                sandbox: false
            }
            .check()
            .is_ok()
        );
        assert!(
            PushTarget::Apns {
                token: "zz".repeat(32),
                sandbox: false
            }
            .check()
            .is_err()
        );
        assert!(
            PushTarget::Apns {
                token: "ab".into(),
                sandbox: false
            }
            .check()
            .is_err()
        );
        assert!(web("https://fcm.googleapis.com/fcm/send/x").check().is_ok());
        assert!(web("ftp://x/y").check().is_err());
        assert!(web("https://user@evil/x").check().is_err());
        assert!(web("https:///x").check().is_err());
        let mut short = web("https://a/b");
        if let PushTarget::WebPush { p256dh, .. } = &mut short {
            *p256dh = URL_SAFE_NO_PAD.encode([4u8; 33]);
        }
        assert!(short.check().is_err());
    }

    #[test]
    fn only_named_hosts_are_called() {
        let allowed: Vec<String> = BROWSER_PUSH_SERVICES
            .iter()
            .map(|s| s.to_string())
            .collect();
        let http = vec!["127.0.0.1:9000".to_string()];
        assert!(web_push_allowed(
            "https://fcm.googleapis.com/fcm/send/x",
            &allowed,
            &http
        ));
        assert!(web_push_allowed(
            "https://DB5P.notify.windows.com/w/?token=1",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "https://notify.windows.com.evil.com/x",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "https://evilnotify.windows.com/x",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "https://x.notify.windows.com:8443/x",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "https://169.254.169.254/latest",
            &allowed,
            &http
        ));
        // A backslash ends the host for URL parsers: the host here is 127.0.0.2.
        let backslash = "https://127.0.0.2\\.notify.windows.com/latest";
        assert!(!web_push_allowed(backslash, &allowed, &http));
        assert!(!web_push_allowed("https://[::1]/x", &allowed, &http));
        assert!(!web_push_allowed(
            "https://fcm.googleapis.com%2f@x/y",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "https://fcm.googleapis.com:/x",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "http://fcm.googleapis.com/x",
            &allowed,
            &http
        ));
        assert!(web_push_allowed(
            "http://127.0.0.1:9000/push/1",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "http://127.0.0.1:9001/push/1",
            &allowed,
            &http
        ));
        assert!(!web_push_allowed(
            "https://127.0.0.1:9000/push/1",
            &allowed,
            &http
        ));
    }

    #[test]
    fn wire_form() {
        let t: PushTarget =
            serde_json::from_str(r#"{"provider":"apns","token":"00ff","sandbox":true}"#).unwrap();
        assert_eq!(
            t,
            PushTarget::Apns {
                token: "00ff".into(),
                sandbox: true
            }
        );
        assert!(
            serde_json::from_str::<PushTarget>(r#"{"provider":"fcm","token":"a","x":1}"#).is_err()
        );
        assert_eq!(
            serde_json::to_string(&PushTarget::Fcm { token: "t".into() }).unwrap(),
            r#"{"provider":"fcm","token":"t"}"#
        );
    }
}
