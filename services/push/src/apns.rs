//! Apple Push Notification service over HTTP/2 with token-based authentication: a JWT
//! signed with the team's `.p8` key (ES256), renewed every 40 minutes (Apple refuses one
//! older than an hour and throttles one renewed more often than every 20 minutes).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anchorage_config::ApnsConfig;

use crate::{Notification, Refusal, Sent, refusal};

/// How long one provider token is used.
const TOKEN_LIFE: Duration = Duration::from_secs(40 * 60);

/// Sends APNs notifications.
#[derive(Debug)]
pub struct Apns {
    client: reqwest::Client,
    key: jsonwebtoken::EncodingKey,
    config: ApnsConfig,
    token: Mutex<Option<(String, Instant)>>,
}

impl Apns {
    /// From `[push.apns]`, reading the signing key.
    pub fn new(config: &ApnsConfig, timeout: Duration) -> anyhow::Result<Apns> {
        let pem = std::fs::read(&config.key)
            .map_err(|e| anyhow::anyhow!("push.apns.key {}: {e}", config.key.display()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem)
            .map_err(|e| anyhow::anyhow!("push.apns.key is not a P-256 PKCS#8 PEM key: {e}"))?;
        Ok(Apns {
            client: crate::http_client(timeout, true)?,
            key,
            config: config.clone(),
            token: Mutex::new(None),
        })
    }

    /// The provider token, made anew when it is older than [`TOKEN_LIFE`] or `renew`.
    fn token(&self, renew: bool) -> anyhow::Result<String> {
        let mut held = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, made)) = held.as_ref()
            && !renew
            && made.elapsed() < TOKEN_LIFE
        {
            return Ok(token.clone());
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.config.key_id.clone());
        let claims = serde_json::json!({
            "iss": self.config.team_id,
            "iat": anchorage_schema::now_ms() / 1000,
        });
        let token = jsonwebtoken::encode(&header, &claims, &self.key)?;
        *held = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// Sends `n` to the device token.
    pub async fn send(&self, device_token: &str, sandbox: bool, n: &Notification) -> Sent {
        let mut renewed = false;
        loop {
            let token = match self.token(renewed) {
                Ok(t) => t,
                Err(e) => return Sent::Failed(format!("signing the provider token: {e}")),
            };
            let base = if sandbox {
                &self.config.sandbox_endpoint
            } else {
                &self.config.endpoint
            };
            let answer = self
                .client
                .post(format!(
                    "{}/3/device/{device_token}",
                    base.trim_end_matches('/')
                ))
                .header("authorization", format!("bearer {token}"))
                .header("apns-topic", &self.config.topic)
                .header("apns-push-type", "alert")
                .header("apns-priority", if n.urgent() { "10" } else { "5" })
                .header("apns-collapse-id", n.collapse_key())
                .header(
                    "apns-expiration",
                    (anchorage_schema::now_ms() / 1000 + 86400).to_string(),
                )
                .header("content-type", "application/json")
                .body(n.apns_payload())
                .send()
                .await;
            let Refusal { status, wait, text } = match refusal(answer).await {
                Ok(r) => r,
                Err(settled) => return settled,
            };
            let reason = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("reason")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            return match (status, reason.as_str()) {
                (410, _)
                | (400, "BadDeviceToken" | "DeviceTokenNotForTopic")
                | (400, "MissingDeviceToken") => Sent::Rejected(format!("HTTP {status} {reason}")),
                (403, "ExpiredProviderToken" | "InvalidProviderToken") if !renewed => {
                    renewed = true;
                    continue;
                }
                (429 | 500..=599, _) => Sent::Retry(format!("HTTP {status} {reason}"), wait),
                _ => Sent::Failed(format!("HTTP {status} {reason}")),
            };
        }
    }
}
