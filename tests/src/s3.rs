//! An S3-compatible store for the attachment tests: s3rver (installed from npm by
//! `deploy/node-tools.sh`) stores the objects, behind a proxy that checks every request's
//! presigned Signature Version 4 — URL, expiry and signed headers such as the exact
//! `content-length` — with botocore, AWS's own implementation (`tests/s3/sigv4_verify.py`),
//! as S3 does. (s3rver checks the form of a presigned URL but not its signature.)

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anchorage_config::S3Config;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The bucket the tests use.
pub const BUCKET: &str = "attachments";
const ACCESS_KEY: &str = "S3RVER";
const SECRET_KEY: &str = "S3RVER";
const REGION: &str = "us-east-1";

/// The store; stopped when dropped.
#[derive(Debug)]
pub struct S3rver {
    child: Option<tokio::process::Child>,
    /// Where s3rver itself listens.
    inner: u16,
    /// Where the checking proxy listens (the endpoint clients and the server use).
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
    refusals: Arc<Mutex<Vec<String>>>,
}

/// s3rver's command: `ANCHORAGE_TESTS_S3RVER`, or what `deploy/node-tools.sh` installs.
fn s3rver_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ANCHORAGE_TESTS_S3RVER") {
            return PathBuf::from(p);
        }
        let out = std::process::Command::new(crate::repo_root().join("deploy/node-tools.sh"))
            .output()
            .expect("running deploy/node-tools.sh");
        assert!(out.status.success(), "deploy/node-tools.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// botocore checking signatures, one request per line.
struct Verifier {
    io: tokio::sync::Mutex<(
        tokio::process::ChildStdin,
        BufReader<tokio::process::ChildStdout>,
    )>,
    _child: tokio::process::Child,
}

impl Verifier {
    fn start() -> Verifier {
        let mut child = tokio::process::Command::new(crate::push::python())
            .arg(crate::repo_root().join("tests/s3/sigv4_verify.py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the signature verifier");
        let stdin = child.stdin.take().expect("its stdin");
        let stdout = BufReader::new(child.stdout.take().expect("its stdout"));
        Verifier {
            io: tokio::sync::Mutex::new((stdin, stdout)),
            _child: child,
        }
    }

    /// `None` if the request is signed as S3 requires, else why not.
    async fn check(&self, method: &Method, url: &str, headers: &HeaderMap) -> Option<String> {
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let signed: Vec<String> = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "X-Amz-SignedHeaders")
            .map(|(_, v)| v.split(';').map(str::to_owned).collect())
            .unwrap_or_default();
        let values: serde_json::Map<String, serde_json::Value> = signed
            .iter()
            .filter_map(|h| {
                let v = headers.get(h.as_str())?.to_str().ok()?;
                Some((h.clone(), json!(v)))
            })
            .collect();
        let line = json!({
            "method": method.as_str(), "url": url, "headers": values,
            "access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": REGION,
        });
        let mut io = self.io.lock().await;
        let (stdin, stdout) = &mut *io;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("writing to the verifier");
        let mut answer = String::new();
        stdout
            .read_line(&mut answer)
            .await
            .expect("reading the verifier");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("its answer");
        match answer["ok"].as_bool() {
            Some(true) => None,
            _ => Some(answer["why"].as_str().unwrap_or("refused").to_owned()),
        }
    }
}

#[derive(Clone)]
struct ProxyState {
    verifier: Arc<Verifier>,
    inner: u16,
    http: reqwest::Client,
    refusals: Arc<Mutex<Vec<String>>>,
}

async fn proxy(
    State(s): State<ProxyState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let url = format!("http://{host}{uri}");
    if let Some(why) = s.verifier.check(&method, &url, &headers).await {
        s.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("{method} {uri}: {why}"));
        return (
            StatusCode::FORBIDDEN,
            format!("<Error><Code>AccessDenied</Code><Message>{why}</Message></Error>"),
        )
            .into_response();
    }
    // Written once, as S3 does with `If-None-Match: *` (s3rver ignores the header).
    if method == Method::PUT && headers.get("if-none-match").is_some_and(|v| v == "*") {
        let exists = s
            .http
            .head(format!("http://127.0.0.1:{}{uri}", s.inner))
            .send()
            .await
            .is_ok_and(|a| a.status().is_success());
        if exists {
            return (
                StatusCode::PRECONDITION_FAILED,
                "<Error><Code>PreconditionFailed</Code></Error>",
            )
                .into_response();
        }
    }
    let mut forward = s
        .http
        .request(method, format!("http://127.0.0.1:{}{uri}", s.inner))
        .body(body);
    if let Some(ct) = headers.get("content-type") {
        forward = forward.header("content-type", ct);
    }
    let Ok(answer) = forward.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = answer.status();
    let mut out = HeaderMap::new();
    for name in [
        "content-type",
        "content-length",
        "content-disposition",
        "etag",
        "last-modified",
    ] {
        if let Some(v) = answer.headers().get(name) {
            out.insert(name, v.clone());
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    (status, out, bytes).into_response()
}

impl S3rver {
    /// Starts s3rver with the bucket [`BUCKET`], and the checking proxy in front of it.
    pub async fn start() -> S3rver {
        let dir = tempfile::tempdir().expect("a folder for s3rver");
        let inner = anchorage::natsd::free_port().expect("a free port");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("its address");
        let refusals = Arc::new(Mutex::new(Vec::new()));
        let state = ProxyState {
            verifier: Arc::new(Verifier::start()),
            inner,
            http: reqwest::Client::new(),
            refusals: refusals.clone(),
        };
        let router = Router::new().fallback(proxy).with_state(state);
        tokio::spawn(async move { axum::serve(listener, router).await });
        let mut s = S3rver {
            child: None,
            inner,
            addr,
            dir,
            refusals,
        };
        s.resume().await;
        s
    }

    /// Stops s3rver (its files stay; the proxy answers 502 meanwhile).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts s3rver again on the same port and files.
    pub async fn resume(&mut self) {
        let child = tokio::process::Command::new("node")
            .arg(s3rver_bin())
            .arg("-d")
            .arg(self.dir.path())
            .args(["-a", "127.0.0.1", "-p", &self.inner.to_string(), "--silent"])
            .args(["--configure-bucket", BUCKET])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting s3rver (node)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.inner);
        crate::eventually(Duration::from_secs(20), "s3rver to listen", || async {
            tokio::net::TcpStream::connect(&addr).await.ok()
        })
        .await
        .expect("s3rver listening");
    }

    /// Requests the store refused so far, with why.
    pub fn refusals(&self) -> Vec<String> {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `[attachments.s3]` for this store.
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: format!("http://{}", self.addr),
            region: REGION.into(),
            bucket: BUCKET.into(),
            prefix: "files/".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            path_style: true,
        }
    }
}
