//! Device tokens.
//!
//! Every device signs in with a JWT: `sub` is the user, `device` the device, `exp` the expiry
//! (Unix seconds). Development uses an HMAC secret (HS256) and `anchorage token` to mint tokens.
//! Verification accepts exactly the configured algorithm — `alg: none` and every other
//! algorithm are refused — and requires `exp`.

use anchorage_schema::{DeviceId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of a device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub device: DeviceId,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token algorithm is not accepted")]
    BadAlgorithm,
    #[error("token is malformed: {0}")]
    Malformed(String),
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Mints an HS256 device token valid for `ttl_secs`.
pub fn mint_hs256(
    secret: &str,
    user: UserId,
    device: DeviceId,
    ttl_secs: u64,
) -> Result<String, TokenError> {
    let iat = now_secs();
    let claims = Claims {
        sub: user,
        device,
        iat,
        exp: iat + ttl_secs,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| TokenError::Malformed(e.to_string()))
}

/// Verifies an HS256 device token and returns its claims.
pub fn verify_hs256(secret: &str, token: &str) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map(|data| data.claims)
    .map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenError::BadAlgorithm
            }
            _ => TokenError::Malformed(e.to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    fn ids() -> (UserId, DeviceId) {
        (
            UserId::parse("alice").unwrap(),
            DeviceId::parse("phone").unwrap(),
        )
    }

    #[test]
    fn round_trip() {
        let (u, d) = ids();
        let t = mint_hs256(SECRET, u.clone(), d.clone(), 60).unwrap();
        let c = verify_hs256(SECRET, &t).unwrap();
        assert_eq!((c.sub, c.device), (u, d));
        assert_eq!(c.exp - c.iat, 60);
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let (u, d) = ids();
        let t = mint_hs256("another-secret-entirely", u.clone(), d.clone(), 60).unwrap();
        assert_eq!(verify_hs256(SECRET, &t), Err(TokenError::BadSignature));

        let claims = Claims {
            sub: u,
            device: d,
            iat: 1,
            exp: 2,
        };
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(verify_hs256(SECRET, &old), Err(TokenError::Expired));

        // alg: none — header {"alg":"none","typ":"JWT"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImRldmljZSI6InAiLCJpYXQiOjEsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(verify_hs256(SECRET, none).is_err());
        assert!(matches!(
            verify_hs256(SECRET, "garbage"),
            Err(TokenError::Malformed(_))
        ));
    }
}
