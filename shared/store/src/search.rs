//! Message search: the index the messages projection keeps, the membership stretches the
//! membership projection keeps, and the query that joins them.
//!
//! The index holds one document per message — the terms of its current text ([`crate::text`])
//! — written in the same transaction as the message row: an edit replaces the document, a
//! revoke deletes it, and a rebuild by `anchorage replay` writes the same documents again.
//! SQLite keeps it in an FTS5 table (rowid = the message's seq), PostgreSQL in a `tsvector`
//! column with a GIN index.
//!
//! A user finds a message only if it was decided at a MEMBERSHIP position inside one of their
//! stretches of membership of its conversation — the messages that reached them — and they did
//! not delete it for themselves.

use sqlx::Row;

use crate::projection::{Statement, Tx, i, params};
use crate::read::{MESSAGE_COLUMNS, MessageRow, message_row};
use crate::text::{self, Query};
use crate::{Backend, Store, StoreError};

/// Documents per multi-row insert into the index.
const DOCUMENTS_PER_INSERT: usize = 500;

/// A search for one user.
#[derive(Debug, Clone)]
pub struct Search<'a> {
    /// Whose messages: the conversations they are or were a member of.
    pub user: &'a str,
    /// The query.
    pub query: &'a Query,
    /// Only this conversation.
    pub conv: Option<&'a str>,
    /// Only messages before this seq (the next page); 0 for the newest.
    pub before: u64,
    /// At most this many.
    pub limit: u32,
}

/// A message found, with what of its text matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The message in its current state.
    pub message: MessageRow,
    /// The pieces of its text that matched, as written there.
    pub highlights: Vec<String>,
}

/// Highlights reported per message.
const MAX_HIGHLIGHTS: usize = 16;

/// The terms a stored body (JSON text) is indexed under; none for a body without text.
pub fn message_terms(body: &str) -> Vec<String> {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .as_ref()
        .and_then(text::searchable_text)
        .map(text::index_terms)
        .unwrap_or_default()
}

/// Indexes messages (conversation, seq, body as JSON text) that have no document yet.
pub(crate) async fn index_messages(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    messages: &[(&str, u64, &str)],
) -> Result<(), StoreError> {
    let terms: Vec<Vec<String>> = messages
        .iter()
        .map(|(_, _, body)| message_terms(body))
        .collect();
    let docs: Vec<(&str, u64, &[String])> = messages
        .iter()
        .zip(&terms)
        .map(|((conv, seq, _), terms)| (*conv, *seq, terms.as_slice()))
        .collect();
    index_documents(conn, backend, &docs).await
}

/// Writes the index documents of messages (conversation, seq, terms); a message without terms
/// has none.
pub(crate) async fn index_documents(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    docs: &[(&str, u64, &[String])],
) -> Result<(), StoreError> {
    for statement in document_statements(backend, docs) {
        statement.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The statements [`index_documents`] runs, bound and ready: they can be made while the
/// database is busy with something else.
pub(crate) fn document_statements(
    backend: Backend,
    docs: &[(&str, u64, &[String])],
) -> Vec<Statement> {
    let docs: Vec<&(&str, u64, &[String])> = docs
        .iter()
        .filter(|(_, _, terms)| !terms.is_empty())
        .collect();
    docs.chunks(DOCUMENTS_PER_INSERT)
        .map(|chunk| {
            let sql = match backend {
                Backend::Sqlite => format!(
                    "INSERT INTO message_search (rowid, conv_id, terms) VALUES {}",
                    vec!["(?, ?, ?)"; chunk.len()].join(", ")
                ),
                Backend::Postgres => format!(
                    "INSERT INTO message_search (seq, conv_id, terms) VALUES {}
                     ON CONFLICT (seq) DO UPDATE SET terms = excluded.terms",
                    (0..chunk.len())
                        .map(|k| format!(
                            "(${}, ${}, CAST(${} AS tsvector))",
                            3 * k + 1,
                            3 * k + 2,
                            3 * k + 3
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (conv, seq, terms) in chunk {
                let terms = match backend {
                    Backend::Sqlite => text::fts5_text(terms),
                    // The conversation is a lexeme of its own, for searches within some.
                    Backend::Postgres => format!(
                        "{} {}",
                        text::tsvector(terms),
                        text::conversation_lexeme(conv)
                    ),
                };
                q = q.bind(i(*seq)).bind(*conv).bind(terms);
            }
            q
        })
        .collect()
}

/// Indexes every message stored before the index existed, in the migration's transaction
/// (a page at a time, in key order).
pub(crate) async fn index_stored_messages(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
) -> Result<u64, StoreError> {
    let (mut conv, mut seq) = (String::new(), -1_i64);
    let mut indexed = 0;
    loop {
        let rows = sqlx::query(
            "SELECT conv_id, seq, body FROM messages
             WHERE (conv_id > $1 OR (conv_id = $1 AND seq > $2))
               AND kind = 'message' AND revoked = 0
             ORDER BY conv_id, seq LIMIT 1000",
        )
        .bind(&conv)
        .bind(seq)
        .fetch_all(&mut *conn)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(indexed);
        };
        (conv, seq) = (last.try_get("conv_id")?, last.try_get("seq")?);
        let page: Vec<(String, i64, String)> = rows
            .iter()
            .map(|r| Ok((r.try_get("conv_id")?, r.try_get("seq")?, r.try_get("body")?)))
            .collect::<Result<_, StoreError>>()?;
        let docs: Vec<(&str, u64, &str)> = page
            .iter()
            .map(|(c, s, b)| (c.as_str(), *s as u64, b.as_str()))
            .collect();
        index_messages(conn, backend, &docs).await?;
        indexed += docs.len() as u64;
    }
}

impl Tx {
    /// Indexes newly stored messages (conversation, seq, body as JSON text).
    pub(crate) async fn index_messages(
        &mut self,
        messages: &[(&str, u64, &str)],
    ) -> Result<(), StoreError> {
        index_messages(&mut self.tx, self.backend, messages).await
    }

    /// Removes the document of message `seq` (its text is about to change: an edit or a
    /// revoke). SQLite's index reads the terms to take out from the document itself, and its
    /// `secure-delete` takes them out of the index pages.
    pub(crate) async fn unindex_message(&mut self, seq: u64) -> Result<(), StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => "DELETE FROM message_search WHERE rowid = $1",
            Backend::Postgres => "DELETE FROM message_search WHERE seq = $1",
        };
        sqlx::query(sql).bind(i(seq)).execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Opens a stretch of membership of `group` at MEMBERSHIP sequence `seq` for each of
    /// `users` (who joined by the event at `seq`).
    pub async fn open_spans(
        &mut self,
        group: &str,
        users: &[&str],
        seq: u64,
    ) -> Result<(), StoreError> {
        for chunk in users.chunks(DOCUMENTS_PER_INSERT) {
            let sql = format!(
                "INSERT INTO member_spans (group_id, user_id, joined_seq) VALUES {}
                 ON CONFLICT DO NOTHING",
                (0..chunk.len())
                    .map(|k| format!("({})", params(self.backend, 3 * k + 1, 3)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for user in chunk {
                q = q.bind(group).bind(*user).bind(i(seq));
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Closes the open stretch of `group` for each of `users` at MEMBERSHIP sequence `seq`
    /// (the event that removed them).
    pub async fn close_spans(
        &mut self,
        group: &str,
        users: &[&str],
        seq: u64,
    ) -> Result<(), StoreError> {
        for chunk in users.chunks(crate::projection::IN_CHUNK) {
            let sql = format!(
                "UPDATE member_spans SET left_seq = $1
                 WHERE group_id = $2 AND left_seq IS NULL AND joined_seq <= $1
                   AND user_id IN ({})",
                crate::projection::placeholders(3, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(i(seq))
                .bind(group);
            for user in chunk {
                q = q.bind(*user);
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Closes every open stretch of membership of `group` at MEMBERSHIP sequence `seq` (the
    /// group ended).
    pub async fn end_spans(&mut self, group: &str, seq: u64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE member_spans SET left_seq = $1
             WHERE group_id = $2 AND left_seq IS NULL AND joined_seq <= $1",
        )
        .bind(i(seq))
        .bind(group)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

impl Store {
    /// The conversations `user` is or was a member of, at most `limit`.
    async fn conversations_ever(&self, user: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT group_id FROM member_spans WHERE user_id = $1
             ORDER BY group_id LIMIT $2",
        )
        .bind(user)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get("group_id").map_err(Into::into))
            .collect()
    }

    /// Whether `user` is or was a member of `conv` (has a stretch of membership there).
    pub async fn ever_member(&self, conv: &str, user: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM member_spans WHERE group_id = $1 AND user_id = $2 LIMIT 1",
        )
        .bind(conv)
        .bind(user)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The messages `s.user` may find that match `s.query`, newest first (by seq), each in
    /// its current state with what matched.
    pub async fn search(&self, s: &Search<'_>) -> Result<Vec<Found>, StoreError> {
        let before = if s.before == 0 { i64::MAX } else { i(s.before) };
        let rows = match self.backend {
            // FTS5 walks its documents newest first (rowid = seq) and the query stops at
            // `limit` found: a common word costs the documents read until the user's are
            // found, not every document holding it.
            Backend::Sqlite => {
                let sql =
                    reachable_sql("message_search MATCH $3 AND d.rowid < $4", "d.rowid", "$5");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(s.conv.unwrap_or(""))
                    .bind(s.user)
                    .bind(s.query.fts5())
                    .bind(before)
                    .bind(i64::from(s.limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            Backend::Postgres => self.search_postgres(s, before).await?,
        };
        rows.iter()
            .map(|r| {
                let message = message_row(r)?;
                let highlights = serde_json::from_str::<serde_json::Value>(&message.body)
                    .ok()
                    .as_ref()
                    .and_then(text::searchable_text)
                    .map(|t| s.query.highlights(t, MAX_HIGHLIGHTS))
                    .unwrap_or_default();
                Ok(Found {
                    message,
                    highlights,
                })
            })
            .collect()
    }

    /// PostgreSQL: candidates first — the index alone, asked only for the documents of the
    /// conversations the user was ever in, newest first, a page at a time (the planner walks
    /// the key backwards for a common word and reads the GIN index for a rare one) — then
    /// the rules of what reached the user, applied to those candidates only. Asked as one
    /// query, the planner would start from the messages table.
    async fn search_postgres(
        &self,
        s: &Search<'_>,
        mut before: i64,
    ) -> Result<Vec<sqlx::any::AnyRow>, StoreError> {
        let convs = match s.conv {
            Some(conv) => vec![conv.to_owned()],
            None => {
                self.conversations_ever(s.user, MAX_CONVERSATIONS_NAMED + 1)
                    .await?
            }
        };
        if convs.is_empty() {
            return Ok(Vec::new());
        }
        // Beyond that many, the query names none and the rules alone decide.
        let query = if convs.len() > MAX_CONVERSATIONS_NAMED as usize {
            s.query.tsquery()
        } else {
            s.query.tsquery_within(&convs)
        };
        let limit = s.limit as usize;
        let page = (2 * limit).max(50);
        let mut found = Vec::new();
        loop {
            let candidates: Vec<i64> = sqlx::query(
                "SELECT seq FROM message_search
                 WHERE terms @@ CAST($1 AS tsquery) AND seq < $2
                 ORDER BY seq DESC LIMIT $3",
            )
            // Planned for this query's terms each time: a plan cached for any terms reads
            // the whole index for a rare word or walks all of it for a common one.
            .persistent(false)
            .bind(&query)
            .bind(before)
            .bind(page as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("seq"))
            .collect::<Result<_, _>>()?;
            let Some(&last) = candidates.last() else {
                break;
            };
            // Only integers read from the database are formatted into the statement.
            let among = candidates
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            // The terms again: an edit applied since the candidates were read may have
            // taken the words away, and this statement reads the documents as they are now.
            let documents = format!("d.seq IN ({among}) AND d.terms @@ CAST($4 AS tsquery)");
            let sql = reachable_sql(&documents, "d.seq", "$3");
            found.extend(
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .persistent(false)
                    .bind(s.conv.unwrap_or(""))
                    .bind(s.user)
                    .bind((limit - found.len().min(limit)) as i64)
                    .bind(&query)
                    .fetch_all(&self.pool)
                    .await?,
            );
            if found.len() >= limit || candidates.len() < page {
                break;
            }
            before = last;
        }
        found.truncate(limit);
        Ok(found)
    }
}

/// Conversations a PostgreSQL search names in its query at most.
const MAX_CONVERSATIONS_NAMED: u32 = 1000;

/// The messages among the documents `documents` selects (`key`: the document's seq) that
/// reached user `$2` — decided inside one of their stretches of membership — in conversation
/// `$1` (or any, if empty), not revoked nor deleted by them, newest first; at most parameter
/// `limit` of them.
///
/// A message without a recorded position (stored before positions were kept) counts as
/// decided when its group was created.
fn reachable_sql(documents: &str, key: &str, limit: &str) -> String {
    format!(
        "SELECT {columns}
         FROM message_search d
         JOIN messages ON messages.conv_id = d.conv_id AND messages.seq = {key}
         JOIN groups g ON g.group_id = messages.conv_id
         WHERE {documents}
           AND messages.kind = 'message' AND messages.revoked = 0
           AND ($1 = '' OR d.conv_id = $1)
           AND EXISTS (
               SELECT 1 FROM member_spans sp
               WHERE sp.group_id = messages.conv_id AND sp.user_id = $2
                 AND sp.joined_seq <= COALESCE(messages.membership_seq, g.created_seq)
                 AND (sp.left_seq IS NULL
                      OR COALESCE(messages.membership_seq, g.created_seq) < sp.left_seq))
           AND NOT EXISTS (
               SELECT 1 FROM hidden_messages h
               WHERE h.user_id = $2 AND h.conv_id = messages.conv_id AND h.seq = messages.seq)
         ORDER BY {key} DESC LIMIT {limit}",
        columns = MESSAGE_COLUMNS
            .split(", ")
            .map(|c| format!("messages.{c}"))
            .collect::<Vec<_>>()
            .join(", "),
    )
}
