//! Attachments: files a message carries, stored in object storage beside the streams.
//!
//! A message names its files by [`Attachment`]: the object's id with its name, media type and
//! size. The bytes never travel through NATS; a client uploads them to a URL the server
//! issues for one conversation, one uploader, one media type and one size, and sends the
//! message once the upload is done. An [`AttachmentId`] is `<object>.<seal>`: the object's
//! random name (128 bits) and a MAC over what the upload was issued for, so an id cannot be
//! guessed, forged, or carried into another conversation or another sender's message.
//! [`Attachment::check`] is the validation every writer runs.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most attachments one message carries.
pub const MAX_PER_MESSAGE: usize = 10;
/// Longest file name, in characters.
pub const MAX_NAME: usize = 255;
/// Longest media type, in bytes.
pub const MAX_CONTENT_TYPE: usize = 127;
/// Characters of an object name: 16 random bytes in unpadded base64url.
pub const OBJECT_LEN: usize = 22;
/// Characters of a seal: 16 bytes of MAC in unpadded base64url.
pub const SEAL_LEN: usize = 22;

/// Why an attachment is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadAttachment(pub String);

fn bad(why: impl Into<String>) -> BadAttachment {
    BadAttachment(why.into())
}

/// An attachment's id: `<object>.<seal>`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct AttachmentId(String);

impl AttachmentId {
    /// Parses an id: 22 base64url characters, a dot, 22 more.
    pub fn parse(s: impl Into<String>) -> Result<Self, BadAttachment> {
        let s = s.into();
        let ok = s.len() == OBJECT_LEN + 1 + SEAL_LEN
            && s.as_bytes()[OBJECT_LEN] == b'.'
            && s.bytes()
                .enumerate()
                .all(|(i, b)| i == OBJECT_LEN || is_base64url(b));
        if !ok {
            return Err(bad(format!(
                "an attachment id is {OBJECT_LEN} base64url characters, a dot and {SEAL_LEN} more"
            )));
        }
        Ok(Self(s))
    }

    /// An id from an object name and its seal (both base64url, of their lengths).
    pub fn from_parts(object: &str, seal: &str) -> Result<Self, BadAttachment> {
        Self::parse(format!("{object}.{seal}"))
    }

    /// The object's name in storage.
    pub fn object(&self) -> &str {
        &self.0[..OBJECT_LEN]
    }

    /// The MAC over what the upload was issued for.
    pub fn seal(&self) -> &str {
        &self.0[OBJECT_LEN + 1..]
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` is an object name: [`OBJECT_LEN`] base64url characters.
pub fn is_object_name(s: &str) -> bool {
    s.len() == OBJECT_LEN && s.bytes().all(is_base64url)
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl TryFrom<String> for AttachmentId {
    type Error = BadAttachment;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(s)
    }
}

impl From<AttachmentId> for String {
    fn from(id: AttachmentId) -> String {
        id.0
    }
}

impl fmt::Display for AttachmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file a message carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// The uploaded object, as issued by `upload`.
    pub id: AttachmentId,
    /// The file's name as shown (and offered when saving it).
    pub name: String,
    /// Its media type, as issued by `upload` (e.g. `image/png`).
    pub content_type: String,
    /// Its size in bytes, as issued by `upload`.
    pub size: u64,
}

impl Attachment {
    /// Checks what a reader relies on: a file name that shows as one, a media type.
    pub fn check(&self) -> Result<(), BadAttachment> {
        check_name(&self.name)?;
        check_content_type(&self.content_type)
    }
}

/// Checks a file name: 1 to [`MAX_NAME`] characters, no control characters, no path
/// separators, not only dots and spaces (so never `.` or `..`).
pub fn check_name(name: &str) -> Result<(), BadAttachment> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(bad(format!("a file name has 1 to {MAX_NAME} characters")));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '/' || c == '\\' || bidi(c))
    {
        return Err(bad(
            "a file name holds no control or direction characters and no / or \\",
        ));
    }
    if name.chars().all(|c| c == '.' || c.is_whitespace()) {
        return Err(bad("a file name is not only dots and spaces"));
    }
    Ok(())
}

/// Direction marks, embeddings, overrides and isolates: they make a name show as another
/// (`photo\u{202e}gnp.exe` shows as `photoexe.png`).
fn bidi(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Checks a media type: `type/subtype` in lower case, of RFC 6838's restricted name
/// characters, without parameters.
pub fn check_content_type(t: &str) -> Result<(), BadAttachment> {
    let name = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((ty, sub)) if t.len() <= MAX_CONTENT_TYPE && name(ty) && name(sub) => Ok(()),
        _ => Err(bad(format!(
            "{t:?} is not a media type: type/subtype in lower case, without parameters"
        ))),
    }
}

/// Whether media type `t` is among `allowed`: exact types (`application/pdf`), families
/// (`image/*`), or `*/*` for any.
pub fn type_allowed(t: &str, allowed: &[String]) -> bool {
    let family = t.split_once('/').map_or("", |(ty, _)| ty);
    allowed.iter().any(|a| match a.strip_suffix("/*") {
        Some("*") => true,
        Some(f) => f == family,
        None => a == t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB";

    #[test]
    fn ids_are_an_object_and_a_seal() {
        let id = AttachmentId::parse(ID).expect("an id");
        assert_eq!(id.object(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(id.seal(), "BBBBBBBBBBBBBBBBBBBBBB");
        assert_eq!(
            AttachmentId::from_parts(id.object(), id.seal()).expect("parts"),
            id
        );
        for bad in [
            "",
            "AAAAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBB",
            "AAAAAAAAAAAAAAAAAAAAAA/BBBBBBBBBBBBBBBBBBBBBB",
            "../AAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB",
            "AAAAAAAAAAAAAAAAAAAA=A.BBBBBBBBBBBBBBBBBBBBBB",
            "AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBB.",
        ] {
            assert!(AttachmentId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<AttachmentId>("\"x.y\"").is_err());
        assert!(is_object_name("AAAAAAAAAAAAAAAAAAAA-_"));
        assert!(!is_object_name("AAAAAAAAAAAAAAAAAAAA.."));
    }

    #[test]
    fn names_show_as_file_names() {
        for ok in ["report.pdf", "Ünïcødé 名前.png", "a", ".hidden"] {
            check_name(ok).expect(ok);
        }
        let long = "x".repeat(MAX_NAME + 1);
        check_name(&"é".repeat(MAX_NAME)).expect("255 characters");
        for bad in [
            "",
            " ",
            ".",
            "..",
            ". . .",
            "../etc/passwd",
            "a\\b",
            "a\nb",
            "a\u{0}b",
            "a\u{7f}",
            "photo\u{202e}gnp.exe",
            "a\u{2066}b",
            long.as_str(),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_types_are_plain_and_lower_case() {
        for ok in [
            "image/png",
            "application/vnd.ms-excel",
            "text/plain",
            "image/svg+xml",
        ] {
            check_content_type(ok).expect(ok);
        }
        for bad in [
            "",
            "image",
            "image/",
            "/png",
            "Image/PNG",
            "text/html; charset=utf-8",
            "text/html\r\nx-evil: 1",
            "a/b/c",
            "*/*",
        ] {
            assert!(check_content_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn allowed_types_match_exactly_or_by_family() {
        let allowed = vec!["image/*".to_owned(), "application/pdf".to_owned()];
        assert!(type_allowed("image/png", &allowed));
        assert!(type_allowed("application/pdf", &allowed));
        assert!(!type_allowed("application/pdfx", &allowed));
        assert!(!type_allowed("text/html", &allowed));
        assert!(!type_allowed("imagex/png", &allowed));
        assert!(type_allowed("text/html", &["*/*".to_owned()]));
        assert!(!type_allowed("text/html", &[]));
    }

    #[test]
    fn attachments_are_checked_whole() {
        let a: Attachment = serde_json::from_value(serde_json::json!({
            "id": ID, "name": "cat.png", "content_type": "image/png", "size": 12
        }))
        .expect("an attachment");
        a.check().expect("valid");
        let bad = Attachment {
            name: "a/b".into(),
            ..a.clone()
        };
        assert!(bad.check().is_err());
        assert!(
            serde_json::from_value::<Attachment>(serde_json::json!({
                "id": ID, "name": "cat.png", "content_type": "image/png", "size": 12, "url": "x"
            }))
            .is_err()
        );
    }
}
