//! Decoding client frames strictly and precisely: [`decode_request`] says whether a frame was
//! too large, not JSON, nested too deeply, of an unknown type or missing a field, so the edge
//! can answer with an [`ErrorCode`] and keep the connection.

use serde::Deserialize;

use anchorage_schema::limits::{MAX_JSON_DEPTH, json_depth};

use crate::RequestId;
use crate::error::ErrorCode;
use crate::request::{REQUEST_TYPES, Request};

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // the variants' fields are named by their error messages
pub enum FrameError {
    /// Over the size limit (refused before parsing).
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Not JSON (with the parser's reason).
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    /// JSON without a `type`.
    #[error("frame has no \"type\" field")]
    MissingType,
    /// A `type` this version does not know.
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// A known type with a missing, unknown or invalid field.
    #[error("invalid {type_name:?} frame: {reason}")]
    Invalid { type_name: String, reason: String },
    /// Nested deeper than [`MAX_JSON_DEPTH`].
    #[error("frame nests {depth} levels of arrays and objects; the limit is {max}")]
    TooDeep { depth: usize, max: usize },
}

impl FrameError {
    /// The error code the answer carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::TooLarge,
            FrameError::NotJson(_) | FrameError::MissingType => ErrorCode::BadFrame,
            FrameError::UnknownType(_) => ErrorCode::UnknownType,
            FrameError::Invalid { .. } | FrameError::TooDeep { .. } => ErrorCode::InvalidRequest,
        }
    }
}

/// Decodes one client request, refusing anything larger than `max_len` bytes before parsing.
///
/// Returns the request id alongside the error when the frame was readable enough to have one,
/// so the error frame can reference it.
pub fn decode_request(
    text: &str,
    max_len: usize,
) -> Result<Request, (Option<RequestId>, FrameError)> {
    if text.len() > max_len {
        return Err((
            None,
            FrameError::TooLarge {
                len: text.len(),
                max: max_len,
            },
        ));
    }
    // Whatever is accepted here is stored inside an envelope a few levels deeper: bound the
    // nesting so every reader of the stream can decode it (see `limits::MAX_JSON_DEPTH`).
    let depth = json_depth(text.as_bytes());
    if depth > MAX_JSON_DEPTH {
        // The id, if the parser can still reach it, so a pipelining client knows which
        // request this was.
        #[derive(Deserialize)]
        struct Id {
            id: Option<RequestId>,
        }
        let id = serde_json::from_str::<Id>(text).ok().and_then(|f| f.id);
        return Err((
            id,
            FrameError::TooDeep {
                depth,
                max: MAX_JSON_DEPTH,
            },
        ));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| (top_level_id(text), FrameError::NotJson(e.to_string())))?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    let type_name = match value.get("type").and_then(serde_json::Value::as_str) {
        Some(t) => t.to_owned(),
        None => return Err((id, FrameError::MissingType)),
    };
    if !REQUEST_TYPES.contains(&type_name.as_str()) {
        return Err((id, FrameError::UnknownType(type_name)));
    }
    if let Some(field) = out_of_range_number(&value) {
        return Err((
            id,
            FrameError::Invalid {
                type_name,
                reason: format!("{field} must be below 2^63"),
            },
        ));
    }
    let Some(id) = id else {
        return Err((
            None,
            FrameError::Invalid {
                type_name,
                reason: "`id` must be a whole number below 2^63".into(),
            },
        ));
    };
    let mut value = value;
    if let Some(fields) = value.as_object_mut() {
        fields.remove("id");
    }
    let body = serde_json::from_value(value).map_err(|e| {
        (
            Some(id),
            FrameError::Invalid {
                type_name,
                reason: e.to_string(),
            },
        )
    })?;
    Ok(Request { id, body })
}

/// The `id` of a frame the parser refused (a number beyond a double, a lone surrogate, a cut
/// frame): a lenient scan for a top-level `"id"` key with a whole-number value, so a client
/// with many requests in flight learns which one was refused. The last such key wins, as in
/// a frame that parses.
fn top_level_id(text: &str) -> Option<RequestId> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut expecting_key = false;
    let mut key_is_id = false;
    let mut found = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // A string: find its end, honouring escapes.
                let start = i + 1;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && expecting_key {
                    key_is_id = bytes.get(start..i) == Some(b"id".as_slice());
                    expecting_key = false;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                expecting_key = depth == 1 && bytes[i] == b'{';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting_key = true,
            b':' if depth == 1 && key_is_id => {
                key_is_id = false;
                let rest = text.get(i + 1..)?.trim_start();
                let digits =
                    rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
                let after = rest[digits..].trim_start();
                if digits > 0 && (after.starts_with(',') || after.starts_with('}')) {
                    found = rest[..digits]
                        .parse::<RequestId>()
                        .ok()
                        .filter(|id| *id <= MAX_NUMBER);
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Largest value of any sequence, version or id number in a frame: sequences are stored as
/// signed 64-bit integers.
pub const MAX_NUMBER: u64 = i64::MAX as u64;

/// The name of the first field outside a message body whose number is over [`MAX_NUMBER`].
fn out_of_range_number(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn walk(v: &Value, name: &str) -> Option<String> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .is_some_and(|n| n > MAX_NUMBER)
                .then(|| name.to_owned()),
            Value::Array(items) => items.iter().find_map(|i| walk(i, name)),
            Value::Object(fields) => fields
                .iter()
                // A message body is the client's own JSON, stored as it is.
                .filter(|(k, _)| k.as_str() != "body")
                .find_map(|(k, v)| walk(v, k)),
            _ => None,
        }
    }
    walk(value, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::members::MemberInfo;
    use crate::reply::ServerFrame;
    use crate::request::RequestBody;
    use anchorage_schema::UserId;
    use anchorage_schema::event::Role;

    #[test]
    fn decodes_hello() {
        let f = decode_request(
            r#"{"type":"hello","id":1,"protocol":1,"token":"t","anchors":[{"conv":"c1","seq":9}]}"#,
            1024,
        )
        .unwrap();
        assert_eq!(f.id, 1);
        match f.body {
            RequestBody::Hello(hello) => {
                assert_eq!(hello.protocol, 1);
                assert_eq!(hello.anchors[0].seq, 9);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_in_frames_are_validated() {
        let (id, err) = decode_request(
            r#"{"type":"send","id":3,"conv":"a.b","client_msg_id":"m","body":"x","client_ts":1}"#,
            1024,
        )
        .unwrap_err();
        assert_eq!((id, err.code()), (Some(3), ErrorCode::InvalidRequest));
        assert!(
            err.to_string().contains("conversation id contains '.'"),
            "{err}"
        );
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = [
            r#"{"type":"ping","id":1}"#,
            r#"{"type":"send","id":2,"conv":"c","client_msg_id":"m1","body":{"t":"hi"},"client_ts":5,"reply_to":3,"mentions":["bob"],"mention_all":true}"#,
            r#"{"type":"sync","id":3,"conv":"c","after":4,"limit":10}"#,
            r#"{"type":"history","id":4,"conv":"c","before":9}"#,
            r#"{"type":"read","id":5,"conv":"c","seq":7}"#,
            r#"{"type":"received","id":6,"conv":"c","seq":7}"#,
            r#"{"type":"open_direct","id":7,"peer":"bob"}"#,
            r#"{"type":"create_group","id":8,"group":"g","title":"G","members":["bob"]}"#,
            r#"{"type":"add_members","id":9,"group":"g","members":["carol"]}"#,
            r#"{"type":"remove_members","id":10,"group":"g","members":["carol"]}"#,
            r#"{"type":"leave","id":11,"group":"g"}"#,
            r#"{"type":"set_role","id":12,"group":"g","member":"bob","role":"admin"}"#,
            r#"{"type":"mute_member","id":13,"group":"g","member":"bob","until":99}"#,
            r#"{"type":"set_nickname","id":14,"group":"g","member":"bob","nickname":"B"}"#,
            r#"{"type":"update_group","id":15,"group":"g","title":"T"}"#,
            r#"{"type":"dismiss_group","id":16,"group":"g"}"#,
            r#"{"type":"group_versions","id":17}"#,
            r#"{"type":"members_sync","id":18,"group":"g","epoch":"5","version":9,"digest":"0000000000000001:1"}"#,
            r#"{"type":"members_fetch","id":19,"group":"g","epoch":"5","anchor":9,"cursor":"u1","buckets":[3]}"#,
            r#"{"type":"members_fetch","id":191,"group":"g","epoch":"5","anchor":9,"hashes":["00000000000000ff"]}"#,
            r#"{"type":"members_sketch","id":192,"group":"g","epoch":"5","anchor":9,"buckets":[3,7],"cells":124}"#,
            r#"{"type":"members_sync_batch","id":20,"groups":[{"group":"g","version":3}],"budget_bytes":4096}"#,
            r#"{"type":"members_search","id":21,"group":"g","query":"al"}"#,
            r#"{"type":"members_unsubscribe","id":22,"group":"g"}"#,
            r#"{"type":"edit","id":23,"conv":"c","seq":7,"body":{"t":"hi!"}}"#,
            r#"{"type":"revoke","id":24,"conv":"c","seq":7}"#,
            r#"{"type":"react","id":25,"conv":"c","seq":7,"emoji":"👍","remove":true}"#,
            r#"{"type":"pin","id":26,"conv":"c","seq":7}"#,
            r#"{"type":"reactors","id":27,"conv":"c","seq":7,"emoji":"👍","after":3,"limit":5}"#,
            r#"{"type":"edits","id":28,"conv":"c","seq":7}"#,
            r#"{"type":"view","id":29,"conv":"c"}"#,
            r#"{"type":"unview","id":30,"conv":"c"}"#,
            r#"{"type":"typing","id":31,"conv":"c","stop":true}"#,
            r#"{"type":"set_prefs","id":32,"conv":"c","pinned":true,"muted_until":0,"draft":"hi"}"#,
            r#"{"type":"hide","id":33,"conv":"c","seqs":[4,5]}"#,
            r#"{"type":"set_privacy","id":34,"receipts":false}"#,
            r#"{"type":"user_state","id":35,"after":9}"#,
            r#"{"type":"receipts","id":36,"conv":"c","seq":7}"#,
            r#"{"type":"presence","id":37,"users":["bob"],"conv":"c"}"#,
            r#"{"type":"search","id":38,"query":"deploy 東京","conv":"c","before":90,"limit":5}"#,
            r#"{"type":"set_push","id":39,"target":{"provider":"fcm","token":"t"},"preview":false}"#,
            r#"{"type":"remove_push","id":40}"#,
            r#"{"type":"upload","id":41,"conv":"c","name":"cat.png","content_type":"image/png","size":12}"#,
            r#"{"type":"download","id":42,"conv":"c","seq":7,"attachment":"AAAAAAAAAAAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBB"}"#,
        ];
        assert_eq!(frames.len(), REQUEST_TYPES.len());
        let mut names = std::collections::BTreeSet::from(["hello"]);
        for text in frames {
            let frame = decode_request(text, 1024).unwrap();
            let again = serde_json::to_string(&frame).unwrap();
            assert_eq!(decode_request(&again, 1024).unwrap(), frame, "{text}");
            // The wire names the decoder accepts are the ones the types give.
            assert!(text.contains(&format!("\"{}\"", frame.body.type_name())));
            names.insert(frame.body.type_name());
        }
        assert_eq!(names, REQUEST_TYPES.iter().copied().collect());
    }

    #[test]
    fn member_lists_are_compact() {
        let plain = MemberInfo::plain(UserId::parse("u0012345").unwrap());
        assert!(plain.is_plain());
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"user":"u0012345"}"#
        );
        let admin: MemberInfo = serde_json::from_str(r#"{"user":"a","role":"admin"}"#).unwrap();
        assert_eq!(admin.role, Role::Admin);
        assert_eq!(
            ServerFrame::reply(4_000_000_000, crate::ReplyBody::MembersUnchanged)
                .to_json()
                .len(),
            44,
            "an unchanged answer is constant size"
        );
    }

    #[test]
    fn each_bad_frame_gets_its_own_code() {
        let cases = [
            ("x".repeat(2000), ErrorCode::TooLarge, None),
            ("{not json".into(), ErrorCode::BadFrame, None),
            (r#"{"id":4}"#.into(), ErrorCode::BadFrame, Some(4)),
            (
                r#"{"id":5,"type":"dance"}"#.into(),
                ErrorCode::UnknownType,
                Some(5),
            ),
            (
                r#"{"id":6,"type":"hello"}"#.into(),
                ErrorCode::InvalidRequest,
                Some(6),
            ),
            (
                r#"{"id":7,"type":"ping","extra":true}"#.into(),
                ErrorCode::InvalidRequest,
                Some(7),
            ),
        ];
        for (text, code, id) in cases {
            let (got_id, err) = decode_request(&text, 1024).unwrap_err();
            assert_eq!(err.code(), code, "{text}");
            assert_eq!(got_id, id, "{text}");
        }
    }

    #[test]
    fn a_frame_the_parser_refuses_still_names_its_id() {
        let cases = [
            (r#"{"type":"send","id":60,"body":{"n":1e400}}"#, Some(60)),
            (r#"{"type":"send","body":"\ud800","id":62}"#, Some(62)),
            (
                r#"{"body":{"id":5},"type":"send","id": 7 ,"x":1e999}"#,
                Some(7),
            ),
            (r#"{"type":"send","note":"\"id\":9","x":1e999}"#, None),
            (r#"{"type":"send","id":"3","x":1e999}"#, None),
            (
                r#"{"type":"send","id":99999999999999999999,"x":1e999}"#,
                None,
            ),
            (r#"{"type":"send","id":4.5,"x":1e999}"#, None),
            ("{not json", None),
            (r#"{"id":12"#, None),
        ];
        for (text, id) in cases {
            let (got, err) = decode_request(text, 1024).unwrap_err();
            assert_eq!(err.code(), ErrorCode::BadFrame, "{text}");
            assert_eq!(got, id, "{text}");
        }
    }

    #[test]
    fn error_frame_shape() {
        let (id, err) = decode_request(r#"{"id":9,"type":"dance"}"#, 64).unwrap_err();
        let json = ServerFrame::error(id, err.code(), err.to_string()).to_json();
        assert_eq!(
            json,
            r#"{"type":"error","id":9,"code":"unknown_type","message":"unknown frame type \"dance\""}"#
        );
    }
}
