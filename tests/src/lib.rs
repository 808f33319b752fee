//! The end-to-end test harness: real nats-server processes, real databases, real sockets.
//!
//! - [`TestNats::start`] spawns a nats-server with JetStream on a free port and a temporary
//!   store; [`TestCluster::start`] spawns a 3-node cluster on loopback.
//! - [`fresh_database`] gives every test its own empty database: an SQLite file, or a new
//!   PostgreSQL database when the suite runs against PostgreSQL.
//! - [`TestStack::start`] runs the projector and edge in-process through the same
//!   [`anchorage::stack::Stack`] that `anchorage dev` uses, on a free port.
//! - [`WsClient`] speaks the typed protocol of `anchorage-protocol` over a real WebSocket:
//!   requests are request structs, answers [`ServerFrame`]s; [`WsClient::ok`],
//!   [`WsClient::ack`], [`WsClient::refused`] and the like unwrap the answer a test expects.
//!   Malformed and hostile frames go as raw text through [`WsClient::send_text`].
//! - Every wait is bounded: [`eventually`] polls a condition until a deadline and fails the
//!   test with a description of what it was waiting for.
//!
//! - [`push`] has local push providers (FCM, APNs, Web Push) that check and record what they
//!   are sent.
//!
//! nats-server is found like `anchorage dev` finds it: `ANCHORAGE_DEV__NATS_SERVER`, then the
//! repository's `.tools/`, then PATH — installing the pinned version into `.tools/` if needed.

pub mod push;
pub mod s3;

use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anchorage::nats_auth::{self, Credentials};
use anchorage::natsd::{self, ClusterNode, NatsServer, NatsServerOptions, TlsFiles};
use anchorage::stack::Stack;
use anchorage_config::Config;
use anchorage_protocol::request::{self, CreateGroup, Hello, SendMessage};
use anchorage_protocol::{
    Ack, Done, ErrorFrame, LiveMessage, MembersChanged, MembershipChanged, Messages, PresenceInfo,
    Push, ReactionsChanged, ReadMoved, Receipt, ReplyBody, Request, RequestBody, RequestId,
    ServerFrame, TypingNow, Welcome,
};
use anchorage_schema::{ClientMsgId, ConversationId, GroupId, UserId};
use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The repository's stream definitions.
pub fn streams_dir() -> PathBuf {
    repo_root().join("streams")
}

/// The nats-server binary, located (and if need be installed) once per test binary.
pub fn nats_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let explicit = std::env::var_os("ANCHORAGE_DEV__NATS_SERVER").map(PathBuf::from);
            natsd::locate(explicit.as_deref(), &repo_root()).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The NATS users of every test server (random passwords, one set per test binary), with
/// the integration `crm` reading MEMBERSHIP and USERS.
pub fn credentials() -> &'static Credentials {
    static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        let integrations = std::collections::BTreeMap::from([(
            "crm".to_owned(),
            vec!["MEMBERSHIP".to_owned(), "USERS".to_owned()],
        )]);
        Credentials::generate(&integrations).expect("randomness for passwords")
    })
}

/// Signs `config` in to NATS as `user` (one of [`credentials`]).
pub fn sign_in(config: &mut Config, user: &str) {
    config.nats.user = Some(user.to_owned());
    config.nats.password = credentials().password(user).map(str::to_owned);
    config.nats.inbox_prefix = None;
}

/// A configuration that reaches `nats_url` as the operator (everything allowed), for tests
/// that administer streams or publish events directly.
pub fn operator_config(nats_url: &str) -> Config {
    let mut config = Config::default();
    config.nats.url = nats_url.to_owned();
    config.streams.dir = streams_dir();
    sign_in(&mut config, nats_auth::OPERATOR);
    config
}

/// A plain NATS client signed in as `user`, with that user's inbox prefix.
pub async fn nats_client(nats_url: &str, user: &str) -> anyhow::Result<async_nats::Client> {
    let password = credentials()
        .password(user)
        .with_context(|| format!("no test user {user}"))?;
    Ok(async_nats::ConnectOptions::new()
        .user_and_password(user.to_owned(), password.to_owned())
        .custom_inbox_prefix(nats_auth::inbox_prefix(user))
        .connect(
            nats_url
                .split(',')
                .map(|u| u.trim().parse::<async_nats::ServerAddr>())
                .collect::<Result<Vec<_>, _>>()?,
        )
        .await?)
}

/// A CA, and a certificate it signed for 127.0.0.1 and localhost, as PEM files in `dir`.
pub fn certificates(dir: &std::path::Path) -> TlsFiles {
    let ca_key = rcgen::KeyPair::generate().expect("a test certificate");
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).expect("a test certificate");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("a test certificate");
    let key = rcgen::KeyPair::generate().expect("a test certificate");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("a test certificate")
        .signed_by(&key, &ca, &ca_key)
        .expect("a test certificate");
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).expect("a test certificate");
    std::fs::write(&files.key, key.serialize_pem()).expect("a test certificate");
    std::fs::write(&files.ca, ca.pem()).expect("a test certificate");
    files
}

/// One nats-server with JetStream, in a temporary store that is removed with it.
#[derive(Debug)]
pub struct TestNats {
    pub server: NatsServer,
    pub dir: TempDir,
}

impl TestNats {
    /// A server with the test users and their permissions.
    pub async fn start() -> anyhow::Result<TestNats> {
        Self::start_with_tls(None).await
    }

    /// The same, requiring TLS with `tls`.
    pub async fn start_with_tls(tls: Option<TlsFiles>) -> anyhow::Result<TestNats> {
        let dir = tempfile::tempdir()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let spawned = NatsServer::spawn(NatsServerOptions {
                binary: nats_binary()?,
                server_name: "test".into(),
                // A fixed port, so a restarted server is found at the same address.
                port: Some(natsd::free_port()?),
                store_dir: dir.path().join("nats"),
                sync_always: false,
                cluster: None,
                auth: Some(credentials().clone()),
                tls: tls.clone(),
            })
            .await;
            match spawned {
                Ok(server) => return Ok(TestNats { server, dir }),
                // A port found free can be taken by another test's process before the server
                // binds it: take another.
                Err(e) if attempt < 5 && format!("{e:#}").contains("address already in use") => {}
                Err(e) => return Err(e),
            }
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }
}

/// A 3-node JetStream cluster on loopback.
#[derive(Debug)]
pub struct TestCluster {
    pub nodes: Vec<NatsServer>,
    pub dir: TempDir,
}

impl TestCluster {
    pub async fn start(size: usize) -> anyhow::Result<TestCluster> {
        // A port chosen free can be taken by someone else before the server binds it; start
        // over on fresh ports when that happens.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(size).await {
                Ok(cluster) => return Ok(cluster),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    async fn try_start(size: usize) -> anyhow::Result<TestCluster> {
        let dir = tempfile::tempdir()?;
        let ports = natsd::free_ports(size * 2)?;
        let (routes, clients) = ports.split_at(size);
        let binary = nats_binary()?;
        let spawns = (0..size).map(|i| {
            NatsServer::spawn(NatsServerOptions {
                binary: binary.clone(),
                server_name: format!("n{i}"),
                port: Some(clients[i]),
                store_dir: dir.path().join(format!("n{i}")),
                sync_always: true,
                cluster: Some(ClusterNode {
                    cluster_name: "anchorage-test".into(),
                    route_port: routes[i],
                    peers: routes.to_vec(),
                }),
                auth: Some(credentials().clone()),
                tls: None,
            })
        });
        let nodes = futures::future::try_join_all(spawns).await?;
        Ok(TestCluster { nodes, dir })
    }

    /// All client URLs, comma-separated, as `nats.url` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Applies `set` once a new cluster accepts it (R3 streams need elected leaders first).
pub async fn apply_when_ready(
    bus: &anchorage_bus::Bus,
    set: &anchorage_bus::StreamSet,
) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(60),
        "the cluster to accept R3 streams",
        || async { bus.apply(set).await.ok().filter(|r| !r.refused()) },
    )
    .await
    .map(|_| ())
}

/// A fresh SQLite database URL in `dir`.
pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}/anchorage.db", dir.display())
}

/// The PostgreSQL server the suite runs against, if any (`deploy/test.sh` starts one and runs
/// the suite a second time with this set).
pub const POSTGRES_ENV: &str = "TESTS_POSTGRES_URL";

/// A fresh, empty database for one test: a new PostgreSQL database when
/// `TESTS_POSTGRES_URL` is set, otherwise a new SQLite file in `dir`.
pub async fn fresh_database(dir: &Path) -> anyhow::Result<String> {
    let Ok(admin) = std::env::var(POSTGRES_ENV) else {
        return Ok(sqlite_url(dir));
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!("t{}_{n}_{nanos}", std::process::id());
    let url = anchorage_store::database_named(&admin, &name)
        .context("TESTS_POSTGRES_URL has no database path")?;
    anchorage_store::ensure_database(&url).await?;
    Ok(url)
}

/// A configuration for tests: given NATS and database, everything else default, edge on a free
/// port; it signs in to NATS as the operator ([`TestStack`] runs its edge and projector as
/// their own users).
pub fn test_config(nats_url: &str, database_url: &str) -> Config {
    let mut config = operator_config(nats_url);
    config.database.url = database_url.to_owned();
    config.edge.listen = "127.0.0.1:0".parse().expect("a valid address");
    config
}

/// The services running in-process against a test NATS and database.
#[derive(Debug)]
pub struct TestStack {
    pub stack: Stack,
    pub config: Config,
    pub db_dir: TempDir,
}

impl TestStack {
    /// Starts a stack on a fresh SQLite database.
    pub async fn start(nats_url: &str) -> anyhow::Result<TestStack> {
        let db_dir = tempfile::tempdir()?;
        let config = test_config(nats_url, &fresh_database(db_dir.path()).await?);
        Self::start_with(config, db_dir).await
    }

    /// Starts a stack on a fresh SQLite database against `cluster`, its streams with three
    /// replicas (applied once the cluster has elected their leaders); `tune` adjusts the
    /// configuration first.
    pub async fn on_cluster(
        cluster: &TestCluster,
        tune: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestStack> {
        let db_dir = tempfile::tempdir()?;
        let mut config = test_config(&cluster.url(), &fresh_database(db_dir.path()).await?);
        config.streams.replicas = 3;
        tune(&mut config);
        let bus = anchorage_bus::Bus::connect(&anchorage::bus_options(&config, false)).await?;
        let set = anchorage_bus::StreamSet::load(&config.streams.dir, 3)?;
        apply_when_ready(&bus, &set).await?;
        bus.close().await;
        Self::start_with(config, db_dir).await
    }

    pub async fn start_with(config: Config, db_dir: TempDir) -> anyhow::Result<TestStack> {
        let listener = tokio::net::TcpListener::bind(config.edge.listen).await?;
        let stack = within(
            Duration::from_secs(30),
            "the stack to start",
            Stack::start_as(&config, listener, Some(credentials())),
        )
        .await??;
        Ok(TestStack {
            stack,
            config,
            db_dir,
        })
    }

    pub fn edge_addr(&self) -> std::net::SocketAddr {
        self.stack.edge_addr
    }
}

/// Fails if `fut` does not finish within `limit`.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = T>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .with_context(|| format!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` until it returns `Some`, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `projection` has applied its stream up to `seq`.
pub async fn projected(store: &anchorage_store::Store, projection: &str, seq: u64) {
    let what = format!("projection {projection} at {seq}");
    eventually(Duration::from_secs(20), &what, || async {
        let at = store.checkpoint(projection).await.ok()??.last_seq;
        (at >= seq).then_some(())
    })
    .await
    .expect("the projection to catch up");
}

/// Waits until the projection no longer counts `user` as a member of `group`.
pub async fn membership_ended(store: &anchorage_store::Store, group: &str, user: &str) {
    let what = format!("{user}'s membership of {group} ended");
    eventually(Duration::from_secs(20), &what, || async {
        store
            .member_role(group, user)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .expect("the membership to end");
}

/// A minimal HTTP/1.1 GET: status code and body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    within(Duration::from_secs(10), "an HTTP answer", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        anyhow::Ok((status, body))
    })
    .await?
}

/// An HTTP answer: status, headers (names in lower case) and the body as JSON (`Null` if
/// empty or not JSON).
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: serde_json::Value,
}

impl HttpAnswer {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request with a JSON body (if any) and extra headers.
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> anyhow::Result<HttpAnswer> {
    within(Duration::from_secs(15), "an HTTP answer", async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .context("no status line")?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        anyhow::Ok(HttpAnswer {
            status,
            headers,
            body: serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        })
    })
    .await?
}

/// The edge's `/metrics` text.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// The sum of the samples of metric `name` (a histogram's `_count`, `_sum` or `_bucket` are
/// names of their own) whose labels include every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A server API key with `scope` and `rate` per second, stored on the test server; returns
/// the key and its id.
pub async fn api_key(
    nats_url: &str,
    scope: anchorage_schema::admin::Scope,
    rate: u32,
) -> (String, String) {
    let bus =
        anchorage_bus::Bus::connect(&anchorage::bus_options(&operator_config(nats_url), false))
            .await
            .expect("the operator connects");
    let (record, key) = anchorage::apikey::create(&bus, "test", scope, rate)
        .await
        .expect("the key is stored");
    bus.close().await;
    (key, record.id)
}

/// A device token for `user`/`device`, signed with the development secret.
pub fn token(user: &str, device: &str, ttl_secs: u64) -> String {
    anchorage_edge::auth::mint_hs256(
        anchorage_config::DEV_HMAC_SECRET,
        anchorage_schema::UserId::parse(user).expect("a valid user id"),
        anchorage_schema::DeviceId::parse(device).expect("a valid device id"),
        ttl_secs,
    )
    .expect("a token")
}

/// One more edge (no projector) on the same NATS and database, on a free port.
#[derive(Debug)]
pub struct TestEdge {
    pub addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestEdge {
    /// An edge signed in to NATS as `edge`, configured like `config` otherwise.
    pub async fn start(config: &Config) -> anyhow::Result<TestEdge> {
        let mut config = config.clone();
        sign_in(&mut config, nats_auth::EDGE);
        let config = &config;
        let bus = anchorage_bus::Bus::connect(&anchorage::bus_options(config, false)).await?;
        let store = anchorage_store::Store::connect(&anchorage::store_options(config)).await?;
        let state =
            anchorage::edge_state(config, bus, store, anchorage::load_streams(config)?).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(anchorage_edge::run(listener, state, shutdown.clone()));
        Ok(TestEdge {
            addr,
            shutdown,
            task,
        })
    }

    /// Starts shutting the edge down without waiting for it.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        within(Duration::from_secs(10), "the edge to stop", self.task).await???;
        Ok(())
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking the typed Anchorage protocol, for tests.
///
/// Requests are [`RequestBody`]s (or any request struct); frames come back as [`ServerFrame`]s.
/// Pushes that arrive while waiting for an answer are kept for [`WsClient::push`], and
/// answers to other requests for [`WsClient::next_answer`].
#[derive(Debug)]
pub struct WsClient {
    ws: WsStream,
    next_id: RequestId,
    /// Pushes that arrived while waiting for something else.
    pushes: VecDeque<Push>,
    /// Replies and errors that arrived while waiting for the answer to another request.
    answers: VecDeque<ServerFrame>,
}

/// How long a test waits for any one frame.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// The server closed the connection: the error [`WsClient::next_frame`] fails with then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    /// The close code, if the server sent a close frame.
    pub code: Option<u16>,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "closed with code {code}"),
            None => f.write_str("closed"),
        }
    }
}

impl std::error::Error for Closed {}

impl WsClient {
    pub async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<WsClient> {
        let (ws, _) = within(
            FRAME_WAIT,
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
        )
        .await??;
        Ok(WsClient {
            ws,
            next_id: 1,
            pushes: VecDeque::new(),
            answers: VecDeque::new(),
        })
    }

    /// Connects and says hello with a fresh token; returns the client and the welcome.
    pub async fn signed_in(
        addr: std::net::SocketAddr,
        user: &str,
        device: &str,
    ) -> anyhow::Result<(WsClient, Welcome)> {
        let mut c = WsClient::connect(addr).await?;
        match c.reply(hello(token(user, device, 3600))).await? {
            ReplyBody::Welcome(welcome) => Ok((c, welcome)),
            other => bail!("no welcome: {other:?}"),
        }
    }

    /// Sends raw text, for frames the protocol types cannot express (malformed, hostile).
    pub async fn send_text(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        use futures::SinkExt;
        let text: String = text.into();
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await?;
        Ok(())
    }

    /// Sends request `id` without waiting for its answer (to pipeline, or to choose the id).
    pub async fn send_request(
        &mut self,
        id: RequestId,
        body: impl Into<RequestBody>,
    ) -> anyhow::Result<()> {
        self.send_text(Request::encode(id, &body.into())).await
    }

    /// The next frame from the server; a [`Closed`] error once the server closed.
    pub async fn next_frame(&mut self) -> anyhow::Result<ServerFrame> {
        use futures::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = within(FRAME_WAIT, "a frame", self.ws.next()).await?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t)
                        .with_context(|| format!("not a server frame: {}", t.as_str()));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Closed {
                        code: Some(frame.map_or(0, |f| u16::from(f.code))),
                    }
                    .into());
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => return Err(Closed { code: None }.into()),
            }
        }
    }

    /// The next frame that is not a push (pushes are kept for [`WsClient::push`]): answers
    /// that arrived earlier while waiting for another request first.
    pub async fn next_answer(&mut self) -> anyhow::Result<ServerFrame> {
        if let Some(f) = self.answers.pop_front() {
            return Ok(f);
        }
        loop {
            match self.next_frame().await? {
                ServerFrame::Push(p) => self.pushes.push_back(p),
                f => return Ok(f),
            }
        }
    }

    /// Sends a request (with the next id) and waits for the frame answering it: its reply or
    /// its error.
    pub async fn request(&mut self, body: impl Into<RequestBody>) -> anyhow::Result<ServerFrame> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_request(id, body).await?;
        loop {
            match self.next_frame().await? {
                f if f.id() == Some(id) => return Ok(f),
                ServerFrame::Push(p) => self.pushes.push_back(p),
                f => self.answers.push_back(f),
            }
        }
    }

    /// The reply to a request; fails with the error frame if it was refused.
    pub async fn reply(&mut self, body: impl Into<RequestBody>) -> anyhow::Result<ReplyBody> {
        let body = body.into();
        match self.request(body.clone()).await? {
            ServerFrame::Reply(r) => Ok(r.body),
            other => bail!("{} refused: {other:?}", body.type_name()),
        }
    }

    /// The `ok` answering a request; fails on any other answer.
    pub async fn ok(&mut self, body: impl Into<RequestBody>) -> anyhow::Result<Done> {
        match self.reply(body).await? {
            ReplyBody::Ok(done) => Ok(done),
            other => bail!("not ok: {other:?}"),
        }
    }

    /// The `ack` answering a send; fails on any other answer.
    pub async fn ack(&mut self, send: SendMessage) -> anyhow::Result<Ack> {
        match self.reply(send).await? {
            ReplyBody::Ack(ack) => Ok(ack),
            other => bail!("not an ack: {other:?}"),
        }
    }

    /// The `messages` answering a `sync` or `history`; fails on any other answer.
    pub async fn messages(&mut self, body: impl Into<RequestBody>) -> anyhow::Result<Messages> {
        match self.reply(body).await? {
            ReplyBody::Messages(page) => Ok(page),
            other => bail!("not messages: {other:?}"),
        }
    }

    /// A `ping` answered with `pong`; fails on any other answer.
    pub async fn ping(&mut self) -> anyhow::Result<()> {
        match self.reply(RequestBody::Ping {}).await? {
            ReplyBody::Pong => Ok(()),
            other => bail!("not a pong: {other:?}"),
        }
    }

    /// The error frame refusing a request; fails if it was answered otherwise.
    pub async fn refused(&mut self, body: impl Into<RequestBody>) -> anyhow::Result<ErrorFrame> {
        let body = body.into();
        match self.request(body.clone()).await? {
            ServerFrame::Error(e) => Ok(e),
            other => bail!("{} not refused: {other:?}", body.type_name()),
        }
    }

    /// Waits for a push matching `pred` (taking it from those already received first).
    pub async fn push(&mut self, mut pred: impl FnMut(&Push) -> bool) -> anyhow::Result<Push> {
        if let Some(i) = self.pushes.iter().position(&mut pred)
            && let Some(p) = self.pushes.remove(i)
        {
            return Ok(p);
        }
        loop {
            match self.next_frame().await? {
                ServerFrame::Push(p) if pred(&p) => return Ok(p),
                ServerFrame::Push(p) => self.pushes.push_back(p),
                f => self.answers.push_back(f),
            }
        }
    }

    /// Waits for a push of type `T` matching `pred`, as [`WsClient::push`] does.
    pub async fn pushed<T: PushBody>(
        &mut self,
        mut pred: impl FnMut(&T) -> bool,
    ) -> anyhow::Result<T> {
        let p = self.push(|p| T::of(p).is_some_and(&mut pred)).await?;
        T::take(p).context("the push taken is of the type asked")
    }

    /// Pushes received so far and not taken.
    pub fn pending_pushes(&self) -> &VecDeque<Push> {
        &self.pushes
    }

    /// Keeps a push read by the caller, for [`WsClient::push`] and the others.
    pub fn keep_push(&mut self, push: Push) {
        self.pushes.push_back(push);
    }

    /// Takes the kept pushes `pred` says yes to, in order; the others stay.
    pub fn take_pushes(&mut self, mut pred: impl FnMut(&Push) -> bool) {
        self.pushes.retain(|p| !pred(p));
    }

    /// Answers to other requests received so far and not taken by
    /// [`WsClient::next_answer`].
    pub fn pending_answers(&self) -> &VecDeque<ServerFrame> {
        &self.answers
    }

    /// Waits for the server to close the connection; returns the close code. Frames that
    /// come before the close are kept ([`WsClient::pending_pushes`],
    /// [`WsClient::pending_answers`]).
    pub async fn closed(&mut self) -> anyhow::Result<u16> {
        loop {
            match self.next_frame().await {
                Ok(ServerFrame::Push(p)) => self.pushes.push_back(p),
                Ok(f) => self.answers.push_back(f),
                Err(e) => {
                    return match e.downcast_ref::<Closed>() {
                        Some(Closed { code: Some(code) }) => Ok(*code),
                        _ => Err(e.context("no close code")),
                    };
                }
            }
        }
    }
}

/// The payload of one kind of [`Push`], for [`WsClient::pushed`].
pub trait PushBody: Sized {
    /// The payload, if `push` is of this kind.
    fn of(push: &Push) -> Option<&Self>;
    /// The payload, taken out of `push`.
    fn take(push: Push) -> Option<Self>;
}

macro_rules! push_body {
    ($($variant:ident($body:ty)),* $(,)?) => {
        $(impl PushBody for $body {
            fn of(push: &Push) -> Option<&Self> {
                match push {
                    Push::$variant(b) => Some(b),
                    _ => None,
                }
            }

            fn take(push: Push) -> Option<Self> {
                match push {
                    Push::$variant(b) => Some(b),
                    _ => None,
                }
            }
        })*
    };
}

push_body! {
    Message(LiveMessage),
    Read(ReadMoved),
    Membership(MembershipChanged),
    MembersChanged(MembersChanged),
    Reactions(ReactionsChanged),
    Typing(TypingNow),
    Receipt(Receipt),
    PresenceChanged(PresenceInfo),
}

/// A conversation id (panics on an invalid one: tests name valid ids).
pub fn conv_id(id: &str) -> ConversationId {
    ConversationId::parse(id).expect("a valid conversation id")
}

/// A group id.
pub fn group_id(id: &str) -> GroupId {
    GroupId::parse(id).expect("a valid group id")
}

/// A user id.
pub fn user_id(id: &str) -> UserId {
    UserId::parse(id).expect("a valid user id")
}

/// User ids.
pub fn user_ids(ids: &[&str]) -> Vec<UserId> {
    ids.iter().map(|u| user_id(u)).collect()
}

/// `hello` in the protocol version this software speaks, with no anchors.
pub fn hello(token: impl Into<String>) -> Hello {
    Hello {
        protocol: anchorage_protocol::PROTOCOL_VERSION,
        token: token.into(),
        anchors: Vec::new(),
        cursor: None,
        state_version: None,
    }
}

/// `send` of `body` into `conv` as `client_msg_id`, stamped 1 and not flagged as a retry
/// (`SendMessage { client_ts: …, retry: true, ..send_message(…) }` for others).
pub fn send_message(conv: &str, client_msg_id: &str, body: serde_json::Value) -> SendMessage {
    SendMessage {
        conv: conv_id(conv),
        client_msg_id: ClientMsgId::parse(client_msg_id).expect("a valid client message id"),
        body,
        client_ts: 1,
        retry: false,
        reply_to: None,
        mentions: Vec::new(),
        mention_all: false,
        attachments: Vec::new(),
    }
}

/// `sync` of `conv` after `after`, with the server's default limit.
pub fn sync(conv: &str, after: u64) -> request::Sync {
    request::Sync {
        conv: conv_id(conv),
        after,
        limit: None,
    }
}

/// `create_group` of `group` titled `title` with `members` besides the caller.
pub fn create_group(group: &str, title: &str, members: &[&str]) -> CreateGroup {
    CreateGroup {
        group: group_id(group),
        title: title.to_owned(),
        members: user_ids(members),
    }
}

/// A TCP proxy in front of an edge (or of NATS), to cut connections and lose traffic on
/// purpose.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    control: std::sync::Arc<ProxyControl>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct ProxyControl {
    /// Drop everything the server sends (as a network that lost it).
    blackhole_down: std::sync::atomic::AtomicBool,
    /// Drop everything the client sends.
    blackhole_up: std::sync::atomic::AtomicBool,
    /// Bytes dropped so far, each way.
    swallowed_up: std::sync::atomic::AtomicU64,
    swallowed_down: std::sync::atomic::AtomicU64,
    /// Refuse new connections (as a client that is offline).
    offline: std::sync::atomic::AtomicBool,
    connections: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
    /// Each open connection's own switch for losing what the server sends.
    open_down: std::sync::Mutex<Vec<std::sync::Arc<std::sync::atomic::AtomicBool>>>,
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> anyhow::Result<TcpProxy> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = std::sync::Arc::new(ProxyControl::default());
        let ctl = control.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if ctl.offline.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let ctl2 = ctl.clone();
                let own_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                ctl.open_down
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(own_down.clone());
                let task = tokio::spawn(async move {
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let none = std::sync::atomic::AtomicBool::new(false);
                    let up = relay(cr, sw, [&ctl2.blackhole_up, &none], &ctl2.swallowed_up);
                    let down = relay(
                        sr,
                        cw,
                        [&ctl2.blackhole_down, &own_down],
                        &ctl2.swallowed_down,
                    );
                    let _ = tokio::join!(up, down);
                });
                ctl.connections
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(task.abort_handle());
            }
        });
        Ok(TcpProxy {
            addr,
            control,
            accept,
        })
    }

    /// Starts or stops losing everything the server sends.
    pub fn blackhole_down(&self, on: bool) {
        self.control
            .blackhole_down
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Loses everything the server sends on the connections open now (new ones carry on).
    pub fn blackhole_down_open(&self) {
        for own in self
            .control
            .open_down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            own.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Bytes of what the client sent that were lost so far.
    pub fn swallowed_up(&self) -> u64 {
        self.control
            .swallowed_up
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts or stops losing everything the client sends.
    pub fn blackhole_up(&self, on: bool) {
        self.control
            .blackhole_up
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Starts or stops refusing new connections.
    pub fn offline(&self, on: bool) {
        self.control
            .offline
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every open connection.
    pub fn cut(&self) {
        for c in self
            .control
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            c.abort();
        }
    }
}

/// Copies what `from` reads to `to`, dropping it (and counting it in `swallowed`) while
/// either `blackhole` switch is set.
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: [&std::sync::atomic::AtomicBool; 2],
    swallowed: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if blackhole.iter().any(|b| b.load(Ordering::SeqCst)) {
            swallowed.fetch_add(n as u64, Ordering::SeqCst);
        } else {
            to.write_all(&buf[..n]).await?;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Every entry of the dead-letter stream, oldest first, as its headers (name → value).
pub async fn dead_letters(
    nats_url: &str,
) -> anyhow::Result<Vec<std::collections::BTreeMap<String, String>>> {
    let js = async_nats::jetstream::new(nats_client(nats_url, nats_auth::OPERATOR).await?);
    let dlq = js
        .get_stream(anchorage_schema::subjects::stream::DEADLETTER)
        .await?;
    let last = dlq.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = dlq.get_raw_message(seq).await?;
        out.push(
            m.headers
                .iter()
                .map(|(k, v)| {
                    let value = v
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",");
                    (k.to_string(), value)
                })
                .collect(),
        );
    }
    Ok(out)
}

/// A fresh, migrated database beside `config`'s for a rebuild, as `anchorage replay --into`
/// makes it. The folder holds the database (SQLite) while it lives.
pub async fn rebuild_target(config: &Config) -> (TempDir, anchorage_store::Store) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut config = config.clone();
    config.database.url = fresh_database(dir.path()).await.expect("a fresh database");
    let store = anchorage_store::Store::connect(&anchorage::store_options(&config))
        .await
        .expect("the fresh database opens");
    store.migrate().await.expect("the fresh database migrates");
    (dir, store)
}

/// How `anchorage replay` rebuilds under `config`, `batch_size` events per transaction, to
/// the streams' ends.
pub fn replay_options(
    config: &Config,
    batch_size: usize,
) -> anchorage_projector::replay::ReplayOptions {
    anchorage_projector::replay::ReplayOptions {
        batch_size,
        batch_bytes: anchorage_projector::replay::BATCH_BYTES,
        upto: Default::default(),
        membership: anchorage_projector::MembershipRules {
            tombstone_horizon: config.projector.tombstone_horizon,
        },
    }
}

/// The projections rebuilt from the streams into a fresh database beside `config`'s, as
/// `anchorage replay --into` does, `batch_size` events per transaction, and what the rebuild
/// did. The folder holds the database (SQLite) while it lives.
pub async fn rebuilt(
    config: &Config,
    bus: &anchorage_bus::Bus,
    batch_size: usize,
) -> (
    TempDir,
    anchorage_store::Store,
    anchorage_projector::replay::ReplaySummary,
) {
    let (dir, store) = rebuild_target(config).await;
    let options = replay_options(config, batch_size);
    let summary = anchorage_projector::replay::replay(bus, &store, &options, |_| {})
        .await
        .expect("the rebuild");
    (dir, store, summary)
}

/// How a rebuild differs from the live projections, leaving out where the ingest worker
/// stands (a rebuild records the end of `INGEST`; the effects of its events are in the native
/// streams).
pub async fn rebuild_differences(
    live: &anchorage_store::Store,
    rebuilt: &anchorage_store::Store,
) -> Vec<String> {
    let live = live.fingerprint().await.expect("the live fingerprint");
    let again = rebuilt
        .fingerprint()
        .await
        .expect("the rebuilt fingerprint");
    live.differences(&again)
        .into_iter()
        .filter(|d| !d.starts_with("checkpoint \"ingest\""))
        .collect()
}
