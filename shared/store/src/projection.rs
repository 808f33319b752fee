//! Writes of the projections, inside one transaction per batch.
//!
//! A projection opens a [`Tx`], applies a batch of events through the methods here, moves its
//! checkpoint with [`Tx::set_checkpoint`] and commits: rows and checkpoint land together or not
//! at all. Every write is idempotent on its own as well (upserts keyed by the event's natural
//! key, read markers max-wins), so an event applied twice — by a replay into a live database,
//! say — changes nothing the second time.
//!
//! Digests are 64-bit wrapping sums; SQL integer arithmetic would overflow, so they are read,
//! combined in Rust and written back, stored as the two's-complement `BIGINT` of the `u64`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use sqlx::{Any, Row, Transaction};

use anchorage_digest::SetDigest;
pub use anchorage_schema::EntryKind;
use anchorage_schema::event::Role;

use crate::{Store, StoreError};

/// Where a projection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The stream's lifetime the sequence belongs to.
    pub epoch: u64,
    /// The last stream sequence applied.
    pub last_seq: u64,
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The conversation.
    pub conv: String,
    /// Its place in the conversation (the stream sequence).
    pub seq: u64,
    /// Who sent it (`system:<source>` for a system post).
    pub sender: String,
    /// From which device.
    pub device: String,
    /// The sender's id of the message.
    pub client_msg_id: String,
    /// The body as JSON text.
    pub body: String,
    /// The sender's clock.
    pub client_ts: i64,
    /// When it was stored.
    pub server_ts: i64,
    /// The event's id.
    pub event_id: String,
    /// `message`, or the change the entry makes to message `target`: `edit`, `revoke`,
    /// `reaction` or `pin`.
    pub kind: EntryKind,
    /// The message a change is about.
    pub target: Option<u64>,
    /// The message a message replies to.
    pub reply_to: Option<u64>,
    /// Users a message mentions (`*` for everyone).
    pub mentions: Vec<String>,
    /// A reaction entry's emoji.
    pub emoji: Option<String>,
    /// A reaction entry: added (or removed); a pin entry: pinned (or unpinned).
    pub flag: Option<bool>,
    /// The MEMBERSHIP position a message was decided on: the members whose stretch of
    /// membership holds it are the ones it reached (and who may find it by search).
    pub membership: Option<u64>,
    /// The files a message carries.
    pub attachments: Vec<anchorage_schema::attachment::Attachment>,
    /// The search terms of a message's body ([`crate::message_terms`]), when worked out
    /// ahead of the transaction; `None`: from the body as it is stored.
    pub terms: Option<Vec<String>>,
}

/// The fields of a user's view of a conversation to change (absent: unchanged).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefsChange<'a> {
    /// Pinned to the top of their list.
    pub pinned: Option<bool>,
    /// Archived.
    pub archived: Option<bool>,
    /// Do not disturb until (Unix ms); 0 ends it.
    pub muted_until: Option<i64>,
    /// The unsent text; empty clears it.
    pub draft: Option<&'a str>,
    /// Which messages notify: `all` clears the setting.
    pub notify: Option<&'a str>,
}

/// What a revoked message leaves behind, and where its text was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The conversation.
    pub conv: String,
    /// The revoked message.
    pub target: u64,
    /// The revoke entry's seq.
    pub seq: u64,
    /// The message's sender.
    pub sender: String,
    /// Its device.
    pub device: String,
    /// Its client id.
    pub client_msg_id: String,
    /// Its sender's clock.
    pub client_ts: i64,
    /// When it was stored.
    pub sent_at: i64,
}

/// A group row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// The group.
    pub group: String,
    /// Who created it.
    pub owner: String,
    /// Its title.
    pub title: String,
    /// Its avatar.
    pub avatar: Option<String>,
    /// A 1:1 conversation (fixed membership).
    pub direct: bool,
    /// Ended for everyone.
    pub dismissed: bool,
    /// The MEMBERSHIP sequence of its creation.
    pub created_seq: u64,
    /// MEMBERSHIP stream sequence of the group's last event.
    pub version: u64,
    /// The members' digest: wrapping sum of their hashes (see [`GroupRow::digest`]).
    pub digest_sum: u64,
    /// How many members.
    pub member_count: u64,
    /// Tombstones at or below this version were purged: no member diff from before it.
    pub horizon: u64,
}

impl GroupRow {
    /// The digest of the group's members.
    pub fn digest(&self) -> SetDigest {
        SetDigest {
            sum: self.digest_sum,
            count: self.member_count,
        }
    }

    /// Sets the digest of the group's members.
    pub fn set_digest(&mut self, digest: SetDigest) {
        self.digest_sum = digest.sum;
        self.member_count = digest.count;
    }
}

/// A member row; `removed_seq` set makes it a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The group.
    pub group: String,
    /// The member.
    pub user: String,
    /// Owner, admin or member.
    pub role: Role,
    /// Their nickname in the group.
    pub nickname: Option<String>,
    /// Muted until this Unix millisecond.
    pub muted_until: Option<i64>,
    /// Sequence of the last event that changed this member.
    pub version: u64,
    /// Set once the member left: the row is a tombstone from this sequence on.
    pub removed_seq: Option<u64>,
}

/// One projection transaction.
#[derive(Debug)]
pub struct Tx {
    pub(crate) tx: Transaction<'static, Any>,
    pub(crate) backend: crate::Backend,
    /// This process's turn to write (SQLite), held until commit or rollback.
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Store {
    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a transaction that reads and then writes would otherwise fail with
    /// `SQLITE_BUSY` when another writer committed in between, which no busy timeout cures.
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        let (tx, turn) = match self.backend {
            crate::Backend::Sqlite => {
                let turn = self.write_gate.clone().lock_owned().await;
                (self.pool.begin_with("BEGIN IMMEDIATE").await?, Some(turn))
            }
            crate::Backend::Postgres => (self.pool.begin().await?, None),
        };
        Ok(Tx {
            tx,
            backend: self.backend,
            _turn: turn,
        })
    }

    /// Starts a transaction that only reads (it does not block writers). Every read in it
    /// sees the same snapshot: SQLite's WAL gives a read transaction one, PostgreSQL is asked
    /// for repeatable read.
    pub async fn begin_read(&self) -> Result<Tx, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == crate::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(Tx {
            tx,
            backend: self.backend,
            _turn: None,
        })
    }

    /// A projection's checkpoint, outside any batch.
    pub async fn checkpoint(&self, projection: &str) -> Result<Option<Checkpoint>, StoreError> {
        let mut tx = self.begin_read().await?;
        let cp = tx.checkpoint(projection).await?;
        tx.commit().await?;
        Ok(cp)
    }

    /// The checkpoints whose name starts with `prefix`.
    pub async fn checkpoints_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Checkpoint)>, StoreError> {
        let rows = sqlx::query(
            "SELECT projection, epoch, last_seq FROM projection_checkpoints
             WHERE substr(projection, 1, length($1)) = $1",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("projection")?,
                    Checkpoint {
                        epoch: u(r.try_get("epoch")?),
                        last_seq: u(r.try_get("last_seq")?),
                    },
                ))
            })
            .collect()
    }

    /// Sets setting row `name` (kept beside the checkpoints) to `to` if it is `from` (`None`:
    /// absent); whether it did.
    pub async fn swap_setting(
        &self,
        name: &str,
        stream: &str,
        from: Option<u64>,
        to: u64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = match from {
            None => {
                sqlx::query(
                    "INSERT INTO projection_checkpoints
                         (projection, stream, epoch, last_seq, updated_at)
                     VALUES ($1, $2, 0, $3, $4)
                     ON CONFLICT (projection) DO NOTHING",
                )
                .bind(name)
                .bind(stream)
                .bind(i(to))
                .bind(now_ms)
                .execute(&mut *tx.tx)
                .await?
            }
            Some(from) => {
                sqlx::query(
                    "UPDATE projection_checkpoints SET last_seq = $1, updated_at = $2
                     WHERE projection = $3 AND last_seq = $4",
                )
                .bind(i(to))
                .bind(now_ms)
                .bind(name)
                .bind(i(from))
                .execute(&mut *tx.tx)
                .await?
            }
        };
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves checkpoint `projection` up to `to` (never down, never to another epoch's
    /// position); returns where it stands. Several writers may raise it at once: the highest
    /// wins.
    pub async fn raise_checkpoint(
        &self,
        projection: &str,
        stream: &str,
        to: Checkpoint,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        if self.backend == crate::Backend::Postgres {
            // Raised again by the next commit of any partition: a crash may lose this one
            // without harm, so it need not wait for the disk.
            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *tx.tx)
                .await?;
        }
        let row = sqlx::query(
            "INSERT INTO projection_checkpoints (projection, stream, epoch, last_seq, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (projection) DO UPDATE
             SET last_seq = excluded.last_seq, updated_at = excluded.updated_at
             WHERE projection_checkpoints.epoch = excluded.epoch
               AND projection_checkpoints.last_seq < excluded.last_seq
             RETURNING last_seq",
        )
        .bind(projection)
        .bind(stream)
        .bind(i(to.epoch))
        .bind(i(to.last_seq))
        .bind(now_ms)
        .fetch_optional(&mut *tx.tx)
        .await?;
        tx.commit().await?;
        match row {
            Some(r) => Ok(u(r.try_get("last_seq")?)),
            None => Ok(self.checkpoint(projection).await?.map_or(0, |c| c.last_seq)),
        }
    }
}

pub(crate) fn i(v: u64) -> i64 {
    v as i64
}

pub(crate) fn u(v: i64) -> u64 {
    v as u64
}

impl Tx {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }

    /// Rolls the transaction back.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Where `projection` stands, if it ever applied anything.
    pub async fn checkpoint(&mut self, projection: &str) -> Result<Option<Checkpoint>, StoreError> {
        let row =
            sqlx::query("SELECT epoch, last_seq FROM projection_checkpoints WHERE projection = $1")
                .bind(projection)
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(match row {
            Some(r) => Some(Checkpoint {
                epoch: u(r.try_get("epoch")?),
                last_seq: u(r.try_get("last_seq")?),
            }),
            None => None,
        })
    }

    /// The value of setting row `name` (kept beside the checkpoints), read so that a change
    /// of it waits until this transaction ends (PostgreSQL locks the row; SQLite has one
    /// writer at a time).
    pub async fn setting_locked(&mut self, name: &str) -> Result<Option<u64>, StoreError> {
        let lock = match self.backend {
            crate::Backend::Postgres => " FOR SHARE",
            crate::Backend::Sqlite => "",
        };
        let sql =
            format!("SELECT last_seq FROM projection_checkpoints WHERE projection = $1{lock}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| r.try_get("last_seq").map(u))
            .transpose()
            .map_err(Into::into)
    }

    /// Moves `projection`'s checkpoint.
    pub async fn set_checkpoint(
        &mut self,
        projection: &str,
        stream: &str,
        cp: Checkpoint,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, stream, epoch, last_seq, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (projection) DO UPDATE
             SET epoch = excluded.epoch, last_seq = excluded.last_seq,
                 updated_at = excluded.updated_at",
        )
        .bind(projection)
        .bind(stream)
        .bind(i(cp.epoch))
        .bind(i(cp.last_seq))
        .bind(now_ms)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Moves `projection`'s checkpoint to `to` only if it stands at `from` (0: it was never
    /// set, or set to 0); `false`, changing nothing, if another writer moved it. This is the
    /// fence between projector processes: whoever applied events past `from` first wins, and
    /// the other's transaction must roll back. Under concurrent writers the row lock orders
    /// them, and the condition is checked against the winner's committed value.
    pub async fn advance_checkpoint(
        &mut self,
        projection: &str,
        stream: &str,
        from: u64,
        to: Checkpoint,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO projection_checkpoints (projection, stream, epoch, last_seq, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (projection) DO UPDATE
             SET epoch = excluded.epoch, last_seq = excluded.last_seq,
                 updated_at = excluded.updated_at
             WHERE projection_checkpoints.last_seq = $6",
        )
        .bind(projection)
        .bind(stream)
        .bind(i(to.epoch))
        .bind(i(to.last_seq))
        .bind(now_ms)
        .bind(i(from))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Inserts `chunk` with `insert` (its statement, from [`bind_messages`]), skipping the
    /// messages a conversation holds already (the same seq, or the same sender's id), and
    /// runs `meanwhile` while the database executes the insert. Returns the new rows and what
    /// `meanwhile` made. Nearly always every row is new, and then none has to come back: a
    /// chunk holding one stored already is taken back to a savepoint and inserted again,
    /// answering which rows are new.
    async fn insert_chunk<'m, T>(
        &mut self,
        chunk: &'m [NewMessage],
        insert: Statement,
        meanwhile: impl FnOnce() -> T,
    ) -> Result<(Vec<&'m NewMessage>, T), StoreError> {
        if let [one] = chunk {
            // One row: whether it went in says which is new.
            let (done, made) = overlapped(insert.execute(&mut *self.tx), meanwhile).await;
            let new = if done?.rows_affected() == 1 {
                vec![one]
            } else {
                Vec::new()
            };
            return Ok((new, made));
        }
        sqlx::query("SAVEPOINT new_messages")
            .execute(&mut *self.tx)
            .await?;
        let (done, made) = overlapped(insert.execute(&mut *self.tx), meanwhile).await;
        if done?.rows_affected() == chunk.len() as u64 {
            sqlx::query("RELEASE SAVEPOINT new_messages")
                .execute(&mut *self.tx)
                .await?;
            return Ok((chunk.iter().collect(), made));
        }
        sqlx::query("ROLLBACK TO SAVEPOINT new_messages")
            .execute(&mut *self.tx)
            .await?;
        sqlx::query("RELEASE SAVEPOINT new_messages")
            .execute(&mut *self.tx)
            .await?;
        let mut new = std::collections::HashSet::new();
        for r in bind_messages(self.backend, chunk, "RETURNING conv_id, seq")
            .fetch_all(&mut *self.tx)
            .await?
        {
            new.insert((r.try_get::<String, _>("conv_id")?, u(r.try_get("seq")?)));
        }
        let new = chunk
            .iter()
            .filter(|m| new.contains(&(m.conv.clone(), m.seq)))
            .collect();
        Ok((new, made))
    }

    /// Stores a message; `false` if this conversation already holds it (same seq, or the same
    /// sender's `client_msg_id`).
    pub async fn insert_message(&mut self, m: &NewMessage) -> Result<bool, StoreError> {
        Ok(self.insert_messages(std::slice::from_ref(m)).await? > 0)
    }

    /// Stores messages, many per statement, skipping those a conversation already holds;
    /// then moves each conversation's version once. Returns how many were new.
    ///
    /// After the first chunk's rows, every statement is made while the database runs the one
    /// before: a chunk's search documents while its rows go in, the next chunk's rows while
    /// the documents go in.
    pub async fn insert_messages(&mut self, messages: &[NewMessage]) -> Result<u64, StoreError> {
        let backend = self.backend;
        // conversation → (last seq, its time, messages added)
        let mut convs: BTreeMap<&str, (u64, i64, i64)> = BTreeMap::new();
        let mut inserted = 0;
        let chunks: Vec<&[NewMessage]> = messages.chunks(ROWS_PER_INSERT).collect();
        let mut next = chunks.first().map(|c| bind_messages(backend, c, ""));
        for (k, chunk) in chunks.iter().enumerate() {
            let insert = next
                .take()
                .unwrap_or_else(|| bind_messages(backend, chunk, ""));
            let (stored, documents) = self
                .insert_chunk(chunk, insert, || documents_of(backend, chunk.iter()))
                .await?;
            let documents = if stored.len() == chunk.len() {
                documents
            } else {
                documents_of(backend, stored.iter().copied())
            };
            for m in stored {
                inserted += 1;
                let e = convs.entry(m.conv.as_str()).or_insert((0, 0, 0));
                if m.seq > e.0 {
                    (e.0, e.1) = (m.seq, m.server_ts);
                }
                if m.kind == EntryKind::Message {
                    e.2 += 1;
                    if !m.attachments.is_empty() {
                        let objects: Vec<&str> =
                            m.attachments.iter().map(|a| a.id.object()).collect();
                        self.name_objects(&m.conv, m.seq, &objects).await?;
                    }
                    for user in &m.mentions {
                        sqlx::query(
                            "INSERT INTO mentions (conv_id, user_id, seq, sender)
                             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        )
                        .bind(&m.conv)
                        .bind(user)
                        .bind(i(m.seq))
                        .bind(&m.sender)
                        .execute(&mut *self.tx)
                        .await?;
                    }
                }
            }
            let bind_next = || chunks.get(k + 1).map(|c| bind_messages(backend, c, ""));
            let mut documents = documents.into_iter();
            next = match documents.next() {
                // The next chunk's rows are bound while the first documents go in.
                Some(first) => {
                    let (done, bound) = overlapped(first.execute(&mut *self.tx), bind_next).await;
                    done?;
                    bound
                }
                None => bind_next(),
            };
            for statement in documents {
                statement.execute(&mut *self.tx).await?;
            }
        }
        // Every conversation's version moves in a few statements (each conversation once
        // per statement, as an upsert requires).
        let convs: Vec<_> = convs.into_iter().collect();
        for chunk in convs.chunks(CONVERSATIONS_PER_UPSERT) {
            // Only placeholders are formatted into the statement.
            let sql = format!(
                "INSERT INTO conversations (conv_id, last_seq, last_ts, message_count)
                 VALUES {}
                 ON CONFLICT (conv_id) DO UPDATE
                 SET last_seq = CASE WHEN excluded.last_seq > conversations.last_seq
                                     THEN excluded.last_seq ELSE conversations.last_seq END,
                     last_ts = CASE WHEN excluded.last_seq > conversations.last_seq
                                    THEN excluded.last_ts ELSE conversations.last_ts END,
                     message_count = conversations.message_count + excluded.message_count",
                rows_of_params(self.backend, chunk.len(), 4)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (conv, (last_seq, last_ts, added)) in chunk {
                q = q.bind(*conv).bind(i(*last_seq)).bind(*last_ts).bind(*added);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(inserted)
    }

    /// Replaces the body of message `target` with an edit stored at `seq`; `false` if there
    /// is no such message or it was revoked (the edit entry is then a dead letter of sorts:
    /// stored, and erased by the caller).
    pub async fn apply_edit(
        &mut self,
        conv: &str,
        target: u64,
        seq: u64,
        body: &str,
    ) -> Result<bool, StoreError> {
        self.unindex_message(target).await?;
        let done = sqlx::query(
            "UPDATE messages SET body = $1, edits = edits + 1, version = $2
             WHERE conv_id = $3 AND seq = $4 AND kind = 'message' AND revoked = 0",
        )
        .bind(body)
        .bind(i(seq))
        .bind(conv)
        .bind(i(target))
        .execute(&mut *self.tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.index_messages(&[(conv, target, body)]).await?;
        Ok(true)
    }

    /// Turns a message into its tombstone: body, edits (their entries too), mentions,
    /// reactions and pin gone — the same rows a rebuild from the erased stream writes from `t`.
    /// Returns the seqs whose events held its text — the message and its edits — for the
    /// caller to erase from the stream.
    pub async fn apply_revoke(&mut self, t: &Tombstone) -> Result<Vec<u64>, StoreError> {
        let mut erase: Vec<u64> = sqlx::query(
            // Two lookups, each by its own index.
            "SELECT seq FROM messages
             WHERE (conv_id = $1 AND seq = $2 AND kind = 'message')
                OR (conv_id = $1 AND target = $2 AND kind = 'edit')
             ORDER BY seq",
        )
        .bind(&t.conv)
        .bind(i(t.target))
        .fetch_all(&mut *self.tx)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>("seq").map(u))
        .collect::<Result<_, _>>()?;
        if !erase.contains(&t.target) {
            // Erased before this rebuild: only the tombstone comes back.
            erase.insert(0, t.target);
            sqlx::query(
                "INSERT INTO messages (conv_id, seq, sender, device, client_msg_id, body,
                                       client_ts, server_ts, event_id, kind)
                 VALUES ($1, $2, $3, $4, $5, 'null', $6, $7, '', 'message')
                 ON CONFLICT DO NOTHING",
            )
            .bind(&t.conv)
            .bind(i(t.target))
            .bind(&t.sender)
            .bind(&t.device)
            .bind(&t.client_msg_id)
            .bind(t.client_ts)
            .bind(t.sent_at)
            .execute(&mut *self.tx)
            .await?;
            sqlx::query(
                "UPDATE conversations SET message_count = message_count + 1 WHERE conv_id = $1",
            )
            .bind(&t.conv)
            .execute(&mut *self.tx)
            .await?;
        }
        self.unindex_message(t.target).await?;
        self.release_objects(&t.conv, t.target).await?;
        sqlx::query(
            "UPDATE messages SET body = 'null', detail = NULL, reply_to = NULL, revoked = 1,
                                 pinned = 0, edits = 0, event_id = '', membership_seq = NULL,
                                 attachments = NULL, version = $1
             WHERE conv_id = $2 AND seq = $3 AND kind = 'message'",
        )
        .bind(i(t.seq))
        .bind(&t.conv)
        .bind(i(t.target))
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("DELETE FROM messages WHERE conv_id = $1 AND target = $2 AND kind = 'edit'")
            .bind(&t.conv)
            .bind(i(t.target))
            .execute(&mut *self.tx)
            .await?;
        for table in ["reactions", "reaction_counts"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE conv_id = $1 AND target = $2"
            )))
            .bind(&t.conv)
            .bind(i(t.target))
            .execute(&mut *self.tx)
            .await?;
        }
        sqlx::query("DELETE FROM mentions WHERE conv_id = $1 AND seq = $2")
            .bind(&t.conv)
            .bind(i(t.target))
            .execute(&mut *self.tx)
            .await?;
        Ok(erase)
    }

    /// Whether message `target` of `conv` is there to be changed (stored and not revoked).
    pub async fn changeable(&mut self, conv: &str, target: u64) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM messages
             WHERE conv_id = $1 AND seq = $2 AND kind = 'message' AND revoked = 0",
        )
        .bind(conv)
        .bind(i(target))
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.is_some())
    }

    /// Adds or removes `user`'s reaction `emoji` on message `target` (an entry at `seq`);
    /// counts follow. Nothing changes for a message that is not there or revoked, for adding
    /// what is there or removing what is not.
    pub async fn apply_reaction(
        &mut self,
        conv: &str,
        target: u64,
        user: &str,
        emoji: &str,
        added: bool,
        seq: u64,
    ) -> Result<bool, StoreError> {
        if !self.changeable(conv, target).await? {
            return Ok(false);
        }
        let changed = if added {
            sqlx::query(
                "INSERT INTO reactions (conv_id, target, emoji, user_id, seq)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(conv)
            .bind(i(target))
            .bind(emoji)
            .bind(user)
            .bind(i(seq))
            .execute(&mut *self.tx)
            .await?
            .rows_affected()
                > 0
        } else {
            sqlx::query(
                "DELETE FROM reactions
                 WHERE conv_id = $1 AND target = $2 AND emoji = $3 AND user_id = $4",
            )
            .bind(conv)
            .bind(i(target))
            .bind(emoji)
            .bind(user)
            .execute(&mut *self.tx)
            .await?
            .rows_affected()
                > 0
        };
        if !changed {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO reaction_counts (conv_id, target, emoji, count, first_seq)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (conv_id, target, emoji) DO UPDATE
             SET count = reaction_counts.count + excluded.count",
        )
        .bind(conv)
        .bind(i(target))
        .bind(emoji)
        .bind(if added { 1i64 } else { -1 })
        .bind(i(seq))
        .execute(&mut *self.tx)
        .await?;
        sqlx::query(
            "DELETE FROM reaction_counts
             WHERE conv_id = $1 AND target = $2 AND emoji = $3 AND count <= 0",
        )
        .bind(conv)
        .bind(i(target))
        .bind(emoji)
        .execute(&mut *self.tx)
        .await?;
        self.touch(conv, target, seq).await?;
        Ok(true)
    }

    /// Pins or unpins message `target` (an entry at `seq`); `false` if it is not there.
    pub async fn apply_pin(
        &mut self,
        conv: &str,
        target: u64,
        pinned: bool,
        seq: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE messages SET pinned = $1, version = $2
             WHERE conv_id = $3 AND seq = $4 AND kind = 'message' AND revoked = 0",
        )
        .bind(i64::from(pinned))
        .bind(i(seq))
        .bind(conv)
        .bind(i(target))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that message `target`'s state reflects the entry at `seq`.
    async fn touch(&mut self, conv: &str, target: u64, seq: u64) -> Result<(), StoreError> {
        sqlx::query("UPDATE messages SET version = $1 WHERE conv_id = $2 AND seq = $3")
            .bind(i(seq))
            .bind(conv)
            .bind(i(target))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Changes a user's view of a conversation: the fields given, at USERS sequence
    /// `version`.
    pub async fn set_prefs(
        &mut self,
        user: &str,
        conv: &str,
        change: &PrefsChange<'_>,
        version: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO conversation_prefs (user_id, conv_id, version) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, conv_id) DO UPDATE SET version = excluded.version",
        )
        .bind(user)
        .bind(conv)
        .bind(i(version))
        .execute(&mut *self.tx)
        .await?;
        // Each field given is set on its own; the values are bound, the names are ours.
        let fields: [(&str, Option<Option<String>>); 5] = [
            (
                "pinned",
                change.pinned.map(|b| Some(i64::from(b).to_string())),
            ),
            (
                "archived",
                change.archived.map(|b| Some(i64::from(b).to_string())),
            ),
            (
                "muted_until",
                change.muted_until.map(|t| (t > 0).then(|| t.to_string())),
            ),
            (
                "draft",
                change.draft.map(|d| (!d.is_empty()).then(|| d.to_owned())),
            ),
            (
                "notify",
                change.notify.map(|n| (n != "all").then(|| n.to_owned())),
            ),
        ];
        for (column, value) in fields {
            let Some(value) = value else { continue };
            let cast = if column == "draft" || column == "notify" {
                "$1"
            } else {
                "CAST($1 AS BIGINT)"
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE conversation_prefs SET {column} = {cast}
                 WHERE user_id = $2 AND conv_id = $3"
            )))
            .bind(value)
            .bind(user)
            .bind(conv)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// Hides messages of `conv` from `user` (deleted for them), at USERS sequence `version`.
    pub async fn hide_messages(
        &mut self,
        user: &str,
        conv: &str,
        seqs: &[u64],
        version: u64,
    ) -> Result<(), StoreError> {
        for seq in seqs {
            sqlx::query(
                "INSERT INTO hidden_messages (user_id, conv_id, seq, version)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(user)
            .bind(conv)
            .bind(i(*seq))
            .bind(i(version))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// Changes what others may see of `user`: the fields given, at USERS sequence `version`.
    pub async fn set_privacy(
        &mut self,
        user: &str,
        receipts: Option<bool>,
        presence: Option<bool>,
        version: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO privacy (user_id, version) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET version = excluded.version",
        )
        .bind(user)
        .bind(i(version))
        .execute(&mut *self.tx)
        .await?;
        for (column, value) in [("receipts", receipts), ("presence", presence)] {
            let Some(value) = value else { continue };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE privacy SET {column} = $1 WHERE user_id = $2"
            )))
            .bind(i64::from(value))
            .bind(user)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// Moves a read marker forward; `false` if it already was at or past `read_seq`.
    pub async fn raise_read_marker(
        &mut self,
        user: &str,
        conv: &str,
        read_seq: u64,
        version: u64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO read_markers (user_id, conv_id, read_seq, version)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, conv_id) DO UPDATE
             SET read_seq = excluded.read_seq, version = excluded.version
             WHERE excluded.read_seq > read_markers.read_seq",
        )
        .bind(user)
        .bind(conv)
        .bind(i(read_seq))
        .bind(i(version))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Creates or updates users, many per statement: `(user, display_name, version)` in
    /// stream order (a user named twice ends as the later says). A deleted user stays deleted:
    /// a change stored after the deletion (a race between two writers) changes nothing.
    pub async fn put_users(&mut self, users: &[(&str, &str, u64)]) -> Result<(), StoreError> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (k, (user, _, _)) in users.iter().enumerate() {
            last.insert(user, k);
        }
        let rows: Vec<&(&str, &str, u64)> = users
            .iter()
            .enumerate()
            .filter(|(k, (user, _, _))| last.get(user) == Some(k))
            .map(|(_, row)| row)
            .collect();
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            // Only placeholders are formatted into the statement.
            let sql = format!(
                "INSERT INTO users (user_id, display_name, deleted, version) VALUES {}
                 ON CONFLICT (user_id) DO UPDATE
                 SET display_name = excluded.display_name, version = excluded.version
                 WHERE users.deleted = 0",
                (0..chunk.len())
                    .map(|r| {
                        let at = r * 3 + 1;
                        format!(
                            "({}, 0, {})",
                            params(self.backend, at, 2),
                            params(self.backend, at + 2, 1)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (user, name, version) in chunk {
                q = q.bind(*user).bind(*name).bind(i(*version));
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Whether a user exists.
    pub async fn user_exists(&mut self, user: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT deleted FROM users WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&mut *self.tx)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>("deleted")? == 0,
            None => false,
        })
    }

    /// Deletes a user.
    pub async fn delete_user(&mut self, user: &str, version: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (user_id, display_name, deleted, version) VALUES ($1, '', 1, $2)
             ON CONFLICT (user_id) DO UPDATE SET deleted = 1, version = excluded.version",
        )
        .bind(user)
        .bind(i(version))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Whether the session of `device` was revoked (for good: the device never signs in again).
    pub async fn session_revoked(&mut self, user: &str, device: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 AS one FROM revoked_sessions WHERE user_id = $1 AND device = $2")
                .bind(user)
                .bind(device)
                .fetch_optional(&mut *self.tx)
                .await?;
        Ok(row.is_some())
    }

    /// Records a revoked session.
    pub async fn revoke_session(
        &mut self,
        user: &str,
        device: &str,
        version: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_sessions (user_id, device, version) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, device) DO NOTHING",
        )
        .bind(user)
        .bind(device)
        .bind(i(version))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// A group's row.
    pub async fn group(&mut self, group: &str) -> Result<Option<GroupRow>, StoreError> {
        let row = sqlx::query(
            "SELECT group_id, owner, title, avatar, direct, dismissed, created_seq, version,
                    digest_sum, member_count, horizon
             FROM groups WHERE group_id = $1",
        )
        .bind(group)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(GroupRow {
            group: r.try_get("group_id")?,
            owner: r.try_get("owner")?,
            title: r.try_get("title")?,
            avatar: r.try_get("avatar")?,
            direct: r.try_get::<i64, _>("direct")? != 0,
            dismissed: r.try_get::<i64, _>("dismissed")? != 0,
            created_seq: u(r.try_get("created_seq")?),
            version: u(r.try_get("version")?),
            digest_sum: u(r.try_get("digest_sum")?),
            member_count: u(r.try_get("member_count")?),
            horizon: u(r.try_get("horizon")?),
        }))
    }

    /// Records events from other systems as applied as native events, many per statement:
    /// `(source, event id, native sequence)` (once; a repeat is ignored).
    pub async fn record_ingested(
        &mut self,
        events: &[(String, String, u64)],
    ) -> Result<(), StoreError> {
        for chunk in events.chunks(ROWS_PER_INSERT) {
            // Only placeholders are formatted into the statement.
            let sql = format!(
                "INSERT INTO ingested_events (source, event_id, native_seq) VALUES {}
                 ON CONFLICT (source, event_id) DO NOTHING",
                rows_of_params(self.backend, chunk.len(), 3)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (source, id, seq) in chunk {
                q = q.bind(source.as_str()).bind(id.as_str()).bind(i(*seq));
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Inserts or replaces a group row.
    pub async fn put_group(&mut self, g: &GroupRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO groups (group_id, owner, title, avatar, dismissed, created_seq, version,
                                 digest_sum, member_count, direct, horizon)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (group_id) DO UPDATE
             SET owner = excluded.owner, title = excluded.title, avatar = excluded.avatar,
                 dismissed = excluded.dismissed, version = excluded.version,
                 digest_sum = excluded.digest_sum, member_count = excluded.member_count,
                 horizon = excluded.horizon",
        )
        .bind(&g.group)
        .bind(&g.owner)
        .bind(&g.title)
        .bind(&g.avatar)
        .bind(i64::from(g.dismissed))
        .bind(i(g.created_seq))
        .bind(i(g.version))
        .bind(i(g.digest_sum))
        .bind(i(g.member_count))
        .bind(i64::from(g.direct))
        .bind(i(g.horizon))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// One member's row, tombstones included.
    pub async fn member(
        &mut self,
        group: &str,
        user: &str,
    ) -> Result<Option<MemberRow>, StoreError> {
        let row = sqlx::query(
            "SELECT group_id, user_id, role, nickname, muted_until, version, removed_seq
             FROM group_members WHERE group_id = $1 AND user_id = $2",
        )
        .bind(group)
        .bind(user)
        .fetch_optional(&mut *self.tx)
        .await?;
        row.as_ref().map(member_row).transpose()
    }

    /// The rows (tombstones too) of those of `users` the group has ever had.
    pub async fn members_of(
        &mut self,
        group: &str,
        users: &[&str],
    ) -> Result<HashMap<String, MemberRow>, StoreError> {
        let mut found = HashMap::new();
        for chunk in users.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT group_id, user_id, role, nickname, muted_until, version, removed_seq
                 FROM group_members WHERE group_id = {} AND user_id IN ({})",
                params(self.backend, 1, 1),
                params(self.backend, 2, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(group);
            for u in chunk {
                q = q.bind(*u);
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                let m = member_row(&r)?;
                found.insert(m.user.clone(), m);
            }
        }
        Ok(found)
    }

    /// Which of `users` were deleted.
    pub async fn deleted_among(&mut self, users: &[&str]) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        for chunk in users.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT user_id FROM users WHERE deleted = 1 AND user_id IN ({})",
                params(self.backend, 1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(*u);
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                found.push(r.try_get("user_id")?);
            }
        }
        Ok(found)
    }

    /// Inserts or replaces a member row (a tombstone too).
    pub async fn put_member(&mut self, m: &MemberRow) -> Result<(), StoreError> {
        self.put_members(std::slice::from_ref(m)).await
    }

    /// Inserts or replaces member rows, many per statement.
    pub async fn put_members(&mut self, rows: &[MemberRow]) -> Result<(), StoreError> {
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO group_members (group_id, user_id, role, nickname, muted_until,
                                            version, removed_seq, bucket)
                 VALUES {}
                 ON CONFLICT (group_id, user_id) DO UPDATE
                 SET role = excluded.role, nickname = excluded.nickname,
                     muted_until = excluded.muted_until, version = excluded.version,
                     removed_seq = excluded.removed_seq, bucket = excluded.bucket",
                rows_of_params(self.backend, chunk.len(), 8)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for m in chunk {
                q = q
                    .bind(&m.group)
                    .bind(&m.user)
                    .bind(m.role.as_str())
                    .bind(&m.nickname)
                    .bind(m.muted_until)
                    .bind(i(m.version))
                    .bind(m.removed_seq.map(i))
                    .bind(i64::from(anchorage_digest::bucket_of(&m.user)));
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Applies per-bucket digest changes of one group: for each bucket, the digest of the
    /// members added minus those removed (see [`SetDigest::remove`]), combined with the
    /// bucket's.
    pub async fn adjust_buckets(
        &mut self,
        group: &str,
        deltas: &BTreeMap<u8, SetDigest>,
    ) -> Result<(), StoreError> {
        if deltas.is_empty() {
            return Ok(());
        }
        let mut current: HashMap<u8, SetDigest> = HashMap::new();
        for r in
            sqlx::query("SELECT bucket, sum, count FROM group_digest_buckets WHERE group_id = $1")
                .bind(group)
                .fetch_all(&mut *self.tx)
                .await?
        {
            let stored = SetDigest {
                sum: u(r.try_get("sum")?),
                count: u(r.try_get("count")?),
            };
            current.insert(r.try_get::<i64, _>("bucket")? as u8, stored);
        }
        // Every bucket in one statement (at most 256 rows): a join of many members moves
        // most of them, and a statement per bucket made that join cost 256 round trips.
        let sql = format!(
            "INSERT INTO group_digest_buckets (group_id, bucket, sum, count)
             VALUES {}
             ON CONFLICT (group_id, bucket) DO UPDATE
             SET sum = excluded.sum, count = excluded.count",
            rows_of_params(self.backend, deltas.len(), 4)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (bucket, delta) in deltas {
            let now = current
                .get(bucket)
                .copied()
                .unwrap_or_default()
                .combine(*delta);
            q = q
                .bind(group)
                .bind(i64::from(*bucket))
                .bind(i(now.sum))
                .bind(i(now.count));
        }
        q.execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Deletes the group's tombstones at or below `upto`; returns how many there were.
    pub async fn purge_tombstones(&mut self, group: &str, upto: u64) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM group_members
             WHERE group_id = $1 AND version <= $2 AND removed_seq IS NOT NULL",
        )
        .bind(group)
        .bind(i(upto))
        .execute(&mut *self.tx)
        .await?;
        Ok(done.rows_affected())
    }
}

/// A statement bound and ready to run.
pub(crate) type Statement = sqlx::query::Query<'static, Any, sqlx::any::AnyArguments>;

/// Runs `statement` and, once the database has it, `work`, which so runs while the database
/// executes the statement (the statement's first poll hands it over); then waits for the
/// statement.
pub(crate) async fn overlapped<F: std::future::Future, T>(
    statement: F,
    work: impl FnOnce() -> T,
) -> (F::Output, T) {
    let mut statement = std::pin::pin!(statement);
    let first =
        std::future::poll_fn(|cx| std::task::Poll::Ready(statement.as_mut().poll(cx))).await;
    let made = work();
    let done = match first {
        std::task::Poll::Ready(done) => done,
        std::task::Poll::Pending => statement.await,
    };
    (done, made)
}

/// The multi-row insert of `chunk`, skipping the messages a conversation holds already,
/// followed by `tail` (a `RETURNING` clause, or nothing).
fn bind_messages(backend: crate::Backend, chunk: &[NewMessage], tail: &'static str) -> Statement {
    // Only placeholders (and a constant tail) are formatted into the statement.
    let sql = format!(
        "INSERT INTO messages (conv_id, seq, sender, device, client_msg_id, body,
                               client_ts, server_ts, event_id, kind, target,
                               reply_to, detail, flag, membership_seq, attachments)
         VALUES {}
         ON CONFLICT DO NOTHING {tail}",
        rows_of_params(backend, chunk.len(), 16)
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for m in chunk {
        let detail = match m.kind {
            EntryKind::Reaction => m.emoji.clone(),
            _ if m.mentions.is_empty() => None,
            _ => serde_json::to_string(&m.mentions).ok(),
        };
        q = q
            .bind(m.conv.as_str())
            .bind(i(m.seq))
            .bind(m.sender.as_str())
            .bind(m.device.as_str())
            .bind(m.client_msg_id.as_str())
            .bind(m.body.as_str())
            .bind(m.client_ts)
            .bind(m.server_ts)
            .bind(m.event_id.as_str())
            .bind(m.kind.as_str())
            .bind(m.target.map(i))
            .bind(m.reply_to.map(i))
            .bind(detail)
            .bind(m.flag.map(i64::from))
            .bind(m.membership.map(i))
            .bind(
                (!m.attachments.is_empty())
                    .then(|| serde_json::to_string(&m.attachments).ok())
                    .flatten(),
            );
    }
    q
}

/// The statements that write the search documents of `messages` (of those that are messages,
/// not changes to one).
fn documents_of<'m>(
    backend: crate::Backend,
    messages: impl Iterator<Item = &'m NewMessage>,
) -> Vec<Statement> {
    let terms: Vec<(&str, u64, Cow<'m, [String]>)> = messages
        .filter(|m| m.kind == EntryKind::Message)
        .map(|m| {
            let terms = match &m.terms {
                Some(terms) => Cow::Borrowed(terms.as_slice()),
                None => Cow::Owned(crate::message_terms(&m.body)),
            };
            (m.conv.as_str(), m.seq, terms)
        })
        .collect();
    let docs: Vec<(&str, u64, &[String])> = terms
        .iter()
        .map(|(conv, seq, terms)| (*conv, *seq, terms.as_ref()))
        .collect();
    crate::search::document_statements(backend, &docs)
}

/// Bound parameters per `IN (…)` list, well under every backend's limit.
pub(crate) const IN_CHUNK: usize = 500;
/// Rows per multi-row `INSERT`: a projector batch in one statement where it fits. Each
/// statement is a round trip to the database (to SQLite's worker thread), so fewer is faster:
/// replaying into SQLite went from about 25k to about 40k events/s going from 100 to 1,000.
/// At most 16 columns: 16,000 parameters, under SQLite's 32,766 and PostgreSQL's 65,535.
const ROWS_PER_INSERT: usize = 1000;
/// Conversations per statement that moves their versions.
const CONVERSATIONS_PER_UPSERT: usize = 500;

/// `$first, $first+1, …` — `n` numbered placeholders.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` placeholders for a statement whose parameters are all bound in order: numbered from
/// `first` on PostgreSQL, plain `?` on SQLite. SQLite finds the name of a numbered parameter
/// by a linear scan, once per bound value — quadratic in a statement's parameters, which for a
/// 100-row insert cost more than the insert. A statement takes one form or the other
/// throughout.
pub(crate) fn params(backend: crate::Backend, first: usize, n: usize) -> String {
    match backend {
        crate::Backend::Postgres => placeholders(first, n),
        crate::Backend::Sqlite => vec!["?"; n].join(", "),
    }
}

/// `rows` parenthesized groups of `cols` placeholders, for a multi-row `VALUES` (see
/// [`params`]).
fn rows_of_params(backend: crate::Backend, rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", params(backend, r * cols + 1, cols)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stored role name.
pub(crate) fn role(name: String) -> Result<Role, StoreError> {
    Role::parse(&name).ok_or(StoreError::Invalid {
        what: "role",
        value: name,
    })
}

pub(crate) fn member_row(r: &sqlx::any::AnyRow) -> Result<MemberRow, StoreError> {
    Ok(MemberRow {
        group: r.try_get("group_id")?,
        user: r.try_get("user_id")?,
        role: role(r.try_get("role")?)?,
        nickname: r.try_get("nickname")?,
        muted_until: r.try_get("muted_until")?,
        version: u(r.try_get("version")?),
        removed_seq: r.try_get::<Option<i64>, _>("removed_seq")?.map(u),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;

    #[test]
    fn placeholders_are_numbered_on_postgres_and_plain_on_sqlite() {
        assert_eq!(params(Backend::Postgres, 3, 2), "$3, $4");
        assert_eq!(params(Backend::Sqlite, 3, 2), "?, ?");
        assert_eq!(
            rows_of_params(Backend::Postgres, 2, 2),
            "($1, $2), ($3, $4)"
        );
        assert_eq!(
            rows_of_params(Backend::Sqlite, 2, 3),
            "(?, ?, ?), (?, ?, ?)"
        );
    }
}
