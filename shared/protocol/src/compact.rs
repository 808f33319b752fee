//! `members_diff` in its positional form, for a `members_sync` that asks for it
//! (`compact: true`, sent only to an edge whose `welcome` says `compact`): a JSON array
//! instead of a tagged object,
//!
//! ```text
//! [id, version, digest | null, upserts, removed, more]
//! ```
//!
//! where a plain member among the upserts is its bare id, any other member the object
//! `members_diff` carries, and `more` is `1` while more changes remain (`0` otherwise). The
//! group and the epoch are left out: a diff is only ever the answer to the `members_sync` with
//! that `id`, which named the group, and it is a diff only because the client's epoch is the
//! server's. One member joining a 100,000-member group is about 50 bytes this way, against
//! some 180 as an object.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use anchorage_schema::{GroupId, UserId};

use crate::RequestId;
use crate::members::MemberInfo;
use crate::reply::MembersDiff;

/// A `members_diff` answer without its group and epoch (see the module).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembersDelta {
    /// The `members_sync` request it answers.
    pub id: RequestId,
    /// The version the list is at after applying it.
    pub version: u64,
    /// The digest of the whole list at `version` (on the last page).
    pub digest: Option<String>,
    /// Members who joined or changed, as they are now.
    pub upserts: Vec<MemberInfo>,
    /// Members who left.
    pub removed: Vec<UserId>,
    /// More changes remain.
    pub more: bool,
}

impl MembersDelta {
    /// The positional form of the answer `diff` to request `id`.
    pub fn of(id: RequestId, diff: MembersDiff) -> Self {
        Self {
            id,
            version: diff.version,
            digest: diff.digest,
            upserts: diff.upserts,
            removed: diff.removed,
            more: diff.more,
        }
    }

    /// The `members_diff` it stands for, given the group and the epoch the request named.
    pub fn into_diff(self, group: GroupId, epoch: String) -> MembersDiff {
        MembersDiff {
            group,
            epoch,
            version: self.version,
            digest: self.digest,
            upserts: self.upserts,
            removed: self.removed,
            more: self.more,
        }
    }

    /// Reads the positional form; the error says which element is wrong.
    pub fn from_value(value: Value) -> Result<Self, String> {
        let Value::Array(items) = value else {
            return Err("a members delta is a JSON array".into());
        };
        let Ok::<[Value; 6], _>([id, version, digest, upserts, removed, more]) = items.try_into()
        else {
            return Err("a members delta has 6 elements".into());
        };
        let number = |v: Value, what: &str| v.as_u64().ok_or(format!("{what}: not a number"));
        let digest = match digest {
            Value::Null => None,
            Value::String(s) => Some(s),
            _ => return Err("digest: neither a string nor null".into()),
        };
        let Value::Array(upserts) = upserts else {
            return Err("upserts: not an array".into());
        };
        let upserts = upserts
            .into_iter()
            .map(|m| match m {
                Value::String(_) => UserId::deserialize(m).map(MemberInfo::plain),
                other => MemberInfo::deserialize(other),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("upserts: {e}"))?;
        let removed = Vec::<UserId>::deserialize(removed).map_err(|e| format!("removed: {e}"))?;
        let more = match number(more, "more")? {
            0 => false,
            1 => true,
            _ => return Err("more: neither 0 nor 1".into()),
        };
        Ok(Self {
            id: number(id, "id")?,
            version: number(version, "version")?,
            digest,
            upserts,
            removed,
            more,
        })
    }
}

/// Upserts as the positional form writes them: a plain member as its bare id, any other as
/// the object.
struct Upserts<'a>(&'a [MemberInfo]);

/// One of [`Upserts`].
struct Upsert<'a>(&'a MemberInfo);

impl Serialize for Upserts<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(Upsert))
    }
}

impl Serialize for Upsert<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_plain() {
            self.0.user.serialize(serializer)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl Serialize for MembersDelta {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(6))?;
        seq.serialize_element(&self.id)?;
        seq.serialize_element(&self.version)?;
        seq.serialize_element(&self.digest)?;
        seq.serialize_element(&Upserts(&self.upserts))?;
        seq.serialize_element(&self.removed)?;
        seq.serialize_element(&u8::from(self.more))?;
        seq.end()
    }
}

impl JsonSchema for MembersDelta {
    fn schema_name() -> Cow<'static, str> {
        "MembersDelta".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let user = generator.subschema_for::<UserId>();
        let member = generator.subschema_for::<MemberInfo>();
        json_schema!({
            "description": "`members_diff` in its positional form (the answer to a `members_sync` with `compact`): [id, version, digest or null (on the last page), upserts (a plain member as its bare id), removed, more (1 while more changes remain, else 0)]. The group and the epoch are the request's.",
            "type": "array",
            "prefixItems": [
                {"type": "integer", "format": "uint64", "minimum": 0},
                {"type": "integer", "format": "uint64", "minimum": 0},
                {"type": ["string", "null"]},
                {"type": "array", "items": {"anyOf": [user, member]}},
                {"type": "array", "items": user},
                {"type": "integer", "enum": [0, 1]}
            ],
            "minItems": 6,
            "maxItems": 6
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anchorage_schema::event::Role;
    use proptest::prelude::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn plain(id: &str) -> MemberInfo {
        MemberInfo::plain(user(id))
    }

    fn diff(upserts: Vec<MemberInfo>, removed: Vec<UserId>, more: bool) -> MembersDiff {
        MembersDiff {
            group: GroupId::parse("big").unwrap(),
            epoch: "1764800000000000000".into(),
            version: 100_012,
            digest: (!more).then(|| "0123456789abcdef:100000".into()),
            upserts,
            removed,
            more,
        }
    }

    #[test]
    fn one_member_joining_is_under_64_bytes() {
        let d = MembersDelta::of(5, diff(vec![plain("newcomer")], vec![], false));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"[5,100012,"0123456789abcdef:100000",["newcomer"],[],0]"#
        );
        assert!(json.len() <= 64, "{} bytes", json.len());
    }

    #[test]
    fn round_trips_with_details_removals_and_more() {
        let admin = MemberInfo {
            role: Role::Admin,
            nickname: Some("Erin".into()),
            muted_until: Some(-5),
            ..plain("erin")
        };
        let original = diff(
            vec![plain("dave"), admin.clone()],
            vec![user("carol")],
            true,
        );
        let d = MembersDelta::of(7, original.clone());
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json[2], Value::Null);
        assert_eq!(json[3][0], "dave");
        assert_eq!(json[3][1]["role"], "admin");
        assert_eq!(json[5], 1);
        let back = MembersDelta::from_value(json).unwrap();
        assert_eq!(back, d);
        assert_eq!(
            back.into_diff(original.group.clone(), original.epoch.clone()),
            original
        );
    }

    proptest! {
        #[test]
        fn any_diff_reads_back_as_itself(
            id in any::<u64>(),
            version in any::<u64>(),
            digest in proptest::option::of("[0-9a-f]{16}:[0-9]{1,6}"),
            members in proptest::collection::vec(("[a-z0-9]{1,12}", 0u8..3, proptest::option::of("[ -~]{0,8}"), proptest::option::of(any::<i64>())), 0..20),
            removed in proptest::collection::vec("[a-z0-9]{1,12}", 0..20),
            more in any::<bool>(),
        ) {
            let upserts = members
                .into_iter()
                .map(|(id, role, nickname, muted_until)| MemberInfo {
                    role: [Role::Member, Role::Admin, Role::Owner][usize::from(role)],
                    nickname,
                    muted_until,
                    ..plain(&id)
                })
                .collect();
            let d = MembersDelta {
                id,
                version,
                digest,
                upserts,
                removed: removed.iter().map(|r| user(r)).collect(),
                more,
            };
            let text = serde_json::to_string(&d).unwrap();
            let back = MembersDelta::from_value(serde_json::from_str(&text).unwrap()).unwrap();
            prop_assert_eq!(back, d);
        }
    }

    #[test]
    fn a_welcome_from_an_edge_that_does_not_offer_it_reads_as_not_offered() {
        let old = r#"{"protocol":1,"user":"a","device":"d","max_frame_bytes":65536,"changes":[]}"#;
        let welcome: crate::Welcome = serde_json::from_str(old).unwrap();
        assert!(!welcome.compact);
    }

    #[test]
    fn refuses_each_malformed_element_precisely() {
        let good = || serde_json::json!([1, 2, null, ["a"], ["b"], 0]);
        assert!(MembersDelta::from_value(good()).is_ok());
        let cases: Vec<(Value, &str)> = vec![
            (serde_json::json!({"id": 1}), "a JSON array"),
            (serde_json::json!([1, 2, null, [], []]), "6 elements"),
            (serde_json::json!([1, 2, null, [], [], 0, 0]), "6 elements"),
            (serde_json::json!([-1, 2, null, [], [], 0]), "id"),
            (serde_json::json!([1, "2", null, [], [], 0]), "version"),
            (serde_json::json!([1, 2, 3, [], [], 0]), "digest"),
            (serde_json::json!([1, 2, null, {}, [], 0]), "upserts"),
            (
                serde_json::json!([1, 2, null, ["bad id!"], [], 0]),
                "upserts",
            ),
            (
                serde_json::json!([1, 2, null, [{"role": "admin"}], [], 0]),
                "upserts",
            ),
            (serde_json::json!([1, 2, null, [], [7], 0]), "removed"),
            (serde_json::json!([1, 2, null, [], [], 2]), "more"),
            (serde_json::json!([1, 2, null, [], [], true]), "more"),
        ];
        for (value, what) in cases {
            let err = MembersDelta::from_value(value.clone()).unwrap_err();
            assert!(err.contains(what), "{value}: {err}");
        }
    }
}
