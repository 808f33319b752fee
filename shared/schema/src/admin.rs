//! Server API keys and webhook endpoints: the records kept on the `ADMIN` stream.
//!
//! An API key reads `ak_<id>_<secret>`: `id` (16 hex digits) names the record on
//! `admin.apikey.<id>`, `secret` (64 hex digits, 256 random bits) is stored only as its SHA-256.
//! The last record on a subject is the current one, so revoking a key is publishing its record
//! again with `revoked_at` set.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What an API key may do; each scope includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read users, groups, members, messages and conversations.
    Read,
    /// Also create and change users, groups and members, post messages, mint device tokens.
    Write,
    /// Also revoke sessions, delete users and manage webhooks.
    Admin,
}

impl Scope {
    /// Parses `read`, `write` or `admin`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// A server API key as stored: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApiKeyRecord {
    /// 16 hex digits; the subject token.
    pub id: String,
    /// What the key is for (shown in listings and logs).
    pub name: String,
    /// The highest scope the key holds.
    pub scope: Scope,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// Requests per second the key may make (a burst of as many).
    pub rate_per_sec: u32,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; a revoked key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// Why an API key string is refused before any record is read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an API key reads ak_<16 hex digits>_<64 hex digits>")]
pub struct MalformedKey;

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits `ak_<id>_<secret>` into its id and secret.
pub fn split_key(key: &str) -> Result<(&str, &str), MalformedKey> {
    let rest = key.strip_prefix("ak_").ok_or(MalformedKey)?;
    let (id, secret) = rest.split_once('_').ok_or(MalformedKey)?;
    if is_lower_hex(id, 16) && is_lower_hex(secret, 64) {
        Ok((id, secret))
    } else {
        Err(MalformedKey)
    }
}

impl ApiKeyRecord {
    /// A new key from 320 random bits: the record to store and the key to hand out once.
    pub fn generate(
        name: &str,
        scope: Scope,
        rate_per_sec: u32,
        now_ms: i64,
    ) -> Result<(ApiKeyRecord, String), getrandom::Error> {
        let mut random = [0u8; 40];
        getrandom::fill(&mut random)?;
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let (id, secret) = (hex(&random[..8]), hex(&random[8..]));
        let record = ApiKeyRecord {
            secret_sha256: sha256_hex(secret.as_bytes()),
            id: id.clone(),
            name: name.to_owned(),
            scope,
            rate_per_sec,
            created_at: now_ms,
            revoked_at: None,
        };
        Ok((record, format!("ak_{id}_{secret}")))
    }

    /// Whether `secret` is this key's (compared in constant time).
    pub fn matches(&self, secret: &str) -> bool {
        let given = sha256_hex(secret.as_bytes());
        let (a, b) = (given.as_bytes(), self.secret_sha256.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Whether the key holds `needed`.
    pub fn allows(&self, needed: Scope) -> bool {
        self.revoked_at.is_none() && self.scope >= needed
    }
}

/// A webhook endpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WebhookRecord {
    /// A subject token: letters, digits, `-` and `_`.
    pub name: String,
    /// Where deliveries are posted.
    pub url: String,
    /// The Standard Webhooks signing secret, `whsec_<base64>`.
    pub secret: String,
    /// Event types delivered (`message.sent`, `group.*`, `*`); empty: every type.
    #[serde(default)]
    pub events: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Where deliveries started again when last asked (otherwise: from `created_at`).
    #[serde(default)]
    pub redeliver: Option<Redeliver>,
    /// When that was asked (Unix milliseconds): each ask starts over, also the same one again.
    #[serde(default)]
    pub redeliver_at: Option<i64>,
    /// A deleted endpoint gets nothing more.
    #[serde(default)]
    pub deleted: bool,
    /// The `Idempotency-Key` of the request that made this record (the creation, or the last
    /// redelivery asked): the same request again is answered alike, not applied twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Where an endpoint's deliveries start again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Redeliver {
    /// From this sequence of each stream.
    FromSeq(u64),
    /// From events stored at or after this time (Unix milliseconds).
    FromTime(i64),
}

/// Whether an event type matches a webhook filter: empty matches all; `group.*` matches a
/// prefix; anything else is compared whole.
pub fn type_matches(filter: &[String], type_name: &str) -> bool {
    filter.is_empty()
        || filter.iter().any(|f| {
            f == "*"
                || f == type_name
                || f.strip_suffix('*')
                    .is_some_and(|prefix| type_name.starts_with(prefix))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_matches_only_its_secret_and_parses() {
        let (rec, key) = ApiKeyRecord::generate("crm", Scope::Write, 100, 1).unwrap();
        let (id, secret) = split_key(&key).unwrap();
        assert_eq!(id, rec.id);
        assert!(rec.matches(secret));
        let mut other = secret.to_owned();
        other.replace_range(0..1, if &secret[..1] == "0" { "1" } else { "0" });
        assert!(!rec.matches(&other));
        assert!(!key.contains(&rec.secret_sha256));
        assert!(rec.allows(Scope::Read) && rec.allows(Scope::Write) && !rec.allows(Scope::Admin));
        let revoked = ApiKeyRecord {
            revoked_at: Some(2),
            ..rec
        };
        assert!(!revoked.allows(Scope::Read));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "ak_",
            "ak_0123456789abcdef",
            "ak_0123456789ABCDEF_0000000000000000000000000000000000000000000000000000000000000000",
            "ak_0123456789abcdef_000",
            "ak_0123456789abcde_00000000000000000000000000000000000000000000000000000000000000000",
            "bk_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000",
            "ak_0123456789abcdef_0000000000000000000000000000000000000000000000000000000000000000_",
        ] {
            assert_eq!(split_key(bad), Err(MalformedKey), "{bad}");
        }
    }

    #[test]
    fn webhook_filters() {
        let f = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(type_matches(&[], "message.sent"));
        assert!(type_matches(&f(&["group.*"]), "group.created"));
        assert!(!type_matches(&f(&["group.*"]), "message.sent"));
        assert!(type_matches(&f(&["message.sent"]), "message.sent"));
        assert!(!type_matches(
            &f(&["message.sent"]),
            "message.system_posted"
        ));
        assert!(type_matches(&f(&["*"]), "user.deleted"));
    }
}
