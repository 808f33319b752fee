//! Attachments: which messages name which objects, and the objects of revoked messages that
//! wait to be deleted from object storage.
//!
//! A message's attachments are written with it (its `attachments` column, and one
//! `message_attachments` row per object). A revoke removes them in the same transaction and
//! queues every object no other message names in `attachment_deletions`; from then on no new
//! message may name it. The deletion worker deletes an object only after checking again that
//! no message names it, and deletes it a second time once every upload URL that could have
//! re-created it has expired; the row stays as a tombstone.

use sqlx::Row;

use crate::projection::{Tx, i, u};
use crate::{Store, StoreError};

/// An object waiting to be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// The object's name.
    pub object: String,
    /// When a revoke released it, Unix ms.
    pub queued_at: i64,
    /// Deletions done: 0 (none yet) or 1 (the second is due later).
    pub passes: u32,
    /// Failed attempts of this pass so far.
    pub attempts: u32,
}

impl Tx {
    /// Records that message `seq` of `conv` names `objects`.
    pub(crate) async fn name_objects(
        &mut self,
        conv: &str,
        seq: u64,
        objects: &[&str],
    ) -> Result<(), StoreError> {
        for object in objects {
            sqlx::query(
                "INSERT INTO message_attachments (object, conv_id, seq) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(object)
            .bind(conv)
            .bind(i(seq))
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    /// Forgets the objects message `seq` of `conv` names, and queues for deletion those no
    /// other message names.
    pub(crate) async fn release_objects(&mut self, conv: &str, seq: u64) -> Result<(), StoreError> {
        let objects: Vec<String> = sqlx::query(
            "DELETE FROM message_attachments WHERE conv_id = $1 AND seq = $2 RETURNING object",
        )
        .bind(conv)
        .bind(i(seq))
        .fetch_all(&mut *self.tx)
        .await?
        .iter()
        .map(|r| r.try_get("object"))
        .collect::<Result<_, _>>()?;
        let now = anchorage_schema::now_ms();
        for object in objects {
            sqlx::query(
                "INSERT INTO attachment_deletions (object, queued_at, due_at)
                 SELECT $1, $2, $2
                 WHERE NOT EXISTS (SELECT 1 FROM message_attachments WHERE object = $1)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&object)
            .bind(now)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }
}

impl Store {
    /// Objects whose deletion is due: released at or before `released_by` (a first pass), or
    /// whose second pass is due at `now`; oldest first, at most `limit`.
    pub async fn due_deletions(
        &self,
        released_by: i64,
        now: i64,
        limit: u32,
    ) -> Result<Vec<Deletion>, StoreError> {
        sqlx::query(
            "SELECT object, queued_at, passes, attempts FROM attachment_deletions
             WHERE (passes = 0 AND queued_at <= $1 AND due_at <= $2)
                OR (passes = 1 AND due_at <= $2)
             ORDER BY due_at LIMIT $3",
        )
        .bind(released_by)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(Deletion {
                object: r.try_get("object")?,
                queued_at: r.try_get("queued_at")?,
                passes: u32::try_from(r.try_get::<i64, _>("passes")?).unwrap_or(u32::MAX),
                attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(u32::MAX),
            })
        })
        .collect()
    }

    /// Whether a message names `object`.
    pub async fn object_named(&self, object: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM message_attachments WHERE object = $1 LIMIT 1")
                .bind(object)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Whether `object` was released by a revoke (queued for deletion, or deleted): no new
    /// message may name it.
    pub async fn object_released(&self, object: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT 1 AS one FROM attachment_deletions WHERE object = $1")
                .bind(object)
                .fetch_optional(&self.pool)
                .await?
                .is_some(),
        )
    }

    /// Takes `object` off the deletion queue: a message names it again.
    pub async fn keep_object(&self, object: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM attachment_deletions WHERE object = $1")
            .bind(object)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a deletion pass of `object`: the next one at `next` (Unix ms), or none (the row
    /// stays as a tombstone).
    pub async fn deletion_passed(&self, object: &str, next: Option<i64>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attachment_deletions
             SET passes = passes + 1, attempts = 0, last_error = NULL, due_at = $1
             WHERE object = $2",
        )
        .bind(next.unwrap_or(i64::MAX))
        .bind(object)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed deletion of `object`, to try again at `due_at`.
    pub async fn deletion_failed(
        &self,
        object: &str,
        due_at: i64,
        error: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE attachment_deletions SET attempts = attempts + 1, due_at = $1, last_error = $2
             WHERE object = $3",
        )
        .bind(due_at)
        .bind(error)
        .bind(object)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Objects waiting for their first deletion, and when the oldest was released (Unix ms).
    pub async fn deletion_backlog(&self) -> Result<(u64, Option<i64>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(queued_at) AS oldest FROM attachment_deletions
             WHERE passes = 0",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((u(row.try_get("n")?), row.try_get("oldest")?))
    }
}
