//! Local push providers for the tests, started by the test: an FCM (HTTP v1 with its OAuth
//! token endpoint), an APNs (HTTP/2 without TLS, token authentication), and a Web Push
//! service that decrypts with an independent implementation (`tests/push/webpush_receiver.py`).
//! Each checks what the real one checks — the signed tokens, the headers — and records what
//! it was sent; each can be made to fail.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anchorage_config::{ApnsConfig, FcmConfig, PushConfig, WebPushConfig};
use anchorage_schema::push::PushTarget;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// What a fake is told to do with the next calls.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// Answer 503 to this many calls first.
    pub fail_next: usize,
    /// Answer 503 to every n-th call (0: never).
    pub fail_every: usize,
    /// Addresses answered as no longer valid.
    pub gone: HashSet<String>,
    calls: usize,
}

impl Behaviour {
    /// Whether this call fails (and counts it).
    fn fails(&mut self) -> bool {
        self.calls += 1;
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return true;
        }
        self.fail_every > 0 && self.calls.is_multiple_of(self.fail_every)
    }
}

/// One notification a fake took.
#[derive(Debug, Clone)]
pub struct Received {
    /// The address it was sent to (FCM or APNs token, Web Push path).
    pub address: String,
    /// What it carried: the FCM message, the APNs payload, the decrypted Web Push payload.
    pub payload: Value,
    /// The request's headers that matter to the provider.
    pub headers: Vec<(String, String)>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What every fake shares: its behaviour, what it took, how many calls it refused.
#[derive(Debug, Default)]
pub struct Log {
    pub behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    refused: Mutex<usize>,
}

impl Log {
    /// Everything taken so far.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Calls answered with an error (failures and gone addresses).
    pub fn refused(&self) -> usize {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, r: Received) {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(r);
    }

    fn refuse(&self) {
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    /// Waits until `pred` holds of what was taken (up to 30 s).
    pub async fn until(&self, what: &str, pred: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 30 s; received {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a fake provider");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn headers_of(h: &HeaderMap, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| {
            h.get(*n)
                .and_then(|v| v.to_str().ok())
                .map(|v| ((*n).to_owned(), v.to_owned()))
        })
        .collect()
}

fn fixture(name: &str) -> PathBuf {
    crate::repo_root().join("tests/push").join(name)
}

/// A fake FCM: `POST /token` (the OAuth token endpoint, checking the RS256 assertion) and
/// `POST /v1/projects/test-project/messages:send` (checking the access token).
#[derive(Debug, Clone)]
pub struct FakeFcm {
    pub log: Arc<Log>,
    pub addr: std::net::SocketAddr,
    /// Access tokens handed out.
    tokens: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct FcmState {
    log: Arc<Log>,
    tokens: Arc<Mutex<Vec<String>>>,
    token_uri: String,
}

impl FakeFcm {
    pub async fn start() -> FakeFcm {
        let log = Arc::new(Log::default());
        let tokens = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the fake FCM");
        let addr = listener.local_addr().expect("its address");
        let state = FcmState {
            log: log.clone(),
            tokens: tokens.clone(),
            token_uri: format!("http://{addr}/token"),
        };
        let router = Router::new()
            .route("/token", post(fcm_token))
            .route("/v1/projects/test-project/messages:send", post(fcm_send))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, router).await });
        FakeFcm { log, addr, tokens }
    }

    /// `[push.fcm]` pointing here, with a service account file written into `dir`.
    pub fn config(&self, dir: &Path) -> FcmConfig {
        let key = std::fs::read_to_string(fixture("fcm-test-key.pem")).expect("the test key");
        let account = json!({
            "type": "service_account",
            "client_email": "anchorage@test-project.iam.gserviceaccount.com",
            "private_key": key,
            "token_uri": format!("http://{}/token", self.addr),
        });
        let path = dir.join("fcm-service-account.json");
        std::fs::write(&path, account.to_string()).expect("writing the service account");
        FcmConfig {
            project_id: "test-project".into(),
            credentials: path,
            endpoint: format!("http://{}", self.addr),
        }
    }

    /// Access tokens handed out so far.
    pub fn tokens_issued(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

async fn fcm_token(
    State(s): State<FcmState>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> (StatusCode, String) {
    let public = std::fs::read(fixture("fcm-test-key.pub.pem")).expect("the test key");
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).expect("an RSA key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[s.token_uri.as_str()]);
    validation.set_issuer(&["anchorage@test-project.iam.gserviceaccount.com"]);
    let ok = form.get("grant_type").map(String::as_str)
        == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
        && form.get("assertion").is_some_and(|a| {
            jsonwebtoken::decode::<Value>(a, &key, &validation).is_ok_and(|t| {
                t.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
            })
        });
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":"invalid_grant"}"#.into(),
        );
    }
    let mut tokens = s.tokens.lock().unwrap_or_else(|e| e.into_inner());
    let token = format!("ya29.test-{}", tokens.len());
    tokens.push(token.clone());
    (
        StatusCode::OK,
        json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}).to_string(),
    )
}

async fn fcm_send(
    State(s): State<FcmState>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let known = bearer.is_some_and(|b| {
        s.tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&b)
    });
    if !known {
        s.log.refuse();
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":401,"status":"UNAUTHENTICATED"}}"#.into(),
        );
    }
    let Ok(message) = serde_json::from_str::<Value>(&body) else {
        s.log.refuse();
        return (
            StatusCode::BAD_REQUEST,
            r#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#.into(),
        );
    };
    let token = message["message"]["token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    {
        let mut b = s.log.behaviour.lock().unwrap_or_else(|e| e.into_inner());
        if b.gone.contains(&token) {
            drop(b);
            s.log.refuse();
            return (
                StatusCode::NOT_FOUND,
                r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#.into(),
            );
        }
        if b.fails() {
            drop(b);
            s.log.refuse();
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":{"code":503,"status":"UNAVAILABLE"}}"#.into(),
            );
        }
    }
    s.log.take(Received {
        address: token,
        payload: message,
        headers: Vec::new(),
    });
    (
        StatusCode::OK,
        r#"{"name":"projects/test-project/messages/1"}"#.into(),
    )
}

/// A fake APNs over HTTP/2 (cleartext, prior knowledge): `POST /3/device/<token>`, checking
/// the ES256 provider token and the headers APNs requires.
#[derive(Debug, Clone)]
pub struct FakeApns {
    pub log: Arc<Log>,
    pub addr: std::net::SocketAddr,
    key_pem: String,
}

#[derive(Clone)]
struct ApnsState {
    log: Arc<Log>,
    decoding: Arc<jsonwebtoken::DecodingKey>,
}

impl FakeApns {
    pub async fn start() -> FakeApns {
        let (key_pem, decoding) = p256_key();
        let log = Arc::new(Log::default());
        let state = ApnsState {
            log: log.clone(),
            decoding: Arc::new(decoding),
        };
        let router = Router::new()
            .route("/3/device/{token}", post(apns_send))
            .with_state(state);
        let addr = serve(router).await;
        FakeApns { log, addr, key_pem }
    }

    /// `[push.apns]` pointing here, with the signing key written into `dir`.
    pub fn config(&self, dir: &Path) -> ApnsConfig {
        let path = dir.join("AuthKey_TESTKEY01.p8");
        std::fs::write(&path, &self.key_pem).expect("writing the APNs key");
        ApnsConfig {
            key: path,
            key_id: "TESTKEY01".into(),
            team_id: "TEAMID0001".into(),
            topic: "im.anchorage.test".into(),
            endpoint: format!("http://{}", self.addr),
            sandbox_endpoint: format!("http://{}", self.addr),
        }
    }
}

/// A fresh P-256 key: its PKCS#8 PEM, and the key that verifies its signatures.
pub fn p256_key() -> (String, jsonwebtoken::DecodingKey) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key");
    let raw = pair.public_key_raw().to_vec();
    (pair.serialize_pem(), ec_public(&raw))
}

/// The verifying key of an uncompressed P-256 point.
pub fn ec_public(raw: &[u8]) -> jsonwebtoken::DecodingKey {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(raw.len(), 65, "an uncompressed point");
    jsonwebtoken::DecodingKey::from_ec_components(&b64.encode(&raw[1..33]), &b64.encode(&raw[33..]))
        .expect("a P-256 public key")
}

async fn apns_send(
    State(s): State<ApnsState>,
    UrlPath(token): UrlPath<String>,
    version: axum::http::Version,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let refuse = |status: StatusCode, reason: &str| {
        s.log.refuse();
        (status, json!({ "reason": reason }).to_string())
    };
    if version != axum::http::Version::HTTP_2 {
        return refuse(StatusCode::BAD_REQUEST, "NotHTTP2");
    }
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&["TEAMID0001"]);
    validation.required_spec_claims = ["iss".to_owned()].into();
    validation.validate_exp = false;
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bearer "));
    let signed = bearer.is_some_and(|t| {
        jsonwebtoken::decode_header(t).is_ok_and(|h| h.kid.as_deref() == Some("TESTKEY01"))
            && jsonwebtoken::decode::<Value>(t, &s.decoding, &validation).is_ok()
    });
    if !signed {
        return refuse(StatusCode::FORBIDDEN, "InvalidProviderToken");
    }
    if headers.get("apns-topic").and_then(|v| v.to_str().ok()) != Some("im.anchorage.test") {
        return refuse(StatusCode::BAD_REQUEST, "BadTopic");
    }
    if headers.get("apns-push-type").is_none() {
        return refuse(StatusCode::BAD_REQUEST, "MissingPushType");
    }
    {
        let mut b = s.log.behaviour.lock().unwrap_or_else(|e| e.into_inner());
        if b.gone.contains(&token) {
            drop(b);
            return refuse(StatusCode::GONE, "Unregistered");
        }
        if b.fails() {
            drop(b);
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        }
    }
    let Ok(payload) = serde_json::from_str::<Value>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "PayloadEmpty");
    };
    s.log.take(Received {
        address: token,
        payload,
        headers: headers_of(
            &headers,
            &[
                "apns-collapse-id",
                "apns-priority",
                "apns-push-type",
                "apns-expiration",
            ],
        ),
    });
    (StatusCode::OK, String::new())
}

/// The Python the tests run `tests/push/webpush_receiver.py` with: `ANCHORAGE_TESTS_PYTHON`,
/// else the environment `deploy/python-tools.sh` installs.
pub(crate) fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("ANCHORAGE_TESTS_PYTHON") {
                return PathBuf::from(p);
            }
            let out = std::process::Command::new(crate::repo_root().join("deploy/python-tools.sh"))
                .output()
                .expect("running deploy/python-tools.sh");
            assert!(out.status.success(), "deploy/python-tools.sh failed");
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        })
        .clone()
}

/// A Web Push service with one browser's subscription, decrypting with `http_ece`.
#[derive(Debug)]
pub struct FakeWebPush {
    pub log: Arc<Log>,
    pub port: u16,
    /// The subscription's keys.
    pub p256dh: String,
    pub auth: String,
    _child: tokio::process::Child,
}

impl FakeWebPush {
    /// Starts the receiver; it answers 503 to the first `fail_first` requests.
    pub async fn start(fail_first: usize) -> FakeWebPush {
        let mut child = tokio::process::Command::new(python())
            .arg(fixture("webpush_receiver.py"))
            .arg("--fail-first")
            .arg(fail_first.to_string())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the Web Push receiver");
        let stdout = child.stdout.take().expect("its stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the receiver starts")
            .expect("its first line")
            .expect("a first line");
        let hello: Value = serde_json::from_str(&first).expect("JSON");
        let log = Arc::new(Log::default());
        let reader = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(record) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if record["status"] == 201 {
                    let headers = [
                        "authorization",
                        "content_encoding",
                        "ttl",
                        "topic",
                        "urgency",
                    ]
                    .iter()
                    .filter_map(|h| record[*h].as_str().map(|v| ((*h).to_owned(), v.to_owned())))
                    .collect();
                    reader.take(Received {
                        address: record["path"].as_str().unwrap_or_default().to_owned(),
                        payload: record["payload"].clone(),
                        headers,
                    });
                } else {
                    reader.refuse();
                }
            }
        });
        FakeWebPush {
            log,
            port: u16::try_from(hello["port"].as_u64().expect("a port")).expect("a port"),
            p256dh: hello["p256dh"].as_str().expect("p256dh").to_owned(),
            auth: hello["auth"].as_str().expect("auth").to_owned(),
            _child: child,
        }
    }

    /// The subscription endpoint for path `name`.
    pub fn endpoint(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/push/{name}", self.port)
    }

    /// `[push.web_push]` calling this service, with a VAPID key written into `dir`; returns
    /// the key that verifies the VAPID tokens too.
    pub fn config(&self, dir: &Path) -> (WebPushConfig, jsonwebtoken::DecodingKey) {
        let (pem, verify) = p256_key();
        let path = dir.join("vapid.pem");
        std::fs::write(&path, pem).expect("writing the VAPID key");
        (
            WebPushConfig {
                vapid_key: path,
                subject: "mailto:ops@anchorage.test".into(),
                allowed_hosts: anchorage_schema::push::BROWSER_PUSH_SERVICES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                allowed_http_hosts: vec![format!("127.0.0.1:{}", self.port)],
            },
            verify,
        )
    }
}

/// `[push]` with quick retries and a short grace, for tests.
pub fn quick_push_config() -> PushConfig {
    PushConfig {
        grace_ms: 300,
        retry_for_secs: 60,
        max_backoff_ms: 500,
        timeout_ms: 2000,
        concurrency: 16,
        ..PushConfig::default()
    }
}

/// A stack whose push worker calls the three fakes, and what tests ask of it.
#[derive(Debug)]
pub struct PushStack {
    pub nats: crate::TestNats,
    pub t: crate::TestStack,
    pub fcm: FakeFcm,
    pub apns: FakeApns,
    pub web: FakeWebPush,
    /// Verifies the VAPID tokens the stack signs.
    pub vapid: jsonwebtoken::DecodingKey,
    _keys: tempfile::TempDir,
}

impl PushStack {
    /// Starts NATS, the fakes (the Web Push service failing its first `web_fail_first`
    /// requests) and a stack notifying after `grace_ms`.
    pub async fn start(grace_ms: u64, web_fail_first: usize) -> PushStack {
        let nats = crate::TestNats::start().await.expect("NATS");
        let keys = tempfile::tempdir().expect("a key folder");
        let (fcm, apns, web) = (
            FakeFcm::start().await,
            FakeApns::start().await,
            FakeWebPush::start(web_fail_first).await,
        );
        let db_dir = tempfile::tempdir().expect("a database folder");
        let database = crate::fresh_database(db_dir.path())
            .await
            .expect("a database");
        let mut config = crate::test_config(&nats.url(), &database);
        let (web_config, vapid) = web.config(keys.path());
        config.push = PushConfig {
            grace_ms,
            fcm: Some(fcm.config(keys.path())),
            apns: Some(apns.config(keys.path())),
            web_push: Some(web_config),
            ..quick_push_config()
        };
        let t = crate::TestStack::start_with(config, db_dir)
            .await
            .expect("the stack");
        PushStack {
            nats,
            t,
            fcm,
            apns,
            web,
            vapid,
            _keys: keys,
        }
    }

    /// Stops the stack and starts another on the same database and NATS (a restart).
    pub async fn restart(self) -> PushStack {
        let crate::TestStack {
            stack,
            config,
            db_dir,
        } = self.t;
        stack.stop().await.expect("the stack stops");
        let t = crate::TestStack::start_with(config, db_dir)
            .await
            .expect("the stack starts again");
        PushStack { t, ..self }
    }

    pub fn store(&self) -> &anchorage_store::Store {
        &self.t.stack.store
    }

    /// A Web Push subscription at path `name` of the fake service.
    pub fn web_target(&self, name: &str) -> PushTarget {
        PushTarget::WebPush {
            endpoint: self.web.endpoint(name),
            p256dh: self.web.p256dh.clone(),
            auth: self.web.auth.clone(),
        }
    }

    /// `user` signed in on `device`, with `target` registered.
    pub async fn device(
        &self,
        user: &str,
        device: &str,
        target: Option<PushTarget>,
    ) -> crate::WsClient {
        let (mut c, _) = crate::WsClient::signed_in(self.t.edge_addr(), user, device)
            .await
            .expect("signed in");
        if let Some(target) = target {
            let done = c
                .ok(anchorage_protocol::request::SetPush {
                    target,
                    preview: true,
                })
                .await
                .expect("registered");
            crate::projected(self.store(), "users", done.seq.expect("a seq")).await;
        }
        c
    }

    /// The outcome recorded for `user`'s `device` in `conv` once it announced (or passed
    /// over) `seq`.
    pub async fn outcome(&self, user: &str, device: &str, conv: &str, seq: u64) -> String {
        let store = self.store().clone();
        crate::eventually(Duration::from_secs(30), "a push outcome", || {
            let store = store.clone();
            async move {
                store
                    .push_outcomes(user, conv)
                    .await
                    .ok()?
                    .into_iter()
                    .find(|(d, pushed, _)| d == device && *pushed >= seq)
                    .and_then(|(_, _, outcome)| outcome)
            }
        })
        .await
        .expect("an outcome")
    }

    /// Waits until every message stored so far is queued (the `push` consumer has nothing
    /// pending or unacknowledged) and every notification queued is sent or passed over (the
    /// outbox has nothing waiting): from then on, nothing more is sent until something new
    /// happens. What a test that something was *not* sent waits for.
    pub async fn settled(&self) {
        let (bus, store) = (&self.t.stack.bus, self.store());
        crate::eventually(Duration::from_secs(30), "the push worker idle", || async {
            let consumer = bus
                .consumer_pending(anchorage_schema::subjects::stream::MESSAGES, "push")
                .await
                .ok()?;
            let (waiting, _) = store.push_backlog().await.ok()?;
            (consumer == (0, 0) && waiting == 0).then_some(())
        })
        .await
        .expect("the push worker settles");
    }

    /// Whether `user`'s `device` has a target in the projection.
    pub async fn has_target(&self, user: &str, device: &str) -> bool {
        self.store()
            .push_targets_since(user, 0, 1000)
            .await
            .expect("the targets")
            .iter()
            .any(|r| r.device == device && r.target.is_some())
    }
}

/// An FCM target.
pub fn fcm(token: &str) -> PushTarget {
    PushTarget::Fcm {
        token: token.into(),
    }
}

/// What was sent to `address`.
pub fn to<'a>(got: &'a [Received], address: &str) -> Vec<&'a Received> {
    got.iter().filter(|r| r.address == address).collect()
}
