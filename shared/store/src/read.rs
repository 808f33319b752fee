//! Reads of the projections: what sync, history and `replay --verify` ask.

use sqlx::Row;

use crate::projection::GroupRow;
use crate::{Store, StoreError};

/// A conversation's version and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    pub conv: String,
    pub last_seq: u64,
    pub last_ts: i64,
    pub message_count: u64,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRow {
    pub conv: String,
    pub seq: u64,
    pub sender: String,
    pub device: String,
    pub client_msg_id: String,
    pub body: String,
    pub client_ts: i64,
    pub server_ts: i64,
}

impl Store {
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

    /// Messages of a conversation after `after`, oldest first, at most `limit`.
    pub async fn messages_after(
        &self,
        conv: &str,
        after: u64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT conv_id, seq, sender, device, client_msg_id, body, client_ts, server_ts
             FROM messages WHERE conv_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(conv)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MessageRow {
                    conv: r.try_get("conv_id")?,
                    seq: r.try_get::<i64, _>("seq")? as u64,
                    sender: r.try_get("sender")?,
                    device: r.try_get("device")?,
                    client_msg_id: r.try_get("client_msg_id")?,
                    body: r.try_get("body")?,
                    client_ts: r.try_get("client_ts")?,
                    server_ts: r.try_get("server_ts")?,
                })
            })
            .collect()
    }

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

    pub async fn group_row(&self, group: &str) -> Result<Option<GroupRow>, StoreError> {
        let mut tx = self.begin().await?;
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
        let mut tx = self.begin().await?;
        let exists = tx.user_exists(user).await?;
        tx.commit().await?;
        Ok(exists)
    }
}
