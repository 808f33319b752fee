//! Who is calling: an API key from `Authorization: Bearer ak_…`, checked against its record
//! on the `ADMIN` stream (hashed), its scope and its rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anchorage_schema::admin::{ApiKeyRecord, Scope, split_key};
use anchorage_schema::subjects::{self, stream};
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::problem::Problem;
use crate::EdgeState;
use crate::limits::Bucket;
use crate::requests::RequestError;

/// The rate buckets of the API keys seen by this edge.
#[derive(Debug, Default)]
pub struct KeyLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl KeyLimits {
    fn take(&self, key: &ApiKeyRecord) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 10_000 {
            let now = Instant::now();
            buckets.retain(|_, b| now.duration_since(b.last).as_secs() < 60);
        }
        let rate = key.rate_per_sec.max(1);
        buckets
            .entry(key.id.clone())
            .or_insert_with(|| Bucket::new(rate, rate))
            .take(Instant::now())
    }
}

/// A caller holding a valid, unrevoked API key.
#[derive(Debug, Clone)]
pub struct Key(pub ApiKeyRecord);

impl Key {
    /// Refuses a key without `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.0.allows(scope) {
            Ok(())
        } else {
            Err(RequestError::Forbidden(format!(
                "the API key {} holds scope {}; this needs {}",
                self.0.id,
                self.0.scope.as_str(),
                scope.as_str()
            ))
            .into())
        }
    }
}

fn unauthorized(why: &str) -> Problem {
    RequestError::Unauthorized(why.into()).into()
}

impl FromRequestParts<EdgeState> for Key {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &EdgeState) -> Result<Key, Problem> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("send the API key as Authorization: Bearer ak_…"))?;
        // The scheme's name is case-insensitive (RFC 9110).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
            .ok_or_else(|| unauthorized("send the API key as Authorization: Bearer ak_…"))?;
        let (id, secret) = split_key(token.trim()).map_err(|e| unauthorized(&e.to_string()))?;
        let stored = state
            .bus
            .last_subject_payload(stream::ADMIN, &subjects::api_key(id))
            .await
            .map_err(|e| Problem::from(RequestError::from(e)))?;
        let record: ApiKeyRecord = stored
            .and_then(|(_, bytes)| serde_json::from_slice(&bytes).ok())
            .filter(|r: &ApiKeyRecord| r.id == id)
            .ok_or_else(|| unauthorized("unknown API key"))?;
        if !record.matches(secret) {
            return Err(unauthorized("unknown API key"));
        }
        if record.revoked_at.is_some() {
            return Err(unauthorized("the API key was revoked"));
        }
        state.api_limits.take(&record).map_err(|retry_after_ms| {
            Problem::from(RequestError::RateLimited { retry_after_ms })
        })?;
        Ok(Key(record))
    }
}
