//! s3rver, an S3-compatible server that checks AWS Signature Version 4 (installed from npm by
//! `deploy/node-tools.sh`), run by a test on a free port with its own folder.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anchorage_config::S3Config;

/// The bucket the tests use.
pub const BUCKET: &str = "attachments";

/// A running s3rver; stopped when dropped.
#[derive(Debug)]
pub struct S3rver {
    child: Option<tokio::process::Child>,
    pub port: u16,
    dir: tempfile::TempDir,
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

impl S3rver {
    /// Starts s3rver with the bucket [`BUCKET`].
    pub async fn start() -> S3rver {
        let dir = tempfile::tempdir().expect("a folder for s3rver");
        let port = anchorage::natsd::free_port().expect("a free port");
        let mut s = S3rver {
            child: None,
            port,
            dir,
        };
        s.resume().await;
        s
    }

    /// Stops the server (its files stay).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port and files.
    pub async fn resume(&mut self) {
        let child = tokio::process::Command::new("node")
            .arg(s3rver_bin())
            .args(["-d"])
            .arg(self.dir.path())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "--silent"])
            .args(["--configure-bucket", BUCKET])
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("starting s3rver (node)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        crate::eventually(Duration::from_secs(20), "s3rver to listen", || async {
            tokio::net::TcpStream::connect(&addr).await.ok()
        })
        .await
        .expect("s3rver listening");
    }

    /// `[attachments.s3]` for this server (s3rver's built-in key).
    pub fn config(&self) -> S3Config {
        S3Config {
            endpoint: format!("http://127.0.0.1:{}", self.port),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            prefix: "files/".into(),
            access_key_id: "S3RVER".into(),
            secret_access_key: "S3RVER".into(),
            path_style: true,
        }
    }
}
