//! The client's local store (SQLite): messages, anchors, read markers, the outbox and the
//! offline command queue. Everything the app shows comes from here, so it works offline and
//! survives restarts; the engine brings it in line with the server.

use std::path::Path;

use anchorage_protocol::{
    ConvPrefs, EntryKind, Reaction, ReactionsChanged, RequestBody, StateChange, UserState,
};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use crate::{LocalMessage, OutboxEntry, OutboxState, Refs, SdkError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    conv TEXT NOT NULL, seq INTEGER NOT NULL, sender TEXT NOT NULL, device TEXT NOT NULL,
    client_msg_id TEXT NOT NULL, body TEXT NOT NULL, client_ts INTEGER NOT NULL,
    server_ts INTEGER NOT NULL, PRIMARY KEY (conv, seq));
CREATE TABLE IF NOT EXISTS anchors (conv TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS read_markers (conv TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    local_id INTEGER PRIMARY KEY AUTOINCREMENT, conv TEXT NOT NULL,
    client_msg_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, client_ts INTEGER NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, seq INTEGER, error TEXT);
CREATE TABLE IF NOT EXISTS member_lists (
    grp TEXT PRIMARY KEY, epoch TEXT NOT NULL, version INTEGER NOT NULL,
    digest_sum INTEGER NOT NULL, member_count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    grp TEXT NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL, nickname TEXT,
    muted_until INTEGER, bucket INTEGER NOT NULL, PRIMARY KEY (grp, user));
CREATE INDEX IF NOT EXISTS members_bucket ON members (grp, bucket);
CREATE TABLE IF NOT EXISTS commands (
    local_id INTEGER PRIMARY KEY AUTOINCREMENT, frame TEXT NOT NULL, state TEXT NOT NULL,
    error TEXT, outbox_id INTEGER);
";

/// Columns added since the first version of the local store, by `user_version`.
const UPGRADES: &[&str] = &[
    "
ALTER TABLE messages ADD COLUMN refs TEXT;
ALTER TABLE messages ADD COLUMN edits INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN revoked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN reactions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN refs TEXT;
",
    "
CREATE TABLE prefs (
    conv TEXT PRIMARY KEY, pinned INTEGER NOT NULL DEFAULT 0, archived INTEGER NOT NULL DEFAULT 0,
    muted_until INTEGER, draft TEXT);
CREATE TABLE hidden (conv TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (conv, seq));
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
",
    "
CREATE TABLE push_devices (device TEXT PRIMARY KEY, provider TEXT NOT NULL, preview INTEGER NOT NULL);
ALTER TABLE prefs ADD COLUMN notify TEXT;
",
];

/// One queued item, in the order it was made.
#[derive(Debug, Clone)]
pub enum Queued {
    Send {
        command_id: i64,
        outbox_id: i64,
        entry: OutboxEntry,
        body: serde_json::Value,
        client_ts: i64,
    },
    Command {
        command_id: i64,
        /// `None` for a stored command this version cannot read.
        request: Option<RequestBody>,
    },
}

#[derive(Debug, Clone)]
pub struct LocalStore {
    pub(crate) pool: SqlitePool,
}

fn state_of(s: &str) -> OutboxState {
    match s {
        "sending" => OutboxState::Sending,
        "acked" => OutboxState::Acked,
        "failed" => OutboxState::Failed,
        _ => OutboxState::Pending,
    }
}

impl LocalStore {
    pub async fn open(path: &Path) -> Result<LocalStore, SdkError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let version: i64 = sqlx::query("PRAGMA user_version")
            .fetch_one(&pool)
            .await?
            .get(0);
        for (n, sql) in UPGRADES.iter().enumerate().skip(version.max(0) as usize) {
            let mut tx = pool.begin().await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {}",
                n + 1
            )))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        // A send interrupted by a crash is sent again (same client id: the server keeps one).
        sqlx::query("UPDATE outbox SET state = 'pending' WHERE state = 'sending'")
            .execute(&pool)
            .await?;
        Ok(LocalStore { pool })
    }

    pub async fn anchor(&self, conv: &str) -> Result<u64, SdkError> {
        let row = sqlx::query("SELECT seq FROM anchors WHERE conv = $1")
            .bind(conv)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |r| r.get::<i64, _>("seq") as u64))
    }

    /// Each conversation held: its anchor, and the read marker held there (0: none).
    pub async fn anchors(&self) -> Result<Vec<(String, u64, u64)>, SdkError> {
        let rows = sqlx::query(
            "SELECT a.conv, a.seq, COALESCE(r.seq, 0) AS read_seq
             FROM anchors a LEFT JOIN read_markers r ON r.conv = a.conv ORDER BY a.conv",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let seq = |c: &str| r.get::<i64, _>(c).max(0) as u64;
                (r.get("conv"), seq("seq"), seq("read_seq"))
            })
            .collect())
    }

    /// Stores entries — messages, and changes applied to the messages they name — and moves
    /// the conversation's anchor to `anchor` (they are contiguous up to it), in one
    /// transaction; `me` is this device's user (whose reactions are marked `mine`). Returns
    /// the stored messages that changed.
    pub async fn append(
        &self,
        conv: &str,
        entries: &[Entry],
        anchor: u64,
        me: &str,
    ) -> Result<Vec<u64>, SdkError> {
        let mut tx = self.pool.begin().await?;
        let mut changed = Vec::new();
        for e in entries {
            match e {
                Entry::Message(m) => insert_message(&mut tx, m).await?,
                Entry::Change(c) => {
                    if apply_change(&mut tx, conv, c, me).await? {
                        changed.push(c.target);
                    }
                }
            }
        }
        sqlx::query(
            "INSERT INTO anchors (conv, seq) VALUES ($1, $2)
             ON CONFLICT (conv) DO UPDATE SET seq = MAX(anchors.seq, excluded.seq)",
        )
        .bind(conv)
        .bind(anchor as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Applies coalesced reaction counts that continue the anchor (`prev`) and moves it to
    /// `seq`. `None` if they cannot apply exactly — the anchor is elsewhere, or a message
    /// already reflects some of them (read since): then a sync brings the entries one by one.
    /// Otherwise the stored messages that changed.
    pub async fn apply_reactions(
        &self,
        r: &ReactionsChanged,
    ) -> Result<Option<Vec<u64>>, SdkError> {
        let conv = r.conv.as_str();
        let mut tx = self.pool.begin().await?;
        let anchor = sqlx::query("SELECT seq FROM anchors WHERE conv = $1")
            .bind(conv)
            .fetch_optional(&mut *tx)
            .await?
            .map_or(0, |row| row.get::<i64, _>("seq") as u64);
        if anchor != r.prev {
            return Ok(None);
        }
        let mut targets: Vec<u64> = r.deltas.iter().map(|d| d.target).collect();
        targets.extend(r.mine.iter().map(|m| m.target));
        targets.sort_unstable();
        targets.dedup();
        let mut changed = Vec::new();
        for target in targets {
            let Some((version, mut reactions)) = reaction_state(&mut tx, conv, target).await?
            else {
                continue;
            };
            if version > r.prev {
                return Ok(None);
            }
            if is_revoked(&mut tx, conv, target).await? {
                continue;
            }
            for d in r.deltas.iter().filter(|d| d.target == target) {
                adjust(&mut reactions, &d.emoji, d.delta, None);
            }
            for m in r.mine.iter().filter(|m| m.target == target) {
                adjust(&mut reactions, &m.emoji, 0, Some(m.added));
            }
            save_reactions(&mut tx, conv, target, &reactions, r.seq).await?;
            changed.push(target);
        }
        sqlx::query("UPDATE anchors SET seq = $2 WHERE conv = $1")
            .bind(conv)
            .bind(r.seq as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(changed))
    }

    /// The version of the user's own state this store holds.
    pub async fn state_version(&self) -> Result<u64, SdkError> {
        Ok(self.meta("state_version").await?.unwrap_or(0) as u64)
    }

    async fn meta(&self, key: &str) -> Result<Option<i64>, SdkError> {
        let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get("value")))
    }

    /// The user's privacy settings as this device knows them: (receipts, presence).
    pub async fn privacy(&self) -> Result<(bool, bool), SdkError> {
        Ok((
            self.meta("receipts").await?.unwrap_or(1) != 0,
            self.meta("presence").await?.unwrap_or(1) != 0,
        ))
    }

    /// The user's own view of `conv`.
    pub async fn prefs(&self, conv: &str) -> Result<ConvPrefs, SdkError> {
        let row = sqlx::query(
            "SELECT pinned, archived, muted_until, draft, notify FROM prefs WHERE conv = $1",
        )
        .bind(conv)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map_or_else(
            || ConvPrefs {
                conv: conv.to_owned(),
                ..ConvPrefs::default()
            },
            |r| ConvPrefs {
                conv: conv.to_owned(),
                pinned: r.get::<i64, _>("pinned") != 0,
                archived: r.get::<i64, _>("archived") != 0,
                muted_until: r.get("muted_until"),
                draft: r.get("draft"),
                notify: r.get("notify"),
            },
        ))
    }

    /// Applies a page of the user's own state (from `welcome` or `user_state`): whole views
    /// of conversations, messages deleted for oneself, privacy; the store is then at its
    /// version.
    pub async fn apply_state(&self, state: &UserState) -> Result<bool, SdkError> {
        let mut tx = self.pool.begin().await?;
        let held = sqlx::query("SELECT value FROM meta WHERE key = 'state_version'")
            .fetch_optional(&mut *tx)
            .await?
            .map_or(0, |r| r.get::<i64, _>("value").max(0) as u64);
        if state.version < held {
            // Read before live changes this device applied since: it holds all of it already.
            return Ok(false);
        }
        for p in &state.prefs {
            sqlx::query(
                "INSERT INTO prefs (conv, pinned, archived, muted_until, draft, notify)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (conv) DO UPDATE SET pinned = excluded.pinned,
                    archived = excluded.archived, muted_until = excluded.muted_until,
                    draft = excluded.draft, notify = excluded.notify",
            )
            .bind(&p.conv)
            .bind(i64::from(p.pinned))
            .bind(i64::from(p.archived))
            .bind(p.muted_until)
            .bind(&p.draft)
            .bind(&p.notify)
            .execute(&mut *tx)
            .await?;
        }
        for h in &state.hidden {
            hide(&mut tx, &h.conv, &h.seqs).await?;
        }
        for p in &state.push {
            device_push(&mut tx, p).await?;
        }
        set_meta(&mut tx, "receipts", i64::from(state.receipts)).await?;
        set_meta(&mut tx, "presence", i64::from(state.presence)).await?;
        set_meta(&mut tx, "state_version", state.version as i64).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Applies one live change of the user's own state, at `version`.
    pub async fn apply_state_change(
        &self,
        change: &StateChange,
        version: u64,
    ) -> Result<(), SdkError> {
        let mut tx = self.pool.begin().await?;
        match change {
            StateChange::Prefs {
                conv,
                pinned,
                archived,
                muted_until,
                draft,
                notify,
            } => {
                sqlx::query("INSERT INTO prefs (conv) VALUES ($1) ON CONFLICT DO NOTHING")
                    .bind(conv)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "UPDATE prefs SET pinned = COALESCE($2, pinned),
                        archived = COALESCE($3, archived),
                        muted_until = CASE WHEN $4 IS NULL THEN muted_until
                                           WHEN $4 = 0 THEN NULL ELSE $4 END,
                        draft = CASE WHEN $5 IS NULL THEN draft
                                     WHEN $5 = '' THEN NULL ELSE $5 END,
                        notify = CASE WHEN $6 IS NULL THEN notify
                                      WHEN $6 = 'all' THEN NULL ELSE $6 END
                     WHERE conv = $1",
                )
                .bind(conv)
                .bind(pinned.map(i64::from))
                .bind(archived.map(i64::from))
                .bind(*muted_until)
                .bind(draft)
                .bind(notify)
                .execute(&mut *tx)
                .await?;
            }
            StateChange::Hidden(h) => hide(&mut tx, &h.conv, &h.seqs).await?,
            StateChange::Push(p) => device_push(&mut tx, p).await?,
            StateChange::Privacy { receipts, presence } => {
                if let Some(r) = receipts {
                    set_meta(&mut tx, "receipts", i64::from(*r)).await?;
                }
                if let Some(p) = presence {
                    set_meta(&mut tx, "presence", i64::from(*p)).await?;
                }
            }
        }
        set_meta(&mut tx, "state_version", version as i64).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user's devices that are notified while offline: (device, provider, preview).
    pub async fn push_devices(&self) -> Result<Vec<(String, String, bool)>, SdkError> {
        let rows =
            sqlx::query("SELECT device, provider, preview FROM push_devices ORDER BY device")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) != 0))
            .collect())
    }

    /// Messages of a conversation in display order: stored ones by seq, then the outbox's
    /// unacknowledged ones by the time they were written.
    /// The conversations held (synced, or written to), newest message first, with the
    /// messages from others after the read marker counted.
    pub async fn conversations(
        &self,
        me: &str,
    ) -> Result<Vec<crate::ConversationSummary>, SdkError> {
        let rows = sqlx::query(
            "WITH convs AS (SELECT conv FROM anchors UNION SELECT conv FROM outbox)
             SELECT c.conv AS conv,
                    COALESCE(r.seq, 0) AS read_seq,
                    COALESCE((SELECT MAX(seq) FROM messages m WHERE m.conv = c.conv), 0) AS last_seq,
                    COALESCE((SELECT MAX(server_ts) FROM messages m WHERE m.conv = c.conv), 0)
                        AS last_ts,
                    (SELECT COUNT(*) FROM messages m
                      WHERE m.conv = c.conv AND m.seq > COALESCE(r.seq, 0) AND m.revoked = 0
                        AND m.sender <> $1) AS unread
             FROM convs c LEFT JOIN read_markers r ON r.conv = c.conv
             ORDER BY last_ts DESC, c.conv",
        )
        .bind(me)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| crate::ConversationSummary {
                conv: r.get("conv"),
                last_seq: r.get::<i64, _>("last_seq").max(0) as u64,
                read_seq: r.get::<i64, _>("read_seq").max(0) as u64,
                unread: r.get::<i64, _>("unread").max(0) as u64,
                last_ts: r.get("last_ts"),
            })
            .collect())
    }

    pub async fn messages(&self, conv: &str) -> Result<Vec<LocalMessage>, SdkError> {
        let mut out: Vec<LocalMessage> = sqlx::query(
            "SELECT conv, seq, sender, device, client_msg_id, body, client_ts, server_ts, refs,
                    edits, revoked, pinned, reactions
             FROM messages WHERE conv = $1 ORDER BY seq",
        )
        .bind(conv)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| LocalMessage {
            conv: r.get("conv"),
            seq: Some(r.get::<i64, _>("seq") as u64),
            sender: r.get("sender"),
            device: r.get("device"),
            client_msg_id: r.get("client_msg_id"),
            body: serde_json::from_str(&r.get::<String, _>("body")).unwrap_or_default(),
            client_ts: r.get("client_ts"),
            server_ts: Some(r.get("server_ts")),
            refs: refs_of(r.get("refs")),
            edits: r.get::<i64, _>("edits").clamp(0, i64::from(u32::MAX)) as u32,
            revoked: r.get::<i64, _>("revoked") != 0,
            pinned: r.get::<i64, _>("pinned") != 0,
            reactions: serde_json::from_str(&r.get::<String, _>("reactions")).unwrap_or_default(),
        })
        .collect();
        let pending = sqlx::query(
            "SELECT conv, client_msg_id, body, client_ts, refs FROM outbox
             WHERE conv = $1 AND state IN ('pending', 'sending', 'failed') ORDER BY client_ts, local_id",
        )
        .bind(conv)
        .fetch_all(&self.pool)
        .await?;
        out.extend(pending.iter().map(|r| LocalMessage {
            conv: r.get("conv"),
            client_msg_id: r.get("client_msg_id"),
            body: serde_json::from_str(&r.get::<String, _>("body")).unwrap_or_default(),
            client_ts: r.get("client_ts"),
            refs: refs_of(r.get("refs")),
            ..LocalMessage::default()
        }));
        Ok(out)
    }

    pub async fn set_read(&self, conv: &str, seq: u64) -> Result<(), SdkError> {
        let mut conn = self.pool.acquire().await?;
        raise_read(&mut conn, conv, seq).await
    }

    /// Marks `conv` read up to `seq` here and queues the request that tells the server, in one
    /// transaction: a marker stored without its request would never reach the other devices.
    pub async fn mark_read(
        &self,
        conv: &str,
        seq: u64,
        request: &RequestBody,
    ) -> Result<(), SdkError> {
        let mut tx = self.pool.begin().await?;
        raise_read(&mut tx, conv, seq).await?;
        insert_command(&mut tx, request).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn read_marker(&self, conv: &str) -> Result<u64, SdkError> {
        let row = sqlx::query("SELECT seq FROM read_markers WHERE conv = $1")
            .bind(conv)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map_or(0, |r| r.get::<i64, _>("seq") as u64))
    }

    /// Queues a message: an outbox row, and its place in the one queue of everything this
    /// device asked for, so sends, reads and group actions reach the server in the order they
    /// were made.
    pub async fn enqueue_send(
        &self,
        conv: &str,
        client_msg_id: &str,
        body: &serde_json::Value,
        client_ts: i64,
        refs: &Refs,
    ) -> Result<(), SdkError> {
        let mut tx = self.pool.begin().await?;
        let outbox_id = sqlx::query(
            "INSERT INTO outbox (conv, client_msg_id, body, client_ts, state, refs)
             VALUES ($1, $2, $3, $4, 'pending', $5)",
        )
        .bind(conv)
        .bind(client_msg_id)
        .bind(body.to_string())
        .bind(client_ts)
        .bind(refs_text(refs))
        .execute(&mut *tx)
        .await?
        .last_insert_rowid();
        sqlx::query("INSERT INTO commands (frame, state, outbox_id) VALUES ('{}', 'pending', $1)")
            .bind(outbox_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The oldest queued item: a send (its outbox row) or a command (its frame).
    /// The oldest `limit` queued items, in order.
    pub async fn next_items(&self, limit: u32) -> Result<Vec<Queued>, SdkError> {
        let rows = sqlx::query(
            "SELECT c.local_id AS command_id, c.frame, c.outbox_id, o.conv, o.client_msg_id,
                    o.body, o.client_ts, o.state, o.attempts, o.seq, o.error, o.refs
             FROM commands c LEFT JOIN outbox o ON o.local_id = c.outbox_id
             WHERE c.state = 'pending' ORDER BY c.local_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let command_id: i64 = r.get("command_id");
                match r.get::<Option<i64>, _>("outbox_id") {
                    Some(outbox_id) => Queued::Send {
                        command_id,
                        outbox_id,
                        entry: outbox_entry(&r),
                        body: serde_json::from_str(&r.get::<String, _>("body")).unwrap_or_default(),
                        client_ts: r.get("client_ts"),
                    },
                    None => Queued::Command {
                        command_id,
                        request: serde_json::from_str(&r.get::<String, _>("frame")).ok(),
                    },
                }
            })
            .collect())
    }

    /// Outbox rows about to go out (one commit for a whole window of them).
    pub async fn mark_sending(&self, local_ids: &[i64]) -> Result<(), SdkError> {
        let mut tx = self.pool.begin().await?;
        for id in local_ids {
            sqlx::query(
                "UPDATE outbox SET state = 'sending', attempts = attempts + 1 WHERE local_id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A queued message the server stored: its outbox row acknowledged, the message shown
    /// at its place without moving the anchor (its live copy or a sync confirms there is no
    /// gap before it), its queue entry done — one commit.
    pub async fn settle_acked(
        &self,
        local_id: i64,
        command_id: i64,
        own: LocalMessage,
    ) -> Result<(), SdkError> {
        let seq = own.seq.unwrap_or_default();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE outbox SET state = 'acked', seq = $2 WHERE local_id = $1")
            .bind(local_id)
            .bind(seq as i64)
            .execute(&mut *tx)
            .await?;
        // The server's copy may differ from what was sent (a before-send hook replaced the
        // body, mentions come sorted): this copy is provisional, version 0, and the first copy
        // from the server takes its place — and one already here stays.
        insert_row(&mut tx, &own, Stored::Provisional).await?;
        finish_command(&mut tx, command_id, None).await?;
        tx.commit().await?;
        Ok(())
    }

    /// A queued message refused for good: its outbox row failed, its queue entry done.
    pub async fn settle_failed(
        &self,
        local_id: i64,
        command_id: i64,
        error: &str,
    ) -> Result<(), SdkError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE outbox SET state = 'failed', error = $2 WHERE local_id = $1")
            .bind(local_id)
            .bind(error)
            .execute(&mut *tx)
            .await?;
        finish_command(&mut tx, command_id, Some(error)).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn outbox_entry(&self, client_msg_id: &str) -> Result<Option<OutboxEntry>, SdkError> {
        let row = sqlx::query(
            "SELECT conv, client_msg_id, state, attempts, seq, error, refs FROM outbox
             WHERE client_msg_id = $1",
        )
        .bind(client_msg_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| outbox_entry(&r)))
    }

    pub async fn enqueue_command(&self, request: &RequestBody) -> Result<(), SdkError> {
        let mut conn = self.pool.acquire().await?;
        insert_command(&mut conn, request).await
    }

    pub async fn finish_command(&self, local_id: i64, error: Option<&str>) -> Result<(), SdkError> {
        let mut conn = self.pool.acquire().await?;
        finish_command(&mut conn, local_id, error).await
    }

    pub async fn pending_commands(&self) -> Result<u64, SdkError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM commands WHERE state = 'pending' AND outbox_id IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.get::<i64, _>("n") as u64)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn finish_command(
    conn: &mut sqlx::SqliteConnection,
    local_id: i64,
    error: Option<&str>,
) -> Result<(), SdkError> {
    sqlx::query("UPDATE commands SET state = $2, error = $3 WHERE local_id = $1")
        .bind(local_id)
        .bind(if error.is_some() { "failed" } else { "done" })
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

fn outbox_entry(r: &sqlx::sqlite::SqliteRow) -> OutboxEntry {
    OutboxEntry {
        conv: r.get("conv"),
        client_msg_id: r.get("client_msg_id"),
        state: state_of(&r.get::<String, _>("state")),
        attempts: r.get::<i64, _>("attempts") as u32,
        seq: r.get::<Option<i64>, _>("seq").map(|s| s as u64),
        error: r.get("error"),
        refs: refs_of(r.get("refs")),
    }
}

fn refs_of(text: Option<String>) -> Refs {
    text.and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn refs_text(refs: &Refs) -> Option<String> {
    (refs != &Refs::default())
        .then(|| serde_json::to_string(refs).ok())
        .flatten()
}

async fn set_meta(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    key: &str,
    value: i64,
) -> Result<(), SdkError> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes messages for oneself: gone from this store, and never stored again.
async fn hide(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conv: &str,
    seqs: &[u64],
) -> Result<(), SdkError> {
    for seq in seqs {
        sqlx::query("INSERT INTO hidden (conv, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(conv)
            .bind(*seq as i64)
            .execute(&mut **tx)
            .await?;
        sqlx::query("DELETE FROM messages WHERE conv = $1 AND seq = $2")
            .bind(conv)
            .bind(*seq as i64)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// An entry of a conversation as the store takes it.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A message, in the state it was read in (`version`: the seq of the last change it
    /// reflects).
    Message(Box<(LocalMessage, u64)>),
    /// A change to the message `target`.
    Change(Change),
}

/// A change to a stored message.
#[derive(Debug, Clone)]
pub struct Change {
    /// The change's own seq.
    pub seq: u64,
    /// The message it changes.
    pub target: u64,
    /// Who made it.
    pub sender: String,
    /// What it does.
    pub kind: EntryKind,
    /// An edit's new body.
    pub body: serde_json::Value,
    /// A reaction's emoji.
    pub emoji: Option<String>,
    /// A reaction: added; a pin: pinned.
    pub on: bool,
}

/// Stores a message, or a fresher state of one already stored.
async fn insert_message(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    entry: &(LocalMessage, u64),
) -> Result<(), SdkError> {
    let (m, version) = entry;
    insert_row(tx, m, Stored::Version(*version)).await
}

/// How a message row is stored.
#[derive(Debug, Clone, Copy)]
enum Stored {
    /// As the server has it at this version: replaces an older state.
    Version(u64),
    /// The device's own copy of what it sent, until the server's comes: never replaces one.
    Provisional,
}

async fn insert_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    m: &LocalMessage,
    stored: Stored,
) -> Result<(), SdkError> {
    let Some(seq) = m.seq else { return Ok(()) };
    let (version, on_conflict) = match stored {
        Stored::Version(version) => (
            version.max(seq) as i64,
            "DO UPDATE
             SET body = excluded.body, refs = excluded.refs, edits = excluded.edits,
                 revoked = excluded.revoked, pinned = excluded.pinned,
                 reactions = excluded.reactions, version = excluded.version
             WHERE excluded.version > messages.version",
        ),
        Stored::Provisional => (0, "DO NOTHING"),
    };
    let hidden = sqlx::query("SELECT 1 AS one FROM hidden WHERE conv = $1 AND seq = $2")
        .bind(&m.conv)
        .bind(seq as i64)
        .fetch_optional(&mut **tx)
        .await?;
    if hidden.is_some() {
        return Ok(());
    }
    // Only a fixed clause is formatted into the statement.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (conv, seq, sender, device, client_msg_id, body, client_ts, server_ts,
                               refs, edits, revoked, pinned, reactions, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (conv, seq) {on_conflict}"
    )))
    .bind(&m.conv)
    .bind(seq as i64)
    .bind(&m.sender)
    .bind(&m.device)
    .bind(&m.client_msg_id)
    .bind(m.body.to_string())
    .bind(m.client_ts)
    .bind(m.server_ts.unwrap_or(0))
    .bind(refs_text(&m.refs))
    .bind(i64::from(m.edits))
    .bind(i64::from(m.revoked))
    .bind(i64::from(m.pinned))
    .bind(serde_json::to_string(&m.reactions).unwrap_or_else(|_| "[]".into()))
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A stored message's version and reactions, if it is stored.
async fn reaction_state(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conv: &str,
    seq: u64,
) -> Result<Option<(u64, Vec<Reaction>)>, SdkError> {
    let row = sqlx::query("SELECT version, reactions FROM messages WHERE conv = $1 AND seq = $2")
        .bind(conv)
        .bind(seq as i64)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| {
        (
            (r.get::<i64, _>("version") as u64).max(seq),
            serde_json::from_str(&r.get::<String, _>("reactions")).unwrap_or_default(),
        )
    }))
}

async fn is_revoked(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conv: &str,
    seq: u64,
) -> Result<bool, SdkError> {
    let row = sqlx::query("SELECT revoked FROM messages WHERE conv = $1 AND seq = $2")
        .bind(conv)
        .bind(seq as i64)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some_and(|r| r.get::<i64, _>("revoked") != 0))
}

async fn save_reactions(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conv: &str,
    seq: u64,
    reactions: &[Reaction],
    version: u64,
) -> Result<(), SdkError> {
    sqlx::query("UPDATE messages SET reactions = $3, version = $4 WHERE conv = $1 AND seq = $2")
        .bind(conv)
        .bind(seq as i64)
        .bind(serde_json::to_string(reactions).unwrap_or_else(|_| "[]".into()))
        .bind(version as i64)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Moves the count of `emoji` by `delta` (and marks it `mine` or not), keeping the order
/// in which emoji first came; an emoji nobody holds any more goes.
pub(crate) fn adjust(reactions: &mut Vec<Reaction>, emoji: &str, delta: i64, mine: Option<bool>) {
    let at = match reactions.iter().position(|r| r.emoji == emoji) {
        Some(at) => at,
        None => {
            reactions.push(Reaction {
                emoji: emoji.to_owned(),
                count: 0,
                mine: false,
            });
            reactions.len() - 1
        }
    };
    let r = &mut reactions[at];
    r.count = r.count.saturating_add_signed(delta);
    if let Some(mine) = mine {
        r.mine = mine;
    }
    if r.count == 0 && !r.mine {
        reactions.remove(at);
    }
}

/// Applies a change to the message it names, if this store holds that message and its
/// state is older than the change; `true` if it changed.
async fn apply_change(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    conv: &str,
    c: &Change,
    me: &str,
) -> Result<bool, SdkError> {
    let Some((version, mut reactions)) = reaction_state(tx, conv, c.target).await? else {
        return Ok(false);
    };
    if version >= c.seq || is_revoked(tx, conv, c.target).await? {
        // Already reflected, or a tombstone: a revoked message never changes again.
        return Ok(false);
    }
    let query = match c.kind {
        EntryKind::Edit => sqlx::query(
            "UPDATE messages SET body = $3, edits = edits + 1, version = $4
             WHERE conv = $1 AND seq = $2 AND revoked = 0",
        )
        .bind(conv)
        .bind(c.target as i64)
        .bind(c.body.to_string()),
        EntryKind::Revoke => sqlx::query(
            "UPDATE messages SET body = 'null', revoked = 1, pinned = 0, reactions = '[]',
                                 refs = NULL, version = $4
             WHERE conv = $1 AND seq = $2 AND revoked = $3",
        )
        .bind(conv)
        .bind(c.target as i64)
        .bind(0i64),
        EntryKind::Pin => sqlx::query(
            "UPDATE messages SET pinned = $3, version = $4 WHERE conv = $1 AND seq = $2",
        )
        .bind(conv)
        .bind(c.target as i64)
        .bind(i64::from(c.on)),
        EntryKind::Reaction => {
            let emoji = c.emoji.as_deref().unwrap_or_default();
            let mine = (c.sender == me).then_some(c.on);
            adjust(&mut reactions, emoji, if c.on { 1 } else { -1 }, mine);
            save_reactions(tx, conv, c.target, &reactions, c.seq).await?;
            return Ok(true);
        }
        EntryKind::Message => return Ok(false),
    };
    let done = query.bind(c.seq as i64).execute(&mut **tx).await?;
    Ok(done.rows_affected() > 0)
}

/// Records how a device of the user is notified (or that it is not any more).
async fn device_push(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    p: &anchorage_protocol::DevicePush,
) -> Result<(), SdkError> {
    match &p.provider {
        Some(provider) => {
            sqlx::query(
                "INSERT INTO push_devices (device, provider, preview) VALUES ($1, $2, $3)
                 ON CONFLICT (device) DO UPDATE SET provider = excluded.provider,
                   preview = excluded.preview",
            )
            .bind(&p.device)
            .bind(provider)
            .bind(i64::from(p.preview))
            .execute(&mut **tx)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM push_devices WHERE device = $1")
                .bind(&p.device)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Raises the local read marker of `conv` to `seq` (never lowers it).
async fn raise_read(
    conn: &mut sqlx::SqliteConnection,
    conv: &str,
    seq: u64,
) -> Result<(), SdkError> {
    sqlx::query(
        "INSERT INTO read_markers (conv, seq) VALUES ($1, $2)
             ON CONFLICT (conv) DO UPDATE SET seq = MAX(read_markers.seq, excluded.seq)",
    )
    .bind(conv)
    .bind(seq as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Queues a request for the server, after everything queued before it.
async fn insert_command(
    conn: &mut sqlx::SqliteConnection,
    request: &RequestBody,
) -> Result<(), SdkError> {
    let frame = serde_json::to_string(request).map_err(|e| SdkError::Refused(e.to_string()))?;
    sqlx::query("INSERT INTO commands (frame, state) VALUES ($1, 'pending')")
        .bind(frame)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, body: &str, mentions: &[&str]) -> LocalMessage {
        LocalMessage {
            conv: "g".into(),
            seq: Some(seq),
            sender: "alice".into(),
            device: "d".into(),
            client_msg_id: "m-1".into(),
            body: serde_json::json!(body),
            client_ts: 1,
            server_ts: Some(2),
            refs: Refs {
                mentions: mentions.iter().map(|m| m.to_string()).collect(),
                ..Refs::default()
            },
            edits: 0,
            revoked: false,
            pinned: false,
            reactions: Vec::new(),
        }
    }

    /// A read marker is stored only with the request that tells the server: were it kept while
    /// the request was not, the other devices would never hear of it (the device would not
    /// send it again, and a sign-in lists a conversation only for a marker ahead of its own).
    #[tokio::test]
    async fn a_read_marker_is_kept_only_with_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("s.db")).await.unwrap();
        let read = |seq| -> RequestBody {
            anchorage_protocol::request::MarkRead {
                conv: anchorage_schema::ConversationId::parse("g-team").unwrap(),
                seq,
            }
            .into()
        };
        store.mark_read("g-team", 4, &read(4)).await.unwrap();
        assert_eq!(store.read_marker("g-team").await.unwrap(), 4);
        assert_eq!(store.pending_commands().await.unwrap(), 1);

        sqlx::query(
            "CREATE TRIGGER refuse_commands BEFORE INSERT ON commands
             BEGIN SELECT RAISE(ABORT, 'disk full'); END",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        assert!(store.mark_read("g-team", 9, &read(9)).await.is_err());
        assert_eq!(store.read_marker("g-team").await.unwrap(), 4);
        assert_eq!(store.pending_commands().await.unwrap(), 1);
    }

    /// A state answer read before live changes the device applied since changes nothing:
    /// neither the prefs those set nor the version they reached.
    #[tokio::test]
    async fn a_state_answer_older_than_what_the_device_holds_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("s.db")).await.unwrap();
        let change = StateChange::Prefs {
            conv: "g".into(),
            pinned: Some(true),
            archived: None,
            muted_until: None,
            draft: Some("new".into()),
            notify: None,
        };
        store.apply_state_change(&change, 5).await.unwrap();
        let older = UserState {
            prefs: vec![ConvPrefs {
                conv: "g".into(),
                pinned: false,
                archived: false,
                muted_until: None,
                draft: Some("old".into()),
                notify: None,
            }],
            hidden: Vec::new(),
            push: Vec::new(),
            receipts: true,
            presence: true,
            version: 3,
            more: false,
        };
        assert!(!store.apply_state(&older).await.unwrap());
        let prefs = store.prefs("g").await.unwrap();
        assert_eq!((prefs.pinned, prefs.draft.as_deref()), (true, Some("new")));
        assert_eq!(store.state_version().await.unwrap(), 5);
        let newer = UserState {
            version: 5,
            ..older
        };
        assert!(
            store.apply_state(&newer).await.unwrap(),
            "as new as held: taken"
        );
    }

    /// The device's copy of a message it sent gives way to the server's, which may differ
    /// (a before-send hook replaced the body; mentions come sorted) — whichever comes first.
    #[tokio::test]
    async fn the_servers_copy_of_an_own_message_replaces_the_one_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&dir.path().join("s.db")).await.unwrap();
        let sent = message(5, "my card is 4111 1111 1111 1111", &["zoe", "bob"]);
        let server = message(5, "my card is [redacted]", &["bob", "zoe"]);
        // Acknowledged first, then its live copy (or a sync) brings the server's.
        store.settle_acked(1, 1, sent.clone()).await.unwrap();
        let entry = Entry::Message(Box::new((server.clone(), 5)));
        store.append("g", &[entry], 5, "alice").await.unwrap();
        assert_eq!(store.messages("g").await.unwrap(), vec![server.clone()]);
        // The server's copy first, then the acknowledgement: it stays.
        let other = tempfile::tempdir().unwrap();
        let store = LocalStore::open(&other.path().join("s.db")).await.unwrap();
        let entry = Entry::Message(Box::new((server.clone(), 5)));
        store.append("g", &[entry], 5, "alice").await.unwrap();
        store.settle_acked(1, 1, sent).await.unwrap();
        assert_eq!(store.messages("g").await.unwrap(), vec![server]);
    }
}
