//! The protocol as a JSON Schema: every request and every server frame, derived from the types
//! in this crate. Other clients take their types from it (the TypeScript SDK generates
//! `shared/sdk-ts/src/protocol.ts` from `shared/sdk-ts/protocol.schema.json`, and a test keeps
//! that file equal to [`document`]).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

use crate::compact::MembersDelta;
use crate::error::close;
use crate::reply::{ErrorFrame, Push, ReplyBody, ServerFrame};
use crate::request::{Request, RequestBody};

/// `{"id": <request id>}`, required.
fn with_id(body: Schema) -> Schema {
    json_schema!({
        "allOf": [
            body,
            {
                "type": "object",
                "properties": {"id": {"type": "integer", "format": "uint64", "minimum": 0}},
                "required": ["id"]
            }
        ]
    })
}

impl JsonSchema for Request {
    fn schema_name() -> Cow<'static, str> {
        "Request".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        with_id(generator.subschema_for::<RequestBody>())
    }
}

impl JsonSchema for ServerFrame {
    fn schema_name() -> Cow<'static, str> {
        "ServerFrame".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let reply = with_id(generator.subschema_for::<ReplyBody>());
        let push = generator.subschema_for::<Push>();
        let error = generator.subschema_for::<ErrorFrame>();
        let delta = generator.subschema_for::<MembersDelta>();
        json_schema!({
            "oneOf": [
                reply,
                push,
                delta,
                {
                    "allOf": [
                        error,
                        {
                            "type": "object",
                            "properties": {"type": {"type": "string", "const": "error"}},
                            "required": ["type"]
                        }
                    ]
                }
            ]
        })
    }
}

/// The schema document: `Request` (what a client sends) and `ServerFrame` (what it gets) with
/// every type they use under `$defs`, and the close codes under `x-close-codes`.
pub fn document() -> serde_json::Value {
    let mut generator = SchemaGenerator::default();
    let request = generator.subschema_for::<Request>();
    let frame = generator.subschema_for::<ServerFrame>();
    let mut defs: serde_json::Map<String, serde_json::Value> =
        generator.take_definitions(true).into_iter().collect();
    defs.sort_keys();
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Anchorage protocol",
        "description": format!("The Anchorage WebSocket protocol, version {}.", crate::PROTOCOL_VERSION),
        "type": "object",
        "properties": {"request": request, "frame": frame},
        "$defs": defs,
        "x-protocol": crate::PROTOCOL_VERSION,
        "x-close-codes": {
            "AUTH_FAILED": close::AUTH_FAILED,
            "TOKEN_EXPIRED": close::TOKEN_EXPIRED,
            "HELLO_TIMEOUT": close::HELLO_TIMEOUT,
            "UNSUPPORTED_PROTOCOL": close::UNSUPPORTED_PROTOCOL,
            "REVOKED": close::REVOKED,
            "SLOW_CONSUMER": close::SLOW_CONSUMER,
            "RATE_LIMITED": close::RATE_LIMITED,
            "GOING_AWAY": close::GOING_AWAY,
            "INVALID_PAYLOAD": close::INVALID_PAYLOAD,
            "TOO_BIG": close::TOO_BIG,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schema the TypeScript SDK is generated from is this crate's. After a
    /// protocol change, write it anew with `ANCHORAGE_WRITE_SCHEMA=1 cargo test -p
    /// anchorage-protocol schema` and regenerate the TypeScript types (`npm run types` in
    /// `shared/sdk-ts`).
    #[test]
    fn the_typescript_sdk_schema_is_this_crates() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sdk-ts/protocol.schema.json"
        );
        let text = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("ANCHORAGE_WRITE_SCHEMA").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == text,
            "{path} is not the protocol crate's schema: run ANCHORAGE_WRITE_SCHEMA=1 cargo test -p anchorage-protocol schema, then npm run types in shared/sdk-ts"
        );
    }
}
