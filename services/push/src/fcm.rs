//! Firebase Cloud Messaging, HTTP v1: an OAuth 2.0 access token obtained with the service
//! account's key (a JWT assertion signed RS256, RFC 7523), then one `messages:send` per
//! notification.

use std::time::{Duration, Instant};

use anchorage_config::FcmConfig;
use serde::Deserialize;

use crate::{Notification, Refusal, Sent, refusal, retry_after};

/// The OAuth scope FCM sends need.
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The parts of a service account key file used here.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    token_uri: String,
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: String,
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

/// Sends FCM messages.
#[derive(Debug)]
pub struct Fcm {
    client: reqwest::Client,
    key: jsonwebtoken::EncodingKey,
    client_email: String,
    token_uri: String,
    send_url: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl Fcm {
    /// From `[push.fcm]`, reading the service account key file.
    pub fn new(config: &FcmConfig, timeout: Duration) -> anyhow::Result<Fcm> {
        let text = std::fs::read_to_string(&config.credentials).map_err(|e| {
            anyhow::anyhow!("push.fcm.credentials {}: {e}", config.credentials.display())
        })?;
        let account: ServiceAccount = serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!("push.fcm.credentials is not a service account key: {e}")
        })?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| anyhow::anyhow!("push.fcm.credentials private_key: {e}"))?;
        Ok(Fcm {
            client: crate::http_client(timeout, false)?,
            key,
            client_email: account.client_email,
            token_uri: account.token_uri,
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                config.endpoint.trim_end_matches('/'),
                config.project_id
            ),
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// A current access token: the one held until a minute before it expires, or a new one.
    async fn access_token(&self, renew: bool) -> Result<String, Sent> {
        let mut held = self.token.lock().await;
        if let Some((token, until)) = held.as_ref()
            && !renew
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let now = anchorage_schema::now_ms() / 1000;
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| Sent::Failed(format!("signing the token request: {e}")))?;
        let answer = self
            .client
            .post(&self.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| Sent::Retry(format!("token endpoint: no answer: {e}"), None))?;
        let status = answer.status().as_u16();
        if !(200..300).contains(&status) {
            let wait = retry_after(answer.headers());
            return Err(Sent::Retry(format!("token endpoint: HTTP {status}"), wait));
        }
        let token: AccessToken = answer
            .json()
            .await
            .map_err(|e| Sent::Retry(format!("token endpoint: {e}"), None))?;
        let life = Duration::from_secs(token.expires_in.saturating_sub(60).max(1));
        *held = Some((token.access_token.clone(), Instant::now() + life));
        Ok(token.access_token)
    }

    /// Sends `n` to the registration token.
    pub async fn send(&self, registration: &str, n: &Notification) -> Sent {
        let body = n.fcm_message(registration);
        let mut renewed = false;
        loop {
            let token = match self.access_token(renewed).await {
                Ok(t) => t,
                Err(sent) => return sent,
            };
            let answer = self
                .client
                .post(&self.send_url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await;
            let Refusal { status, wait, text } = match refusal(answer).await {
                Ok(r) => r,
                Err(settled) => return settled,
            };
            let code = error_code(&text);
            return match (status, code.as_str()) {
                _ if token_gone(&code) => Sent::Rejected(format!("HTTP {status} {code}")),
                (401, _) if !renewed => {
                    renewed = true;
                    continue;
                }
                (429 | 500..=599, _) => Sent::Retry(format!("HTTP {status} {code}"), wait),
                _ => Sent::Failed(format!("HTTP {status} {code} {}", crate::short(&text))),
            };
        }
    }
}

/// Whether FCM says the token takes no message any more, so the device's target is removed:
/// FCM's own `UNREGISTERED` alone. A bare 404 (a wrong `project_id`, a proxy) or a
/// `SENDER_ID_MISMATCH` (credentials of another project) is a configuration to fix, and
/// removing on it would take every device's token at once.
fn token_gone(code: &str) -> bool {
    code == "UNREGISTERED"
}

/// The FCM error code of an error answer (`details[].errorCode`, else `status`).
fn error_code(text: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
        return String::new();
    };
    let error = &v["error"];
    error["details"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|d| d["errorCode"].as_str())
        .or_else(|| error["status"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_read_from_details_first() {
        let unregistered = r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert_eq!(error_code(unregistered), "UNREGISTERED");
        assert_eq!(
            error_code(r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(error_code("<html>"), "");
        assert!(token_gone(&error_code(unregistered)));
        // A project that does not exist, or a proxy's 404, is not the token's fault.
        for answer in [
            r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#,
            "<html>404</html>",
            r#"{"error":{"code":403,"status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"SENDER_ID_MISMATCH"}]}}"#,
        ] {
            assert!(!token_gone(&error_code(answer)), "{answer}");
        }
    }
}
