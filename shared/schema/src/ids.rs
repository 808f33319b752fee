//! Identifier newtypes.
//!
//! Ids are parsed once at the boundary (a frame, an external event, a token) and are valid
//! everywhere inside. Most ids become NATS subject tokens (`msg.<conv>`, `read.<user>.<conv>`),
//! so their grammar is the subject-safe one: 1 to 64 bytes of `A-Z a-z 0-9 _ -`. Event ids and
//! client message ids never appear in subjects and may also contain `.` and `:`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it is
pub enum IdError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; the limit is {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} contains {found:?}; allowed are letters, digits{extra}")]
    BadChar {
        kind: &'static str,
        found: char,
        extra: &'static str,
    },
}

/// Grammar shared by the subject-safe ids.
const TOKEN_EXTRA: &str = ", '_' and '-'";
/// Grammar of ids that never appear in subjects.
const KEY_EXTRA: &str = ", '_', '-', '.' and ':'";

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    allowed: fn(char) -> bool,
    extra: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    if let Some(found) = s.chars().find(|c| !allowed(*c)) {
        return Err(IdError::BadChar { kind, found, extra });
    }
    Ok(())
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn key_char(c: char) -> bool {
    token_char(c) || c == '.' || c == ':'
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:ident, $extra:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
        )]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Largest accepted length in bytes.
            pub const MAX_LEN: usize = $max;

            /// Parses `s`, naming the rule it breaks if it is not valid.
            pub fn parse(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check($kind, &s, $max, $allowed, $extra)?;
                Ok(Self(s))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A user account. One user has many devices.
    UserId, "user id", 64, token_char, TOKEN_EXTRA
);
id_type!(
    /// One device (session) of a user; every device has its own token and delivery state.
    DeviceId, "device id", 64, token_char, TOKEN_EXTRA
);
id_type!(
    /// A conversation: a 1:1 chat or a group's chat. Messages are ordered within it.
    ConversationId, "conversation id", 64, token_char, TOKEN_EXTRA
);
id_type!(
    /// A group: its membership version chain lives on `grp.<group>`.
    GroupId, "group id", 64, token_char, TOKEN_EXTRA
);
id_type!(
    /// A system that publishes events into Anchorage (`ext.<source>.…`).
    SourceId, "source id", 64, token_char, TOKEN_EXTRA
);
id_type!(
    /// The id a client gives a message before sending it; retries reuse it.
    ClientMsgId, "client message id", 128, key_char, KEY_EXTRA
);
id_type!(
    /// The unique id of an event; it is the JetStream `Nats-Msg-Id`, so a re-publish of the
    /// same event inside the duplicate window is stored once. Long enough for
    /// `<user>:<device>:<conv>:<client_msg_id>`.
    EventId, "event id", 400, key_char, KEY_EXTRA
);

impl ConversationId {
    /// The 1:1 conversation between two users: the same id from either side, `dm-` and 40 hex
    /// digits (160 bits) of SHA-256 over a domain tag and the two ids in order, each
    /// length-prefixed — nobody can compute a pair of users whose id collides with another
    /// pair's. Ids starting with `dm-` are reserved for these: no group is created under one.
    pub fn direct(a: &UserId, b: &UserId) -> ConversationId {
        use sha2::Digest;
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        let mut h = sha2::Sha256::new();
        h.update(b"anchorage/direct-conversation/v1");
        for id in [x, y] {
            h.update((id.0.len() as u64).to_be_bytes());
            h.update(id.0.as_bytes());
        }
        let digest = h.finalize();
        let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
        ConversationId(format!("{DIRECT_PREFIX}{hex}"))
    }

    /// The id 1:1 conversations had before [`ConversationId::direct`] (`dm-` and 16 hex digits
    /// of xxh3-64). Those conversations keep their ids; a new id of this form is never made.
    pub fn legacy_direct(a: &UserId, b: &UserId) -> ConversationId {
        let (x, y) = if a < b { (a, b) } else { (b, a) };
        let h = xxhash_rust::xxh3::xxh3_64(format!("{x}\u{0}{y}").as_bytes());
        ConversationId(format!("{DIRECT_PREFIX}{h:016x}"))
    }

    /// Whether the id is in the namespace of 1:1 conversations.
    pub fn is_direct(&self) -> bool {
        self.0.starts_with(DIRECT_PREFIX)
    }
}

impl GroupId {
    /// Whether the id is in the namespace of 1:1 conversations (no group may take it).
    pub fn is_direct(&self) -> bool {
        self.0.starts_with(DIRECT_PREFIX)
    }

    /// The group's conversation (same id, same grammar).
    pub fn conversation(&self) -> ConversationId {
        ConversationId(self.0.clone())
    }
}

impl ConversationId {
    /// The group a conversation belongs to (same id, same grammar; a 1:1 conversation is a
    /// group of two with fixed members).
    pub fn group(&self) -> GroupId {
        GroupId(self.0.clone())
    }
}

/// The prefix of every 1:1 conversation id.
pub const DIRECT_PREFIX: &str = "dm-";

/// Sources that are Anchorage's own (`api`: the server API's system posts, `anchorage`: the
/// operator's commands): no integration is named so, so none speaks as them.
pub const RESERVED_SOURCES: &[&str] = &["api", "anchorage"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_tokens() {
        assert_eq!(UserId::parse("alice_01-x").unwrap().as_str(), "alice_01-x");
        assert!(ConversationId::parse("a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_what_would_break_a_subject() {
        for bad in ["a.b", "a b", "a*", "a>", "ü", ""] {
            assert!(UserId::parse(bad).is_err(), "{bad:?} accepted");
        }
        let err = UserId::parse("a.b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "user id contains '.'; allowed are letters, digits, '_' and '-'"
        );
        assert!(matches!(
            GroupId::parse("g".repeat(65)),
            Err(IdError::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
    }

    #[test]
    fn keys_allow_dots_and_colons() {
        assert!(EventId::parse("dev-1:0192.33").is_ok());
        assert!(ClientMsgId::parse("a b").is_err());
    }

    #[test]
    fn direct_conversations_are_symmetric_and_valid() {
        let (a, b) = (
            UserId::parse("alice").unwrap(),
            UserId::parse("bob").unwrap(),
        );
        let id = ConversationId::direct(&a, &b);
        assert_eq!(id, ConversationId::direct(&b, &a));
        assert!(ConversationId::parse(id.as_str()).is_ok());
        assert_ne!(
            id,
            ConversationId::direct(&a, &UserId::parse("carol").unwrap())
        );
        assert!(id.is_direct());
        assert_eq!(id.as_str().len(), 43);
    }

    const KNOWN_ALICE_BOB: &str = "dm-196207ae46105cadbfe115201cc927315fdd2f17";

    #[test]
    fn direct_ids_separate_their_inputs() {
        // Without length prefixes ("ab", "c") and ("a", "bc") could hash the same input.
        let u = |s: &str| UserId::parse(s).unwrap();
        assert_ne!(
            ConversationId::direct(&u("ab"), &u("c")),
            ConversationId::direct(&u("a"), &u("bc"))
        );
        // A known value, so the id of a pair never changes by accident.
        assert_eq!(
            ConversationId::direct(&u("alice"), &u("bob")).as_str(),
            KNOWN_ALICE_BOB
        );
        assert_ne!(
            ConversationId::direct(&u("alice"), &u("bob")),
            ConversationId::legacy_direct(&u("alice"), &u("bob"))
        );
    }

    #[test]
    fn serde_validates() {
        let ok: UserId = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(ok.as_str(), "bob");
        let bad = serde_json::from_str::<UserId>("\"b.o.b\"").unwrap_err();
        assert!(bad.to_string().contains("user id contains '.'"), "{bad}");
    }
}
