//! The `anchorage` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anchorage_bus::Bus;
use anchorage_config::{Config, DEFAULT_TOML};
use anchorage_projector::ProjectorOptions;
use anchorage_schema::{DeviceId, UserId};
use anchorage_store::Store;
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::nats_auth::{self, Credentials};
use crate::natsd::{self, NatsServer, NatsServerOptions};
use crate::stack::Stack;

/// Anchorage: instant messaging on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "anchorage", version, about)]
pub struct Cli {
    /// Configuration file (default: ./anchorage.toml if present).
    #[arg(long, global = true, env = "ANCHORAGE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole stack locally: nats-server, streams, SQLite, projector and edge.
    Dev,
    /// Run an edge (WebSocket and HTTP API).
    Edge,
    /// Run the projector and the webhook worker (migrates the database first).
    Projector,
    /// Apply the database migrations.
    Migrate,
    /// Stream and consumer definitions.
    Streams {
        #[command(subcommand)]
        command: StreamsCommand,
    },
    /// Rebuild every projection from the streams into a fresh database.
    Replay {
        /// The database to build (sqlite:path or postgres://…); created if missing. Running
        /// again into the same database resumes an interrupted replay.
        #[arg(long)]
        into: String,
        /// Compare the result with the live database (database.url) and exit non-zero naming
        /// every difference.
        #[arg(long)]
        verify: bool,
        /// Events per transaction, at most (larger batches rebuild faster; an interrupted
        /// replay resumes from the last committed one).
        #[arg(long, default_value_t = anchorage_projector::replay::BATCH as u64,
              value_parser = clap::value_parser!(u64).range(1..=100_000))]
        batch: u64,
    },
    /// Chat in the terminal as `--user`: conversations with unread counts, history, live
    /// messages (signs in with `--token`, or a token minted with auth.hmac_secret).
    Chat {
        /// The edge's WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
        url: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "terminal")]
        device: String,
        /// A device token (default: one minted with auth.hmac_secret for each connection).
        #[arg(long, env = "ANCHORAGE_CHAT_TOKEN")]
        token: Option<String>,
        /// The local store (default: .anchorage/chat-<user>-<device>.db).
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Mint a development device token (HS256 with auth.hmac_secret).
    Token {
        #[arg(long)]
        user: String,
        #[arg(long)]
        device: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Measure a scenario next to its raw baseline: raw, send, replay, memory, members,
    /// fanout, reconnect, signals, ingest (`--quick` for a smoke run, `--json` for one line).
    /// Runs the `anchorage-bench` binary installed beside this one.
    #[command(disable_help_flag = true)]
    Bench {
        /// The scenario and its options, passed on.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the nats-server `authorization` block: a user per role with least-privilege
    /// permissions, passwords read from $ANCHORAGE_NATS_<USER>_PASSWORD (deploy/SECURITY.md).
    NatsAuth {
        /// An integration and the streams it may read, e.g. `crm=MEMBERSHIP,USERS` (repeat
        /// for more).
        #[arg(long = "integration", value_name = "SOURCE=STREAMS")]
        integrations: Vec<String>,
    },
    /// End a device's session: its sockets close at once and its tokens are refused.
    Revoke {
        #[arg(long)]
        user: String,
        #[arg(long)]
        device: String,
    },
    /// Server API keys (stored hashed on the ADMIN stream).
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Print the server API's OpenAPI 3.1 document.
    Openapi,
    /// Ask a running edge or projector whether it is ready (exit 0) or not (exit 1): for
    /// container health checks, which have no HTTP client of their own.
    Health {
        /// The URL to ask (`/readyz` of the edge's `edge.listen`, or of the projector's
        /// `projector.metrics_listen`).
        #[arg(default_value = "http://127.0.0.1:8080/readyz")]
        url: String,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key and print it (once: only its hash is kept).
    Create {
        /// What the key is for.
        #[arg(long)]
        name: String,
        /// read, write or admin (each includes the ones before).
        #[arg(long, default_value = "write")]
        scope: String,
        /// Requests per second the key may make.
        #[arg(long, default_value_t = 100)]
        rate: u32,
    },
    /// List the keys (never their secrets).
    List,
    /// Revoke a key: every edge refuses it from the next request on.
    Revoke {
        /// The key's id (the 16 hex digits after `ak_`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Create or update streams and consumers to match streams/ (never deletes).
    Apply {
        /// Change nothing; exit non-zero naming each difference.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the default configuration, with a comment on every key.
    Default,
    /// Print the effective configuration (defaults, file, environment).
    Show,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config {
        command: ConfigCommand::Default,
    } = cli.command
    {
        print!("{DEFAULT_TOML}");
        return Ok(ExitCode::SUCCESS);
    }
    match &cli.command {
        Command::Bench { args } => return bench(args).await,
        Command::Health { url } => return health(url).await,
        Command::NatsAuth { integrations } => {
            print!("{}", nats_auth::render_for_deploy(integrations)?);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Bench { .. } | Command::Health { .. } | Command::NatsAuth { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
        Command::Dev => dev(config).await,
        Command::Edge => edge(config).await,
        Command::Projector => projector(config).await,
        Command::Migrate => {
            let store = Store::connect(&crate::store_options(&config)).await?;
            let applied = store.migrate().await?;
            println!(
                "database at schema version {} ({applied} migrations applied)",
                store.schema_version().await?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Streams {
            command: StreamsCommand::Apply { check },
        } => streams_apply(&with_dev_operator(config)?, check).await,
        Command::Replay {
            into,
            verify,
            batch,
        } => crate::replay::run(&with_dev_operator(config)?, &into, verify, batch as usize).await,
        Command::Chat {
            url,
            user,
            device,
            token,
            store,
        } => chat(config, url, user, device, token, store).await,
        Command::Token { user, device, ttl } => {
            let user = UserId::parse(user).context("--user")?;
            let device = DeviceId::parse(device).context("--device")?;
            let ttl = ttl.unwrap_or(config.auth.token_ttl_secs);
            let token = anchorage_edge::auth::mint_configured(&config.auth, user, device, ttl)?;
            println!("{token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Revoke { user, device } => {
            let user = UserId::parse(user).context("--user")?;
            let device = DeviceId::parse(device).context("--device")?;
            eprintln!(
                "revoking {user}/{device}: connected devices close at once; waiting up to 30 s \
                 for the projector to record it"
            );
            let revoked =
                crate::revoke_session(&with_dev_operator(config)?, &user, &device).await?;
            if !revoked.applied {
                eprintln!(
                    "revoked {user}/{device} (USERS seq {}), but the projector has not applied \
                     it within 30 s: connected devices are closed, reconnects are refused once \
                     the projector catches up",
                    revoked.seq
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("revoked {user}/{device} (USERS seq {})", revoked.seq);
            Ok(ExitCode::SUCCESS)
        }
        Command::Apikey { command } => {
            crate::apikey::run(&with_dev_operator(config)?, command).await
        }
        Command::Openapi => {
            print!("{}", anchorage_edge::openapi_json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            print!("{}", config.redacted().to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Default,
        } => unreachable!("handled before the configuration is loaded"),
    }
}

async fn streams_apply(config: &Config, check: bool) -> anyhow::Result<ExitCode> {
    let streams = crate::load_streams(config)?;
    let bus = Bus::connect(&crate::bus_options(config, false)).await?;
    let report = if check {
        bus.check(&streams).await?
    } else {
        bus.apply(&streams).await?
    };
    bus.close().await;
    print!("{report}");
    if check {
        if report.in_sync() {
            println!(
                "in sync: the server matches {}",
                config.streams.dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "drift: the server differs from {}",
            config.streams.dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    if report.refused() {
        println!("some changes were refused; nothing was deleted");
        return Ok(ExitCode::FAILURE);
    }
    if report.changed() {
        println!("applied");
    } else {
        println!("no changes");
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for a signal or a failing service, then stops `stack`.
async fn serve_until_signal(mut stack: Stack) -> anyhow::Result<ExitCode> {
    let outcome = tokio::select! {
        signal = crate::shutdown_signal() => {
            tracing::info!(signal = signal?, "shutting down");
            Ok(())
        }
        err = stack.failed() => Err(err),
    };
    let stopped = stack.stop().await;
    outcome?;
    stopped?;
    Ok(ExitCode::SUCCESS)
}

async fn dev(mut config: Config) -> anyhow::Result<ExitCode> {
    let data_dir = config.dev.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    // The database lives with the rest of the development data unless one is named.
    if config.database.url == anchorage_config::DatabaseConfig::default().url {
        config.database.url = format!("sqlite://{}/anchorage.db", data_dir.display());
    }
    // Attachments are kept with the rest of the development data, served by the edge.
    if config.attachments.backend == anchorage_config::BlobBackend::Off {
        config.attachments.backend = anchorage_config::BlobBackend::Fs;
        config.attachments.dir = data_dir.join("attachments");
    }
    // The web chat page, signing in as any development user.
    config.edge.chat_page = true;
    let binary = natsd::locate(config.dev.nats_server.as_deref(), &std::env::current_dir()?)?;
    // Every part signs in as its own NATS user; the passwords are generated once and kept.
    let credentials =
        Credentials::load_or_create(&dev_credentials_path(&config), &config.dev.integrations)?;
    let mut nats = NatsServer::spawn(NatsServerOptions {
        binary,
        server_name: "anchorage-dev".into(),
        port: Some(config.dev.nats_port),
        store_dir: data_dir.join("nats"),
        sync_always: false,
        cluster: None,
        auth: Some(credentials.clone()),
        tls: None,
    })
    .await
    .context("starting nats-server")?;
    config.nats.url = nats.url();

    let result = async {
        let listener = TcpListener::bind(config.edge.listen)
            .await
            .with_context(|| format!("binding edge.listen = {}", config.edge.listen))?;
        let stack = Stack::start_as(&config, listener, Some(&credentials)).await?;
        print!("{}", stack.applied);
        print_welcome(&config, &stack, &nats);
        serve_until_signal(stack).await
    }
    .await;

    nats.stop(Duration::from_secs(10)).await?;
    println!("stopped; data kept in {}", data_dir.display());
    result
}

fn print_welcome(config: &Config, stack: &Stack, nats: &NatsServer) {
    let addr = stack.edge_addr;
    println!(
        "\nAnchorage is running.\n\
         \n  chat page  http://{addr}/  (sign in as any user)\
         \n  edge       http://{addr}  (WebSocket ws://{addr}/ws)\
         \n  health     http://{addr}/livez   http://{addr}/readyz   http://{addr}/metrics\
         \n  server API http://{addr}/v1  (OpenAPI: http://{addr}/v1/openapi.json)\
         \n  nats       {nats_url}  (JetStream store in {store})\
         \n  database   {db}\
         \n\nMint a device token:\
         \n  anchorage token --user alice --device laptop\
         \nCreate a server API key (for your backend):\
         \n  anchorage apikey create --name backend --scope admin\
         \n\nNATS users (edge, projector, operator, ext_<source>) and their passwords are in\
         \n  {creds}\
         \n(`anchorage revoke`, `apikey`, `streams apply` and `replay` here use the operator from it.)\
         \n\nStop with Ctrl-C.\n",
        nats_url = nats.url(),
        store = nats.options().store_dir.display(),
        db = config.database.url,
        creds = dev_credentials_path(config).display(),
    );
}

/// Where `anchorage dev` keeps the passwords of its NATS users.
pub fn dev_credentials_path(config: &Config) -> std::path::PathBuf {
    config.dev.data_dir.join("nats-credentials.json")
}

/// The configuration of an administrative command: with no NATS identity configured and a
/// development server's credentials at hand, it signs in as that server's operator.
fn with_dev_operator(mut config: Config) -> anyhow::Result<Config> {
    if config.nats.user.is_none() && config.nats.credentials.is_none() {
        let path = dev_credentials_path(&config);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let creds: Credentials = serde_json::from_str(&text)
                .with_context(|| format!("reading {}", path.display()))?;
            if let Some(password) = creds.password(nats_auth::OPERATOR) {
                tracing::info!(file = %path.display(), "signing in to NATS as the development operator");
                config.nats.user = Some(nats_auth::OPERATOR.to_owned());
                config.nats.password = Some(password.to_owned());
            }
        }
    }
    Ok(config)
}

async fn edge(config: Config) -> anyhow::Result<ExitCode> {
    if config.auth.accept_hmac && config.auth.hmac_secret == anchorage_config::DEV_HMAC_SECRET {
        if !config.auth.allow_dev_secret {
            anyhow::bail!(
                "auth.hmac_secret is the public development secret: anyone could sign in as \
                 anyone. Set your own secret (ANCHORAGE_AUTH__HMAC_SECRET), or turn HS256 off \
                 (auth.accept_hmac = false), or set auth.allow_dev_secret = true for a test setup"
            );
        }
        tracing::warn!("auth.hmac_secret is the public development secret (allow_dev_secret)");
    }
    if config.attachments.backend != anchorage_config::BlobBackend::Off
        && config.auth.hmac_secret == anchorage_config::DEV_HMAC_SECRET
        && !config.auth.allow_dev_secret
    {
        anyhow::bail!(
            "attachments are signed with a key derived from auth.hmac_secret, which is the \
             public development secret: anyone could forge file URLs. Set your own secret \
             (ANCHORAGE_AUTH__HMAC_SECRET) even if HS256 tokens are off"
        );
    }
    let streams = crate::load_streams(&config)?;
    let bus = Bus::connect(&crate::bus_options(&config, true)).await?;
    let store = Store::connect(&crate::store_options(&config)).await?;
    let listener = TcpListener::bind(config.edge.listen)
        .await
        .with_context(|| format!("binding edge.listen = {}", config.edge.listen))?;
    let shutdown = cancel_on_signal();
    let state = crate::edge_state(&config, bus.clone(), store.clone(), streams).await?;
    anchorage_edge::run(listener, state, shutdown).await?;
    bus.close().await;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// A token cancelled on SIGINT or SIGTERM.
fn cancel_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let signal = token.clone();
    tokio::spawn(async move {
        // Detached on purpose: it only cancels the token the service is waiting on.
        if let Ok(name) = crate::shutdown_signal().await {
            tracing::info!(signal = name, "shutting down");
        }
        signal.cancel();
    });
    token
}

async fn health(url: &str) -> anyhow::Result<ExitCode> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?;
    match client.get(url).send().await {
        Ok(answer) if answer.status().is_success() => Ok(ExitCode::SUCCESS),
        Ok(answer) => {
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            eprintln!("{url}: {status} {}", body.trim());
            Ok(ExitCode::FAILURE)
        }
        Err(err) => {
            eprintln!("{url}: {err}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn projector(config: Config) -> anyhow::Result<ExitCode> {
    let bus = Bus::connect(&crate::bus_options(&config, true)).await?;
    let store = Store::connect(&crate::store_options(&config)).await?;
    store.migrate().await.context("migrating the database")?;
    let shutdown = cancel_on_signal();
    if let Some(addr) = config.projector.metrics_listen {
        // The recorder goes in before any worker names a metric: one named before it would
        // record nowhere.
        anchorage_edge::metrics::handle();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("projector.metrics_listen {addr}"))?;
        tokio::spawn(crate::serve_metrics(
            listener,
            bus.clone(),
            store.clone(),
            shutdown.clone(),
        ));
    }
    let webhooks = tokio::spawn(anchorage_webhooks::run(
        bus.clone(),
        config.webhooks.clone(),
        shutdown.clone(),
    ));
    let push = tokio::spawn(anchorage_push::run(
        bus.clone(),
        store.clone(),
        config.push.clone(),
        shutdown.clone(),
    ));
    let reaper = crate::attachment_reaper(&config, store.clone(), bus.clone(), shutdown.clone())?
        .map(tokio::spawn);
    anchorage_projector::run(
        bus.clone(),
        store.clone(),
        ProjectorOptions::from_config(&config.projector),
        shutdown.clone(),
    )
    .await?;
    shutdown.cancel();
    webhooks.await??;
    push.await??;
    if let Some(reaper) = reaper {
        reaper.await??;
    }
    bus.close().await;
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn chat(
    config: Config,
    url: String,
    user: String,
    device: String,
    token: Option<String>,
    store: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let user_id = UserId::parse(user.clone()).context("--user")?;
    let device_id = DeviceId::parse(device.clone()).context("--device")?;
    let store_path = match store {
        Some(path) => path,
        None => {
            let dir = config.dev.data_dir.clone();
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join(format!("chat-{user}-{device}.db"))
        }
    };
    let token: anchorage_sdk::TokenSource = match token {
        Some(token) => std::sync::Arc::new(move || token.clone()),
        None => {
            // Checked once here, so a bad configuration says so before the screen opens.
            anchorage_edge::auth::mint_configured(
                &config.auth,
                user_id.clone(),
                device_id.clone(),
                config.auth.token_ttl_secs,
            )?;
            let auth = config.auth.clone();
            std::sync::Arc::new(move || {
                anchorage_edge::auth::mint_configured(
                    &auth,
                    user_id.clone(),
                    device_id.clone(),
                    auth.token_ttl_secs,
                )
                .unwrap_or_default()
            })
        }
    };
    anchorage_chat::run(anchorage_chat::ChatOptions {
        url,
        user,
        token,
        store_path,
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `anchorage-bench` (built beside this binary: `cargo build --release -p anchorage -p
/// anchorage-bench`) with `args`, and exits as it does.
async fn bench(args: &[String]) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let bench = exe.with_file_name(format!("anchorage-bench{}", std::env::consts::EXE_SUFFIX));
    if !bench.is_file() {
        anyhow::bail!(
            "{} not found: build it with `cargo build --release -p anchorage-bench`",
            bench.display()
        );
    }
    let status = tokio::process::Command::new(&bench)
        .args(args)
        .status()
        .await
        .with_context(|| format!("running {}", bench.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
