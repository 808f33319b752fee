//! Reads of the projections: what sync, history and `replay --verify` ask.

use std::collections::BTreeMap;

use anchorage_schema::event::Role;
use sqlx::Row;

use crate::projection::{EntryKind, GroupRow, IN_CHUNK, params};
use crate::{Store, StoreError};

/// What the projection holds of some users (see [`Store::users_among`]).
#[derive(Debug, Default)]
pub struct UsersKnown<'a> {
    /// The users asked about that it holds.
    held: std::collections::HashSet<&'a str>,
    /// Those of them deleted.
    deleted: std::collections::HashSet<String>,
}

impl UsersKnown<'_> {
    /// `Some(deleted)` for a user the projection holds, `None` for one it never saw created
    /// (or that was not asked about).
    pub fn get(&self, user: &str) -> Option<bool> {
        self.held
            .contains(user)
            .then(|| self.deleted.contains(user))
    }
}

/// A conversation's version and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    /// The conversation.
    pub conv: String,
    /// Its last message's seq.
    pub last_seq: u64,
    /// When that message was stored.
    pub last_ts: i64,
    /// How many messages it holds.
    pub message_count: u64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    /// The conversation.
    pub conv: String,
    /// Its place in the conversation.
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
    /// A message, or the change an entry makes to message `target`.
    pub kind: EntryKind,
    /// The message a change is about.
    pub target: Option<u64>,
    /// The message a message replies to.
    pub reply_to: Option<u64>,
    /// Users a message mentions (`*` for everyone).
    pub mentions: Vec<String>,
    /// A reaction entry's emoji.
    pub emoji: Option<String>,
    /// A reaction entry: added; a pin entry: pinned.
    pub flag: Option<bool>,
    /// How often a message was edited.
    pub edits: u32,
    /// The message was revoked (its body is JSON null).
    pub revoked: bool,
    /// The message is pinned.
    pub pinned: bool,
    /// The seq of the last entry reflected in a message's state (its own seq if none).
    pub version: u64,
    /// The files a message carries.
    pub attachments: Vec<anchorage_schema::attachment::Attachment>,
}

/// The reactions on one message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionCount {
    /// The message.
    pub target: u64,
    /// The emoji.
    pub emoji: String,
    /// How many reacted with it.
    pub count: u64,
    /// Whether the asking user is one of them.
    pub mine: bool,
}

/// Where a page of a conversation starts (see [`Store::page_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAt {
    /// Its entries after this seq, oldest first: messages and the changes to them.
    After(u64),
    /// Its messages before this seq (from the newest if 0), newest first.
    Before(u64),
}

/// Entries of a conversation and the reactions on the messages among them, as of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryPage {
    /// The entries.
    pub rows: Vec<MessageRow>,
    /// The reactions on the messages among them, by message then emoji.
    pub reactions: Vec<ReactionCount>,
}

/// Leaves out what the viewer (`$4`) deleted for themselves.
const NOT_HIDDEN: &str = "AND NOT EXISTS (SELECT 1 FROM hidden_messages h \
     WHERE h.user_id = $4 AND h.conv_id = messages.conv_id AND h.seq = messages.seq)";

/// A user's own view of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefs {
    /// The conversation.
    pub conv: String,
    /// Pinned to the top of their list.
    pub pinned: bool,
    /// Archived.
    pub archived: bool,
    /// Do not disturb until (Unix ms).
    pub muted_until: Option<i64>,
    /// The unsent text.
    pub draft: Option<String>,
    /// `mentions` or `none`.
    pub notify: Option<String>,
    /// The USERS sequence of its last change.
    pub version: u64,
}

/// A user's own state since a version (see [`Store::user_state_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    /// Views of conversations that changed.
    pub prefs: Vec<Prefs>,
    /// Messages deleted for themselves since, as (conversation, seq).
    pub hidden: Vec<(String, u64)>,
    /// Devices whose push target changed since.
    pub push: Vec<crate::push::PushTargetRow>,
    /// Others see their read receipts.
    pub receipts: bool,
    /// Others see their presence.
    pub presence: bool,
    /// Everything up to this USERS sequence is in here.
    pub version: u64,
    /// More remains after `version`.
    pub more: bool,
}

/// The columns [`message_row`] reads.
pub(crate) const MESSAGE_COLUMNS: &str = "conv_id, seq, sender, device, client_msg_id, body, client_ts, \
     server_ts, kind, target, reply_to, detail, flag, edits, revoked, pinned, version, attachments";

impl Store {
    /// A conversation's version and size.
    pub async fn conversation(&self, conv: &str) -> Result<Option<ConversationRow>, StoreError> {
        let row = sqlx::query(
            "SELECT conv_id, last_seq, last_ts, message_count FROM conversations WHERE conv_id = $1",
        )
        .bind(conv)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(ConversationRow {
            conv: r.try_get("conv_id")?,
            last_seq: r.try_get::<i64, _>("last_seq")? as u64,
            last_ts: r.try_get("last_ts")?,
            message_count: r.try_get::<i64, _>("message_count")? as u64,
        }))
    }

    /// Entries of a conversation after `after`, oldest first, at most `limit`.
    pub async fn messages_after(
        &self,
        conv: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        self.messages_after_for(conv, after, limit, "").await
    }

    /// The same as `viewer` sees them: without the messages they deleted for themselves.
    pub async fn messages_after_for(
        &self,
        conv: &str,
        after: u64,
        limit: u32,
        viewer: &str,
    ) -> Result<Vec<MessageRow>, StoreError> {
        page_rows(&self.pool, conv, PageAt::After(after), limit, viewer).await
    }

    /// A page of `conv` as `viewer` sees it, with the reactions on its messages, read in one
    /// snapshot. A message's `version` says which changes to it a device holds: counts read
    /// apart from it could hold a reaction applied after it, which the device would count
    /// again when the reaction's own entry comes.
    pub async fn page_for(
        &self,
        conv: &str,
        at: PageAt,
        limit: u32,
        viewer: &str,
    ) -> Result<EntryPage, StoreError> {
        let mut tx = self.begin_read().await?;
        let rows = page_rows(&mut *tx.tx, conv, at, limit, viewer).await?;
        let reactions = match message_span(&rows) {
            Some((from, to)) => reaction_counts(&mut *tx.tx, conv, from, to, viewer).await?,
            None => Vec::new(),
        };
        tx.commit().await?;
        Ok(EntryPage { rows, reactions })
    }

    /// What `user` changed of their own state after USERS sequence `after`: their views of
    /// conversations and the messages they deleted for themselves (at most `limit` of each,
    /// cut at a version boundary, `more` if more remain), and their privacy settings.
    pub async fn user_state_since(
        &self,
        user: &str,
        after: u64,
        limit: u32,
    ) -> Result<UserState, StoreError> {
        // One snapshot for every read: a change applied between two of them would otherwise
        // be counted in the version without being in the lists, and the device that takes
        // this version would never ask for it.
        let mut tx = self.begin_read().await?;
        let prefs = sqlx::query(
            "SELECT conv_id, pinned, archived, muted_until, draft, notify, version
             FROM conversation_prefs WHERE user_id = $1 AND version > $2
             ORDER BY version LIMIT $3",
        )
        .bind(user)
        .bind(after as i64)
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *tx.tx)
        .await?;
        let mut prefs: Vec<Prefs> = prefs
            .iter()
            .map(|r| {
                Ok(Prefs {
                    conv: r.try_get("conv_id")?,
                    pinned: r.try_get::<i64, _>("pinned")? != 0,
                    archived: r.try_get::<i64, _>("archived")? != 0,
                    muted_until: r.try_get("muted_until")?,
                    draft: r.try_get("draft")?,
                    notify: r.try_get("notify")?,
                    version: r.try_get::<i64, _>("version")? as u64,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        let hidden = sqlx::query(
            "SELECT conv_id, seq, version FROM hidden_messages
             WHERE user_id = $1 AND version > $2 ORDER BY version, conv_id, seq LIMIT $3",
        )
        .bind(user)
        .bind(after as i64)
        .bind(i64::from(limit) + 1)
        .fetch_all(&mut *tx.tx)
        .await?;
        let mut hidden: Vec<(String, u64, u64)> = hidden
            .iter()
            .map(|r| {
                Ok((
                    r.try_get("conv_id")?,
                    r.try_get::<i64, _>("seq")? as u64,
                    r.try_get::<i64, _>("version")? as u64,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        let mut push =
            crate::push::push_targets_since(&mut *tx.tx, user, after, limit.saturating_add(1))
                .await?;
        let privacy =
            sqlx::query("SELECT receipts, presence, version FROM privacy WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&mut *tx.tx)
                .await?;
        let (receipts, presence, privacy_version) = match privacy {
            Some(r) => (
                r.try_get::<i64, _>("receipts")? != 0,
                r.try_get::<i64, _>("presence")? != 0,
                r.try_get::<i64, _>("version")? as u64,
            ),
            None => (true, true, 0),
        };
        // Where a cut list ends, the other is cut too: what comes back is complete up to a
        // version, and the next page starts after it.
        let limit = limit as usize;
        let mut through = u64::MAX;
        if prefs.len() > limit {
            through = through.min(prefs[limit - 1].version);
        }
        if hidden.len() > limit {
            through = through.min(hidden[limit - 1].2);
        }
        if push.len() > limit {
            through = through.min(push[limit - 1].version);
        }
        let more = through != u64::MAX;
        if more {
            prefs.retain(|p| p.version <= through);
            hidden.retain(|h| h.2 <= through);
            push.retain(|p| p.version <= through);
        }
        let newest = if more {
            through
        } else {
            // What the user's state is at now (never what the caller said it holds).
            let current = sqlx::query(
                "SELECT MAX(v) AS v FROM (
                     SELECT MAX(version) AS v FROM conversation_prefs WHERE user_id = $1
                     UNION ALL SELECT MAX(version) FROM hidden_messages WHERE user_id = $1
                     UNION ALL SELECT MAX(version) FROM push_targets WHERE user_id = $1
                 ) AS t",
            )
            .bind(user)
            .fetch_one(&mut *tx.tx)
            .await?
            .try_get::<Option<i64>, _>("v")?
            .map_or(0, |v| v as u64);
            current.max(privacy_version)
        };
        tx.commit().await?;
        Ok(UserState {
            prefs,
            hidden: hidden.into_iter().map(|(c, s, _)| (c, s)).collect(),
            push,
            receipts,
            presence,
            version: newest,
            more,
        })
    }

    /// A user's read marker in a conversation.
    pub async fn read_seq(&self, user: &str, conv: &str) -> Result<Option<u64>, StoreError> {
        let row =
            sqlx::query("SELECT read_seq FROM read_markers WHERE user_id = $1 AND conv_id = $2")
                .bind(user)
                .bind(conv)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(r) => Some(r.try_get::<i64, _>("read_seq")? as u64),
            None => None,
        })
    }

    /// A group's row.
    pub async fn group_row(&self, group: &str) -> Result<Option<GroupRow>, StoreError> {
        let mut tx = self.begin_read().await?;
        let g = tx.group(group).await?;
        tx.commit().await?;
        Ok(g)
    }

    /// Current members of a group, sorted.
    pub async fn member_ids(&self, group: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id FROM group_members WHERE group_id = $1 AND removed_seq IS NULL
             ORDER BY user_id",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("user_id")?))
            .collect()
    }

    /// Whether a user exists and is not deleted.
    pub async fn user_active(&self, user: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_read().await?;
        let exists = tx.user_exists(user).await?;
        tx.commit().await?;
        Ok(exists)
    }

    /// Whether the user was deleted (its id is never taken again).
    pub async fn user_deleted(&self, user: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 AS one FROM users WHERE user_id = $1 AND deleted = 1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// A user as projected: display name, whether deleted, version; `None` if never created.
    pub async fn user_row(&self, user: &str) -> Result<Option<(String, bool, u64)>, StoreError> {
        let row =
            sqlx::query("SELECT display_name, deleted, version FROM users WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok((
                r.try_get("display_name")?,
                r.try_get::<i64, _>("deleted")? != 0,
                r.try_get::<i64, _>("version")? as u64,
            ))
        })
        .transpose()
    }

    /// The devices of a user that have received messages or were revoked, each with whether
    /// its session was revoked, sorted.
    pub async fn devices_of(&self, user: &str) -> Result<Vec<(String, bool)>, StoreError> {
        let rows = sqlx::query(
            "SELECT device, MAX(revoked) AS revoked FROM (
                 SELECT device, 0 AS revoked FROM device_cursors WHERE user_id = $1
                 UNION ALL
                 SELECT device, 1 AS revoked FROM revoked_sessions WHERE user_id = $1
             ) d GROUP BY device ORDER BY device",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("device")?, r.try_get::<i64, _>("revoked")? != 0)))
            .collect()
    }

    /// A user's display name, if the user exists and is not deleted.
    pub async fn display_name(&self, user: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT display_name FROM users WHERE user_id = $1 AND deleted = 0")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("display_name")).transpose()?)
    }

    /// What the projection holds of `users`: which it never saw created, and which were
    /// deleted since.
    ///
    /// A chunk of users who all exist and are active — what a large group's members almost
    /// always are — or who are all new costs one count, not a row per user.
    pub async fn users_among<'a>(&self, users: &[&'a str]) -> Result<UsersKnown<'a>, StoreError> {
        let mut known = UsersKnown::default();
        for chunk in users.chunks(IN_CHUNK) {
            // Only placeholders are formatted into the statements.
            let list = params(self.backend(), 1, chunk.len());
            let query = |sql: String| {
                chunk
                    .iter()
                    .fold(sqlx::query(sqlx::AssertSqlSafe(sql)), |q, u| q.bind(*u))
            };
            let counted = query(format!(
                "SELECT COUNT(*) AS held,
                        COALESCE(SUM(CASE WHEN deleted <> 0 THEN 1 ELSE 0 END), 0) AS deleted
                 FROM users WHERE user_id IN ({list})"
            ))
            .fetch_one(&self.pool)
            .await?;
            let held: i64 = counted.try_get("held")?;
            let deleted: i64 = counted.try_get("deleted")?;
            if held == 0 {
                continue;
            }
            if deleted == 0 && usize::try_from(held).is_ok_and(|h| h == chunk.len()) {
                known.held.extend(chunk.iter().copied());
                continue;
            }
            let rows = query(format!(
                "SELECT user_id, deleted FROM users WHERE user_id IN ({list})"
            ))
            .fetch_all(&self.pool)
            .await?;
            let mut found = std::collections::HashSet::new();
            for r in rows {
                let user: String = r.try_get("user_id")?;
                if r.try_get::<i64, _>("deleted")? != 0 {
                    known.deleted.insert(user.clone());
                }
                found.insert(user);
            }
            known
                .held
                .extend(chunk.iter().copied().filter(|u| found.contains(*u)));
        }
        Ok(known)
    }

    /// Which of the events `ids` of other system `source` were applied already.
    pub async fn ingested_among(
        &self,
        source: &str,
        ids: &[&str],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut found = std::collections::HashSet::new();
        for chunk in ids.chunks(IN_CHUNK) {
            // Only placeholders are formatted into the statement.
            let sql = format!(
                "SELECT event_id FROM ingested_events WHERE source = {} AND event_id IN ({})",
                params(self.backend(), 1, 1),
                params(self.backend(), 2, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(source);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                found.insert(r.try_get("event_id")?);
            }
        }
        Ok(found)
    }
}

/// A conversation of a user, with what a conversation list needs after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationState {
    /// The conversation.
    pub conv: String,
    /// Its last message's seq.
    pub last_seq: u64,
    /// The user's read marker.
    pub read_seq: u64,
    /// What this device acknowledged receiving.
    pub delivered_seq: u64,
}

pub(crate) fn message_row(r: &sqlx::any::AnyRow) -> Result<MessageRow, StoreError> {
    let seq = r.try_get::<i64, _>("seq")? as u64;
    let kind = EntryKind::parse(&r.try_get::<String, _>("kind")?);
    let detail: Option<String> = r.try_get("detail")?;
    let (mentions, emoji) = match kind {
        EntryKind::Reaction => (Vec::new(), detail),
        _ => (
            detail
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or_default(),
            None,
        ),
    };
    let opt = |name: &str| -> Result<Option<u64>, StoreError> {
        Ok(r.try_get::<Option<i64>, _>(name)?.map(|v| v as u64))
    };
    Ok(MessageRow {
        conv: r.try_get("conv_id")?,
        seq,
        sender: r.try_get("sender")?,
        device: r.try_get("device")?,
        client_msg_id: r.try_get("client_msg_id")?,
        body: r.try_get("body")?,
        client_ts: r.try_get("client_ts")?,
        server_ts: r.try_get("server_ts")?,
        kind,
        target: opt("target")?,
        reply_to: opt("reply_to")?,
        mentions,
        emoji,
        flag: opt("flag")?.map(|f| f != 0),
        edits: r.try_get::<i64, _>("edits")?.clamp(0, i64::from(u32::MAX)) as u32,
        revoked: r.try_get::<i64, _>("revoked")? != 0,
        pinned: r.try_get::<i64, _>("pinned")? != 0,
        version: opt("version")?.unwrap_or(seq),
        attachments: r
            .try_get::<Option<String>, _>("attachments")?
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
    })
}

impl Store {
    /// One message of a conversation (not a change entry), in its current state.
    pub async fn message(&self, conv: &str, seq: u64) -> Result<Option<MessageRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS}
             FROM messages WHERE conv_id = $1 AND seq = $2 AND kind = 'message'"
        )))
        .bind(conv)
        .bind(seq as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_row).transpose()
    }

    /// The edits of message `target`, oldest first.
    pub async fn edits_of(&self, conv: &str, target: u64) -> Result<Vec<MessageRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS}
             FROM messages WHERE conv_id = $1 AND target = $2 AND kind = 'edit'
             ORDER BY seq LIMIT 1000"
        )))
        .bind(conv)
        .bind(target as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_row).collect()
    }

    /// The reactions on messages `from..=to` of a conversation, with whether `user` is among
    /// those who reacted, by message then emoji (in the order each emoji first came).
    pub async fn reaction_counts(
        &self,
        conv: &str,
        from: u64,
        to: u64,
        user: &str,
    ) -> Result<Vec<ReactionCount>, StoreError> {
        reaction_counts(&self.pool, conv, from, to, user).await
    }

    /// Who reacted to message `target` with `emoji`, in the order they did, after the
    /// reaction at `after` (a seq; 0 from the first), at most `limit`: `(user, seq)`.
    pub async fn reactors(
        &self,
        conv: &str,
        target: u64,
        emoji: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT user_id, seq FROM reactions
             WHERE conv_id = $1 AND target = $2 AND emoji = $3 AND seq > $4
             ORDER BY seq LIMIT $5",
        )
        .bind(conv)
        .bind(target as i64)
        .bind(emoji)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("user_id")?, r.try_get::<i64, _>("seq")? as u64)))
            .collect()
    }

    /// How far each current member of `conv` read who shows their receipts, by user (those
    /// who never read: 0).
    pub async fn read_positions(&self, conv: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.user_id, COALESCE(r.read_seq, 0) AS read_seq
             FROM group_members m
             LEFT JOIN read_markers r ON r.user_id = m.user_id AND r.conv_id = m.group_id
             LEFT JOIN privacy p ON p.user_id = m.user_id
             WHERE m.group_id = $1 AND m.removed_seq IS NULL AND COALESCE(p.receipts, 1) = 1
             ORDER BY m.user_id LIMIT 10000",
        )
        .bind(conv)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("user_id")?,
                    r.try_get::<i64, _>("read_seq")? as u64,
                ))
            })
            .collect()
    }

    /// How many current members of `conv` who show their receipts read it up to `seq` or
    /// further, `except` one (the sender).
    pub async fn readers_count(
        &self,
        conv: &str,
        seq: u64,
        except: &str,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM read_markers r
             JOIN group_members m ON m.group_id = r.conv_id AND m.user_id = r.user_id
             LEFT JOIN privacy p ON p.user_id = r.user_id
             WHERE r.conv_id = $1 AND r.read_seq >= $2 AND m.removed_seq IS NULL
               AND COALESCE(p.receipts, 1) = 1 AND r.user_id <> $3",
        )
        .bind(conv)
        .bind(seq as i64)
        .bind(except)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Records that `user` was connected until `at` (the latest time wins).
    pub async fn set_last_seen(&self, user: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO last_seen (user_id, at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET at = excluded.at WHERE excluded.at > last_seen.at",
        )
        .bind(user)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When `user` was last connected, if ever recorded.
    pub async fn last_seen(&self, user: &str) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT at FROM last_seen WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("at")?),
            None => None,
        })
    }

    /// Those of `others` who share a conversation with `user` now.
    pub async fn sharing_a_conversation(
        &self,
        user: &str,
        others: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut found = Vec::new();
        for chunk in others.chunks(500) {
            // Only placeholders are formatted into the statement.
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT DISTINCT o.user_id FROM group_members m
                 JOIN groups g ON g.group_id = m.group_id AND g.dismissed = 0
                 JOIN group_members o ON o.group_id = m.group_id
                 WHERE m.user_id = $1 AND m.removed_seq IS NULL AND o.removed_seq IS NULL
                   AND o.user_id IN ({list})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user);
            for other in chunk {
                q = q.bind(other);
            }
            for row in q.fetch_all(&self.pool).await? {
                found.push(row.try_get("user_id")?);
            }
        }
        Ok(found)
    }

    /// The other member of each of `user`'s 1:1 conversations.
    pub async fn direct_peers(&self, user: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.user_id FROM group_members m
             JOIN groups g ON g.group_id = m.group_id AND g.direct = 1 AND g.dismissed = 0
             JOIN group_members o ON o.group_id = m.group_id AND o.user_id <> m.user_id
             WHERE m.user_id = $1 AND m.removed_seq IS NULL AND o.removed_seq IS NULL",
        )
        .bind(user)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("user_id")?))
            .collect()
    }

    /// How many of `users` are current members of `group` who show their presence.
    pub async fn members_showing_presence(
        &self,
        group: &str,
        users: &[String],
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        for chunk in users.chunks(500) {
            // Only placeholders are formatted into the statement.
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT COUNT(*) AS n FROM group_members m
                 LEFT JOIN privacy p ON p.user_id = m.user_id
                 WHERE m.group_id = $1 AND m.removed_seq IS NULL
                   AND COALESCE(p.presence, 1) = 1 AND m.user_id IN ({list})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(group);
            for user in chunk {
                q = q.bind(user);
            }
            total += q
                .fetch_one(&self.pool)
                .await?
                .try_get::<i64, _>("n")?
                .max(0) as u64;
        }
        Ok(total)
    }

    /// What others may see of `user`: (read receipts, presence).
    pub async fn privacy_of(&self, user: &str) -> Result<(bool, bool), StoreError> {
        let row = sqlx::query("SELECT receipts, presence FROM privacy WHERE user_id = $1")
            .bind(user)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => (
                r.try_get::<i64, _>("receipts")? != 0,
                r.try_get::<i64, _>("presence")? != 0,
            ),
            None => (true, true),
        })
    }

    /// Whether `user` reacted to message `target` with `emoji`, and the seq of the entry
    /// that last changed that (0 if none ever did).
    pub async fn reaction_of(
        &self,
        conv: &str,
        target: u64,
        emoji: &str,
        user: &str,
    ) -> Result<(bool, u64), StoreError> {
        let row = sqlx::query(
            "SELECT seq, flag FROM messages
             WHERE conv_id = $1 AND target = $2 AND kind = 'reaction' AND detail = $3
               AND sender = $4
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(conv)
        .bind(target as i64)
        .bind(emoji)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => (
                r.try_get::<Option<i64>, _>("flag")?.unwrap_or(0) != 0,
                r.try_get::<i64, _>("seq")? as u64,
            ),
            None => (false, 0),
        })
    }

    /// How many different emoji message `target` carries.
    pub async fn emoji_count(&self, conv: &str, target: u64) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM reaction_counts WHERE conv_id = $1 AND target = $2",
        )
        .bind(conv)
        .bind(target as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")?.max(0) as u64)
    }

    /// Messages after `after` in `conv` that mention `user` (by name or `@all`) and were
    /// not sent by them, counted up to `cap`.
    pub async fn mentions_after(
        &self,
        conv: &str,
        user: &str,
        after: u64,
        cap: u32,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM
               (SELECT DISTINCT seq FROM mentions
                WHERE conv_id = $1 AND user_id IN ($2, '*') AND seq > $3 AND sender <> $2
                LIMIT $4) AS t",
        )
        .bind(conv)
        .bind(user)
        .bind(after as i64)
        .bind(i64::from(cap))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }
}

impl Store {
    /// The conversations (groups and 1:1s) `user` is a member of now, sorted, each with until
    /// when the user is muted there (if at all).
    pub async fn conversations_of(
        &self,
        user: &str,
    ) -> Result<Vec<(String, Option<i64>)>, StoreError> {
        conversations_of(&self.pool, user).await
    }

    /// The same, with the membership projection's checkpoint they are as of (0 before any):
    /// read in one snapshot, so no event applied in between is both in them and after it.
    pub async fn conversations_at(
        &self,
        user: &str,
    ) -> Result<(u64, Vec<(String, Option<i64>)>), StoreError> {
        let mut tx = self.begin_read().await?;
        let checkpoint = tx.checkpoint("membership").await?.map_or(0, |c| c.last_seq);
        let convs = conversations_of(&mut *tx.tx, user).await?;
        tx.commit().await?;
        Ok((checkpoint, convs))
    }

    /// The role of a current member, `None` for a non-member.
    pub async fn member_role(&self, group: &str, user: &str) -> Result<Option<Role>, StoreError> {
        let row = sqlx::query(
            "SELECT role FROM group_members
             WHERE group_id = $1 AND user_id = $2 AND removed_seq IS NULL",
        )
        .bind(group)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(crate::projection::role(r.try_get("role")?)?),
            None => None,
        })
    }

    /// Messages before `before` (all if 0), newest first, at most `limit`.
    pub async fn messages_before(
        &self,
        conv: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        self.messages_before_for(conv, before, limit, "").await
    }

    /// The same as `viewer` sees them: without the messages they deleted for themselves.
    pub async fn messages_before_for(
        &self,
        conv: &str,
        before: u64,
        limit: u32,
        viewer: &str,
    ) -> Result<Vec<MessageRow>, StoreError> {
        page_rows(&self.pool, conv, PageAt::Before(before), limit, viewer).await
    }

    /// A sender's message by its client id (a retry older than the duplicate window).
    pub async fn message_by_client_id(
        &self,
        conv: &str,
        sender: &str,
        device: &str,
        client_msg_id: &str,
    ) -> Result<Option<MessageRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS}
             FROM messages
             WHERE conv_id = $1 AND sender = $2 AND device = $3 AND client_msg_id = $4
               AND kind = 'message'"
        )))
        .bind(conv)
        .bind(sender)
        .bind(device)
        .bind(client_msg_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_row).transpose()
    }

    /// A message the server API posted in `conv` under an idempotency key: for a user (device
    /// `device`, client id `key`) or as the system (no device, client id `system_id`).
    pub async fn posted_under_key(
        &self,
        conv: &str,
        device: &str,
        key: &str,
        system_id: &str,
    ) -> Result<Option<MessageRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLUMNS}
             FROM messages
             WHERE conv_id = $1 AND client_msg_id IN ($3, $4) AND kind = 'message'
               AND ((device = $2 AND client_msg_id = $3) OR (device = '' AND client_msg_id = $4))
             ORDER BY seq LIMIT 1"
        )))
        .bind(conv)
        .bind(device)
        .bind(key)
        .bind(system_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(message_row).transpose()
    }

    /// The user's conversations after `after_conv` (by id), at most `limit`, with their
    /// versions, the user's read marker and what `device` acknowledged. The cost is
    /// proportional to the number of the user's conversations, not to the size of any.
    pub async fn conversation_states(
        &self,
        user: &str,
        device: &str,
        after_conv: &str,
        limit: u32,
    ) -> Result<Vec<ConversationState>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.group_id AS conv_id,
                    COALESCE(c.last_seq, 0) AS last_seq,
                    COALESCE(r.read_seq, 0) AS read_seq,
                    COALESCE(d.delivered_seq, 0) AS delivered_seq
             FROM group_members m
             JOIN groups g ON g.group_id = m.group_id
             LEFT JOIN conversations c ON c.conv_id = m.group_id
             LEFT JOIN read_markers r ON r.user_id = m.user_id AND r.conv_id = m.group_id
             LEFT JOIN device_cursors d
                    ON d.user_id = m.user_id AND d.device = $2 AND d.conv_id = m.group_id
             WHERE m.user_id = $1 AND m.removed_seq IS NULL AND g.dismissed = 0
               AND m.group_id > $3
             ORDER BY m.group_id LIMIT $4",
        )
        .bind(user)
        .bind(device)
        .bind(after_conv)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ConversationState {
                    conv: r.try_get("conv_id")?,
                    last_seq: r.try_get::<i64, _>("last_seq")? as u64,
                    read_seq: r.try_get::<i64, _>("read_seq")? as u64,
                    delivered_seq: r.try_get::<i64, _>("delivered_seq")? as u64,
                })
            })
            .collect()
    }

    /// Messages after `after` in `conv`, counted up to `cap`.
    pub async fn count_after(&self, conv: &str, after: u64, cap: u32) -> Result<u64, StoreError> {
        self.count_after_for(conv, after, cap, "").await
    }

    /// The same without the messages `viewer` deleted for themselves.
    pub async fn count_after_for(
        &self,
        conv: &str,
        after: u64,
        cap: u32,
        viewer: &str,
    ) -> Result<u64, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM
               (SELECT 1 AS one FROM messages
                WHERE conv_id = $1 AND seq > $2 AND kind = 'message' AND revoked = 0 {NOT_HIDDEN}
                LIMIT $3) AS t"
        )))
        .bind(conv)
        .bind(after as i64)
        .bind(i64::from(cap))
        .bind(viewer)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }

    /// Which of `seqs` are messages of `conv` (not changes to them).
    pub async fn messages_among(&self, conv: &str, seqs: &[u64]) -> Result<Vec<u64>, StoreError> {
        let mut found = Vec::new();
        for seq in seqs {
            if self.message(conv, *seq).await?.is_some() {
                found.push(*seq);
            }
        }
        Ok(found)
    }

    /// Records that a device received `conv` up to `seq` (only ever moves forward).
    pub async fn set_delivered(
        &self,
        user: &str,
        device: &str,
        conv: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO device_cursors (user_id, device, conv_id, delivered_seq)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, device, conv_id) DO UPDATE
             SET delivered_seq = excluded.delivered_seq
             WHERE excluded.delivered_seq > device_cursors.delivered_seq",
        )
        .bind(user)
        .bind(device)
        .bind(conv)
        .bind(seq as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a device's session was revoked.
    pub async fn is_revoked(&self, user: &str, device: &str) -> Result<bool, StoreError> {
        let row =
            sqlx::query("SELECT 1 AS one FROM revoked_sessions WHERE user_id = $1 AND device = $2")
                .bind(user)
                .bind(device)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }
}

/// A summary of the projections that two databases built from the same streams must agree on:
/// row counts, every group's version and digest, every conversation's version and size, every
/// read marker. Used by `anchorage replay --verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Each projection's checkpoint.
    pub checkpoints: BTreeMap<String, u64>,
    /// Rows per table.
    pub counts: BTreeMap<&'static str, i64>,
    /// group → (version, digest sum, member count, dismissed)
    pub groups: BTreeMap<String, (u64, u64, u64, bool)>,
    /// conversation → (last seq, message count)
    pub conversations: BTreeMap<String, (u64, u64)>,
    /// (user, conversation) → read seq
    pub read_markers: BTreeMap<(String, String), u64>,
    /// (table, key) → a hash of every column of every row under that key: a changed body,
    /// sender, name, role or flag shows here, named by its conversation, user or group.
    pub contents: BTreeMap<(&'static str, String), u64>,
}

/// What the content hashes cover: each projected table, the column its rows are grouped by
/// (the key a difference is named by), and every other column, in a stable order.
const CONTENTS: &[(&str, &str, &str)] = &[
    (
        "messages",
        "conv_id",
        "seq, sender, device, client_msg_id, body, client_ts, server_ts, event_id, kind, \
         target, reply_to, detail, flag, edits, revoked, pinned, version, membership_seq, \
         attachments",
    ),
    ("message_attachments", "conv_id", "seq, object"),
    ("reactions", "conv_id", "target, emoji, user_id, seq"),
    (
        "reaction_counts",
        "conv_id",
        "target, emoji, count, first_seq",
    ),
    ("mentions", "conv_id", "user_id, seq, sender"),
    (
        "conversation_prefs",
        "user_id",
        "conv_id, pinned, archived, muted_until, draft, notify, version",
    ),
    (
        "push_targets",
        "user_id",
        "device, provider, address, target, preview, version",
    ),
    ("hidden_messages", "user_id", "conv_id, seq, version"),
    ("privacy", "user_id", "receipts, presence, version"),
    (
        "conversations",
        "conv_id",
        "last_seq, last_ts, message_count",
    ),
    ("read_markers", "user_id", "conv_id, read_seq, version"),
    ("users", "user_id", "display_name, deleted, version"),
    ("revoked_sessions", "user_id", "device, version"),
    (
        "groups",
        "group_id",
        "owner, title, avatar, dismissed, created_seq, version, digest_sum, member_count, \
         direct, horizon",
    ),
    (
        "group_members",
        "group_id",
        "user_id, role, nickname, muted_until, version, removed_seq, bucket",
    ),
    ("group_digest_buckets", "group_id", "bucket, sum, count"),
    ("member_spans", "group_id", "user_id, joined_seq, left_seq"),
    ("ingested_events", "source", "event_id, native_seq"),
];

/// Tables compared by row count.
const TABLES: &[&str] = &[
    "messages",
    "conversations",
    "read_markers",
    "users",
    "revoked_sessions",
    "groups",
    "group_members",
    "group_digest_buckets",
    "ingested_events",
    "reactions",
    "reaction_counts",
    "mentions",
    "conversation_prefs",
    "hidden_messages",
    "privacy",
    "member_spans",
    "message_attachments",
    // Documents of the search index (SQLite's holds no text to hash).
    "message_search",
];

impl Store {
    /// Every projected table and text column holding `text` anywhere, as `table.column` — an
    /// erasure audit: after a revoke, none holds the message's text.
    pub async fn columns_containing(&self, text: &str) -> Result<Vec<String>, StoreError> {
        let columns = match self.backend {
            crate::Backend::Sqlite => {
                "SELECT m.name AS t, p.name AS c
                 FROM sqlite_master m, pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND p.type = 'TEXT'"
            }
            crate::Backend::Postgres => {
                "SELECT CAST(table_name AS TEXT) AS t, CAST(column_name AS TEXT) AS c
                 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND data_type = 'text'"
            }
        };
        let mut found = Vec::new();
        for row in sqlx::query(columns).fetch_all(&self.pool).await? {
            let (table, column): (String, String) = (row.try_get("t")?, row.try_get("c")?);
            // Names come from the database's own catalogue, never from a caller.
            let sql =
                format!("SELECT COUNT(*) AS n FROM \"{table}\" WHERE strpos(\"{column}\", $1) > 0");
            let sql = match self.backend {
                crate::Backend::Sqlite => sql.replace("strpos(", "instr("),
                crate::Backend::Postgres => sql,
            };
            let n: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(text)
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            if n > 0 {
                found.push(format!("{table}.{column}"));
            }
        }
        Ok(found)
    }

    /// What two databases built from the same streams must agree on.
    pub async fn fingerprint(&self) -> Result<Fingerprint, StoreError> {
        let mut f = Fingerprint::default();
        // Settings kept beside the checkpoints (epoch 0) say how the live projector runs, not
        // what it built.
        for row in
            sqlx::query("SELECT projection, last_seq FROM projection_checkpoints WHERE epoch <> 0")
                .fetch_all(&self.pool)
                .await?
        {
            f.checkpoints.insert(
                row.try_get("projection")?,
                row.try_get::<i64, _>("last_seq")? as u64,
            );
        }
        for table in TABLES {
            let sql = format!("SELECT COUNT(*) AS n FROM {table}");
            let n: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(&self.pool)
                .await?
                .try_get("n")?;
            f.counts.insert(table, n);
        }
        for row in
            sqlx::query("SELECT group_id, version, digest_sum, member_count, dismissed FROM groups")
                .fetch_all(&self.pool)
                .await?
        {
            f.groups.insert(
                row.try_get("group_id")?,
                (
                    row.try_get::<i64, _>("version")? as u64,
                    row.try_get::<i64, _>("digest_sum")? as u64,
                    row.try_get::<i64, _>("member_count")? as u64,
                    row.try_get::<i64, _>("dismissed")? != 0,
                ),
            );
        }
        for row in sqlx::query("SELECT conv_id, last_seq, message_count FROM conversations")
            .fetch_all(&self.pool)
            .await?
        {
            f.conversations.insert(
                row.try_get("conv_id")?,
                (
                    row.try_get::<i64, _>("last_seq")? as u64,
                    row.try_get::<i64, _>("message_count")? as u64,
                ),
            );
        }
        for row in sqlx::query("SELECT user_id, conv_id, read_seq FROM read_markers")
            .fetch_all(&self.pool)
            .await?
        {
            f.read_markers.insert(
                (row.try_get("user_id")?, row.try_get("conv_id")?),
                row.try_get::<i64, _>("read_seq")? as u64,
            );
        }
        for (table, key, columns) in CONTENTS {
            self.hash_contents(table, key, columns, &mut f.contents)
                .await?;
        }
        Ok(f)
    }

    /// Hashes every row of `table`, grouped by `key`: the wrapping sum of each row's xxh3, so
    /// the order rows come in (and the databases' collations) do not matter. Streams the rows:
    /// a table of millions is read once, not held.
    async fn hash_contents(
        &self,
        table: &'static str,
        key: &str,
        columns: &str,
        out: &mut BTreeMap<(&'static str, String), u64>,
    ) -> Result<(), StoreError> {
        use futures::StreamExt;
        // Every value as text (NULL marked), so both databases hash the same bytes.
        let select = columns
            .split(',')
            .map(|c| format!("COALESCE(CAST({} AS TEXT), '\u{2205}')", c.trim()))
            .collect::<Vec<_>>()
            .join(" || '\u{1f}' || ");
        let sql = format!("SELECT {key} AS k, {select} AS v FROM {table}");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&self.pool);
        while let Some(row) = rows.next().await {
            let row = row?;
            let k: String = row.try_get("k")?;
            let v: String = row.try_get("v")?;
            let h = xxhash_rust::xxh3::xxh3_64(v.as_bytes());
            let sum = out.entry((table, k)).or_insert(0);
            *sum = sum.wrapping_add(h);
        }
        Ok(())
    }
}

impl Fingerprint {
    /// Every way `other` (rebuilt) differs from `self` (live), one line each.
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        diff_maps(
            &mut out,
            "checkpoint",
            &self.checkpoints,
            &other.checkpoints,
        );
        diff_maps(&mut out, "rows in", &self.counts, &other.counts);
        diff_maps(
            &mut out,
            "group (version, digest, members, dismissed)",
            &self.groups,
            &other.groups,
        );
        diff_maps(
            &mut out,
            "conversation (last seq, messages)",
            &self.conversations,
            &other.conversations,
        );
        diff_maps(
            &mut out,
            "read marker",
            &self.read_markers,
            &other.read_markers,
        );
        diff_maps(
            &mut out,
            "rows of (table, key) differ:",
            &self.contents,
            &other.contents,
        );
        out
    }
}

fn diff_maps<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    out: &mut Vec<String>,
    what: &str,
    live: &BTreeMap<K, V>,
    rebuilt: &BTreeMap<K, V>,
) {
    for (k, v) in live {
        match rebuilt.get(k) {
            None => out.push(format!("{what} {k:?}: {v:?} live, missing in the rebuild")),
            Some(r) if r != v => out.push(format!("{what} {k:?}: {v:?} live, {r:?} rebuilt")),
            Some(_) => {}
        }
    }
    for (k, r) in rebuilt {
        if !live.contains_key(k) {
            out.push(format!("{what} {k:?}: missing live, {r:?} rebuilt"));
        }
    }
}

/// The groups `user` is a member of, not dismissed, with when their mute ends; read by `db`.
async fn conversations_of<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    user: &str,
) -> Result<Vec<(String, Option<i64>)>, StoreError> {
    let rows = sqlx::query(
        "SELECT m.group_id, m.muted_until
         FROM group_members m JOIN groups g ON g.group_id = m.group_id
         WHERE m.user_id = $1 AND m.removed_seq IS NULL AND g.dismissed = 0
         ORDER BY m.group_id",
    )
    .bind(user)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("group_id")?, r.try_get("muted_until")?)))
        .collect()
}

/// The lowest and highest seq of the messages among `rows` (changes to messages left out).
fn message_span(rows: &[MessageRow]) -> Option<(u64, u64)> {
    let seqs = rows.iter().filter(|r| r.kind == EntryKind::Message);
    let (from, to) = seqs.fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r.seq), hi.max(r.seq)));
    (from <= to).then_some((from, to))
}

/// The rows of a page of `conv` (see [`PageAt`]), at most `limit`, without what `viewer`
/// deleted for themselves; read by `db` (the pool, or a transaction that reads more with
/// them).
async fn page_rows<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    conv: &str,
    at: PageAt,
    limit: u32,
    viewer: &str,
) -> Result<Vec<MessageRow>, StoreError> {
    let (filter, order, from) = match at {
        PageAt::After(after) => ("seq > $2", "seq", after as i64),
        PageAt::Before(before) => (
            "seq < $2 AND kind = 'message'",
            "seq DESC",
            if before == 0 { i64::MAX } else { before as i64 },
        ),
    };
    // Only fixed clauses are formatted into the statement.
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS}
         FROM messages WHERE conv_id = $1 AND {filter} {NOT_HIDDEN}
         ORDER BY {order} LIMIT $3"
    )))
    .bind(conv)
    .bind(from)
    .bind(i64::from(limit))
    .bind(viewer)
    .fetch_all(db)
    .await?;
    rows.iter().map(message_row).collect()
}

/// The reactions on messages `from..=to` of `conv`, with whether `user` is among those who
/// reacted, by message then emoji; read by `db`.
async fn reaction_counts<'e>(
    db: impl sqlx::Executor<'e, Database = sqlx::Any>,
    conv: &str,
    from: u64,
    to: u64,
    user: &str,
) -> Result<Vec<ReactionCount>, StoreError> {
    let rows = sqlx::query(
        "SELECT c.target, c.emoji, c.count,
                CASE WHEN r.user_id IS NULL THEN 0 ELSE 1 END AS mine
         FROM reaction_counts c
         LEFT JOIN reactions r ON r.conv_id = c.conv_id AND r.target = c.target
                              AND r.emoji = c.emoji AND r.user_id = $4
         WHERE c.conv_id = $1 AND c.target >= $2 AND c.target <= $3
         ORDER BY c.target, c.first_seq",
    )
    .bind(conv)
    .bind(from as i64)
    .bind(to as i64)
    .bind(user)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ReactionCount {
                target: r.try_get::<i64, _>("target")? as u64,
                emoji: r.try_get("emoji")?,
                count: r.try_get::<i64, _>("count")?.max(0) as u64,
                mine: r.try_get::<i64, _>("mine")? != 0,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_mismatch() {
        let mut live = Fingerprint::default();
        live.groups.insert("g1".into(), (5, 9, 3, false));
        live.read_markers.insert(("bob".into(), "c1".into()), 9);
        let mut rebuilt = live.clone();
        rebuilt.groups.insert("g1".into(), (4, 9, 3, false));
        rebuilt.read_markers.clear();
        rebuilt.counts.insert("messages", 1);
        let d = live.differences(&rebuilt);
        assert_eq!(d.len(), 3, "{d:#?}");
        assert!(d.contains(&"group (version, digest, members, dismissed) \"g1\": (5, 9, 3, false) live, (4, 9, 3, false) rebuilt".to_owned()));
        assert!(
            d.iter()
                .any(|l| l.starts_with("read marker (\"bob\", \"c1\"): 9 live, missing"))
        );
        assert!(
            d.iter()
                .any(|l| l.starts_with("rows in \"messages\": missing live"))
        );
    }
}
