//! Anchorage configuration.
//!
//! One TOML file (by default `anchorage.toml` in the working directory, or the path in
//! `ANCHORAGE_CONFIG` / `--config`) over documented defaults, then `ANCHORAGE_*` environment
//! variables over the file. Nested keys use a double underscore:
//! `ANCHORAGE_EDGE__LISTEN=0.0.0.0:8080` sets `edge.listen`.
//!
//! Everything is checked at start: an unknown key, a value of the wrong type or out of range
//! fails with a message that names the key and where the value came from.
//! [`DEFAULT_TOML`] is the commented file `anchorage config default` prints; a test keeps it
//! equal to [`Config::default`].

#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The default configuration, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The file read when no path is given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "anchorage.toml";

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "ANCHORAGE_";

/// The whole configuration of an Anchorage process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// The projections' database.
    pub database: DatabaseConfig,
    /// The stream and consumer definitions.
    pub streams: StreamsConfig,
    /// The WebSocket edge.
    pub edge: EdgeConfig,
    /// The projector.
    pub projector: ProjectorConfig,
    /// Member-list sync.
    pub members: MembersConfig,
    /// Changes to messages: edits, reactions.
    pub messages: MessagesConfig,
    /// Device tokens.
    pub auth: AuthConfig,
    /// `anchorage dev`.
    pub dev: DevConfig,
    /// Webhooks: events delivered to other systems' HTTP endpoints.
    pub webhooks: WebhooksConfig,
    /// Offline push: notifications through FCM, APNs and Web Push.
    pub push: PushConfig,
    /// Attachments: files in object storage.
    pub attachments: AttachmentsConfig,
    /// Synchronous hooks on the message path.
    pub hooks: HooksConfig,
    /// Logs and traces.
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[nats]`: how to reach NATS and as whom.
pub struct NatsConfig {
    /// Comma-separated server URLs.
    pub url: String,
    /// Optional `.creds` file for the service's NATS user (decentralized JWT auth).
    pub credentials: Option<PathBuf>,
    /// The NATS user this process signs in as (`edge`, `projector`, `operator`, …; see
    /// `deploy/SECURITY.md`).
    pub user: Option<String>,
    /// That user's password.
    pub password: Option<String>,
    /// Prefix of this process's reply subjects; each NATS user may only use its own
    /// (`_INBOX_<user>` when empty and a user is set).
    pub inbox_prefix: Option<String>,
    /// PEM file of the CA that signed the servers' certificates: connect with TLS only.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Client name shown by the server's monitoring.
    pub name: String,
    /// Timeout for JetStream requests (publish acks, stream info), in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            credentials: None,
            user: None,
            password: None,
            inbox_prefix: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            name: "anchorage".into(),
            request_timeout_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[database]`: the projections' database.
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` or `postgres://user:pass@host/db`.
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// SQLite `synchronous` pragma: `full` (durable on power loss) or `normal`.
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://.anchorage/anchorage.db".into(),
            max_connections: 8,
            sqlite_synchronous: SqliteSynchronous::Full,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// SQLite's `synchronous` setting.
pub enum SqliteSynchronous {
    /// Every commit reaches the disk before it returns.
    Full,
    /// Commits reach the disk at checkpoints (WAL): a power loss can lose the last ones.
    Normal,
}

impl SqliteSynchronous {
    /// The pragma value.
    pub fn as_pragma(self) -> &'static str {
        match self {
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Normal => "NORMAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[streams]`: where the definitions are and how many replicas.
pub struct StreamsConfig {
    /// Folder with `streams/*.json` and `consumers/<STREAM>/*.json`.
    pub dir: PathBuf,
    /// Replicas for every stream and consumer (1 for one server, 3 for a cluster).
    pub replicas: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            dir: "streams".into(),
            replicas: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[edge]`: the WebSocket and HTTP front.
pub struct EdgeConfig {
    /// Address the WebSocket and HTTP API listen on.
    pub listen: SocketAddr,
    /// Largest WebSocket frame or HTTP body accepted, in bytes.
    pub max_frame_bytes: u32,
    /// Most WebSocket connections this edge holds; new ones past it get a retry-after.
    pub max_connections: u32,
    /// Allowed `Origin` headers for browser clients; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Frames queued for one connection before it counts as too slow and is told to resync.
    pub queue_frames: u32,
    /// Bytes queued for one connection before it counts as too slow (closed with 4008).
    pub queue_bytes: u64,
    /// Bytes queued for all connections of one user together (closed with 4008 past it).
    pub queue_bytes_per_user: u64,
    /// Bytes queued for all connections of this edge together; past it, the connection whose
    /// frame does not fit is closed with 4008.
    pub queued_bytes_total: u64,
    /// Upgraded sockets that have not signed in yet (no `hello`): they never take one of
    /// `max_connections`, and past this many new upgrades are refused with `503`.
    pub max_pending: u32,
    /// Sockets without `hello` from one IP address (0: no per-address cap). Behind a load
    /// balancer that hides client addresses, set 0.
    pub max_pending_per_ip: u32,
    /// Time an HTTP client has to send a request's headers, and most an idle keep-alive
    /// connection stays open, in milliseconds.
    pub http_header_timeout_ms: u64,
    /// Requests per second one connection may make (token bucket refill).
    pub rate_per_sec: u32,
    /// Requests one connection may make in a burst.
    pub rate_burst: u32,
    /// Requests per second one user may make across all of their connections.
    pub user_rate_per_sec: u32,
    /// Time a new connection has to send `hello`, in milliseconds.
    pub hello_timeout_ms: u64,
    /// A user counts as online while an edge's presence record of them is younger than this
    /// (seconds, at most 90: the PRESENCE stream's age limit); edges refresh theirs every
    /// third of it, so a crashed edge's users go offline within it.
    pub presence_ttl_secs: u64,
    /// Serve the web chat page at `/` (and the TypeScript SDK it runs on under `/sdk/`).
    /// With the development secret, the page signs in as any user (`POST /dev/token`);
    /// otherwise it asks for a device token. `anchorage dev` turns it on.
    pub chat_page: bool,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_frame_bytes: 64 * 1024,
            max_connections: 10_000,
            allowed_origins: Vec::new(),
            queue_frames: 1024,
            queue_bytes: 8 * 1024 * 1024,
            queue_bytes_per_user: 16 * 1024 * 1024,
            queued_bytes_total: 1024 * 1024 * 1024,
            max_pending: 1_000,
            max_pending_per_ip: 16,
            http_header_timeout_ms: 10_000,
            rate_per_sec: 50,
            rate_burst: 100,
            user_rate_per_sec: 100,
            hello_timeout_ms: 10_000,
            presence_ttl_secs: 90,
            chat_page: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[projector]`: applying the streams to SQL.
pub struct ProjectorConfig {
    /// Most events fetched and applied in one transaction (and never more than the
    /// projection's consumer lets be unacknowledged, its `max_ack_pending`).
    pub batch_size: u32,
    /// Tombstones of removed members are kept for this many MEMBERSHIP stream sequences;
    /// a member-list diff from an older version becomes a realignment.
    pub tombstone_horizon: u64,
    /// Where `anchorage projector` serves `/metrics` (the edge serves its own); unset: nowhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Partitions of the messages projection: its conversations are split among this many
    /// workers by a hash of their id, each with its own consumer, checkpoint and lease, so
    /// several processes (or connections) write at once. 1: one worker.
    pub message_partitions: u16,
    /// The partitions of the messages projection this process applies (empty: all of them).
    pub partitions: Vec<u16>,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            tombstone_horizon: 1_000_000,
            metrics_listen: None,
            message_partitions: 1,
            partitions: Vec::new(),
        }
    }
}

/// How member lists of groups are synchronized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembersConfig {
    /// Members per snapshot page of a realignment.
    pub page_members: u32,
    /// Changed members per diff answer; more come from the returned version.
    pub diff_members: u32,
    /// A diff touching more than this share of the group (percent) is sent as a realignment.
    pub full_percent: u32,
    /// Default and largest byte budget of one `members_sync_batch` answer.
    pub batch_budget_bytes: u32,
}

impl Default for MembersConfig {
    fn default() -> Self {
        Self {
            page_members: 10_000,
            diff_members: 2_000,
            full_percent: 50,
            batch_budget_bytes: 256 * 1024,
        }
    }
}

/// `[messages]`: what may change about a message once sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    /// How long after sending its sender may edit a message, in seconds.
    pub edit_window_secs: u64,
    /// Different emoji one message may carry.
    pub max_reaction_kinds: u32,
    /// Reactions to a conversation are pushed together at most this often, in milliseconds:
    /// one frame per connection for many reactions.
    pub reaction_flush_ms: u64,
    /// Up to this many members, a conversation shows who read how far (and pushes each read
    /// to the others); larger ones only count the readers of a message.
    pub receipts_max_members: u32,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        Self {
            edit_window_secs: 2 * 24 * 3600,
            max_reaction_kinds: 20,
            reaction_flush_ms: 250,
            receipts_max_members: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[auth]`: device tokens.
pub struct AuthConfig {
    /// HMAC secret for device tokens (HS256). Set your own outside development.
    pub hmac_secret: String,
    /// Whether HS256 tokens are accepted at all (turn off when only public keys sign).
    pub accept_hmac: bool,
    /// Public keys of your token issuer (EdDSA or RS256), chosen by the token's `kid`.
    pub public_keys: Vec<PublicKeyConfig>,
    /// Lifetime of tokens minted by `anchorage token`, in seconds.
    pub token_ttl_secs: u64,
    /// When set, a token's `aud` must name it (and `anchorage token` sets it).
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal it (and `anchorage token` sets it).
    pub issuer: Option<String>,
    /// Lets `anchorage edge` start with the public development secret (never in production).
    pub allow_dev_secret: bool,
}

/// One public key that signs device tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// The `kid` header of the tokens this key signs.
    pub kid: String,
    /// `EdDSA` or `RS256`.
    pub alg: String,
    /// The public key, a PEM file.
    pub pem: PathBuf,
}

/// The development secret: anyone can mint tokens with it. `anchorage edge` refuses to start
/// with it unless `auth.allow_dev_secret` is set; `anchorage dev` uses it.
pub const DEV_HMAC_SECRET: &str = "anchorage-dev-secret-change-me";

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            hmac_secret: DEV_HMAC_SECRET.into(),
            accept_hmac: true,
            public_keys: Vec::new(),
            token_ttl_secs: 24 * 3600,
            audience: None,
            issuer: None,
            allow_dev_secret: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[dev]`: the development stack.
pub struct DevConfig {
    /// Where `anchorage dev` keeps the NATS store and the SQLite database.
    pub data_dir: PathBuf,
    /// Client port of the nats-server `anchorage dev` starts.
    pub nats_port: u16,
    /// Path of the nats-server binary; empty looks in `.tools/` and on PATH.
    pub nats_server: Option<PathBuf>,
    /// Other systems that get a NATS user (`ext_<source>`) on the development server, and
    /// the streams each may read with its own consumers.
    pub integrations: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for DevConfig {
    fn default() -> Self {
        Self {
            data_dir: ".anchorage".into(),
            nats_port: 4222,
            nats_server: None,
            integrations: std::collections::BTreeMap::from([(
                "crm".to_owned(),
                vec!["MEMBERSHIP".to_owned(), "USERS".to_owned()],
            )]),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[webhooks]`: durable, signed deliveries of events to HTTP endpoints.
pub struct WebhooksConfig {
    /// How long one event is retried (full-jitter backoff) before it goes to the dead-letter
    /// stream, in seconds.
    pub retry_for_secs: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Time one delivery attempt may take, in milliseconds.
    pub timeout_ms: u64,
    /// Endpoints from configuration (more are added through the server API).
    pub endpoints: Vec<WebhookEndpointConfig>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            retry_for_secs: 24 * 3600,
            max_backoff_ms: 5 * 60 * 1000,
            timeout_ms: 10_000,
            endpoints: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// A webhook endpoint from configuration.
pub struct WebhookEndpointConfig {
    /// A name: letters, digits, `-` and `_`.
    pub name: String,
    /// Where deliveries are posted.
    pub url: String,
    /// The Standard Webhooks signing secret, `whsec_<base64>`.
    pub secret: String,
    /// Event types delivered (`message.sent`, `group.*`); empty: every type.
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[push]`: notifications to devices that are not connected.
pub struct PushConfig {
    /// How long a message waits before it is pushed, in milliseconds: a user's device that
    /// is online receives it (and acknowledges) within it, and then nothing is pushed.
    pub grace_ms: u64,
    /// How long a notification is retried (full-jitter backoff) before it is recorded as
    /// failed, in seconds.
    pub retry_for_secs: u64,
    /// Longest wait between two attempts, in milliseconds.
    pub max_backoff_ms: u64,
    /// Time one call to a provider may take, in milliseconds.
    pub timeout_ms: u64,
    /// Calls to providers in flight at once, per worker.
    pub concurrency: usize,
    /// Firebase Cloud Messaging (HTTP v1); unset: FCM targets are refused.
    pub fcm: Option<FcmConfig>,
    /// Apple Push Notification service (token-based); unset: APNs targets are refused.
    pub apns: Option<ApnsConfig>,
    /// Web Push (VAPID); unset: Web Push targets are refused.
    pub web_push: Option<WebPushConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            grace_ms: 3000,
            retry_for_secs: 3600,
            max_backoff_ms: 60_000,
            timeout_ms: 10_000,
            concurrency: 64,
            fcm: None,
            apns: None,
            web_push: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[push.fcm]`.
pub struct FcmConfig {
    /// The Firebase project.
    pub project_id: String,
    /// The service account's JSON key file (its `client_email`, `private_key`, `token_uri`).
    pub credentials: PathBuf,
    /// The FCM API's base URL.
    #[serde(default = "fcm_endpoint")]
    pub endpoint: String,
}

fn fcm_endpoint() -> String {
    "https://fcm.googleapis.com".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[push.apns]`: token-based authentication with a `.p8` signing key.
pub struct ApnsConfig {
    /// The signing key file (PKCS#8 PEM, from the Apple developer account).
    pub key: PathBuf,
    /// Its key id.
    pub key_id: String,
    /// The team id.
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// Production base URL.
    #[serde(default = "apns_endpoint")]
    pub endpoint: String,
    /// Base URL for tokens of development builds (`sandbox`).
    #[serde(default = "apns_sandbox_endpoint")]
    pub sandbox_endpoint: String,
}

fn apns_endpoint() -> String {
    "https://api.push.apple.com".into()
}

fn apns_sandbox_endpoint() -> String {
    "https://api.sandbox.push.apple.com".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[push.web_push]`: VAPID (RFC 8292) and the push services called.
pub struct WebPushConfig {
    /// The VAPID signing key file (P-256, PKCS#8 PEM); its public key is the
    /// `applicationServerKey` browsers subscribe with.
    pub vapid_key: PathBuf,
    /// Who runs this server, for push services: `mailto:` or `https:` (VAPID `sub`).
    pub subject: String,
    /// Push services a subscription may name (`https://` only): a host, `host:port`, or
    /// `.suffix` for subdomains. Subscriptions elsewhere are refused, so a user cannot make
    /// the server call an address of their choosing.
    #[serde(default = "browser_push_services")]
    pub allowed_hosts: Vec<String>,
    /// Push services reached over plain `http://` (`host:port`): a local service only.
    #[serde(default)]
    pub allowed_http_hosts: Vec<String>,
}

fn browser_push_services() -> Vec<String> {
    anchorage_schema::push::BROWSER_PUSH_SERVICES
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// Where attachments are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobBackend {
    /// No attachments: `upload` is refused.
    Off,
    /// A folder on this host, served by the edge (`anchorage dev`, single-host setups).
    Fs,
    /// An S3-compatible object store (`[attachments.s3]`).
    S3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[attachments]`: files messages carry, uploaded to and downloaded from object storage
/// through short-lived URLs the server signs.
pub struct AttachmentsConfig {
    /// Where files are stored: `off`, `fs` or `s3`.
    pub backend: BlobBackend,
    /// Largest file, in bytes.
    pub max_bytes: u64,
    /// Media types a file may have: exact (`application/pdf`), a family (`image/*`), or
    /// `*/*`.
    pub allowed_types: Vec<String>,
    /// How long an upload URL is valid, in seconds.
    pub upload_ttl_secs: u64,
    /// How long a download URL is valid, in seconds.
    pub download_ttl_secs: u64,
    /// How long a revoked message's files wait before they are deleted, in seconds: longer
    /// than a send takes from checking its files to being stored (the before-send hook's
    /// budget included), so a send that checked a file just before the revoke never names a
    /// deleted one.
    pub delete_grace_secs: u64,
    /// Time one call of the server to object storage may take (checking an upload,
    /// deleting), in milliseconds.
    pub timeout_ms: u64,
    /// `fs`: the folder files are kept in (every edge and projector of the host shares it).
    pub dir: PathBuf,
    /// `fs`: the edge's base URL as clients reach it (e.g. `https://chat.example.com`);
    /// unset: URLs are relative to the edge a client is connected to.
    pub public_url: Option<String>,
    /// `s3`: the object store.
    pub s3: Option<S3Config>,
}

impl Default for AttachmentsConfig {
    fn default() -> Self {
        Self {
            backend: BlobBackend::Off,
            max_bytes: 25 * 1024 * 1024,
            allowed_types: [
                "image/*",
                "video/*",
                "audio/*",
                "application/pdf",
                "text/plain",
            ]
            .map(String::from)
            .to_vec(),
            upload_ttl_secs: 900,
            download_ttl_secs: 300,
            delete_grace_secs: 60,
            timeout_ms: 3000,
            dir: ".anchorage/attachments".into(),
            public_url: None,
            s3: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// `[attachments.s3]`: an S3-compatible object store, signed with AWS Signature Version 4.
pub struct S3Config {
    /// The service's base URL, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// The region signed for (`us-east-1` for most S3-compatible servers).
    #[serde(default = "s3_region")]
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// Prepended to every object name (e.g. `attachments/`).
    #[serde(default)]
    pub prefix: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key. Prefer the environment: ANCHORAGE_ATTACHMENTS__S3__SECRET_ACCESS_KEY.
    pub secret_access_key: String,
    /// Path-style URLs (`endpoint/bucket/key`), as most S3-compatible servers want; false:
    /// virtual-hosted (`bucket.endpoint/key`), as AWS prefers.
    #[serde(default = "yes")]
    pub path_style: bool,
}

fn s3_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
/// `[hooks]`: synchronous calls on the message path.
pub struct HooksConfig {
    /// The before-send hook: asked about every message before it is stored.
    pub before_send: Option<BeforeSendConfig>,
}

/// What the before-send hook does when it cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The message is stored as sent.
    FailOpen,
    /// The message is refused (`overloaded`, so the client retries later).
    FailClosed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
/// The before-send hook (moderation, enrichment).
pub struct BeforeSendConfig {
    /// Where each message is posted (signed like a webhook).
    pub url: String,
    /// The signing secret, `whsec_<base64>`.
    pub secret: String,
    /// The time budget of one call, in milliseconds.
    #[serde(default = "default_hook_timeout")]
    pub timeout_ms: u64,
    /// What happens when the hook fails or runs out of time: `fail_open` or `fail_closed`.
    pub on_failure: OnFailure,
}

fn default_hook_timeout() -> u64 {
    500
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people: one line per event, coloured only on a terminal.
    Text,
    /// For machines: one JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
/// `[log]`: logs and traces.
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// Where to export trace spans (OTLP over HTTP with JSON), e.g. `http://127.0.0.1:4318`;
    /// unset: no export.
    pub otlp_endpoint: Option<String>,
    /// The `service.name` exported spans carry.
    pub service_name: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            otlp_endpoint: None,
            service_name: "anchorage".into(),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's message says what it is
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("{}", format_figment(.0))]
    Invalid(Box<figment::Error>),
    #[error("invalid value for {key}: {reason}")]
    OutOfRange { key: &'static str, reason: String },
}

fn format_figment(err: &figment::Error) -> String {
    err.clone()
        .into_iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Loads defaults, then `path` (or `anchorage.toml` if it exists), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(path, Env::prefixed(ENV_PREFIX))
    }

    /// Like [`Config::load`], reading overrides from `env` (tests pass their own).
    pub fn load_from(path: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        match path {
            Some(p) if !p.exists() => return Err(ConfigError::MissingFile(p.to_owned())),
            Some(p) => figment = figment.merge(Toml::file_exact(p)),
            None if Path::new(DEFAULT_FILE).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_FILE))
            }
            None => {}
        }
        // Only `ANCHORAGE_<SECTION>__<KEY>` is configuration: other `ANCHORAGE_*` variables
        // (`ANCHORAGE_PORT`, `ANCHORAGE_SERVICE_HOST`, which Kubernetes sets for a Service
        // named `anchorage`) are not ours to read.
        let figment = figment.merge(
            env.ignore(&["config", "log"])
                .filter(|key| {
                    let key = key.as_str();
                    key.contains("__") && !key.chars().any(|c| c.is_ascii_lowercase())
                })
                .split("__"),
        );
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document over the defaults, without files or environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError::OutOfRange {
                key,
                reason: reason.to_owned(),
            })
        };
        if !(self.database.url.starts_with("sqlite:")
            || self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return bad(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be at least 1");
        }
        if self.nats.url.trim().is_empty() {
            return bad("nats.url", "must name at least one server");
        }
        if self.nats.request_timeout_ms < 100 {
            return bad("nats.request_timeout_ms", "must be at least 100");
        }
        if !(1..=5).contains(&self.streams.replicas) {
            return bad("streams.replicas", "must be between 1 and 5");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.edge.max_frame_bytes) {
            return bad(
                "edge.max_frame_bytes",
                "must be between 1024 and 16777216 bytes",
            );
        }
        if self.edge.max_connections == 0 {
            return bad("edge.max_connections", "must be at least 1");
        }
        if self.members.page_members < 100 {
            return bad("members.page_members", "pages need at least 100 members");
        }
        if self.members.diff_members < 1000 {
            return bad(
                "members.diff_members",
                "diffs need at least 1000 members (one membership event)",
            );
        }
        if !(1..=100).contains(&self.members.full_percent) {
            return bad("members.full_percent", "must be between 1 and 100");
        }
        if self.members.batch_budget_bytes < 4096 {
            return bad("members.batch_budget_bytes", "must be at least 4096");
        }
        if self.edge.queue_frames < 16 {
            return bad("edge.queue_frames", "must be at least 16");
        }
        if self.edge.queue_bytes < u64::from(self.edge.max_frame_bytes) {
            return bad("edge.queue_bytes", "must be at least edge.max_frame_bytes");
        }
        if self.edge.queue_bytes_per_user < self.edge.queue_bytes {
            return bad(
                "edge.queue_bytes_per_user",
                "must be at least edge.queue_bytes",
            );
        }
        if self.edge.queued_bytes_total < self.edge.queue_bytes_per_user {
            return bad(
                "edge.queued_bytes_total",
                "must be at least edge.queue_bytes_per_user",
            );
        }
        if self.edge.max_pending == 0 {
            return bad("edge.max_pending", "must be at least 1");
        }
        if self.edge.http_header_timeout_ms < 100 {
            return bad("edge.http_header_timeout_ms", "must be at least 100");
        }
        if self.edge.rate_per_sec == 0 {
            return bad("edge.rate_per_sec", "must be at least 1");
        }
        if self.edge.rate_burst == 0 {
            return bad("edge.rate_burst", "must be at least 1");
        }
        if self.edge.user_rate_per_sec == 0 {
            return bad("edge.user_rate_per_sec", "must be at least 1");
        }
        for e in &self.webhooks.endpoints {
            if e.name.is_empty()
                || e.name.len() > 64
                || !e
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad(
                    "webhooks.endpoints.name",
                    "letters, digits, - and _ (1 to 64)",
                );
            }
            if !(e.url.starts_with("http://") || e.url.starts_with("https://")) {
                return bad("webhooks.endpoints.url", "an http:// or https:// URL");
            }
            if !e.secret.starts_with("whsec_") {
                return bad("webhooks.endpoints.secret", "a secret reads whsec_<base64>");
            }
        }
        if self.webhooks.retry_for_secs == 0 {
            return bad("webhooks.retry_for_secs", "at least 1");
        }
        // Within the consumers' ack wait (30 s), with room for the acknowledgement: an attempt
        // that outlasted it would have the event handed to another worker meanwhile.
        if !(1..=20_000).contains(&self.webhooks.timeout_ms) {
            return bad("webhooks.timeout_ms", "1 to 20000");
        }
        if let Some(h) = &self.hooks.before_send {
            if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                return bad("hooks.before_send.url", "an http:// or https:// URL");
            }
            if !(1..=10_000).contains(&h.timeout_ms) {
                return bad("hooks.before_send.timeout_ms", "between 1 and 10000");
            }
            if !h.secret.starts_with("whsec_") {
                return bad("hooks.before_send.secret", "a secret reads whsec_<base64>");
            }
        }
        if !(1..=10_000).contains(&self.projector.batch_size) {
            return bad("projector.batch_size", "must be between 1 and 10000");
        }
        if !(1..=64).contains(&self.projector.message_partitions) {
            return bad("projector.message_partitions", "must be between 1 and 64");
        }
        if let Some(p) = self
            .projector
            .partitions
            .iter()
            .find(|p| **p >= self.projector.message_partitions)
        {
            return bad(
                "projector.partitions",
                &format!(
                    "partition {p} does not exist: there are {} (numbered from 0)",
                    self.projector.message_partitions
                ),
            );
        }
        if self.auth.hmac_secret.len() < 16 {
            return bad("auth.hmac_secret", "must be at least 16 bytes long");
        }
        if let Some(k) = self
            .auth
            .public_keys
            .iter()
            .find(|k| k.alg != "EdDSA" && k.alg != "RS256")
        {
            return Err(ConfigError::OutOfRange {
                key: "auth.public_keys",
                reason: format!("key {:?} has alg {:?}; use EdDSA or RS256", k.kid, k.alg),
            });
        }
        for (source, streams) in &self.dev.integrations {
            let valid = !source.is_empty()
                && source.len() <= 64
                && source
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(ConfigError::OutOfRange {
                    key: "dev.integrations",
                    reason: format!("{source:?} is not a source id (1-64 of A-Z a-z 0-9 _ -)"),
                });
            }
            if anchorage_schema::RESERVED_SOURCES.contains(&source.as_str()) {
                return Err(ConfigError::OutOfRange {
                    key: "dev.integrations",
                    reason: format!("{source:?} is a source of Anchorage's own"),
                });
            }
            let stream_name = |s: &String| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            if let Some(s) = streams.iter().find(|s| !stream_name(s)) {
                return Err(ConfigError::OutOfRange {
                    key: "dev.integrations",
                    reason: format!("{source}: {s:?} is not a stream name"),
                });
            }
        }
        if self.auth.token_ttl_secs == 0 {
            return bad("auth.token_ttl_secs", "must be at least 1");
        }
        let a = &self.attachments;
        if a.max_bytes == 0 || a.max_bytes > 5 * 1024 * 1024 * 1024 {
            return bad(
                "attachments.max_bytes",
                "between 1 byte and 5 GiB (the largest single upload S3 takes)",
            );
        }
        if !(1..=604_800).contains(&a.upload_ttl_secs)
            || !(1..=604_800).contains(&a.download_ttl_secs)
        {
            return bad(
                "attachments.upload_ttl_secs",
                "upload_ttl_secs and download_ttl_secs are between 1 second and 7 days",
            );
        }
        if !(100..=60_000).contains(&a.timeout_ms) {
            return bad("attachments.timeout_ms", "between 100 and 60000");
        }
        if a.delete_grace_secs > 86_400 {
            return bad("attachments.delete_grace_secs", "at most a day (86400)");
        }
        if let Some(t) = a.allowed_types.iter().find(|t| {
            let family = t.strip_suffix("/*").unwrap_or(t);
            !(family == "*"
                || anchorage_schema::attachment::check_content_type(t).is_ok()
                || anchorage_schema::attachment::check_content_type(&format!("{family}/x")).is_ok())
        }) {
            return Err(ConfigError::OutOfRange {
                key: "attachments.allowed_types",
                reason: format!("{t:?} is not a media type, a family like image/* or */*"),
            });
        }
        if let Some(u) = &a.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return bad("attachments.public_url", "an http:// or https:// URL");
        }
        match (&a.backend, &a.s3) {
            (BlobBackend::S3, None) => {
                return bad("attachments.s3", "backend s3 needs [attachments.s3]");
            }
            (BlobBackend::S3, Some(s3)) => {
                if !(s3.endpoint.starts_with("http://") || s3.endpoint.starts_with("https://")) {
                    return bad("attachments.s3.endpoint", "an http:// or https:// URL");
                }
                if s3.bucket.is_empty()
                    || s3.access_key_id.is_empty()
                    || s3.secret_access_key.is_empty()
                {
                    return bad(
                        "attachments.s3",
                        "bucket, access_key_id and secret_access_key are required",
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The configuration with every secret replaced by [`REDACTED`]: the HMAC secret, NATS
    /// passwords and the password in the database URL. What `anchorage config show` prints.
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        c.auth.hmac_secret = REDACTED.into();
        if let Some(s3) = &mut c.attachments.s3 {
            s3.secret_access_key = REDACTED.into();
        }
        for e in &mut c.webhooks.endpoints {
            e.secret = REDACTED.into();
        }
        if let Some(h) = &mut c.hooks.before_send {
            h.secret = REDACTED.into();
        }
        if c.nats.password.is_some() {
            c.nats.password = Some(REDACTED.into());
        }
        c.database.url = redact_url(&c.database.url);
        c.nats.url = c
            .nats
            .url
            .split(',')
            .map(|u| redact_url(u.trim()))
            .collect::<Vec<_>>()
            .join(",");
        c
    }

    /// The configuration as TOML (without comments), e.g. to show the effective settings.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// What a secret is shown as.
pub const REDACTED: &str = "<redacted>";

/// A URL with its secrets replaced by [`REDACTED`]: the password of `user:password@`, a NATS
/// token (`nats://token@host`), and `password`, `pass`, `sslpassword` and `token` query
/// parameters.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
            // A bare NATS userinfo is a token.
            None if scheme.starts_with("nats") || scheme == "tls" || scheme == "ws" => {
                format!("{REDACTED}@{host}")
            }
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if ["password", "pass", "sslpassword", "token"]
                            .contains(&k.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{k}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
// figment's `Jail` closures return its large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn documented_defaults_equal_the_code_defaults() {
        assert_eq!(Config::from_toml(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn file_then_env_override() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "anchorage.toml",
                "[edge]\nlisten = \"127.0.0.1:9000\"\nmax_connections = 5\n",
            )?;
            jail.set_env("ANCHORAGE_EDGE__MAX_CONNECTIONS", "7");
            let config = Config::load(None).unwrap();
            assert_eq!(config.edge.listen.port(), 9000);
            assert_eq!(config.edge.max_connections, 7);
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::from_toml("[edge]\nmax_frame_bytes = \"big\"\n").unwrap_err();
        assert!(err.to_string().contains("edge.max_frame_bytes"), "{err}");
        let err = Config::from_toml("[edge]\nmax_frame_bytes = 10\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for edge.max_frame_bytes: must be between 1024 and 16777216 bytes"
        );
        let err = Config::from_toml("[edge]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("edge.listen"), "{err}");
        let err = Config::from_toml("[database]\nurl = \"mysql://x\"\n").unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
        // An attempt must end within the consumers' ack wait.
        for ms in [0, 20_001] {
            let err = Config::from_toml(&format!("[webhooks]\ntimeout_ms = {ms}\n")).unwrap_err();
            assert!(err.to_string().contains("webhooks.timeout_ms"), "{err}");
        }
        assert!(Config::from_toml("[webhooks]\ntimeout_ms = 20000\n").is_ok());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::from_toml("[edge]\nlisten_port = 1\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
        Jail::expect_with(|jail| {
            jail.set_env("ANCHORAGE_EDGE__MAX_CONECTIONS", "1");
            let err = Config::load(None).unwrap_err();
            assert!(err.to_string().contains("max_conections"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn env_values_are_typed_and_named() {
        Jail::expect_with(|jail| {
            jail.set_env("ANCHORAGE_STREAMS__REPLICAS", "three");
            let err = Config::load(None).unwrap_err();
            let msg = err.to_string();
            assert!(msg.to_lowercase().contains("streams.replicas"), "{msg}");
            assert!(msg.contains("ANCHORAGE_"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn only_section_keys_are_read_from_the_environment() {
        Jail::expect_with(|jail| {
            // What Kubernetes injects for a Service named `anchorage`.
            jail.set_env("ANCHORAGE_PORT", "tcp://10.0.0.7:8080");
            jail.set_env("ANCHORAGE_SERVICE_HOST", "10.0.0.7");
            jail.set_env("ANCHORAGE_PORT_8080_TCP_ADDR", "10.0.0.7");
            jail.set_env("ANCHORAGE_EDGE__MAX_CONNECTIONS", "9");
            // Not the documented spelling: ignored, not half-read.
            jail.set_env("ANCHORAGE_Edge__Rate_Burst", "3");
            let config = Config::load(None).unwrap();
            assert_eq!(config.edge.max_connections, 9);
            assert_eq!(config.edge.rate_burst, Config::default().edge.rate_burst);
            Ok(())
        });
    }

    #[test]
    fn each_range_error_names_its_own_key() {
        for (toml, key) in [
            ("[members]\ndiff_members = 10\n", "members.diff_members"),
            ("[members]\npage_members = 10\n", "members.page_members"),
            ("[edge]\nrate_burst = 0\n", "edge.rate_burst"),
            ("[edge]\nrate_per_sec = 0\n", "edge.rate_per_sec"),
            ("[edge]\nuser_rate_per_sec = 0\n", "edge.user_rate_per_sec"),
        ] {
            let err = Config::from_toml(toml).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid value for {key}:")),
                "{toml}: {err}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let mut c = Config::default();
        c.auth.hmac_secret = "s3cr3t-s3cr3t-s3cr3t".into();
        c.database.url = "postgres://app:hunter2@db.internal:5432/chat?sslmode=require".into();
        c.nats.url = "nats://edge:pw1@n1:4222, nats://n2:4222".into();
        c.nats.password = Some("pw2".into());
        let shown = c.redacted().to_toml();
        for secret in ["s3cr3t", "hunter2", "pw1", "pw2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("postgres://app:<redacted>@db.internal:5432/chat?sslmode=require"));
        assert!(shown.contains("nats://edge:<redacted>@n1:4222,nats://n2:4222"));
        assert_eq!(
            redact_url("sqlite://.anchorage/a.db"),
            "sqlite://.anchorage/a.db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=dbSECRET&sslmode=require"),
            "postgres://h/db?user=u&password=<redacted>&sslmode=require"
        );
        assert_eq!(
            redact_url("nats://tokenSECRET@127.0.0.1:4222"),
            "nats://<redacted>@127.0.0.1:4222"
        );
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
