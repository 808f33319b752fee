//! `anchorage replay --into URL [--verify]`.
//!
//! Rebuilds the projections into another database with a progress line on the terminal
//! (events/s, ETA). With `--verify`, the rebuild is brought to the live projector's checkpoints
//! and compared with the live database: row counts, every group's version and digest, every
//! conversation's version, every read marker. The live projector keeps moving while this runs,
//! so the comparison is retried (catching the rebuild up each time) until both stand at the
//! same checkpoints.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anchorage_bus::Bus;
use anchorage_config::Config;
use anchorage_projector::Projection;
use anchorage_projector::replay::{Progress, ReplayOptions, ReplaySummary, replay};
use anchorage_store::{Store, StoreOptions};
use anyhow::{Context, bail};

/// Attempts at catching the live projector at a standstill before giving up on `--verify`.
const VERIFY_ATTEMPTS: usize = 20;

/// Whether two database URLs name the same database: SQLite files by their resolved path
/// (`./a.db`, `a.db` and its absolute path are one file), PostgreSQL by host, port and
/// database name.
pub fn same_database(a: &str, b: &str) -> bool {
    fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
        let rest = url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let decoded = percent_decode(rest.split('?').next().unwrap_or(rest));
        let path = std::path::Path::new(&decoded);
        let absolute = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir().ok()?.join(path)
        };
        // A file that exists resolves through links too; one that does not yet is compared
        // by its normalized path.
        Some(std::fs::canonicalize(&absolute).unwrap_or_else(|_| {
            absolute
                .components()
                .fold(std::path::PathBuf::new(), |mut p, c| {
                    match c {
                        std::path::Component::CurDir => {}
                        std::path::Component::ParentDir => {
                            p.pop();
                        }
                        other => p.push(other),
                    }
                    p
                })
        }))
    }
    fn postgres(url: &str) -> Option<(String, String, String)> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))?;
        let rest = rest.split('?').next().unwrap_or(rest);
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = host.split_once(':').unwrap_or((host, "5432"));
        let host = if host == "127.0.0.1" || host == "::1" {
            "localhost"
        } else {
            host
        };
        Some((host.to_ascii_lowercase(), port.to_owned(), db.to_owned()))
    }
    match (sqlite_file(a), sqlite_file(b)) {
        // The same file however it is reached: by path, or by device and inode (a hard link).
        (Some(x), Some(y)) => return x == y || same_inode(&x, &y),
        (Some(_), None) | (None, Some(_)) => return false,
        (None, None) => {}
    }
    match (postgres(a), postgres(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// `%XX` escapes decoded (as URLs may spell a path).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push(((hex(h).unwrap_or(0) << 4) | hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether two existing paths are one file (same device and inode).
fn same_inode(a: &std::path::Path, b: &std::path::Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    let _ = (a, b);
    false
}

pub async fn run(
    config: &Config,
    into: &str,
    verify: bool,
    batch: usize,
) -> anyhow::Result<ExitCode> {
    if same_database(into, &config.database.url) {
        bail!(
            "--into names the live database ({into} is {}); replay builds a separate one",
            config.database.url
        );
    }
    let bus = Bus::connect(&crate::bus_options(config, false)).await?;
    anchorage_store::ensure_database(into)
        .await
        .with_context(|| format!("creating {into}"))?;
    // The rebuild can always be run again (it resumes from its checkpoints), so it need not
    // wait for every commit to reach the disk.
    let target = Store::connect(&StoreOptions {
        url: into.to_owned(),
        sqlite_synchronous: "NORMAL",
        ..crate::store_options(config)
    })
    .await
    .with_context(|| format!("connecting to {into}"))?;
    target.migrate().await?;
    let live = if verify {
        Some(
            Store::connect(&crate::store_options(config))
                .await
                .context("connecting to the live database")?,
        )
    } else {
        None
    };

    let started = Instant::now();
    let mut options = ReplayOptions {
        batch_size: batch,
        batch_bytes: anchorage_projector::replay::BATCH_BYTES,
        upto: BTreeMap::new(),
        membership: anchorage_projector::MembershipRules {
            tombstone_horizon: config.projector.tombstone_horizon,
        },
    };
    let mut meter = Meter::new();
    let mut total = ReplaySummary::default();
    let Some(live) = live else {
        let s = replay(&bus, &target, &options, |p| meter.show(p)).await?;
        meter.finish();
        report(&s, started.elapsed());
        return Ok(ExitCode::SUCCESS);
    };

    for attempt in 1..=VERIFY_ATTEMPTS {
        let live_before = live.fingerprint().await?;
        options.upto = Projection::ALL
            .iter()
            .map(|p| {
                (
                    *p,
                    live_before.checkpoints.get(p.name()).copied().unwrap_or(0),
                )
            })
            .collect();
        let s = replay(&bus, &target, &options, |p| meter.show(p)).await?;
        total.applied += s.applied;
        total.rejected += s.rejected;
        let live_after = live.fingerprint().await?;
        if live_after != live_before {
            // The live projector moved while we compared; catch up and look again.
            tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
            continue;
        }
        meter.finish();
        report(&total, started.elapsed());
        let rebuilt = target.fingerprint().await?;
        let mut differences = compare(&live_after, &rebuilt);
        // At a standstill the live projections must be at their streams' ends: one that
        // stopped short (a stalled consumer) is a difference too.
        for p in Projection::ALL {
            let end = bus.stream_state(p.stream()).await?.last_seq.0;
            let at = live_after.checkpoints.get(p.name()).copied().unwrap_or(0);
            if at < end {
                differences.push(format!(
                    "projection {} is at {at} while {} ends at {end}: the live projector stopped short",
                    p.name(),
                    p.stream()
                ));
            }
        }
        if differences.is_empty() {
            println!(
                "verified: the rebuild equals the live projections ({} groups, {} conversations, {} read markers)",
                rebuilt.groups.len(),
                rebuilt.conversations.len(),
                rebuilt.read_markers.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{} differences between live and rebuilt:",
            differences.len()
        );
        for d in &differences {
            println!("  {d}");
        }
        return Ok(ExitCode::FAILURE);
    }
    meter.finish();
    bail!(
        "the live projector kept moving; could not compare at a standstill after {VERIFY_ATTEMPTS} attempts"
    )
}

/// Differences, ignoring the ingest checkpoint (replay sets it to the end of INGEST) and
/// those of the messages projection's partitions (a rebuild applies it whole; the `messages`
/// checkpoint, which follows the partitions, is compared).
fn compare(
    live: &anchorage_store::Fingerprint,
    rebuilt: &anchorage_store::Fingerprint,
) -> Vec<String> {
    let strip = |f: &anchorage_store::Fingerprint| {
        let mut f = f.clone();
        f.checkpoints.remove(anchorage_projector::INGEST_NAME);
        f.checkpoints
            .retain(|name, _| !name.starts_with("messages-"));
        f
    };
    strip(live).differences(&strip(rebuilt))
}

fn report(s: &ReplaySummary, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-3);
    println!(
        "replayed {} events ({} rejected as when live) in {:.1} s: {:.0} events/s",
        s.applied + s.rejected,
        s.rejected,
        secs,
        (s.applied + s.rejected) as f64 / secs
    );
}

/// A progress line on stderr when it is a terminal; one line per projection otherwise.
struct Meter {
    tty: bool,
    current: Option<(Projection, Instant)>,
    last_draw: Instant,
}

impl Meter {
    fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            current: None,
            last_draw: Instant::now(),
        }
    }

    fn show(&mut self, p: Progress) {
        let start = match self.current {
            Some((proj, start)) if proj == p.projection => start,
            _ => {
                self.finish();
                let now = Instant::now();
                self.current = Some((p.projection, now));
                now
            }
        };
        let done = p.done >= p.total;
        if !self.tty {
            if done {
                eprintln!("{}: {} events", p.projection.name(), p.total);
            }
            return;
        }
        if !done && self.last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_draw = Instant::now();
        let elapsed = start.elapsed().as_secs_f64().max(1e-3);
        let rate = p.done as f64 / elapsed;
        let eta = if rate > 0.0 {
            (p.total - p.done.min(p.total)) as f64 / rate
        } else {
            0.0
        };
        let width = 30;
        let filled = (p.done.min(p.total) * width as u64)
            .checked_div(p.total)
            .map_or(width, |f| f as usize);
        eprint!(
            "\r{:<11} [{}{}] {}/{} events  {:.0}/s  ETA {:.0}s   ",
            p.projection.name(),
            "#".repeat(filled),
            " ".repeat(width - filled),
            p.done,
            p.total,
            rate,
            eta
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&mut self) {
        if self.tty && self.current.take().is_some() {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_database;

    #[test]
    fn the_live_database_is_recognized_however_it_is_named() {
        let dir = std::env::current_dir().unwrap();
        let abs = format!("sqlite://{}/.anchorage/live.db", dir.display());
        assert!(same_database(
            "sqlite://.anchorage/live.db",
            "sqlite://./.anchorage/live.db"
        ));
        assert!(same_database("sqlite://.anchorage/live.db", &abs));
        assert!(same_database(
            "sqlite://x/../.anchorage/live.db",
            "sqlite:.anchorage/live.db"
        ));
        assert!(!same_database(
            "sqlite://.anchorage/live.db",
            "sqlite://.anchorage/rebuilt.db"
        ));
        assert!(same_database(
            "postgres://a:x@127.0.0.1/chat",
            "postgresql://b@localhost:5432/chat?sslmode=disable"
        ));
        assert!(!same_database("postgres://h/chat", "postgres://h/chat2"));
        assert!(!same_database("sqlite://chat", "postgres://h/chat"));
        assert!(same_database(
            "sqlite://%2Etmp-x%2Flive.db",
            "sqlite://.tmp-x/live.db"
        ));
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live.db");
        let link = dir.path().join("link.db");
        std::fs::write(&live, b"").unwrap();
        std::fs::hard_link(&live, &link).unwrap();
        assert!(same_database(
            &format!("sqlite://{}", live.display()),
            &format!("sqlite://{}", link.display())
        ));
    }
}
