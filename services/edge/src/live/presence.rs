//! Who is online, across every edge: each edge keeps a record per connected user on the
//! `PRESENCE` stream (`presence.<user>.<edge>`: how many devices, and when), refreshes it every
//! third of the TTL and writes 0 devices when the user's last connection here closes. Every
//! edge follows all records and keeps the newest of each; a user is online while one record
//! with devices is younger than the TTL, so the users of a crashed edge go offline when its
//! records stop being refreshed.
//!
//! A user's coming online or going offline is told to the other member of each of their 1:1
//! conversations who is connected to this edge (looked up when that member connects) — never
//! to a group's members: a group gets an online count on request.

use std::collections::{HashMap, HashSet};

use anchorage_schema::UserId;

/// One edge's latest record of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    devices: u32,
    at: i64,
}

/// Presence records by user and edge, and who watches whom.
#[derive(Debug, Default)]
pub(super) struct Presence {
    records: HashMap<UserId, HashMap<String, Record>>,
    /// The users last told to be online (a change of this is what peers hear of).
    online: HashSet<UserId>,
    /// Users connected here who have a 1:1 with the key user.
    watchers: HashMap<UserId, HashSet<UserId>>,
    /// The peers each user connected here watches (to undo).
    watching: HashMap<UserId, Vec<UserId>>,
}

/// A user came online (`true`) or went offline, at `at`.
pub(super) type Flip = (UserId, bool, i64);

impl Presence {
    /// Whether `user` is online at `now` (Unix ms) with records valid for `ttl_ms`.
    pub fn online(&self, user: &UserId, now: i64, ttl_ms: i64) -> bool {
        self.records
            .get(user)
            .is_some_and(|by_edge| by_edge.values().any(|r| live(r, now, ttl_ms)))
    }

    /// When `user` was last connected according to the records here, if any.
    pub fn last_at(&self, user: &UserId) -> Option<i64> {
        self.records
            .get(user)
            .and_then(|by_edge| by_edge.values().map(|r| r.at).max())
    }

    /// Takes an edge's record of a user (older ones than held are ignored); returns the
    /// change of the user's presence it makes, if any.
    pub fn apply(
        &mut self,
        user: &UserId,
        edge: &str,
        devices: u32,
        at: i64,
        now: i64,
        ttl_ms: i64,
    ) -> Option<Flip> {
        let by_edge = self.records.entry(user.clone()).or_default();
        match by_edge.get(edge) {
            Some(held) if held.at > at => return None,
            _ => {
                by_edge.insert(edge.to_owned(), Record { devices, at });
            }
        }
        let now_online = self.online(user, now, ttl_ms);
        self.settle(user, now_online, at)
    }

    /// Records whether `user` is online; the change, if it is one.
    fn settle(&mut self, user: &UserId, online: bool, at: i64) -> Option<Flip> {
        let changed = if online {
            self.online.insert(user.clone())
        } else {
            self.online.remove(user)
        };
        changed.then(|| (user.clone(), online, at))
    }

    /// Drops records past the TTL; returns the users who went offline by it, with the time
    /// of their last record.
    pub fn sweep(&mut self, now: i64, ttl_ms: i64) -> Vec<Flip> {
        let mut gone = Vec::new();
        self.records.retain(|user, by_edge| {
            let last = by_edge.values().map(|r| r.at).max().unwrap_or(0);
            // An offline record is kept while valid: it carries the last-seen time.
            by_edge.retain(|_, r| now - r.at <= ttl_ms);
            if !by_edge.values().any(|r| live(r, now, ttl_ms)) {
                gone.push((user.clone(), last));
            }
            !by_edge.is_empty()
        });
        gone.into_iter()
            .filter_map(|(user, last)| self.settle(&user, false, last))
            .collect()
    }

    /// Users online now.
    pub fn online_users(&self, now: i64, ttl_ms: i64) -> Vec<UserId> {
        self.records
            .iter()
            .filter(|(_, by_edge)| by_edge.values().any(|r| live(r, now, ttl_ms)))
            .map(|(user, _)| user.clone())
            .collect()
    }

    /// `user` (connected here) watches the presence of `peers`.
    pub fn watch(&mut self, user: &UserId, peers: Vec<UserId>) {
        for peer in &peers {
            self.watchers
                .entry(peer.clone())
                .or_default()
                .insert(user.clone());
        }
        self.watching.insert(user.clone(), peers);
    }

    /// `user`, if connected here (their peers looked up), watches `peer` too (a 1:1 made
    /// while they are connected).
    pub fn add_peer(&mut self, user: &UserId, peer: &UserId) {
        let Some(peers) = self.watching.get_mut(user) else {
            return;
        };
        if !peers.contains(peer) {
            peers.push(peer.clone());
            self.watchers
                .entry(peer.clone())
                .or_default()
                .insert(user.clone());
        }
    }

    /// `user` left this edge: they watch nobody any more.
    pub fn unwatch(&mut self, user: &UserId) {
        for peer in self.watching.remove(user).unwrap_or_default() {
            if let Some(w) = self.watchers.get_mut(&peer) {
                w.remove(user);
                if w.is_empty() {
                    self.watchers.remove(&peer);
                }
            }
        }
    }

    /// Whether `user` already has their peers looked up here.
    pub fn watches(&self, user: &UserId) -> bool {
        self.watching.contains_key(user)
    }

    /// The users connected here who watch `user`.
    pub fn watchers_of(&self, user: &UserId) -> impl Iterator<Item = &UserId> + '_ {
        self.watchers.get(user).into_iter().flatten()
    }

    pub fn clear(&mut self) {
        *self = Presence::default();
    }
}

fn live(r: &Record, now: i64, ttl_ms: i64) -> bool {
    r.devices > 0 && now - r.at <= ttl_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn online_while_one_edge_holds_a_fresh_record() {
        let mut p = Presence::default();
        let (alice, ttl) = (u("alice"), 1000);
        assert_eq!(
            p.apply(&alice, "e1", 1, 0, 0, ttl),
            Some((alice.clone(), true, 0))
        );
        assert_eq!(
            p.apply(&alice, "e2", 2, 10, 10, ttl),
            None,
            "already online"
        );
        assert_eq!(p.apply(&alice, "e1", 0, 20, 20, ttl), None, "still on e2");
        assert_eq!(
            p.apply(&alice, "e1", 1, 5, 30, ttl),
            None,
            "an older record is ignored"
        );
        assert_eq!(
            p.apply(&alice, "e2", 0, 40, 40, ttl),
            Some((alice.clone(), false, 40))
        );
        assert_eq!(p.last_at(&alice), Some(40));
    }

    #[test]
    fn a_crashed_edges_users_go_offline_when_its_records_expire() {
        let mut p = Presence::default();
        let (bob, ttl) = (u("bob"), 1000);
        p.apply(&bob, "dead", 3, 100, 100, ttl);
        assert!(p.sweep(1000, ttl).is_empty(), "still fresh");
        assert_eq!(p.sweep(1200, ttl), vec![(bob.clone(), false, 100)]);
        assert!(!p.online(&bob, 1200, ttl));
        assert!(p.online_users(1200, ttl).is_empty());
    }

    #[test]
    fn watching_is_undone_with_the_watcher() {
        let mut p = Presence::default();
        let (alice, bob, carol) = (u("alice"), u("bob"), u("carol"));
        p.watch(&alice, vec![bob.clone(), carol.clone()]);
        p.watch(&carol, vec![bob.clone()]);
        assert_eq!(p.watchers_of(&bob).count(), 2);
        p.unwatch(&alice);
        assert_eq!(p.watchers_of(&bob).collect::<Vec<_>>(), vec![&carol]);
        assert_eq!(p.watchers_of(&carol).count(), 0);
        assert!(!p.watches(&alice) && p.watches(&carol));
    }
}
