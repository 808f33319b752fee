//! The SQL store: the only code in Anchorage that talks to the database.
//!
//! Projections, sync reads and replay verification go through [`Store`]. The same SQL runs on
//! SQLite (the embedded default) and PostgreSQL (for scale): statements use `$N` parameters,
//! which both accept, and only portable types (`TEXT`, `BIGINT`).
//!
//! SQLite durability is explicit: every connection sets `journal_mode = WAL`,
//! `synchronous = FULL` (or `NORMAL` if configured), `busy_timeout` and `foreign_keys`. On
//! PostgreSQL the server's `synchronous_commit = on` default is what we rely on.
//!
//! Migrations are embedded in the binary ([`MIGRATIONS`]) and applied in order, each in its own
//! transaction, recorded in `schema_migrations`. A database migrated by newer software is
//! refused rather than silently used.

#![warn(missing_docs)]

pub mod attachments;
pub mod members;
pub mod projection;
pub mod push;
pub mod read;
pub mod search;
pub mod text;

pub use members::GroupVersion;
pub use projection::{
    Checkpoint, EntryKind, GroupRow, MemberRow, NewMessage, PrefsChange, Tombstone, Tx,
};
pub use read::{
    ConversationRow, ConversationState, EntryPage, Fingerprint, MessageRow, PageAt, Prefs,
    ReactionCount, UserState, UsersKnown,
};
pub use search::message_terms;

use std::path::PathBuf;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

/// One schema migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number; applied in order, once.
    pub version: i64,
    /// A short name.
    pub name: &'static str,
    /// The SQL, for both databases.
    pub sql: &'static str,
    /// What differs between them, run after `sql`: for SQLite, and for PostgreSQL.
    pub specific: (&'static str, &'static str),
}

/// A migration that is the same for both databases.
const SAME: (&str, &str) = ("", "");

/// Every migration, in order. Append only: never edit one that has shipped.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "checkpoints",
        sql: include_str!("../migrations/0001_checkpoints.sql"),
        specific: SAME,
    },
    Migration {
        version: 2,
        name: "projections",
        sql: include_str!("../migrations/0002_projections.sql"),
        specific: SAME,
    },
    Migration {
        version: 3,
        name: "delivery",
        sql: include_str!("../migrations/0003_delivery.sql"),
        specific: SAME,
    },
    Migration {
        version: 4,
        name: "members",
        sql: include_str!("../migrations/0004_members.sql"),
        specific: SAME,
    },
    Migration {
        version: 5,
        name: "ingested",
        sql: include_str!("../migrations/0005_ingested.sql"),
        specific: SAME,
    },
    Migration {
        version: 6,
        name: "message_idempotency",
        sql: include_str!("../migrations/0006_message_idempotency.sql"),
        specific: SAME,
    },
    Migration {
        version: 7,
        name: "posted_under_key",
        sql: include_str!("../migrations/0007_posted_under_key.sql"),
        specific: SAME,
    },
    Migration {
        version: 8,
        name: "message_changes",
        sql: include_str!("../migrations/0008_message_changes.sql"),
        specific: SAME,
    },
    Migration {
        version: 9,
        name: "user_state",
        sql: include_str!("../migrations/0009_user_state.sql"),
        specific: SAME,
    },
    Migration {
        version: 10,
        name: "last_seen",
        sql: include_str!("../migrations/0010_last_seen.sql"),
        specific: SAME,
    },
    Migration {
        version: 11,
        name: "search",
        sql: include_str!("../migrations/0011_search.sql"),
        specific: (
            include_str!("../migrations/0011_search.sqlite.sql"),
            include_str!("../migrations/0011_search.postgres.sql"),
        ),
    },
    Migration {
        version: 12,
        name: "push",
        sql: include_str!("../migrations/0012_push.sql"),
        specific: SAME,
    },
    Migration {
        version: 13,
        name: "attachments",
        sql: include_str!("../migrations/0013_attachments.sql"),
        specific: SAME,
    },
    Migration {
        version: 14,
        name: "changes_by_target",
        sql: include_str!("../migrations/0014_changes_by_target.sql"),
        specific: SAME,
    },
];

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (the embedded default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Settings for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path` or `postgres://…`.
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// SQLite `synchronous` pragma value (`FULL` or `NORMAL`).
    pub sqlite_synchronous: &'static str,
}

#[derive(Debug, thiserror::Error)]
/// Why a database operation failed.
#[allow(missing_docs)] // each variant's message says what it is
pub enum StoreError {
    #[error("unsupported database url {0:?}: use sqlite:path or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database is at schema version {found}, newer than this software's {known}; upgrade Anchorage"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("invalid stored {what}: {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the error is about the database being busy or unreachable rather than about
    /// the statement: retrying later will work (SQLite busy/locked, PostgreSQL serialization
    /// failures and deadlocks, connection and pool errors).
    pub fn is_transient(&self) -> bool {
        let StoreError::Sql(err) = self else {
            return false;
        };
        match err {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
            sqlx::Error::Database(db) => matches!(
                db.code().as_deref(),
                // SQLite: BUSY, LOCKED, BUSY_RECOVERY, BUSY_SNAPSHOT, BUSY_TIMEOUT.
                Some("5" | "6" | "261" | "517" | "773")
                // PostgreSQL: serialization failure, deadlock, admin shutdown, cannot connect now.
                | Some("40001" | "40P01" | "57P01" | "57P03")
            ),
            _ => false,
        }
    }
}

/// The PostgreSQL advisory lock migrations hold.
const MIGRATION_LOCK: i64 = 0x616e_6368_6f72;

/// A pool of connections to the projection database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite has one writer at a time: the writers of this process queue here, in order,
    /// instead of polling the file lock (whose busy handler sleeps up to 100 ms at a time).
    write_gate: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Connects, creating an SQLite file (and its folder) if it does not exist.
    pub async fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
        install_default_drivers();
        let (backend, url) = prepare_url(&options.url)?;
        let synchronous = options.sqlite_synchronous;
        let mut pool = AnyPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(10));
        if backend == Backend::Sqlite {
            pool = pool.after_connect(move |conn, _meta| {
                Box::pin(async move {
                    let pragmas = format!(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                         PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                         PRAGMA secure_delete = ON; PRAGMA cache_size = -32768; \
                         PRAGMA mmap_size = 268435456; PRAGMA temp_store = MEMORY;"
                    );
                    sqlx::raw_sql(sqlx::AssertSqlSafe(pragmas))
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = pool.connect(&url).await?;
        Ok(Store {
            pool,
            backend,
            write_gate: Default::default(),
        })
    }

    /// After text was erased: SQLite's write-ahead log still holds the old pages until it is
    /// checkpointed, so it is checkpointed and truncated (retried while readers hold it).
    /// PostgreSQL keeps the old row versions until vacuum, which autovacuum runs.
    pub async fn truncate_log(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        for _ in 0..20 {
            let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            let busy: i64 = row.try_get(0)?;
            if busy == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("the SQLite log stays busy: erased text leaves it at the next checkpoint");
        Ok(())
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations this database has not seen yet.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        // Processes starting together against a fresh PostgreSQL database take turns: the
        // second sees what the first applied.
        let mut lock = None;
        if self.backend == Backend::Postgres && self.pool.options().get_max_connections() > 1 {
            let mut conn = self.pool.acquire().await?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
            lock = Some(conn);
        }
        let result = self.migrate_in_turn().await;
        if let Some(mut conn) = lock {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK)
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    async fn migrate_in_turn(&self) -> Result<usize, StoreError> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                name TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )",
        )
        .execute(&self.pool)
        .await?;
        let current: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
                .fetch_one(&self.pool)
                .await?
                .try_get("v")?;
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        if current > known {
            return Err(StoreError::NewerSchema {
                found: current,
                known,
            });
        }
        let mut applied = 0;
        for m in MIGRATIONS.iter().filter(|m| m.version > current) {
            let fail = |source| StoreError::Migration {
                version: m.version,
                name: m.name,
                source,
            };
            // On SQLite the write lock is taken at once, and whoever had it first may have
            // applied this migration meanwhile (another process starting on the same file).
            let mut tx = match self.backend {
                Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
                Backend::Postgres => self.pool.begin().await,
            }
            .map_err(fail)?;
            let done = sqlx::query("SELECT 1 AS one FROM schema_migrations WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(fail)?;
            if done.is_some() {
                tx.rollback().await.map_err(fail)?;
                continue;
            }
            sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(fail)?;
            let specific = match self.backend {
                Backend::Sqlite => m.specific.0,
                Backend::Postgres => m.specific.1,
            };
            if !specific.is_empty() {
                sqlx::raw_sql(specific)
                    .execute(&mut *tx)
                    .await
                    .map_err(fail)?;
            }
            if m.name == "search" {
                let n = search::index_stored_messages(&mut tx, self.backend).await?;
                tracing::info!(messages = n, "indexed the stored messages for search");
            }
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
            tx.commit().await.map_err(fail)?;
            tracing::info!(version = m.version, name = m.name, "applied migration");
            applied += 1;
        }
        if applied > 0 {
            self.fill_member_buckets().await?;
        }
        Ok(applied)
    }

    /// Fills in the digest bucket of member rows written before buckets were stored.
    async fn fill_member_buckets(&self) -> Result<(), StoreError> {
        loop {
            let rows = sqlx::query(
                "SELECT group_id, user_id FROM group_members WHERE bucket IS NULL LIMIT 1000",
            )
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut tx = self.pool.begin().await?;
            for r in &rows {
                let group: String = r.try_get("group_id")?;
                let user: String = r.try_get("user_id")?;
                sqlx::query(
                    "UPDATE group_members SET bucket = $1 WHERE group_id = $2 AND user_id = $3",
                )
                .bind(i64::from(anchorage_digest::bucket_of(&user)))
                .bind(group)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }

    /// The newest migration applied to this database (0 for none).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM schema_migrations")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("v")?)
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A PostgreSQL URL's server part, database name and options (`?…`).
fn split_database(url: &str) -> Result<(&str, &str, Option<&str>), StoreError> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let Some(slash) = base[after_scheme..].rfind('/').map(|i| i + after_scheme) else {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    };
    Ok((&base[..slash], &base[slash + 1..], query))
}

fn with_query(url: String, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{url}?{q}"),
        None => url,
    }
}

/// PostgreSQL URL `url` naming database `name` instead, on the same server with the same
/// options.
pub fn database_named(url: &str, name: &str) -> Result<String, StoreError> {
    let (server, _, query) = split_database(url)?;
    Ok(with_query(format!("{server}/{name}"), query))
}

/// Creates the PostgreSQL database `url` names if it does not exist (SQLite files are created
/// on connect). Connects to the server's `postgres` database to do so.
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    let (backend, _) = prepare_url(url)?;
    if backend != Backend::Postgres {
        return Ok(());
    }
    let (server, name, query) = split_database(url)?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::UnsupportedUrl(format!(
            "{url}: the database name must be letters, digits and '_'"
        )));
    }
    let admin = with_query(format!("{server}/postgres"), query);
    install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&admin)
        .await?;
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&pool)
        .await?
        .is_some();
    if !exists {
        let create = format!("CREATE DATABASE \"{name}\"");
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&pool)
            .await?;
        tracing::info!(database = name, "created database");
    }
    pool.close().await;
    Ok(())
}

/// Current time in Unix milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Normalizes a database URL: for SQLite, creates the folder and asks for the file to be
/// created if missing.
fn prepare_url(url: &str) -> Result<(Backend, String), StoreError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
            path: parent.to_owned(),
            source,
        })?;
    }
    let query = match query {
        Some(q) if q.contains("mode=") => q.to_owned(),
        Some(q) => format!("{q}&mode=rwc"),
        None => "mode=rwc".to_owned(),
    };
    Ok((Backend::Sqlite, format!("sqlite://{path}?{query}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_keeps_the_server_and_the_options() {
        assert_eq!(
            database_named("postgres://postgres@127.0.0.1:5/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5/x"
        );
        assert_eq!(
            database_named("postgres://u:p@h:5/db?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert!(database_named("nonsense", "x").is_err());
        assert!(database_named("postgres://host", "x").is_err());
    }

    fn sqlite_options(dir: &std::path::Path) -> StoreOptions {
        StoreOptions {
            url: format!("sqlite://{}/nested/a.db", dir.display()),
            max_connections: 2,
            sqlite_synchronous: "FULL",
        }
    }

    #[tokio::test]
    async fn sqlite_is_created_migrated_once_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_options(dir.path())).await.unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        assert_eq!(store.migrate().await.unwrap(), MIGRATIONS.len());
        assert_eq!(
            store.migrate().await.unwrap(),
            0,
            "second run applies nothing"
        );
        store.ping().await.unwrap();
        let row = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(row.try_get::<String, _>(0).unwrap().to_lowercase(), "wal");
        let row = sqlx::query("PRAGMA synchronous")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(row.try_get::<i64, _>(0).unwrap(), 2, "FULL");
    }

    // The fence between projector processes: a checkpoint moves only from where its writer
    // started, so of two writers racing from the same place exactly one commits.
    #[tokio::test]
    async fn a_checkpoint_moves_only_from_where_its_writer_started() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_options(dir.path())).await.unwrap();
        store.migrate().await.unwrap();
        let cp = |last_seq| Checkpoint { epoch: 1, last_seq };
        let mut first = store.begin().await.unwrap();
        assert!(
            first
                .advance_checkpoint("messages", "MESSAGES", 0, cp(5), 0)
                .await
                .unwrap()
        );
        let second = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.begin().await.unwrap();
                let moved = tx
                    .advance_checkpoint("messages", "MESSAGES", 0, cp(3), 0)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                moved
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        first.commit().await.unwrap();
        assert!(!second.await.unwrap(), "the second writer started from 0");
        assert_eq!(store.checkpoint("messages").await.unwrap(), Some(cp(5)));

        let mut tx = store.begin().await.unwrap();
        assert!(
            !tx.advance_checkpoint("messages", "MESSAGES", 4, cp(9), 0)
                .await
                .unwrap(),
            "a stale writer"
        );
        assert!(
            tx.advance_checkpoint("messages", "MESSAGES", 5, cp(9), 0)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        assert_eq!(store.checkpoint("messages").await.unwrap(), Some(cp(9)));
    }

    #[tokio::test]
    async fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_options(dir.path())).await.unwrap();
        store.migrate().await.unwrap();
        sqlx::query("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
            .execute(&store.pool)
            .await
            .unwrap();
        let err = store.migrate().await.unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 999, .. }),
            "{err}"
        );
    }

    #[test]
    fn urls() {
        assert!(matches!(
            prepare_url("mysql://x"),
            Err(StoreError::UnsupportedUrl(_))
        ));
        let (b, u) = prepare_url("postgres://u@h/db").unwrap();
        assert_eq!((b, u.as_str()), (Backend::Postgres, "postgres://u@h/db"));
        let dir = tempfile::tempdir().unwrap();
        let (_, u) = prepare_url(&format!("sqlite:{}/x.db", dir.path().display())).unwrap();
        assert!(u.ends_with("/x.db?mode=rwc"), "{u}");
    }

    // Users asked about in chunks: a chunk all active costs a count; one with a user never
    // created or deleted is read row by row, and every answer is right either way.
    #[tokio::test]
    async fn users_among_tells_active_deleted_and_never_created_apart_in_every_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&sqlite_options(dir.path())).await.unwrap();
        store.migrate().await.unwrap();
        let names: Vec<String> = (0..1_400).map(|n| format!("u{n:04}")).collect();
        // Chunks of 500: the first all active, the second with a deletion, the third with
        // users never created.
        let created: Vec<(&str, &str, u64)> = names
            .iter()
            .enumerate()
            .filter(|(n, _)| !(1_100..1_110).contains(n))
            .map(|(n, u)| (u.as_str(), "U", n as u64 + 1))
            .collect();
        let mut tx = store.begin().await.unwrap();
        tx.put_users(&created).await.unwrap();
        tx.delete_user("u0700", 5_000).await.unwrap();
        tx.commit().await.unwrap();

        let asked: Vec<&str> = names.iter().map(String::as_str).collect();
        let known = store.users_among(&asked).await.unwrap();
        for (n, u) in asked.iter().enumerate() {
            let expected = match n {
                700 => Some(true),
                1_100..1_110 => None,
                _ => Some(false),
            };
            assert_eq!(known.get(u), expected, "{u}");
        }
        let none = store.users_among(&["nobody", "u0001"]).await.unwrap();
        assert_eq!((none.get("nobody"), none.get("u0001")), (None, Some(false)));
        let new = store.users_among(&["new1", "new2"]).await.unwrap();
        assert_eq!((new.get("new1"), new.get("new2")), (None, None));
        // The same user named twice in a chunk is not a chunk of active users short of one.
        let twice = store
            .users_among(&["u0001", "u0001", "u0700", "nobody"])
            .await
            .unwrap();
        assert_eq!(
            ["u0001", "u0700", "nobody"].map(|u| twice.get(u)),
            [Some(false), Some(true), None]
        );
        let again = store.users_among(&["u0001", "u0001"]).await.unwrap();
        assert_eq!(again.get("u0001"), Some(false));
        let gone = store.users_among(&["u0700"]).await.unwrap();
        assert_eq!(gone.get("u0700"), Some(true));
        assert_eq!(gone.get("u0001"), None, "not asked about");

        // A change of a deleted user stored after the deletion (another writer's race) does
        // not bring them back, nor rename them.
        let mut tx = store.begin().await.unwrap();
        tx.put_users(&[("u0700", "Back", 5_001), ("u0701", "Renamed", 5_002)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let after = store.users_among(&["u0700", "u0701"]).await.unwrap();
        assert_eq!(
            (after.get("u0700"), after.get("u0701")),
            (Some(true), Some(false))
        );
        assert_eq!(
            store.user_row("u0700").await.unwrap().map(|r| r.0),
            Some("U".to_owned()),
            "a deleted user keeps the name they had"
        );
    }
}
