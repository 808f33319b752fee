//! Member lists of groups on the device: the local copy and how it is kept in line.
//!
//! Per group the store keeps the epoch and version the copy was taken at, its digest and the
//! members. The engine brings a copy up to date with `members_sync` when the group's
//! conversation opens (never at login), one group at a time and at most once per group at a
//! time:
//!
//! - `unchanged` ends it; a `diff` is applied and continued while the server says `more`;
//! - a realignment's snapshot pages are collected and replace the copy in one transaction
//!   only once the last page arrived — until then the old copy stays as it was;
//! - on a digest mismatch at the same version the engine compares bucket digests; under the
//!   buckets that differ, a sketch of their members (asked for at a size that follows the
//!   damage the bucket counts show) finds the members that differ, and only those are fetched
//!   — or, when the damage is too large for a sketch to pay off or it cannot be decoded, those
//!   buckets' members.
//!
//! The digest sent with a sync is computed from the stored members, so a damaged copy is
//! noticed. A live `members_changed` is applied when its `prev` is the copy's version, at a
//! cost proportional to the change, and its digest is checked; anything else schedules one
//! sync of that group.

use std::sync::atomic::Ordering;

use std::collections::HashSet;

use anchorage_digest::{BucketedDigest, CELL_BYTES, SetDigest, Sketch, bucket_of, member_hash};
use anchorage_protocol::request::{
    MAX_FETCH_HASHES, MembersFetch, MembersSketch as SketchRequest, MembersSync,
};
use anchorage_protocol::{
    ErrorCode, MemberInfo, MembersBuckets, MembersChanged, MembersDiff, MembersPage, MembersSketch,
    Reply, ReplyBody, ServerFrame,
};
use anchorage_schema::GroupId;
use anchorage_schema::UserId;
use anchorage_schema::search::SearchPrefix;
use sqlx::Row;

use crate::engine::{Conn, End, Engine, lost};
use crate::store::LocalStore;
use crate::{ClientEvent, SdkError};

/// Where a group's local member list stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberListState {
    /// The MEMBERSHIP stream epoch the copy belongs to.
    pub epoch: String,
    /// The version the copy is at.
    pub version: u64,
    /// The digest as maintained with each change.
    pub digest: SetDigest,
}

/// A change to apply to a copy.
#[derive(Debug, Clone, Default)]
pub(crate) struct Change<'a> {
    pub upserts: &'a [MemberInfo],
    pub removed: &'a [UserId],
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Applied; the copy is now at this digest.
    Done(SetDigest),
    /// The copy was not at the expected version (something else moved it): nothing done.
    Moved,
}

fn stored(v: u64) -> i64 {
    v as i64
}

/// A stored member (`None` for a row this version cannot read).
fn member_from_row(r: &sqlx::sqlite::SqliteRow) -> Option<MemberInfo> {
    MemberInfo::from_stored(
        r.get::<&str, _>("user"),
        anchorage_schema::event::Role::parse(r.get::<&str, _>("role"))?,
        r.get("nickname"),
        r.get("muted_until"),
    )
}

impl LocalStore {
    pub async fn member_list(&self, group: &str) -> Result<Option<MemberListState>, SdkError> {
        let row = sqlx::query(
            "SELECT epoch, version, digest_sum, member_count FROM member_lists WHERE grp = $1",
        )
        .bind(group)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| MemberListState {
            epoch: r.get("epoch"),
            version: r.get::<i64, _>("version") as u64,
            digest: SetDigest {
                sum: r.get::<i64, _>("digest_sum") as u64,
                count: r.get::<i64, _>("member_count") as u64,
            },
        }))
    }

    /// The bucketed digest of the members actually stored (not the maintained one).
    pub async fn computed_digest(&self, group: &str) -> Result<BucketedDigest, SdkError> {
        let rows = sqlx::query("SELECT user FROM members WHERE grp = $1")
            .bind(group)
            .fetch_all(&self.pool)
            .await?;
        Ok(BucketedDigest::of(
            rows.iter().map(|r| r.get::<&str, _>("user")),
        ))
    }

    pub async fn members(&self, group: &str) -> Result<Vec<MemberInfo>, SdkError> {
        let rows = sqlx::query(
            "SELECT user, role, nickname, muted_until FROM members WHERE grp = $1 ORDER BY user",
        )
        .bind(group)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(member_from_row).collect())
    }

    /// Local members whose id or nickname starts with `prefix`, by id.
    pub async fn search_members(
        &self,
        group: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<MemberInfo>, SdkError> {
        let prefix = SearchPrefix::new(prefix);
        let rows = sqlx::query(
            "SELECT user, role, nickname, muted_until FROM members
             WHERE grp = $1
               AND (lower(user) LIKE $2 ESCAPE '\\' OR lower(nickname) LIKE $2 ESCAPE '\\')
             ORDER BY user LIMIT $3",
        )
        .bind(group)
        .bind(prefix.like_pattern())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().filter_map(member_from_row).collect())
    }

    /// Applies a diff or a notification, if the copy is at `from` (`None`: no copy yet is
    /// fine only for `from == 0`), and moves it to `version` of `epoch`.
    pub(crate) async fn apply_members(
        &self,
        group: &str,
        epoch: &str,
        from: u64,
        version: u64,
        change: Change<'_>,
    ) -> Result<Applied, SdkError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "SELECT epoch, version, digest_sum, member_count FROM member_lists WHERE grp = $1",
        )
        .bind(group)
        .fetch_optional(&mut *tx)
        .await?;
        let mut digest = match row {
            Some(r)
                if r.get::<i64, _>("version") as u64 == from
                    && r.get::<String, _>("epoch") == epoch =>
            {
                SetDigest {
                    sum: r.get::<i64, _>("digest_sum") as u64,
                    count: r.get::<i64, _>("member_count") as u64,
                }
            }
            _ => return Ok(Applied::Moved),
        };
        for m in change.upserts {
            let existed = sqlx::query("SELECT 1 FROM members WHERE grp = $1 AND user = $2")
                .bind(group)
                .bind(m.user.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            put_member(&mut tx, group, m).await?;
            if !existed {
                digest.insert_hash(member_hash(m.user.as_str()));
            }
        }
        for user in change.removed {
            let gone = sqlx::query("DELETE FROM members WHERE grp = $1 AND user = $2")
                .bind(group)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if gone > 0 {
                digest.remove_hash(member_hash(user.as_str()));
            }
        }
        set_list(&mut tx, group, epoch, version, digest).await?;
        tx.commit().await?;
        Ok(Applied::Done(digest))
    }

    /// Replaces the copy (or, with `buckets`, the members of those buckets) by a snapshot
    /// pinned to `anchor`, in one transaction; returns the new digest.
    pub(crate) async fn replace_members(
        &self,
        group: &str,
        epoch: &str,
        anchor: u64,
        members: &[MemberInfo],
        buckets: Option<&[u8]>,
    ) -> Result<SetDigest, SdkError> {
        let mut tx = self.pool.begin().await?;
        match buckets {
            None => {
                sqlx::query("DELETE FROM members WHERE grp = $1")
                    .bind(group)
                    .execute(&mut *tx)
                    .await?;
            }
            Some(buckets) => {
                for b in buckets {
                    sqlx::query("DELETE FROM members WHERE grp = $1 AND bucket = $2")
                        .bind(group)
                        .bind(i64::from(*b))
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for m in members {
            put_member(&mut tx, group, m).await?;
        }
        let digest = settle_list(&mut tx, group, epoch, anchor).await?;
        tx.commit().await?;
        Ok(digest)
    }

    /// The ids of the stored members of some buckets.
    pub(crate) async fn bucket_members(
        &self,
        group: &str,
        buckets: &[u8],
    ) -> Result<Vec<String>, SdkError> {
        let mut users = Vec::new();
        for b in buckets {
            let rows = sqlx::query("SELECT user FROM members WHERE grp = $1 AND bucket = $2")
                .bind(group)
                .bind(i64::from(*b))
                .fetch_all(&self.pool)
                .await?;
            users.extend(rows.iter().map(|r| r.get::<String, _>("user")));
        }
        Ok(users)
    }

    /// Repairs the copy in one transaction: adds or updates `upserts`, deletes `removed`, and
    /// moves it to `anchor` of `epoch`; returns the digest of what is now stored.
    pub(crate) async fn patch_members(
        &self,
        group: &str,
        epoch: &str,
        anchor: u64,
        upserts: &[MemberInfo],
        removed: &[String],
    ) -> Result<SetDigest, SdkError> {
        let mut tx = self.pool.begin().await?;
        for user in removed {
            sqlx::query("DELETE FROM members WHERE grp = $1 AND user = $2")
                .bind(group)
                .bind(user)
                .execute(&mut *tx)
                .await?;
        }
        for m in upserts {
            put_member(&mut tx, group, m).await?;
        }
        let digest = settle_list(&mut tx, group, epoch, anchor).await?;
        tx.commit().await?;
        Ok(digest)
    }

    /// Forgets a group's member list (the user left or was removed, or it was dismissed).
    pub(crate) async fn drop_member_list(&self, group: &str) -> Result<(), SdkError> {
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM members WHERE grp = $1",
            "DELETE FROM member_lists WHERE grp = $1",
        ] {
            sqlx::query(sql).bind(group).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes up to `n` member rows and leaves the maintained digest as it was (a damaged
    /// copy, for tests of the repair).
    pub(crate) async fn damage_members(&self, group: &str, n: u32) -> Result<(), SdkError> {
        sqlx::query(
            "DELETE FROM members WHERE rowid IN
               (SELECT rowid FROM members WHERE grp = $1 ORDER BY user LIMIT $2)",
        )
        .bind(group)
        .bind(i64::from(n))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds `n` member rows the server never had and leaves the maintained digest as it was
    /// (a damaged copy, for tests of the repair).
    pub(crate) async fn add_phantom_members(&self, group: &str, n: u32) -> Result<(), SdkError> {
        let mut tx = self.pool.begin().await?;
        for k in 0..n {
            let phantom = MemberInfo::plain(UserId::parse(format!("phantom{k}"))?);
            put_member(&mut tx, group, &phantom).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Moves the copy to another epoch label (for tests of a stream recreated underneath).
    pub(crate) async fn relabel_epoch(&self, group: &str, epoch: &str) -> Result<(), SdkError> {
        sqlx::query("UPDATE member_lists SET epoch = $1 WHERE grp = $2")
            .bind(epoch)
            .bind(group)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn put_member(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    group: &str,
    m: &MemberInfo,
) -> Result<(), SdkError> {
    sqlx::query(
        "INSERT INTO members (grp, user, role, nickname, muted_until, bucket)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (grp, user) DO UPDATE SET role = excluded.role,
             nickname = excluded.nickname, muted_until = excluded.muted_until",
    )
    .bind(group)
    .bind(m.user.as_str())
    .bind(m.role.as_str())
    .bind(&m.nickname)
    .bind(m.muted_until)
    .bind(i64::from(bucket_of(m.user.as_str())))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves the stored list to `version` of `epoch` with the digest of what it holds now;
/// returns that digest.
async fn settle_list(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    group: &str,
    epoch: &str,
    version: u64,
) -> Result<SetDigest, SdkError> {
    let rows = sqlx::query("SELECT user FROM members WHERE grp = $1")
        .bind(group)
        .fetch_all(&mut **tx)
        .await?;
    let digest = SetDigest::of(rows.iter().map(|r| r.get::<&str, _>("user")));
    set_list(tx, group, epoch, version, digest).await?;
    Ok(digest)
}

async fn set_list(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    group: &str,
    epoch: &str,
    version: u64,
    digest: SetDigest,
) -> Result<(), SdkError> {
    sqlx::query(
        "INSERT INTO member_lists (grp, epoch, version, digest_sum, member_count)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (grp) DO UPDATE SET epoch = excluded.epoch, version = excluded.version,
             digest_sum = excluded.digest_sum, member_count = excluded.member_count",
    )
    .bind(group)
    .bind(epoch)
    .bind(stored(version))
    .bind(stored(digest.sum))
    .bind(stored(digest.count))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How a member-list sync round brought the copy in line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberSyncKind {
    /// The copy was current.
    Unchanged,
    /// The changes since the copy's version were applied.
    Diff,
    /// A realignment from snapshot pages.
    Full,
    /// Only the digest buckets that differed were fetched again.
    Buckets,
    /// Only the members that differed were fetched, found by a sketch of the differing
    /// buckets.
    Sketch,
}

/// Bytes a member is assumed to cost in a bucket's snapshot page, to judge whether a sketch
/// is worth asking for.
const PAGE_BYTES_PER_MEMBER: u64 = 12;

/// The damage the bucket digests show: how many members differ at least, per differing
/// bucket the difference of counts (at least one).
fn damage(local: &BucketedDigest, server: &BucketedDigest, differing: &[u8]) -> u64 {
    differing
        .iter()
        .map(|b| {
            let (l, s) = (local.bucket(*b).count, server.bucket(*b).count);
            l.abs_diff(s).max(1)
        })
        .sum()
}

/// The sketch sizes worth trying for that damage, smallest first: the sizes whose wire form
/// costs less than fetching the differing buckets' members would.
fn sketch_sizes(damage: u64, bucket_members: u64) -> Vec<usize> {
    let pages = bucket_members * PAGE_BYTES_PER_MEMBER;
    let first = Sketch::cells_for(damage);
    [first, Sketch::cells_for(damage.saturating_mul(4))]
        .into_iter()
        .filter(|cells| (*cells * CELL_BYTES) as u64 * 4 / 3 < pages)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Rounds one sync may take (diff pages, realignment, the diff after it) before it yields
/// and, if its copy moved forward, is scheduled again.
const MAX_ROUNDS: u32 = 64;

/// Times a member sync is scheduled again after yielding: an edge that moves a copy forward
/// without end is asked a bounded number of times.
const MAX_RESUMES: u32 = 15;

fn members_of_page(members: Vec<UserId>, details: Vec<MemberInfo>) -> Vec<MemberInfo> {
    members
        .into_iter()
        .map(MemberInfo::plain)
        .chain(details)
        .collect()
}

impl Engine {
    /// Syncs the member lists scheduled, one group at a time.
    pub(crate) async fn run_member_syncs(&self, conn: &mut Conn) -> Result<(), End> {
        // The groups scheduled now. One scheduled again during this pass (a change that did
        // not continue its copy), and one that yielded still moving, go on in the next pass,
        // after the outbox and the acknowledgements.
        let scheduled: Vec<String> = self
            .member_syncs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        let mut resumed = Vec::new();
        let mut done = Ok(());
        for group in scheduled {
            let next = self
                .member_syncs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&group);
            // Taken off the schedule meanwhile (the group was left).
            let Some(verify) = next else { continue };
            match self.sync_members(conn, &group, verify).await {
                Ok(true) => {
                    if self.resume_member_sync(&group) {
                        resumed.push(group);
                    }
                }
                Ok(false) => self.member_sync_ended(&group),
                Err(end) => {
                    // Not done: again on the next connection.
                    self.request_member_sync(&group, verify);
                    done = Err(end);
                    break;
                }
            }
        }
        for group in resumed {
            self.request_member_sync(&group, false);
        }
        done
    }

    /// Counts one more yield of the sync of `group` still moving: whether it may go on (at
    /// most [`MAX_RESUMES`] times in a row). A sync that ends starts the count again.
    fn resume_member_sync(&self, group: &str) -> bool {
        let mut resumes = self
            .member_sync_resumes
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = resumes.entry(group.to_owned()).or_default();
        *count += 1;
        if *count <= MAX_RESUMES {
            return true;
        }
        resumes.remove(group);
        false
    }

    /// Forgets how often the sync of `group` yielded: it ended, or the group is no longer ours.
    pub(crate) fn member_sync_ended(&self, group: &str) {
        self.member_sync_resumes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(group);
    }

    /// Syncs a group's member list; `true` if it yielded after its rounds with the copy still
    /// moving forward (to be scheduled again).
    async fn sync_members(&self, conn: &mut Conn, group: &str, verify: bool) -> Result<bool, End> {
        let store_lost = |_| lost(None);
        let held = |list: Option<MemberListState>| list.map(|l| (l.epoch, l.version));
        let start = held(self.store.member_list(group).await.map_err(store_lost)?);
        for round in 0..MAX_ROUNDS {
            let list = self.store.member_list(group).await.map_err(store_lost)?;
            let Ok(group_id) = GroupId::parse(group) else {
                return Ok(false);
            };
            let mut request = MembersSync {
                group: group_id,
                epoch: None,
                version: 0,
                digest: None,
                compact: false,
            };
            if let Some(l) = &list {
                // On open, the digest of what is stored (a damaged copy shows); otherwise,
                // and after the first round, the maintained one.
                let digest = if verify && round == 0 {
                    self.store
                        .computed_digest(group)
                        .await
                        .map_err(store_lost)?
                        .total()
                } else {
                    l.digest
                };
                request.epoch = Some(l.epoch.clone());
                request.version = l.version;
                request.digest = Some(digest.to_wire());
                // Only a copy can be diffed, and only an edge that offers it is asked.
                request.compact = conn.compact;
            }
            let (group_id, epoch) = (request.group.clone(), request.epoch.clone());
            let asked = request.compact;
            let answer = match self.request_or_wait(conn, request.into()).await? {
                ServerFrame::Reply(reply) => Ok(reply.body),
                ServerFrame::Error(e) => Err(e.code),
                // A diff is only ever an answer to the copy's epoch, in this form only when
                // asked.
                ServerFrame::Delta(d) => match epoch {
                    Some(epoch) if asked => {
                        Ok(ReplyBody::MembersDiff(d.into_diff(group_id, epoch)))
                    }
                    _ => return Err(lost(None)),
                },
                ServerFrame::Push(_) => return Err(lost(None)),
            };
            let kind = match answer {
                Ok(ReplyBody::MembersUnchanged) => {
                    self.synced(
                        group,
                        list.map_or(0, |l| l.version),
                        MemberSyncKind::Unchanged,
                    );
                    return Ok(false);
                }
                Ok(ReplyBody::MembersDiff(MembersDiff {
                    epoch,
                    version,
                    digest,
                    upserts,
                    removed,
                    more,
                    ..
                })) => {
                    let from = list.map_or(0, |l| l.version);
                    if version <= from {
                        // A diff moves the copy forward; anything else is not the server's.
                        return Err(lost(None));
                    }
                    let change = Change {
                        upserts: &upserts,
                        removed: &removed,
                    };
                    let applied = self
                        .store
                        .apply_members(group, &epoch, from, version, change)
                        .await
                        .map_err(store_lost)?;
                    // Something else moved the copy: asked again from where it is.
                    let Applied::Done(d) = applied else { continue };
                    self.synced(group, version, MemberSyncKind::Diff);
                    // Done when nothing more is coming and the digests agree; a mismatch
                    // goes round again and is repaired by buckets.
                    let expected = digest.as_deref().and_then(SetDigest::from_wire);
                    if !more && expected.is_none_or(|e| e == d) {
                        return Ok(false);
                    }
                    continue;
                }
                Ok(ReplyBody::MembersPage(MembersPage {
                    epoch,
                    anchor,
                    members,
                    details,
                    cursor,
                    ..
                })) => {
                    let first = members_of_page(members, details);
                    let Some(all) = self
                        .fetch_pages(conn, group, &epoch, anchor, first, cursor, None)
                        .await?
                    else {
                        continue;
                    };
                    self.store
                        .replace_members(group, &epoch, anchor, &all, None)
                        .await
                        .map_err(store_lost)?;
                    MemberSyncKind::Full
                }
                Ok(ReplyBody::MembersBuckets(MembersBuckets {
                    epoch,
                    version,
                    digests,
                    ..
                })) => {
                    let Some(server) = BucketedDigest::from_wire(&digests) else {
                        return Err(lost(None));
                    };
                    let local = self
                        .store
                        .computed_digest(group)
                        .await
                        .map_err(store_lost)?;
                    let differing = local.differing(server.buckets());
                    let damage = damage(&local, &server, &differing);
                    let in_buckets = differing.iter().map(|b| server.bucket(*b).count).sum();
                    let mut repaired = false;
                    for cells in sketch_sizes(damage, in_buckets) {
                        if self
                            .repair_by_sketch(conn, group, &epoch, version, &differing, cells)
                            .await?
                        {
                            repaired = true;
                            break;
                        }
                    }
                    if repaired {
                        MemberSyncKind::Sketch
                    } else {
                        let Some(all) = self
                            .fetch_pages(
                                conn,
                                group,
                                &epoch,
                                version,
                                Vec::new(),
                                Some(String::new()),
                                Some(&differing),
                            )
                            .await?
                        else {
                            continue;
                        };
                        self.store
                            .replace_members(group, &epoch, version, &all, Some(&differing))
                            .await
                            .map_err(store_lost)?;
                        MemberSyncKind::Buckets
                    }
                }
                Err(ErrorCode::Forbidden | ErrorCode::NotFound) => {
                    // Not (or no longer) a member: the list is not ours to keep.
                    self.store
                        .drop_member_list(group)
                        .await
                        .map_err(store_lost)?;
                    return Ok(false);
                }
                _ => return Err(lost(None)),
            };
            let version = self
                .store
                .member_list(group)
                .await
                .map_err(store_lost)?
                .map_or(0, |l| l.version);
            self.synced(group, version, kind);
        }
        // Out of rounds: a copy that moved forward (or to another epoch) goes on after other
        // work; one that did not in all of them (an edge that never lets it settle) is left
        // as it is.
        let now = held(self.store.member_list(group).await.map_err(store_lost)?);
        Ok(now.is_some_and(|(epoch, version)| {
            start.is_none_or(|(from_epoch, from)| epoch != from_epoch || version > from)
        }))
    }

    fn synced(&self, group: &str, version: u64, via: MemberSyncKind) {
        self.emit(ClientEvent::MembersSynced {
            group: group.to_owned(),
            version,
            via,
        });
    }

    /// Finds the members of `buckets` that differ from the server's at `anchor` with a
    /// sketch of `cells` cells, fetches the missing ones, drops the extra ones. `false` when
    /// the sketch could not be decoded (or the server asked to start over): nothing changed.
    async fn repair_by_sketch(
        &self,
        conn: &mut Conn,
        group: &str,
        epoch: &str,
        anchor: u64,
        buckets: &[u8],
        cells: usize,
    ) -> Result<bool, End> {
        let store_lost = |_| lost(None);
        let Ok(group_id) = GroupId::parse(group) else {
            return Ok(false);
        };
        let request = SketchRequest {
            group: group_id.clone(),
            epoch: epoch.to_owned(),
            anchor,
            buckets: buckets.to_vec(),
            cells: cells as u32,
        };
        let theirs = match self.request_or_wait(conn, request.into()).await? {
            ServerFrame::Reply(Reply {
                body:
                    ReplyBody::MembersSketch(MembersSketch {
                        sketch, cells: c, ..
                    }),
                ..
            }) if c as usize == cells => Sketch::from_wire(&sketch, cells),
            ServerFrame::Error(e)
                if matches!(e.code, ErrorCode::Conflict | ErrorCode::InvalidRequest) =>
            {
                return Ok(false);
            }
            _ => return Err(lost(None)),
        };
        let local = self
            .store
            .bucket_members(group, buckets)
            .await
            .map_err(store_lost)?;
        let mut ours = Sketch::new(cells);
        for user in &local {
            ours.insert(member_hash(user));
        }
        let Some(diff) = theirs
            .and_then(|t| t.subtract(&ours))
            .and_then(Sketch::decode)
        else {
            return Ok(false);
        };
        let extra: HashSet<u64> = diff.only_here.iter().copied().collect();
        let removed: Vec<String> = local
            .into_iter()
            .filter(|u| extra.contains(&member_hash(u)))
            .collect();
        let mut missing = Vec::new();
        for chunk in diff.only_there.chunks(MAX_FETCH_HASHES) {
            let fetch = MembersFetch {
                group: group_id.clone(),
                epoch: epoch.to_owned(),
                anchor,
                cursor: None,
                buckets: None,
                hashes: Some(chunk.iter().map(|h| format!("{h:016x}")).collect()),
            };
            match self.request_or_wait(conn, fetch.into()).await? {
                ServerFrame::Reply(Reply {
                    body: ReplyBody::MembersPage(page),
                    ..
                }) => missing.extend(members_of_page(page.members, page.details)),
                ServerFrame::Error(e)
                    if matches!(e.code, ErrorCode::Conflict | ErrorCode::InvalidRequest) =>
                {
                    return Ok(false);
                }
                _ => return Err(lost(None)),
            }
        }
        self.store
            .patch_members(group, epoch, anchor, &missing, &removed)
            .await
            .map_err(store_lost)?;
        Ok(true)
    }

    /// Collects snapshot pages from `cursor` on (pages of `buckets` only, when given);
    /// `None` if the server asked to start over.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_pages(
        &self,
        conn: &mut Conn,
        group: &str,
        epoch: &str,
        anchor: u64,
        mut all: Vec<MemberInfo>,
        mut cursor: Option<String>,
        buckets: Option<&[u8]>,
    ) -> Result<Option<Vec<MemberInfo>>, End> {
        let Ok(group) = GroupId::parse(group) else {
            return Ok(None);
        };
        while let Some(c) = cursor {
            let fetch = MembersFetch {
                group: group.clone(),
                epoch: epoch.to_owned(),
                anchor,
                cursor: (!c.is_empty()).then_some(c),
                buckets: buckets.map(<[u8]>::to_vec),
                hashes: None,
            };
            match self.request_or_wait(conn, fetch.into()).await? {
                ServerFrame::Reply(Reply {
                    body: ReplyBody::MembersPage(page),
                    ..
                }) => {
                    all.extend(members_of_page(page.members, page.details));
                    cursor = page.cursor;
                }
                ServerFrame::Error(e)
                    if matches!(e.code, ErrorCode::Conflict | ErrorCode::InvalidRequest) =>
                {
                    return Ok(None);
                }
                _ => return Err(lost(None)),
            }
        }
        Ok(Some(all))
    }

    /// A live member-list change: applied when it follows the copy's version, otherwise
    /// one sync of the group is scheduled.
    pub(crate) async fn on_members_changed(&self, notice: MembersChanged) {
        let MembersChanged {
            group,
            version,
            prev,
            digest,
            change,
        } = notice;
        let group = group.as_str();
        if self
            .drop_notice
            .compare_exchange(version, 0, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
        let Ok(Some(list)) = self.store.member_list(group).await else {
            return;
        };
        if list.version >= version {
            return;
        }
        if change.dismissed {
            let _ = self.store.drop_member_list(group).await;
            return;
        }
        if list.version != prev {
            self.request_member_sync(group, false);
            return;
        }
        let applied = self
            .store
            .apply_members(
                group,
                &list.epoch,
                prev,
                version,
                Change {
                    upserts: &change.upserts,
                    removed: &change.removed,
                },
            )
            .await;
        match applied {
            Ok(Applied::Done(d)) if SetDigest::from_wire(&digest) == Some(d) => {
                self.emit(ClientEvent::MembersChanged {
                    group: group.to_owned(),
                    version,
                });
            }
            _ => self.request_member_sync(group, true),
        }
    }
}
