//! Offline push: the devices' push targets (a projection of the USERS stream) and the push
//! worker's outbox.
//!
//! The outbox holds one row per device and conversation. A new message of the conversation
//! raises the row's `seq` (a newer message replaces the one waiting: one notification,
//! updated), a delivery raises `pushed_seq` to what it announced. A row is due while
//! `seq > pushed_seq` and its `due_at` has come; a worker claims it for a while before it
//! calls the provider, so two workers never announce the same message twice.

use sqlx::Row;

use anchorage_schema::now_ms;

use crate::projection::{Tx, i, placeholders, u};
use crate::{Backend, Store, StoreError};

/// A device's registered target, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTargetRow {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// The target as JSON (`anchorage_schema::push::PushTarget`); `None` once removed.
    pub target: Option<String>,
    /// Whether notifications show the text.
    pub preview: bool,
    /// The USERS sequence of its last change.
    pub version: u64,
}

/// A target to record.
#[derive(Debug, Clone, Copy)]
pub struct NewTarget<'a> {
    /// `fcm`, `apns` or `web_push`.
    pub provider: &'a str,
    /// The token or endpoint.
    pub address: &'a str,
    /// The whole target as JSON.
    pub json: &'a str,
    /// Notifications show the text.
    pub preview: bool,
}

/// One row of the outbox, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRecord {
    /// The device.
    pub device: String,
    /// The conversation.
    pub conv: String,
    /// The newest message queued.
    pub seq: u64,
    /// The newest announced or passed over.
    pub pushed_seq: u64,
    /// What the last attempt came to.
    pub outcome: Option<String>,
    /// When the row was last written (Unix ms).
    pub updated_at: i64,
}

/// What one claimed notification came to (see [`Store::record_pushes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRecordOf {
    /// The notification.
    pub job: PushJob,
    /// `delivered`, `suppressed: …`, `retrying: …`, `failed: …`.
    pub outcome: String,
    /// Tried again at this time (Unix ms); `None`: finished.
    pub retry_at: Option<i64>,
}

/// A message to announce, as the worker read it from the stream.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The conversation.
    pub conv: &'a str,
    /// The message's seq.
    pub seq: u64,
    /// The MEMBERSHIP position it was decided on: its recipients are the members then.
    pub membership: u64,
    /// Who sent it (nobody is notified of their own message); `None` for a system post.
    pub sender: Option<&'a str>,
    /// Users it mentions by name.
    pub mentions: &'a [String],
    /// It mentions everyone (`@all`).
    pub mention_all: bool,
    /// When it may be announced at the earliest (Unix ms): a grace for online devices to
    /// receive it first.
    pub due_at: i64,
}

/// A notification to send now, claimed by this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// The conversation.
    pub conv: String,
    /// The newest message to announce.
    pub seq: u64,
    /// The newest announced or passed over before.
    pub pushed_seq: u64,
    /// A message waiting mentions the user.
    pub mention: bool,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// When the first of them failed (Unix ms).
    pub failing_since: Option<i64>,
}

/// What a user's settings and devices say about one waiting notification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PushContext {
    /// The device's target (JSON) and preview setting, if it still has one.
    pub target: Option<(String, bool)>,
    /// The USERS sequence that registered it.
    pub target_version: u64,
    /// How far the user read the conversation.
    pub read_seq: u64,
    /// The furthest any of the user's devices acknowledged receiving.
    pub received_seq: u64,
    /// Do not disturb until (Unix ms).
    pub muted_until: Option<i64>,
    /// `mentions` or `none`; `None` for every message.
    pub notify: Option<String>,
    /// Still a member of the conversation.
    pub member: bool,
}

/// The message a notification announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    /// Sender (empty for a system post).
    pub sender: String,
    /// The sender's display name, if known.
    pub sender_name: Option<String>,
    /// The body as stored (JSON text).
    pub body: String,
    /// Revoked for everyone.
    pub revoked: bool,
    /// The conversation's title (a group's; `None` for a 1:1 conversation).
    pub title: Option<String>,
}

impl Tx {
    /// Records `device`'s target (replacing its previous one). The same address held by any
    /// other device, of this user or another, is removed from it: one app install is one
    /// device, and a phone signed into another account must not get the first one's messages.
    pub async fn set_push_target(
        &mut self,
        user: &str,
        device: &str,
        target: &NewTarget<'_>,
        version: u64,
    ) -> Result<(), StoreError> {
        let NewTarget {
            provider,
            address,
            json: target_json,
            preview,
        } = *target;
        sqlx::query(
            "UPDATE push_targets SET provider = NULL, address = NULL, target = NULL, version = $1
             WHERE provider = $2 AND address = $3 AND NOT (user_id = $4 AND device = $5)",
        )
        .bind(i(version))
        .bind(provider)
        .bind(address)
        .bind(user)
        .bind(device)
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "INSERT INTO push_targets (user_id, device, provider, address, target, preview, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (user_id, device) DO UPDATE SET provider = excluded.provider,
               address = excluded.address, target = excluded.target,
               preview = excluded.preview, version = excluded.version",
        )
        .bind(user)
        .bind(device)
        .bind(provider)
        .bind(address)
        .bind(target_json)
        .bind(i64::from(preview))
        .bind(i(version))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Removes `device`'s target — only if its address is `address`, when given (a provider
    /// refused that address; a newer registration stays).
    pub async fn remove_push_target(
        &mut self,
        user: &str,
        device: &str,
        address: Option<&str>,
        version: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE push_targets SET provider = NULL, address = NULL, target = NULL, version = $1
             WHERE user_id = $2 AND device = $3 AND provider IS NOT NULL
               AND (CAST($4 AS TEXT) IS NULL OR address = $4)",
        )
        .bind(i(version))
        .bind(user)
        .bind(device)
        .bind(address)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Removes every target of `user` (deleted).
    pub async fn remove_push_targets_of(
        &mut self,
        user: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE push_targets SET provider = NULL, address = NULL, target = NULL, version = $1
             WHERE user_id = $2 AND provider IS NOT NULL",
        )
        .bind(i(version))
        .bind(user)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

fn target_row(r: &sqlx::any::AnyRow) -> Result<PushTargetRow, StoreError> {
    Ok(PushTargetRow {
        user: r.try_get("user_id")?,
        device: r.try_get("device")?,
        target: r.try_get("target")?,
        preview: r.try_get::<i64, _>("preview")? != 0,
        version: u(r.try_get("version")?),
    })
}

/// `user`'s targets changed after version `after`, read by `db` (the pool, or a transaction
/// that reads more with them).
pub(crate) async fn push_targets_since<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    user: &str,
    after: u64,
    limit: u32,
) -> Result<Vec<PushTargetRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT user_id, device, target, preview, version FROM push_targets
         WHERE user_id = $1 AND version > $2 ORDER BY version, device LIMIT $3",
    )
    .bind(user)
    .bind(i(after))
    .bind(i64::from(limit))
    .fetch_all(db)
    .await?;
    rows.iter().map(target_row).collect()
}

impl Store {
    /// `user`'s targets changed after version `after` (removed ones without a target), by
    /// version, at most `limit`.
    pub async fn push_targets_since(
        &self,
        user: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<PushTargetRow>, StoreError> {
        push_targets_since(&self.pool, user, after, limit).await
    }

    /// Queues, in one transaction, a notification of each of `messages` for every device
    /// with a target of every user it reached (a member at its MEMBERSHIP position, not its
    /// sender) who wants it: not `none`, and for `mentions` only when it mentions them.
    /// Returns the rows raised. A message announced or queued before (a redelivery) raises
    /// nothing.
    pub async fn enqueue_pushes(&self, messages: &[NewMessage<'_>]) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let mut raised = 0;
        for m in messages {
            raised += self.enqueue_in(&mut tx, m).await?;
        }
        tx.commit().await?;
        Ok(raised)
    }

    async fn enqueue_in(&self, tx: &mut Tx, m: &NewMessage<'_>) -> Result<u64, StoreError> {
        let mention_all = i64::from(m.mention_all);
        // Binds: 1 conv, 2 membership, 3 sender, 4 seq, 5 mention_all, 6 due_at, 7 now,
        // 8.. mentions.
        let mentioned = if m.mentions.is_empty() {
            "FALSE".to_owned()
        } else {
            format!("t.user_id IN ({})", placeholders(8, m.mentions.len()))
        };
        let mention = format!("(CAST($5 AS BIGINT) = 1 OR {mentioned})");
        let sql = format!(
            "INSERT INTO push_outbox (user_id, device, conv_id, seq, mention, due_at, updated_at)
             SELECT t.user_id, t.device, s.group_id, $4, CASE WHEN {mention} THEN 1 ELSE 0 END,
                    $6, $7
             FROM member_spans s
             JOIN push_targets t ON t.user_id = s.user_id AND t.provider IS NOT NULL
             LEFT JOIN conversation_prefs p ON p.user_id = s.user_id AND p.conv_id = s.group_id
             WHERE s.group_id = $1 AND s.joined_seq <= $2
               AND (s.left_seq IS NULL OR s.left_seq > $2)
               AND s.user_id <> $3
               AND (p.notify IS NULL OR (p.notify = 'mentions' AND {mention}))
             ON CONFLICT (user_id, device, conv_id) DO UPDATE SET
               seq = excluded.seq,
               mention = CASE WHEN push_outbox.seq > push_outbox.pushed_seq
                         THEN MAX_FN(push_outbox.mention, excluded.mention)
                         ELSE excluded.mention END,
               due_at = CASE WHEN push_outbox.seq > push_outbox.pushed_seq
                         THEN push_outbox.due_at ELSE excluded.due_at END,
               attempts = CASE WHEN push_outbox.seq > push_outbox.pushed_seq
                         THEN push_outbox.attempts ELSE 0 END,
               failing_since = CASE WHEN push_outbox.seq > push_outbox.pushed_seq
                         THEN push_outbox.failing_since ELSE NULL END,
               updated_at = excluded.updated_at
             WHERE excluded.seq > push_outbox.seq",
        )
        .replace(
            "MAX_FN",
            match self.backend {
                Backend::Sqlite => "MAX",
                Backend::Postgres => "GREATEST",
            },
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(m.conv)
            .bind(i(m.membership))
            .bind(m.sender.unwrap_or(""))
            .bind(i(m.seq))
            .bind(mention_all)
            .bind(m.due_at)
            .bind(now_ms());
        for user in m.mentions {
            q = q.bind(user.as_str());
        }
        Ok(q.execute(&mut *tx.tx).await?.rows_affected())
    }

    /// Claims up to `limit` notifications due at `now` until `claim_until`, oldest due first.
    pub async fn claim_pushes(
        &self,
        now: i64,
        claim_until: i64,
        limit: u32,
    ) -> Result<Vec<PushJob>, StoreError> {
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE push_outbox SET claimed_until = $1
             WHERE (user_id, device, conv_id) IN (
               SELECT user_id, device, conv_id FROM push_outbox
               WHERE seq > pushed_seq AND due_at <= $2 AND claimed_until <= $2
               ORDER BY due_at LIMIT $3 {lock})
             RETURNING user_id, device, conv_id, seq, pushed_seq, mention, attempts,
               failing_since"
        );
        let mut tx = self.begin().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(claim_until)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx.tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                Ok(PushJob {
                    user: r.try_get("user_id")?,
                    device: r.try_get("device")?,
                    conv: r.try_get("conv_id")?,
                    seq: u(r.try_get("seq")?),
                    pushed_seq: u(r.try_get("pushed_seq")?),
                    mention: r.try_get::<i64, _>("mention")? != 0,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
                    failing_since: r.try_get("failing_since")?,
                })
            })
            .collect()
    }

    /// Records what several claimed notifications came to, in one transaction: each
    /// finished (announced or passed over) or put back to be tried again at a time.
    pub async fn record_pushes(&self, records: &[PushRecordOf]) -> Result<(), StoreError> {
        let max = match self.backend {
            Backend::Sqlite => "MAX",
            Backend::Postgres => "GREATEST",
        };
        let finish = format!(
            "UPDATE push_outbox SET pushed_seq = {max}(pushed_seq, $1), claimed_until = 0,
               attempts = 0, failing_since = NULL,
               mention = CASE WHEN seq > $1 THEN mention ELSE 0 END,
               outcome = $2, updated_at = $3
             WHERE user_id = $4 AND device = $5 AND conv_id = $6"
        );
        let retry = "UPDATE push_outbox SET attempts = attempts + 1, due_at = $1,
               claimed_until = 0, failing_since = COALESCE(failing_since, $3), outcome = $2,
               updated_at = $3
             WHERE user_id = $4 AND device = $5 AND conv_id = $6";
        let now = now_ms();
        let mut tx = self.begin().await?;
        for r in records {
            let (sql, first) = match r.retry_at {
                None => (finish.as_str(), i(r.job.seq)),
                Some(at) => (retry, at),
            };
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(first)
                .bind(r.outcome.as_str())
                .bind(now)
                .bind(r.job.user.as_str())
                .bind(r.job.device.as_str())
                .bind(r.job.conv.as_str())
                .execute(&mut *tx.tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What decides whether and where `job` is sent, in one statement.
    pub async fn push_context(&self, job: &PushJob) -> Result<PushContext, StoreError> {
        let r = sqlx::query(
            "SELECT
               (SELECT target FROM push_targets WHERE user_id = $1 AND device = $2) AS target,
               (SELECT preview FROM push_targets WHERE user_id = $1 AND device = $2) AS preview,
               (SELECT version FROM push_targets WHERE user_id = $1 AND device = $2)
                 AS target_version,
               (SELECT read_seq FROM read_markers WHERE user_id = $1 AND conv_id = $3)
                 AS read_seq,
               (SELECT MAX(delivered_seq) FROM device_cursors WHERE user_id = $1 AND conv_id = $3)
                 AS received_seq,
               (SELECT muted_until FROM conversation_prefs WHERE user_id = $1 AND conv_id = $3)
                 AS muted_until,
               (SELECT notify FROM conversation_prefs WHERE user_id = $1 AND conv_id = $3)
                 AS notify,
               (SELECT COUNT(*) FROM group_members
                WHERE group_id = $3 AND user_id = $1 AND removed_seq IS NULL) AS member",
        )
        .bind(job.user.as_str())
        .bind(job.device.as_str())
        .bind(job.conv.as_str())
        .fetch_one(&self.pool)
        .await?;
        let target: Option<String> = r.try_get("target")?;
        let preview = r.try_get::<Option<i64>, _>("preview")?.unwrap_or(1) != 0;
        Ok(PushContext {
            target: target.map(|t| (t, preview)),
            target_version: r.try_get::<Option<i64>, _>("target_version")?.map_or(0, u),
            read_seq: r.try_get::<Option<i64>, _>("read_seq")?.map_or(0, u),
            received_seq: r.try_get::<Option<i64>, _>("received_seq")?.map_or(0, u),
            muted_until: r.try_get("muted_until")?,
            notify: r.try_get("notify")?,
            member: r.try_get::<i64, _>("member")? > 0,
        })
    }

    /// The newest message of `conv` after `after` and up to `upto` that `user` may be
    /// notified of: not revoked, not hidden by them, not theirs, and decided while they were a
    /// member (what a notification announces when the newest waiting one is gone).
    pub async fn announceable(
        &self,
        conv: &str,
        user: &str,
        after: u64,
        upto: u64,
    ) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query(
            "SELECT m.seq FROM messages m JOIN groups g ON g.group_id = m.conv_id
             WHERE m.conv_id = $1 AND m.seq > $2 AND m.seq <= $3 AND m.kind = 'message'
               AND m.revoked = 0 AND m.sender <> $4
               AND NOT EXISTS (SELECT 1 FROM hidden_messages h
                               WHERE h.user_id = $4 AND h.conv_id = m.conv_id AND h.seq = m.seq)
               AND EXISTS (SELECT 1 FROM member_spans s
                           WHERE s.group_id = m.conv_id AND s.user_id = $4
                             AND s.joined_seq <= COALESCE(m.membership_seq, g.created_seq)
                             AND (s.left_seq IS NULL
                                  OR s.left_seq > COALESCE(m.membership_seq, g.created_seq)))
             ORDER BY m.seq DESC LIMIT 1",
        )
        .bind(conv)
        .bind(i(after))
        .bind(i(upto))
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok(u(r.try_get("seq")?))).transpose()
    }

    /// The message `seq` of `conv` as a notification shows it.
    pub async fn push_message(
        &self,
        conv: &str,
        seq: u64,
    ) -> Result<Option<PushMessage>, StoreError> {
        let row = sqlx::query(
            "SELECT m.sender, m.body, m.revoked, u.display_name, g.title, g.direct
             FROM messages m
             LEFT JOIN users u ON u.user_id = m.sender AND u.deleted = 0
             LEFT JOIN groups g ON g.group_id = m.conv_id
             WHERE m.conv_id = $1 AND m.seq = $2 AND m.kind = 'message'",
        )
        .bind(conv)
        .bind(i(seq))
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let direct = r.try_get::<Option<i64>, _>("direct")?.unwrap_or(0) != 0;
        Ok(Some(PushMessage {
            sender: r.try_get("sender")?,
            sender_name: r.try_get("display_name")?,
            body: r.try_get("body")?,
            revoked: r.try_get::<i64, _>("revoked")? != 0,
            title: if direct { None } else { r.try_get("title")? },
        }))
    }

    /// The user's unread messages over every conversation they are a member of, each counted
    /// up to `cap` as the conversation list counts them: the badge.
    pub async fn unread_total(&self, user: &str, cap: u32) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "SELECT gm.group_id, COALESCE(r.read_seq, 0) AS read_seq
             FROM group_members gm
             JOIN conversations c ON c.conv_id = gm.group_id
             LEFT JOIN read_markers r ON r.user_id = gm.user_id AND r.conv_id = gm.group_id
             WHERE gm.user_id = $1 AND gm.removed_seq IS NULL
               AND c.last_seq > COALESCE(r.read_seq, 0)",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        let mut total = 0;
        for r in rows {
            let conv: String = r.try_get("group_id")?;
            let read = u(r.try_get("read_seq")?);
            total += self.count_after_for(&conv, read, cap, user).await?;
        }
        Ok(total)
    }

    /// Notifications waiting (not yet announced), and of them those that failed before.
    pub async fn push_backlog(&self) -> Result<(u64, u64), StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0) AS f
             FROM push_outbox WHERE seq > pushed_seq",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((u(r.try_get("n")?), u(r.try_get("f")?)))
    }

    /// `user`'s notifications written last, newest first, at most `limit`.
    pub async fn recent_pushes(
        &self,
        user: &str,
        limit: u32,
    ) -> Result<Vec<PushRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, conv_id, seq, pushed_seq, outcome, updated_at FROM push_outbox
             WHERE user_id = $1 ORDER BY updated_at DESC, conv_id LIMIT $2",
        )
        .bind(user)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PushRecord {
                    device: r.try_get("device")?,
                    conv: r.try_get("conv_id")?,
                    seq: u(r.try_get("seq")?),
                    pushed_seq: u(r.try_get("pushed_seq")?),
                    outcome: r.try_get("outcome")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Outcomes recorded per device for `user` in `conv`: (device, pushed_seq, outcome).
    pub async fn push_outcomes(
        &self,
        user: &str,
        conv: &str,
    ) -> Result<Vec<(String, u64, Option<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, pushed_seq, outcome FROM push_outbox
             WHERE user_id = $1 AND conv_id = $2 ORDER BY device",
        )
        .bind(user)
        .bind(conv)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("device")?,
                    u(r.try_get("pushed_seq")?),
                    r.try_get("outcome")?,
                ))
            })
            .collect()
    }
}
