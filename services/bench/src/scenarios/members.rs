//! `bench members`: the member list of a 100,000-member group on a client — full realignment,
//! the unchanged check, one change, 1% churn, and many small groups in budget-bounded batches —
//! next to pulling the whole list each time.

use std::collections::BTreeSet;

use anchorage_digest::{BucketedDigest, SetDigest, Sketch, member_hash};
use anchorage_protocol::request::{MembersFetch, MembersSketch, MembersSync, MembersSyncBatch};
use anchorage_protocol::{
    GroupSync, GroupSyncResult, MembersBatch, MembersBuckets, MembersDiff, MembersPage, ReplyBody,
    Request, RequestBody, ServerFrame,
};
use anchorage_schema::event::{GroupCreated, MembersAdded, MembersRemoved, RemovalReason};
use anchorage_schema::{GroupId, UserId};
use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::{Ws, signed_in, timed, timed_frame};
use crate::env::{BenchEnv, Sizes, big_group, membership_event, progress, projected};

/// A client's copy of one member list: what the bench keeps to ask for changes.
#[derive(Clone)]
struct MemberCopy {
    group: GroupId,
    epoch: String,
    version: u64,
    members: BTreeSet<UserId>,
}

impl MemberCopy {
    fn digest(&self) -> String {
        SetDigest::of(self.members.iter().map(UserId::as_str)).to_wire()
    }

    /// The copy as `members_sync` and `members_sync_batch` describe it.
    fn as_sync(&self) -> GroupSync {
        GroupSync {
            group: self.group.clone(),
            epoch: Some(self.epoch.clone()),
            version: self.version,
            digest: Some(self.digest()),
            compact: false,
        }
    }

    fn apply_page(&mut self, page: MembersPage) {
        self.members.extend(page.members);
        self.members
            .extend(page.details.into_iter().map(|m| m.user));
    }

    fn apply_diff(&mut self, diff: &MembersDiff) {
        self.members
            .extend(diff.upserts.iter().map(|m| m.user.clone()));
        for u in &diff.removed {
            self.members.remove(u);
        }
        self.version = diff.version;
    }
}

/// A full pull: the first page and every page after it. Returns the copy, bytes and time.
async fn full_pull(
    ws: &mut Ws,
    id: &mut u64,
    group: &str,
) -> anyhow::Result<(MemberCopy, usize, f64)> {
    let group = GroupId::parse(group)?;
    *id += 1;
    let sync = MembersSync {
        group: group.clone(),
        epoch: None,
        version: 0,
        digest: None,
        compact: false,
    };
    let (first, mut bytes, mut ms) = timed(ws, *id, sync).await?;
    let ReplyBody::MembersPage(mut page) = first else {
        bail!("expected a snapshot page: {first:?}");
    };
    let mut copy = MemberCopy {
        group: group.clone(),
        epoch: page.epoch.clone(),
        version: page.anchor,
        members: BTreeSet::new(),
    };
    loop {
        let cursor = page.cursor.take();
        copy.apply_page(page);
        let Some(cursor) = cursor else {
            return Ok((copy, bytes, ms));
        };
        *id += 1;
        let fetch = MembersFetch {
            group: group.clone(),
            epoch: copy.epoch.clone(),
            anchor: copy.version,
            cursor: Some(cursor),
            buckets: None,
            hashes: None,
        };
        let (next, b, t) = timed(ws, *id, fetch).await?;
        let ReplyBody::MembersPage(next) = next else {
            bail!("expected a snapshot page: {next:?}");
        };
        page = next;
        bytes += b;
        ms += t;
    }
}

/// Syncs `copy` by diffs until it is current, with the diffs in their positional form when
/// `compact`; returns the bytes received, the time and the members changed.
async fn diff_to_current(
    ws: &mut Ws,
    id: &mut u64,
    copy: &mut MemberCopy,
    compact: bool,
) -> anyhow::Result<(usize, f64, usize)> {
    let (mut bytes, mut ms, mut changed) = (0, 0.0, 0);
    loop {
        *id += 1;
        let sync = GroupSync {
            compact,
            ..copy.as_sync()
        };
        let (frame, b, t) = timed_frame(ws, *id, sync).await?;
        bytes += b;
        ms += t;
        let answer = match frame {
            ServerFrame::Reply(reply) => reply.body,
            // The positional form, asked for with `compact`.
            ServerFrame::Delta(d) => {
                ReplyBody::MembersDiff(d.into_diff(copy.group.clone(), copy.epoch.clone()))
            }
            other => bail!("refused: {other:?}"),
        };
        match answer {
            ReplyBody::MembersDiff(diff) => {
                changed += diff.upserts.len() + diff.removed.len();
                copy.apply_diff(&diff);
                if !diff.more {
                    return Ok((bytes, ms, changed));
                }
            }
            ReplyBody::MembersUnchanged => return Ok((bytes, ms, changed)),
            other => bail!("expected a diff: {other:?}"),
        }
    }
}

/// Bytes and time of a repair, both ways.
#[derive(Default)]
struct Repair {
    received: usize,
    sent: usize,
    ms: f64,
    rounds: usize,
}

impl Repair {
    async fn ask(
        &mut self,
        ws: &mut Ws,
        id: &mut u64,
        body: impl Into<RequestBody>,
    ) -> anyhow::Result<ReplyBody> {
        *id += 1;
        let body = body.into();
        self.sent += Request::encode(*id, &body).len();
        let (answer, b, t) = timed(ws, *id, body).await?;
        self.received += b;
        self.ms += t;
        self.rounds += 1;
        Ok(answer)
    }
}

/// Repairs a damaged copy the way a client does: bucket digests, a sketch of the differing
/// buckets, the missing members by hash — or, with `by_buckets`, the differing buckets'
/// members (the repair without the second level).
async fn repair(
    ws: &mut Ws,
    id: &mut u64,
    copy: &mut MemberCopy,
    by_buckets: bool,
) -> anyhow::Result<Repair> {
    let mut r = Repair::default();
    let answer = r.ask(ws, id, copy.as_sync()).await?;
    let ReplyBody::MembersBuckets(MembersBuckets {
        version, digests, ..
    }) = answer
    else {
        bail!("expected bucket digests: {answer:?}");
    };
    let server = BucketedDigest::from_wire(&digests).context("bucket digests")?;
    let local = BucketedDigest::of(copy.members.iter().map(UserId::as_str));
    let differing = local.differing(server.buckets());
    if by_buckets {
        let mut cursor = Some(String::new());
        let mut found = Vec::new();
        while let Some(c) = cursor {
            let fetch = MembersFetch {
                group: copy.group.clone(),
                epoch: copy.epoch.clone(),
                anchor: version,
                cursor: (!c.is_empty()).then_some(c),
                buckets: Some(differing.clone()),
                hashes: None,
            };
            let ReplyBody::MembersPage(page) = r.ask(ws, id, fetch).await? else {
                bail!("expected a page of buckets");
            };
            cursor = page.cursor.clone();
            found.extend(page.members);
            found.extend(page.details.into_iter().map(|m| m.user));
        }
        copy.members
            .retain(|m| !differing.contains(&((member_hash(m.as_str()) >> 56) as u8)));
        copy.members.extend(found);
        return Ok(r);
    }
    let damage: u64 = differing
        .iter()
        .map(|b| {
            local
                .bucket(*b)
                .count
                .abs_diff(server.bucket(*b).count)
                .max(1)
        })
        .sum();
    let cells = Sketch::cells_for(damage);
    let ask = MembersSketch {
        group: copy.group.clone(),
        epoch: copy.epoch.clone(),
        anchor: version,
        buckets: differing.clone(),
        cells: cells as u32,
    };
    let ReplyBody::MembersSketch(theirs) = r.ask(ws, id, ask).await? else {
        bail!("expected a sketch");
    };
    let mut ours = Sketch::new(cells);
    for m in &copy.members {
        if differing.contains(&((member_hash(m.as_str()) >> 56) as u8)) {
            ours.insert(member_hash(m.as_str()));
        }
    }
    let diff = Sketch::from_wire(&theirs.sketch, cells)
        .and_then(|t| t.subtract(&ours))
        .and_then(Sketch::decode)
        .context("the sketch did not decode (rare; run again)")?;
    let fetch = MembersFetch {
        group: copy.group.clone(),
        epoch: copy.epoch.clone(),
        anchor: version,
        cursor: None,
        buckets: None,
        hashes: Some(
            diff.only_there
                .iter()
                .map(|h| format!("{h:016x}"))
                .collect(),
        ),
    };
    let ReplyBody::MembersPage(page) = r.ask(ws, id, fetch).await? else {
        bail!("expected the missing members");
    };
    copy.apply_page(page);
    Ok(r)
}

fn users(ids: impl IntoIterator<Item = String>) -> anyhow::Result<Vec<UserId>> {
    Ok(ids
        .into_iter()
        .map(UserId::parse)
        .collect::<Result<Vec<_>, _>>()?)
}

pub async fn run(env: &BenchEnv, s: Sizes) -> anyhow::Result<Value> {
    let bus = env.bus().await?;
    let stack = env.stack().await?;
    let big = "big";
    let big_id = GroupId::parse(big)?;
    progress(&format!("a group of {} members", s.members));
    let numbered = s.members.saturating_sub(2);
    let mut n = big_group(&bus, &stack, &["reader"], numbered).await?;
    let mut ws = signed_in(stack.edge_addr, &env.config, "reader").await?;
    let mut id = 0u64;

    progress("full realignment");
    let (mut copy, full_bytes, full_ms) = full_pull(&mut ws, &mut id, big).await?;
    let count = copy.members.len();

    progress("unchanged check");
    id += 1;
    let (a, unchanged_bytes, unchanged_ms) = timed(&mut ws, id, copy.as_sync()).await?;
    if a != ReplyBody::MembersUnchanged {
        bail!("expected unchanged: {a:?}");
    }

    progress("1 change");
    n += 1;
    let added = MembersAdded {
        group: big_id.clone(),
        members: users(["newcomer".to_owned()])?,
    };
    let seq = membership_event(&bus, big, n, added).await?;
    projected(&stack, "membership", seq).await?;
    // The same diff in its positional form (`compact`), from the same copy.
    let mut positional = copy.clone();
    let (compact_bytes, compact_ms, _) =
        diff_to_current(&mut ws, &mut id, &mut positional, true).await?;
    let (one_bytes, one_ms, _) = diff_to_current(&mut ws, &mut id, &mut copy, false).await?;
    if positional.digest() != copy.digest() || positional.version != copy.version {
        bail!("the positional diff and the object diff disagree");
    }

    progress("1% churn");
    let churn = (s.members / 100).max(2);
    let leaving = users((0..churn / 2).map(|i| format!("u{:06}", i * 37 % numbered.max(1))))?;
    let joining = users((0..churn / 2).map(|i| format!("churn{i:06}")))?;
    n += 1;
    let removed = MembersRemoved {
        group: big_id.clone(),
        members: leaving,
        reason: RemovalReason::Removed,
    };
    membership_event(&bus, big, n, removed).await?;
    n += 1;
    let added = MembersAdded {
        group: big_id.clone(),
        members: joining,
    };
    let seq = membership_event(&bus, big, n, added).await?;
    projected(&stack, "membership", seq).await?;
    let (churn_bytes, churn_ms, churn_changed) =
        diff_to_current(&mut ws, &mut id, &mut copy, true).await?;
    let server = stack.store.group_row(big).await?.context("the group")?;
    if copy.digest() != server.digest().to_wire() {
        bail!("the bench's copy does not match the server after the diffs");
    }

    progress("repair of a copy missing 40 members");
    let mut damaged = copy.clone();
    let step = (count / 40).max(1);
    let lost: Vec<UserId> = copy
        .members
        .iter()
        .step_by(step)
        .take(40)
        .cloned()
        .collect();
    for m in &lost {
        damaged.members.remove(m);
    }
    let mut by_buckets = damaged.clone();
    let repaired = repair(&mut ws, &mut id, &mut damaged, false).await?;
    let old_way = repair(&mut ws, &mut id, &mut by_buckets, true).await?;
    for c in [&damaged, &by_buckets] {
        if c.members != copy.members {
            bail!("a repaired copy does not match the server");
        }
    }

    progress(&format!("{} groups in budget-bounded batches", s.groups));
    let team = |g: usize| format!("team{g:03}");
    let mut last = 0;
    for g in 0..s.groups {
        let created = GroupCreated {
            group: GroupId::parse(team(g))?,
            owner: UserId::parse("owner")?,
            title: "team".into(),
            members: users(
                std::iter::once("reader".to_owned()).chain((0..18).map(|m| format!("t{g}m{m}"))),
            )?,
            direct: false,
        };
        last = membership_event(&bus, &team(g), 0, created).await?;
    }
    projected(&stack, "membership", last).await?;
    let mut copies = Vec::new();
    let mut naive_batch_bytes = 0;
    for g in 0..s.groups {
        let (c, b, _) = full_pull(&mut ws, &mut id, &team(g)).await?;
        naive_batch_bytes += b;
        copies.push(c);
    }
    for g in (0..s.groups).step_by(10) {
        let added = MembersAdded {
            group: GroupId::parse(team(g))?,
            members: users([format!("late{g}")])?,
        };
        last = membership_event(&bus, &team(g), 1, added).await?;
    }
    projected(&stack, "membership", last).await?;
    let mut pending: Vec<GroupSync> = copies.iter().map(MemberCopy::as_sync).collect();
    // About 32 bytes per group: the batch needs several answers, each within the budget.
    let budget = (s.groups * 32).max(1024);
    let (mut batch_bytes, mut batch_ms, mut rounds, mut diffs) = (0, 0.0, 0, 0);
    while !pending.is_empty() {
        id += 1;
        let batch = MembersSyncBatch {
            groups: pending.clone(),
            budget_bytes: Some(budget as u32),
            cursor: None,
        };
        let (a, b, t) = timed(&mut ws, id, batch).await?;
        let ReplyBody::MembersBatch(MembersBatch { results, cursor }) = a else {
            bail!("expected a batch: {a:?}");
        };
        batch_bytes += b;
        batch_ms += t;
        rounds += 1;
        diffs += results
            .iter()
            .filter(|r| matches!(r, GroupSyncResult::Diff { .. }))
            .count();
        match cursor {
            Some(c) => {
                pending.drain(..c as usize);
            }
            None => break,
        }
    }
    stack.stop().await?;
    bus.close().await;
    let per = |bytes: usize, n: usize| bytes as f64 / n.max(1) as f64;
    Ok(json!({
        "ours": {
            "unchanged_bytes": unchanged_bytes,
            "unchanged_ms": unchanged_ms,
            "one_change_bytes": compact_bytes,
            "one_change_ms": compact_ms,
            "one_change_object_bytes": one_bytes,
            "one_change_object_ms": one_ms,
            "churn_changed_members": churn_changed,
            "churn_bytes": churn_bytes,
            "churn_bytes_per_changed_member": per(churn_bytes, churn_changed),
            "churn_ms": churn_ms,
            "full_bytes": full_bytes,
            "full_bytes_per_member": per(full_bytes, count),
            "full_server_ms": full_ms,
            "batch_groups": s.groups,
            "batch_changed_groups": diffs,
            "batch_bytes": batch_bytes,
            "batch_rounds": rounds,
            "batch_ms": batch_ms,
            "repair_missing_members": lost.len(),
            "repair_bytes": repaired.received,
            "repair_sent_bytes": repaired.sent,
            "repair_rounds": repaired.rounds,
            "repair_ms": repaired.ms,
        },
        "baseline": {
            "repair_by_buckets_bytes": old_way.received,
            "repair_by_buckets_sent_bytes": old_way.sent,
            "naive_full_pull_bytes": full_bytes,
            "naive_batch_full_pull_bytes": naive_batch_bytes,
        },
        "ratio": {
            "unchanged_vs_full_pull": per(unchanged_bytes, full_bytes),
            "one_change_vs_full_pull": per(compact_bytes, full_bytes),
            "one_change_vs_object_form": per(compact_bytes, one_bytes),
            "churn_vs_full_pull": per(churn_bytes, full_bytes),
            "batch_vs_full_pulls": per(batch_bytes, naive_batch_bytes),
            "repair_vs_by_buckets": per(repaired.received, old_way.received),
            "repair_vs_full_pull": per(repaired.received, full_bytes),
        },
        "target": "unchanged <= 64 B; one change <= 64 B; diff <= 64 B per changed member; full <= 24 B per member and < 1 s server time; repair of 40 missing <= 10 KB",
        "sizes": {"members": count, "groups": s.groups, "batch_budget_bytes": budget},
    }))
}
