//! Reads of member lists for large-group sync.
//!
//! A sync answer is read in one transaction ([`Store::begin_read`]), so the group's version,
//! its digest and the member rows it sends belong to the same moment.
//!
//! - A **diff** since version `v` is every member row with a version above `v`, in version
//!   order: present members as upserts, tombstones as removals.
//! - A **snapshot page** pinned to anchor `a` holds the present members whose row is at or
//!   below `a`, in id order from a cursor. Rows that changed after `a` are left out; the diff
//!   from `a` that follows the last page brings them. So the pages and that diff together
//!   give exactly the set at the end, however the group changed in between.

use anchorage_schema::search::{SearchPrefix, fold_ascii_sql};
use sqlx::Row;

use crate::projection::{i, member_row, placeholders, u};
use crate::{MemberRow, Store, StoreError, Tx};

/// One group of a user, as the cheap "which of my groups changed" call lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupVersion {
    /// The group.
    pub group: String,
    /// Its version.
    pub version: u64,
    /// Its size.
    pub member_count: u64,
}

impl Tx {
    /// How many member rows of `group` changed after `version`.
    pub async fn changed_count(&mut self, group: &str, version: u64) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*) AS n FROM group_members WHERE group_id = $1 AND version > $2",
        )
        .bind(group)
        .bind(i(version))
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(u(r.try_get("n")?))
    }

    /// Member rows (tombstones too) changed after `version`, oldest change first, at most
    /// `limit`.
    pub async fn changed_members(
        &mut self,
        group: &str,
        version: u64,
        limit: u32,
    ) -> Result<Vec<MemberRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT group_id, user_id, role, nickname, muted_until, version, removed_seq
             FROM group_members WHERE group_id = $1 AND version > $2
             ORDER BY version, user_id LIMIT $3",
        )
        .bind(group)
        .bind(i(version))
        .bind(i64::from(limit))
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(member_row).collect()
    }

    /// One snapshot page: present members unchanged since `anchor`, ids after `after`, in
    /// id order, at most `limit`; only those of `buckets` when given.
    pub async fn snapshot_page(
        &mut self,
        group: &str,
        anchor: u64,
        after: &str,
        buckets: Option<&[u8]>,
        limit: u32,
    ) -> Result<Vec<MemberRow>, StoreError> {
        let filter = match buckets {
            Some(b) => format!("AND bucket IN ({})", placeholders(5, b.len().max(1))),
            None => String::new(),
        };
        let sql = format!(
            "SELECT group_id, user_id, role, nickname, muted_until, version, removed_seq
             FROM group_members
             WHERE group_id = $1 AND removed_seq IS NULL AND version <= $2 AND user_id > $3
                   {filter}
             ORDER BY user_id LIMIT $4"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(group)
            .bind(i(anchor))
            .bind(after)
            .bind(i64::from(limit));
        match buckets {
            Some([]) => q = q.bind(-1i64),
            Some(b) => {
                for bucket in b {
                    q = q.bind(i64::from(*bucket));
                }
            }
            None => {}
        }
        let rows = q.fetch_all(&mut *self.tx).await?;
        rows.iter().map(member_row).collect()
    }

    /// The group's non-empty digest buckets: (bucket, wrapping sum, count).
    pub async fn bucket_digests(&mut self, group: &str) -> Result<Vec<(u8, u64, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT bucket, sum, count FROM group_digest_buckets
             WHERE group_id = $1 AND count <> 0 ORDER BY bucket",
        )
        .bind(group)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<i64, _>("bucket")? as u8,
                    u(r.try_get("sum")?),
                    u(r.try_get("count")?),
                ))
            })
            .collect()
    }
}

impl Store {
    /// Present members of `group` whose id or nickname starts with `prefix`, by id, at most
    /// `limit`.
    pub async fn search_members(
        &self,
        group: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<MemberRow>, StoreError> {
        let prefix = SearchPrefix::new(prefix);
        let postgres = self.backend() == crate::Backend::Postgres;
        let sql = format!(
            "SELECT group_id, user_id, role, nickname, muted_until, version, removed_seq
             FROM group_members
             WHERE group_id = $1 AND removed_seq IS NULL
               AND ({} LIKE $2 ESCAPE '\\' OR {} LIKE $2 ESCAPE '\\')
             ORDER BY user_id{} LIMIT $3",
            fold_ascii_sql("user_id", postgres),
            fold_ascii_sql("nickname", postgres),
            // Byte order, as SQLite and the client store sort, whatever the server's locale.
            if postgres { " COLLATE \"C\"" } else { "" },
        );
        // Built from fixed column names only; the user's text is bound.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(group)
            .bind(prefix.like_pattern())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(member_row).collect()
    }

    /// The groups `user` is a member of with their versions, by group id after `after`, at
    /// most `limit`.
    pub async fn group_versions(
        &self,
        user: &str,
        after: &str,
        limit: u32,
    ) -> Result<Vec<GroupVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.group_id, g.version, g.member_count
             FROM group_members m JOIN groups g ON g.group_id = m.group_id
             WHERE m.user_id = $1 AND m.removed_seq IS NULL AND g.dismissed = 0
               AND m.group_id > $2
             ORDER BY m.group_id LIMIT $3",
        )
        .bind(user)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(GroupVersion {
                    group: r.try_get("group_id")?,
                    version: u(r.try_get("version")?),
                    member_count: u(r.try_get("member_count")?),
                })
            })
            .collect()
    }
}
