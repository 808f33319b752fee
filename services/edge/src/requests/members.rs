//! Member lists of large groups: should we sync, what, how much, and when.
//!
//! `members_sync` compares the client's copy (epoch, version, digest) with the projection and
//! answers exactly one of:
//!
//! - `members_unchanged` — same version and digest: a constant-size answer;
//! - `members_diff` — the member rows changed since the client's version (upserts and
//!   removals), bounded and cut at a version boundary, continued from the returned version;
//! - `members_page` — a realignment: snapshot pages pinned to one anchor, resumable by cursor,
//!   followed by the diff from that anchor. Only when the epoch differs, the version is older
//!   than the group's tombstone horizon or newer than the server's, or the diff would touch
//!   more than `members.full_percent` of the group;
//! - `members_buckets` — same version, different digest (a damaged copy): the bucket digests,
//!   so the client looks only under the buckets that differ: it asks `members_sketch` for an
//!   invertible sketch of their members, decodes which members differ and fetches those by
//!   hash (or, when the damage is too large for a sketch, fetches those buckets' members).
//!
//! Each answer is read in one transaction, so version, digest and rows agree.

use std::collections::{BTreeSet, HashSet};

use anchorage_digest::{BucketedDigest, MAX_CELLS, SetDigest, Sketch, member_hash};
use anchorage_protocol::request::{
    GroupVersions as GroupVersionsRequest, MAX_FETCH_HASHES, MembersFetch, MembersSearch,
    MembersSketch as MembersSketchRequest, MembersSync, MembersSyncBatch, MembersUnsubscribe,
};
use anchorage_protocol::{
    Done, GroupSync, GroupSyncResult, GroupVersion, GroupVersions, MemberInfo, MembersBatch,
    MembersBuckets, MembersDiff, MembersFound, MembersPage, MembersSketch, ReplyBody,
};
use anchorage_schema::subjects::stream;
use anchorage_schema::{ConversationId, GroupId, UserId};
use anchorage_store::{GroupRow, MemberRow, StoreError, Tx};

use super::error::RequestError;
use super::session::{Answer, Session};

/// Groups per `group_versions` page.
const VERSIONS_PER_PAGE: u32 = 1000;
/// Groups per `members_sync_batch` request.
const MAX_BATCH_GROUPS: usize = 1000;
/// Members per `members_search` answer, at most.
const MAX_SEARCH: u32 = 200;
/// Member rows read per query while a sketch or a fetch by hash goes through buckets.
const SCAN_ROWS: u32 = 10_000;

/// What a client's copy of a member list needs, before looking at member rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    Unchanged,
    /// Same version, different digest.
    Buckets,
    /// Realign from a snapshot.
    Full,
    /// Diff from the client's version (unless it turns out too large).
    Diff,
}

/// Decides from the client's copy and the group row alone.
pub(crate) fn plan(
    same_epoch: bool,
    version: u64,
    digest: Option<SetDigest>,
    group: &GroupRow,
) -> Plan {
    if !same_epoch || version == 0 || version > group.version || version < group.horizon {
        return Plan::Full;
    }
    if version == group.version {
        let server = group.digest();
        return match digest {
            Some(d) if d != server => Plan::Buckets,
            _ => Plan::Unchanged,
        };
    }
    Plan::Diff
}

/// Whether a diff touching `changed` member rows is too large a share of the group.
pub(crate) fn too_large(changed: u64, members: u64, full_percent: u32) -> bool {
    changed * 100 > u64::from(full_percent) * members.max(1)
}

fn info(m: &MemberRow) -> Option<MemberInfo> {
    MemberInfo::from_stored(&m.user, m.role, m.nickname.clone(), m.muted_until)
}

/// One bounded diff page.
struct DiffPage {
    version: u64,
    digest: Option<SetDigest>,
    upserts: Vec<MemberInfo>,
    removed: Vec<UserId>,
    more: bool,
}

/// The changes since `version`, at most `limit` rows, cut where a version ends. `None` when a
/// single version holds more than `limit` rows (then only a realignment can carry it).
async fn diff_page(
    tx: &mut Tx,
    g: &GroupRow,
    version: u64,
    limit: u32,
) -> Result<Option<DiffPage>, StoreError> {
    let mut rows = tx.changed_members(&g.group, version, limit + 1).await?;
    let (version, digest, more) = if rows.len() > limit as usize {
        let boundary = rows[limit as usize].version;
        rows.retain(|r| r.version < boundary);
        match rows.last() {
            Some(last) => (last.version, None, true),
            None => return Ok(None),
        }
    } else {
        (g.version, Some(g.digest()), false)
    };
    let mut upserts = Vec::new();
    let mut removed = Vec::new();
    for r in &rows {
        if r.removed_seq.is_some() {
            removed.extend(UserId::parse(r.user.as_str()).ok());
        } else {
            upserts.extend(info(r));
        }
    }
    Ok(Some(DiffPage {
        version,
        digest,
        upserts,
        removed,
        more,
    }))
}

/// The diff since `version`, unless it would touch too large a share of the group or one
/// version alone is larger than a page: then `None`, and only a realignment will do.
async fn bounded_diff(
    tx: &mut Tx,
    g: &GroupRow,
    version: u64,
    cfg: &anchorage_config::MembersConfig,
) -> Result<Option<DiffPage>, StoreError> {
    let changed = tx.changed_count(&g.group, version).await?;
    if too_large(changed, g.member_count, cfg.full_percent) {
        return Ok(None);
    }
    diff_page(tx, g, version, cfg.diff_members).await
}

/// What a client's copy gets, once the rows were looked at where a diff is possible.
enum Verdict {
    Unchanged,
    /// Same version, different digest: compare buckets.
    Buckets,
    Realign,
    Diff(DiffPage),
}

async fn verdict(
    tx: &mut Tx,
    g: &GroupRow,
    same_epoch: bool,
    version: u64,
    digest: Option<SetDigest>,
    cfg: &anchorage_config::MembersConfig,
) -> Result<Verdict, StoreError> {
    Ok(match plan(same_epoch, version, digest, g) {
        Plan::Unchanged => Verdict::Unchanged,
        Plan::Buckets => Verdict::Buckets,
        Plan::Full => Verdict::Realign,
        Plan::Diff => match bounded_diff(tx, g, version, cfg).await? {
            Some(page) => Verdict::Diff(page),
            None => Verdict::Realign,
        },
    })
}

/// A digest in its wire form, if the client sent one.
fn parse_digest(digest: Option<&str>) -> Result<Option<SetDigest>, RequestError> {
    digest
        .map(|d| {
            SetDigest::from_wire(d).ok_or_else(|| {
                RequestError::Invalid(format!("digest {d:?} is not \"<16 hex digits>:<count>\""))
            })
        })
        .transpose()
}

/// The hashes of a `members_fetch`, each 16 hex digits.
fn parse_hashes(hashes: &[String]) -> Result<HashSet<u64>, RequestError> {
    if hashes.is_empty() || hashes.len() > MAX_FETCH_HASHES {
        return Err(RequestError::Invalid(format!(
            "fetch 1 to {MAX_FETCH_HASHES} hashes at a time"
        )));
    }
    hashes
        .iter()
        .map(|h| {
            (h.len() == 16 && h.bytes().all(|c| c.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(h, 16).ok())
                .flatten()
                .ok_or_else(|| RequestError::Invalid(format!("hash {h:?} is not 16 hex digits")))
        })
        .collect()
}

/// Calls `each` with every member of `buckets` in the snapshot pinned to `anchor`; refuses
/// (having read at most `limit + 1` rows) when they are more than `limit`: a sketch or a
/// fetch by hash is meant for a few buckets, and bucket pages serve the rest.
async fn scan_buckets(
    tx: &mut Tx,
    group: &str,
    anchor: u64,
    buckets: &[u8],
    limit: u32,
    mut each: impl FnMut(&MemberRow),
) -> Result<(), RequestError> {
    let mut after = String::new();
    let mut left = limit.saturating_add(1);
    loop {
        let take = left.min(SCAN_ROWS);
        let rows = tx
            .snapshot_page(group, anchor, &after, Some(buckets), take)
            .await?;
        left = left.saturating_sub(rows.len() as u32);
        if left == 0 {
            return Err(RequestError::Invalid(format!(
                "those buckets hold more than {limit} members: fetch them by bucket pages"
            )));
        }
        rows.iter().for_each(&mut each);
        match rows.last() {
            Some(last) if rows.len() == take as usize => after = last.user.clone(),
            _ => return Ok(()),
        }
    }
}

/// The group row, unless there is no such group (or it was dismissed).
async fn live_group(tx: &mut Tx, group: &GroupId) -> Result<Option<GroupRow>, StoreError> {
    Ok(tx.group(group.as_str()).await?.filter(|g| !g.dismissed))
}

fn no_group(group: &GroupId) -> RequestError {
    RequestError::NotFound(format!("group {group} does not exist"))
}

impl Session {
    fn group_conv(&self, group: &GroupId) -> Result<ConversationId, RequestError> {
        let conv = group.conversation();
        self.member(&conv)?;
        Ok(conv)
    }

    async fn membership_epoch(&self) -> Result<String, RequestError> {
        Ok(self
            .state
            .bus
            .stream_state(stream::MEMBERSHIP)
            .await?
            .epoch
            .0
            .to_string())
    }

    /// Answers `group_versions`: the caller's groups with their versions and sizes.
    pub(super) async fn group_versions(
        &self,
        r: GroupVersionsRequest,
    ) -> Result<GroupVersions, RequestError> {
        let cursor = r.cursor;
        let epoch = self.membership_epoch().await?;
        let rows = self
            .state
            .store
            .group_versions(
                self.claims.sub.as_str(),
                cursor.as_deref().unwrap_or(""),
                VERSIONS_PER_PAGE,
            )
            .await?;
        let cursor = (rows.len() == VERSIONS_PER_PAGE as usize)
            .then(|| rows.last().map(|r| r.group.clone()))
            .flatten();
        let groups = rows
            .into_iter()
            .filter_map(|r| {
                Some(GroupVersion {
                    group: GroupId::parse(r.group).ok()?,
                    version: r.version,
                    members: r.member_count,
                })
            })
            .collect();
        Ok(GroupVersions {
            epoch,
            groups,
            cursor,
        })
    }

    /// Answers `members_sync` and watches the group's notifications from now on.
    pub(super) async fn members_sync(&self, r: MembersSync) -> Answer {
        // `compact` decides the answer's form only (the dispatcher's).
        let MembersSync {
            group,
            epoch,
            version,
            digest,
            compact: _,
        } = r;
        let conv = self.group_conv(&group)?;
        let digest = parse_digest(digest.as_deref())?;
        // Watch before reading: a change committed after the read is then notified.
        self.state.hub.watch_members(self.conn.id, &conv);
        let current = self.membership_epoch().await?;
        let same_epoch = epoch.as_deref() == Some(current.as_str());
        let mut tx = self.state.store.begin_read().await?;
        let g = live_group(&mut tx, &group)
            .await?
            .ok_or_else(|| no_group(&group))?;
        let cfg = &self.state.members;
        let answer = match verdict(&mut tx, &g, same_epoch, version, digest, cfg).await? {
            Verdict::Unchanged => ReplyBody::MembersUnchanged,
            Verdict::Buckets => {
                let buckets = tx.bucket_digests(group.as_str()).await?;
                let digests = BucketedDigest::from_buckets(
                    buckets
                        .into_iter()
                        .map(|(b, sum, count)| (b, SetDigest { sum, count })),
                );
                MembersBuckets {
                    group,
                    epoch: current,
                    version: g.version,
                    digests: digests.to_wire(),
                }
                .into()
            }
            Verdict::Realign => self
                .page(&mut tx, &g, current, g.version, "", None)
                .await?
                .into(),
            Verdict::Diff(p) => MembersDiff {
                group,
                epoch: current,
                version: p.version,
                digest: p.digest.map(SetDigest::to_wire),
                upserts: p.upserts,
                removed: p.removed,
                more: p.more,
            }
            .into(),
        };
        tx.commit().await?;
        Ok(answer)
    }

    /// One snapshot page of `g` pinned to `anchor`.
    async fn page(
        &self,
        tx: &mut Tx,
        g: &GroupRow,
        epoch: String,
        anchor: u64,
        after: &str,
        buckets: Option<Vec<u8>>,
    ) -> Result<MembersPage, RequestError> {
        let limit = self.state.members.page_members;
        let rows = tx
            .snapshot_page(&g.group, anchor, after, buckets.as_deref(), limit)
            .await?;
        let cursor = (rows.len() == limit as usize)
            .then(|| rows.last().map(|r| r.user.clone()))
            .flatten();
        let mut members = Vec::new();
        let mut details = Vec::new();
        for m in rows.iter().filter_map(info) {
            if m.is_plain() {
                members.push(m.user);
            } else {
                details.push(m);
            }
        }
        Ok(MembersPage {
            group: GroupId::parse(g.group.as_str()).map_err(RequestError::internal)?,
            epoch,
            anchor,
            members,
            details,
            buckets,
            cursor,
        })
    }

    /// Most members a sketch or a fetch by hash reads: two snapshot pages.
    fn scan_limit(&self) -> u32 {
        self.state.members.page_members.saturating_mul(2)
    }

    /// The group of a request pinned to `anchor` of `epoch`, read in `tx`, if the caller may
    /// see it and the anchor is one of its versions.
    async fn pinned_group(
        &self,
        tx: &mut Tx,
        group: &GroupId,
        epoch: &str,
        anchor: u64,
    ) -> Result<GroupRow, RequestError> {
        self.group_conv(group)?;
        if epoch != self.membership_epoch().await? {
            return Err(RequestError::Conflict(
                "the membership stream was recreated; sync the group again".into(),
            ));
        }
        let g = live_group(tx, group)
            .await?
            .ok_or_else(|| no_group(group))?;
        if anchor > g.version || anchor < g.created_seq {
            return Err(RequestError::Invalid(format!(
                "anchor {anchor} is not a version of {group}"
            )));
        }
        Ok(g)
    }

    /// Answers `members_fetch`: the next snapshot page, the members of some buckets, or the
    /// members with some hashes.
    pub(super) async fn members_fetch(&self, r: MembersFetch) -> Result<MembersPage, RequestError> {
        let MembersFetch {
            group,
            epoch,
            anchor,
            cursor,
            buckets,
            hashes,
        } = r;
        let wanted = hashes.as_deref().map(parse_hashes).transpose()?;
        if wanted.is_some() && (cursor.is_some() || buckets.is_some()) {
            return Err(RequestError::Invalid(
                "hashes are fetched without a cursor or buckets".into(),
            ));
        }
        let mut tx = self.state.store.begin_read().await?;
        let g = self.pinned_group(&mut tx, &group, &epoch, anchor).await?;
        let answer = match wanted {
            Some(wanted) => {
                let buckets: BTreeSet<u8> = wanted.iter().map(|h| (h >> 56) as u8).collect();
                let buckets: Vec<u8> = buckets.into_iter().collect();
                let mut members = Vec::new();
                let mut details = Vec::new();
                let limit = self.scan_limit();
                scan_buckets(&mut tx, &g.group, anchor, &buckets, limit, |m| {
                    if wanted.contains(&member_hash(&m.user)) {
                        match info(m) {
                            Some(i) if i.is_plain() => members.push(i.user),
                            Some(i) => details.push(i),
                            None => {}
                        }
                    }
                })
                .await?;
                MembersPage {
                    group,
                    epoch,
                    anchor,
                    members,
                    details,
                    buckets: None,
                    cursor: None,
                }
            }
            None => {
                self.page(
                    &mut tx,
                    &g,
                    epoch,
                    anchor,
                    cursor.as_deref().unwrap_or(""),
                    buckets,
                )
                .await?
            }
        };
        tx.commit().await?;
        Ok(answer)
    }

    /// Answers `members_sketch`: a sketch of the members of some buckets at an anchor.
    pub(super) async fn members_sketch(
        &self,
        r: MembersSketchRequest,
    ) -> Result<MembersSketch, RequestError> {
        let MembersSketchRequest {
            group,
            epoch,
            anchor,
            buckets,
            cells,
        } = r;
        let size = cells as usize;
        if size == 0 || !size.is_multiple_of(anchorage_digest::HASHES) || size > MAX_CELLS {
            return Err(RequestError::Invalid(format!(
                "a sketch has a multiple of {} cells, at most {MAX_CELLS}",
                anchorage_digest::HASHES
            )));
        }
        let buckets: BTreeSet<u8> = buckets.into_iter().collect();
        if buckets.is_empty() {
            return Err(RequestError::Invalid(
                "a sketch covers at least one bucket".into(),
            ));
        }
        let buckets: Vec<u8> = buckets.into_iter().collect();
        let mut tx = self.state.store.begin_read().await?;
        let g = self.pinned_group(&mut tx, &group, &epoch, anchor).await?;
        let mut sketch = Sketch::new(size);
        let limit = self.scan_limit();
        scan_buckets(&mut tx, &g.group, anchor, &buckets, limit, |m| {
            sketch.insert(member_hash(&m.user));
        })
        .await?;
        tx.commit().await?;
        Ok(MembersSketch {
            group,
            epoch,
            anchor,
            cells,
            sketch: sketch.to_wire(),
        })
    }

    /// Answers `members_sync_batch`: groups in the order given until the byte budget is spent.
    /// Realignments are not inlined (they are large): the group is marked `realign` and the
    /// client syncs it on its own when it is needed.
    pub(super) async fn members_sync_batch(
        &self,
        r: MembersSyncBatch,
    ) -> Result<MembersBatch, RequestError> {
        let MembersSyncBatch {
            groups,
            budget_bytes,
            cursor,
        } = r;
        if groups.len() > MAX_BATCH_GROUPS {
            return Err(RequestError::Invalid(format!(
                "at most {MAX_BATCH_GROUPS} groups per batch"
            )));
        }
        if let Some(g) = groups.iter().find(|g| g.compact) {
            return Err(RequestError::Invalid(format!(
                "{}: compact is for members_sync; a batch answers in one object",
                g.group
            )));
        }
        let cfg = &self.state.members;
        let budget = budget_bytes
            .unwrap_or(cfg.batch_budget_bytes)
            .clamp(1024, cfg.batch_budget_bytes) as usize;
        let current = self.membership_epoch().await?;
        let start = cursor.unwrap_or(0) as usize;
        let mut results = Vec::new();
        let mut used = 0usize;
        let mut next = None;
        for (index, req) in groups.iter().enumerate().skip(start) {
            let result = self.batch_one(req, &current).await?;
            let size = serde_json::to_string(&result).map_or(0, |s| s.len()) + 1;
            if used + size > budget && !results.is_empty() {
                next = Some(index as u32);
                break;
            }
            used += size;
            results.push(result);
        }
        Ok(MembersBatch {
            results,
            cursor: next,
        })
    }

    async fn batch_one(
        &self,
        req: &GroupSync,
        current: &str,
    ) -> Result<GroupSyncResult, RequestError> {
        let group = req.group.clone();
        let refuse = |err: RequestError| {
            let (code, message) = err.into_parts();
            GroupSyncResult::Error {
                group: group.clone(),
                code,
                message,
            }
        };
        if let Err(err) = self.group_conv(&group) {
            return Ok(refuse(err));
        }
        let digest = match parse_digest(req.digest.as_deref()) {
            Ok(d) => d,
            Err(err) => return Ok(refuse(err)),
        };
        let same_epoch = req.epoch.as_deref() == Some(current);
        let mut tx = self.state.store.begin_read().await?;
        let Some(g) = live_group(&mut tx, &group).await? else {
            return Ok(refuse(no_group(&group)));
        };
        let cfg = &self.state.members;
        let result = match verdict(&mut tx, &g, same_epoch, req.version, digest, cfg).await? {
            Verdict::Unchanged => GroupSyncResult::Unchanged { group },
            Verdict::Buckets | Verdict::Realign => GroupSyncResult::Realign { group },
            Verdict::Diff(p) => GroupSyncResult::Diff {
                group,
                epoch: current.to_owned(),
                version: p.version,
                digest: p.digest.map(SetDigest::to_wire),
                upserts: p.upserts,
                removed: p.removed,
                more: p.more,
            },
        };
        tx.commit().await?;
        Ok(result)
    }

    /// Answers `members_search` from the server's list.
    pub(super) async fn members_search(
        &self,
        r: MembersSearch,
    ) -> Result<MembersFound, RequestError> {
        let MembersSearch {
            group,
            query,
            limit,
        } = r;
        self.group_conv(&group)?;
        if query.is_empty() || query.len() > 64 {
            return Err(RequestError::Invalid("a query of 1 to 64 bytes".into()));
        }
        let limit = limit.unwrap_or(50).clamp(1, MAX_SEARCH);
        let rows = self
            .state
            .store
            .search_members(group.as_str(), &query, limit)
            .await?;
        Ok(MembersFound {
            group,
            members: rows.iter().filter_map(info).collect(),
        })
    }

    /// Answers `members_unsubscribe`.
    pub(super) fn members_unsubscribe(&self, r: MembersUnsubscribe) -> Result<Done, RequestError> {
        let conv = r.group.conversation();
        self.state.hub.unwatch_members(self.conn.id, &conv);
        Ok(Done {
            conv: Some(conv),
            seq: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(version: u64, horizon: u64, members: &[&str]) -> GroupRow {
        let d = SetDigest::of(members.iter().copied());
        GroupRow {
            group: "g".into(),
            owner: "o".into(),
            title: String::new(),
            avatar: None,
            direct: false,
            dismissed: false,
            created_seq: 1,
            version,
            digest_sum: d.sum,
            member_count: d.count,
            horizon,
        }
    }

    #[test]
    fn the_plan_for_each_kind_of_copy() {
        let g = group(100, 10, &["a", "b"]);
        let same = Some(SetDigest::of(["a", "b"]));
        let other = Some(SetDigest::of(["a"]));
        assert_eq!(plan(true, 100, same, &g), Plan::Unchanged);
        assert_eq!(
            plan(true, 100, None, &g),
            Plan::Unchanged,
            "no digest: trust the version"
        );
        assert_eq!(plan(true, 100, other, &g), Plan::Buckets);
        assert_eq!(plan(true, 50, other, &g), Plan::Diff);
        assert_eq!(
            plan(true, 10, None, &g),
            Plan::Diff,
            "at the horizon is still diffable"
        );
        assert_eq!(plan(true, 9, None, &g), Plan::Full, "past the horizon");
        assert_eq!(plan(true, 101, same, &g), Plan::Full, "from the future");
        assert_eq!(plan(false, 100, same, &g), Plan::Full, "another epoch");
        assert_eq!(plan(true, 0, None, &g), Plan::Full, "no copy");
    }

    #[test]
    fn a_diff_is_too_large_past_the_configured_share() {
        assert!(!too_large(1, 100_000, 50));
        assert!(!too_large(50_000, 100_000, 50));
        assert!(too_large(50_001, 100_000, 50));
        assert!(
            too_large(1, 0, 50),
            "an empty group has nothing to diff against"
        );
    }
}
