//! Device tokens.
//!
//! Every device signs in with a JWT: `sub` is the user, `device` the device, `exp` the expiry
//! (Unix seconds); `iat` and `nbf` are optional, and a token used before its `nbf` is refused.
//! Development uses an HMAC secret (HS256) and `anchorage token` to mint tokens; production
//! uses the public keys of its own issuer (EdDSA or RS256), picked by the token's `kid`. The
//! [`Verifier`] accepts exactly those: `alg: none`, any other algorithm, a `kid` it does not
//! know or an algorithm that does not match the key are refused, and `exp` is required. With
//! `auth.audience` / `auth.issuer` set, `aud` / `iss` must name them; without, they are not
//! checked.

use anchorage_protocol::request::Hello;
use anchorage_schema::{DeviceId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims of a device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub device: DeviceId,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Not valid before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Who issued the token (checked against `auth.issuer` when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Whom the token is for (checked against `auth.audience` when set); a string or a list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
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
    #[error("token is signed with a key this server does not know")]
    UnknownKey,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token is for another audience")]
    WrongAudience,
    #[error("token is from another issuer")]
    WrongIssuer,
    #[error("token is malformed: {0}")]
    Malformed(String),
}

/// Why a `hello` does not sign in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignInError {
    /// The client speaks another protocol version.
    #[error("this server speaks protocol {}", anchorage_protocol::PROTOCOL_VERSION)]
    Protocol,
    /// The token does not sign in.
    #[error(transparent)]
    Token(TokenError),
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks device tokens against the configured secret and public keys.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    keys: Vec<(String, Algorithm, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.hmac.is_some())
            .field("kids", &self.keys.iter().map(|k| &k.0).collect::<Vec<_>>())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Verifier {
    /// Loads the keys the configuration names; a key that cannot be read names its file.
    pub fn from_config(auth: &anchorage_config::AuthConfig) -> anyhow::Result<Verifier> {
        let mut keys = Vec::new();
        for k in &auth.public_keys {
            let pem = std::fs::read(&k.pem).map_err(|e| {
                anyhow::anyhow!("auth.public_keys {}: {}: {e}", k.kid, k.pem.display())
            })?;
            let (alg, key) = match k.alg.as_str() {
                "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(&pem)),
                "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(&pem)),
                other => anyhow::bail!("auth.public_keys {}: unsupported alg {other}", k.kid),
            };
            let key = key.map_err(|e| {
                anyhow::anyhow!(
                    "auth.public_keys {}: {} is not a {} public key: {e}",
                    k.kid,
                    k.pem.display(),
                    k.alg
                )
            })?;
            keys.push((k.kid.clone(), alg, key));
        }
        Ok(Verifier {
            hmac: auth
                .accept_hmac
                .then(|| DecodingKey::from_secret(auth.hmac_secret.as_bytes())),
            keys,
            audience: auth.audience.clone(),
            issuer: auth.issuer.clone(),
        })
    }

    /// Whom a `hello` signs in: it must speak this server's protocol and carry a valid token.
    pub fn sign_in(&self, hello: &Hello) -> Result<Claims, SignInError> {
        if hello.protocol != anchorage_protocol::PROTOCOL_VERSION {
            return Err(SignInError::Protocol);
        }
        let claims = self.verify(&hello.token).map_err(SignInError::Token)?;
        if claims.device.as_str() == crate::api::API_DEVICE {
            // Messages the server API posts for a user carry that device.
            return Err(SignInError::Token(TokenError::Malformed(
                "device `api` is reserved for the server API".into(),
            )));
        }
        Ok(claims)
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => TokenError::BadAlgorithm,
            _ => TokenError::Malformed(e.to_string()),
        })?;
        let (alg, key) = match header.alg {
            Algorithm::HS256 => match &self.hmac {
                Some(key) => (Algorithm::HS256, key),
                None => return Err(TokenError::BadAlgorithm),
            },
            alg @ (Algorithm::EdDSA | Algorithm::RS256) => {
                let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
                match self.keys.iter().find(|(k, a, _)| k == kid && *a == alg) {
                    Some((_, a, key)) => (*a, key),
                    None => return Err(TokenError::UnknownKey),
                }
            }
            _ => return Err(TokenError::BadAlgorithm),
        };
        decode_with(
            token,
            alg,
            key,
            self.audience.as_deref(),
            self.issuer.as_deref(),
        )
    }
}

fn decode_with(
    token: &str,
    alg: Algorithm,
    key: &DecodingKey,
    audience: Option<&str>,
    issuer: Option<&str>,
) -> Result<Claims, TokenError> {
    let mut validation = Validation::new(alg);
    validation.leeway = 0;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                ErrorKind::InvalidAudience => TokenError::WrongAudience,
                ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    TokenError::BadAlgorithm
                }
                _ => TokenError::Malformed(e.to_string()),
            }
        })
}

/// Mints an HS256 device token valid for `ttl_secs`.
pub fn mint_hs256(
    secret: &str,
    user: UserId,
    device: DeviceId,
    ttl_secs: u64,
) -> Result<String, TokenError> {
    mint(secret, user, device, ttl_secs, None, None)
}

/// Mints an HS256 device token with the configuration's secret, for its audience and issuer
/// if it names them (what `anchorage token` prints).
pub fn mint_configured(
    auth: &anchorage_config::AuthConfig,
    user: UserId,
    device: DeviceId,
    ttl_secs: u64,
) -> Result<String, TokenError> {
    mint(
        &auth.hmac_secret,
        user,
        device,
        ttl_secs,
        auth.audience.clone(),
        auth.issuer.clone(),
    )
}

fn mint(
    secret: &str,
    user: UserId,
    device: DeviceId,
    ttl_secs: u64,
    audience: Option<String>,
    issuer: Option<String>,
) -> Result<String, TokenError> {
    let iat = now_secs();
    let claims = Claims {
        sub: user,
        device,
        iat: Some(iat),
        exp: iat.saturating_add(ttl_secs),
        nbf: None,
        iss: issuer,
        aud: audience.map(serde_json::Value::String),
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
    decode_with(
        token,
        Algorithm::HS256,
        &DecodingKey::from_secret(secret.as_bytes()),
        None,
        None,
    )
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

    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOKb2ROWvkDSl87124cLKB/NqRqkipyeQUwK22hEBF+o\n-----END PRIVATE KEY-----\n";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA2PRIiq/ptQFe0tcbMdBgaaPV0WZIMODekSOuN48wXBA=\n-----END PUBLIC KEY-----\n";

    fn issuer_token(kid: &str, exp_in: i64) -> String {
        let (u, d) = ids();
        let now = now_secs() as i64;
        let claims = Claims {
            sub: u,
            device: d,
            iat: Some(now as u64),
            exp: (now + exp_in) as u64,
            nbf: None,
            iss: None,
            aud: None,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn verifier(accept_hmac: bool) -> Verifier {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("issuer.pem");
        std::fs::write(&pem, ED_PUBLIC).unwrap();
        Verifier::from_config(&anchorage_config::AuthConfig {
            hmac_secret: SECRET.into(),
            accept_hmac,
            public_keys: vec![anchorage_config::PublicKeyConfig {
                kid: "k1".into(),
                alg: "EdDSA".into(),
                pem,
            }],
            token_ttl_secs: 60,
            ..Default::default()
        })
        .unwrap()
    }

    fn hs(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn configured(audience: Option<&str>, issuer: Option<&str>) -> Verifier {
        Verifier::from_config(&anchorage_config::AuthConfig {
            hmac_secret: SECRET.into(),
            audience: audience.map(Into::into),
            issuer: issuer.map(Into::into),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn audience_issuer_and_not_before() {
        let exp = now_secs() + 60;
        let base = serde_json::json!({"sub": "alice", "device": "d", "exp": exp});
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base.clone();
            c[k] = v;
            hs(c)
        };
        // Without configuration: no iat needed, aud and iss not checked.
        let open = configured(None, None);
        assert!(open.verify(&hs(base.clone())).is_ok());
        assert!(open.verify(&with("aud", "chat".into())).is_ok());
        assert!(
            open.verify(&with("aud", serde_json::json!(["x", "chat"])))
                .is_ok()
        );
        // nbf in the future is refused, in the past accepted.
        assert_eq!(
            open.verify(&with("nbf", (now_secs() + 600).into())),
            Err(TokenError::NotYetValid)
        );
        assert!(open.verify(&with("nbf", (now_secs() - 5).into())).is_ok());
        // A configured audience and issuer must be named.
        let strict = configured(Some("chat"), Some("https://id.example"));
        let mut good = base.clone();
        good["aud"] = serde_json::json!(["other", "chat"]);
        good["iss"] = "https://id.example".into();
        assert!(strict.verify(&hs(good.clone())).is_ok());
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = "other".into();
        assert_eq!(
            strict.verify(&hs(wrong_aud)),
            Err(TokenError::WrongAudience)
        );
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = "https://evil.example".into();
        assert_eq!(strict.verify(&hs(wrong_iss)), Err(TokenError::WrongIssuer));
        assert!(
            strict.verify(&hs(base.clone())).is_err(),
            "aud and iss required"
        );
        // Tokens minted by `anchorage token` carry them.
        let auth = anchorage_config::AuthConfig {
            hmac_secret: SECRET.into(),
            audience: Some("chat".into()),
            issuer: Some("https://id.example".into()),
            ..Default::default()
        };
        let (u, d) = ids();
        assert!(
            strict
                .verify(&mint_configured(&auth, u, d, 60).unwrap())
                .is_ok()
        );
    }

    #[test]
    fn an_expiry_at_the_end_of_time_is_a_number_like_any_other() {
        let c = configured(None, None)
            .verify(&hs(
                serde_json::json!({"sub": "alice", "device": "d", "exp": u64::MAX}),
            ))
            .unwrap();
        assert_eq!(c.exp, u64::MAX);
        let (u, d) = ids();
        let t = mint_hs256(SECRET, u, d, u64::MAX).unwrap();
        assert_eq!(verify_hs256(SECRET, &t).unwrap().exp, u64::MAX);
    }

    #[test]
    fn public_keys_are_chosen_by_kid() {
        let v = verifier(false);
        assert_eq!(
            v.verify(&issuer_token("k1", 60)).unwrap().sub.as_str(),
            "alice"
        );
        assert_eq!(
            v.verify(&issuer_token("k2", 60)),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(v.verify(&issuer_token("k1", -10)), Err(TokenError::Expired));
        let (u, d) = ids();
        let hs = mint_hs256(SECRET, u, d, 60).unwrap();
        assert_eq!(
            v.verify(&hs),
            Err(TokenError::BadAlgorithm),
            "HS256 switched off"
        );
        assert!(verifier(true).verify(&hs).is_ok());
    }

    #[test]
    fn round_trip() {
        let (u, d) = ids();
        let t = mint_hs256(SECRET, u.clone(), d.clone(), 60).unwrap();
        let c = verify_hs256(SECRET, &t).unwrap();
        assert_eq!((c.sub, c.device), (u, d));
        assert_eq!(c.exp - c.iat.unwrap(), 60);
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let (u, d) = ids();
        let t = mint_hs256("another-secret-entirely", u.clone(), d.clone(), 60).unwrap();
        assert_eq!(verify_hs256(SECRET, &t), Err(TokenError::BadSignature));

        let claims = Claims {
            sub: u,
            device: d,
            iat: Some(1),
            exp: 2,
            nbf: None,
            iss: None,
            aud: None,
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
