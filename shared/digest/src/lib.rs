//! Order-independent digests of member sets, for large-group sync.
//!
//! A client holding a group's member list and the server must be able to tell, in a few bytes,
//! whether they hold the same set. The digest of a set is the wrapping sum of the xxh3-64 hash of
//! every member id, plus the member count. Sum is commutative and invertible, so:
//!
//! - the digest does not depend on order — the client computes the same value from its local set
//!   however it was built;
//! - adding or removing one member updates it in O(1) (add or subtract one hash), so the projector
//!   maintains it incrementally per event and the client per notification.
//!
//! [`BucketedDigest`] also keeps one digest per bucket (256 buckets, chosen by the top byte of the
//! member's hash). When the totals differ, comparing bucket digests narrows the mismatch to the
//! buckets that differ, and only those need to be realigned.
//!
//! Under the buckets that differ, a [`Sketch`] of their members finds the members that differ,
//! at a cost that follows the damage rather than the size of the buckets.
//!
//! The hash is xxh3-64 with seed 0 over the UTF-8 bytes of the id: any client in any language
//! can compute it.

#![warn(missing_docs)]

mod sketch;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

pub use sketch::{CELL_BYTES, Difference, HASHES, MAX_CELLS, Sketch};

/// Number of buckets in a [`BucketedDigest`].
pub const BUCKETS: usize = 256;

/// The hash of one member id.
pub fn member_hash(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// The bucket of a member id: the top byte of its hash.
pub fn bucket_of(id: &str) -> u8 {
    (member_hash(id) >> 56) as u8
}

/// The digest of a set: wrapping sum of member hashes, and the member count.
///
/// The count makes the common failure modes (a member missing or doubled) visible even in the
/// astronomically unlikely case of a hash-sum collision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SetDigest {
    /// Wrapping sum of the members' xxh3-64 hashes.
    pub sum: u64,
    /// How many members.
    pub count: u64,
}

impl SetDigest {
    /// The digest of no members.
    pub const EMPTY: SetDigest = SetDigest { sum: 0, count: 0 };

    /// The digest of a whole set. Callers must pass each member once.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a str>) -> Self {
        let mut d = Self::EMPTY;
        for m in members {
            d.insert(m);
        }
        d
    }

    /// Accounts for `id` joining the set. The caller ensures it was not in the set.
    pub fn insert(&mut self, id: &str) {
        self.insert_hash(member_hash(id));
    }

    /// Accounts for `id` leaving the set. The caller ensures it was in the set.
    pub fn remove(&mut self, id: &str) {
        self.remove_hash(member_hash(id));
    }

    /// Adds a member by its hash.
    pub fn insert_hash(&mut self, h: u64) {
        self.sum = self.sum.wrapping_add(h);
        self.count = self.count.wrapping_add(1);
    }

    /// Removes a member by its hash.
    pub fn remove_hash(&mut self, h: u64) {
        self.sum = self.sum.wrapping_sub(h);
        self.count = self.count.wrapping_sub(1);
    }

    /// Combines the digests of two disjoint sets.
    pub fn combine(self, other: SetDigest) -> SetDigest {
        SetDigest {
            sum: self.sum.wrapping_add(other.sum),
            count: self.count.wrapping_add(other.count),
        }
    }

    /// The wire form, `"<sum as 16 hex digits>:<count>"`: a string, because a 64-bit sum is
    /// not exact as a JSON number in every client language.
    pub fn to_wire(self) -> String {
        format!("{:016x}:{}", self.sum, self.count)
    }

    /// Reads the wire form; `None` if it is not one.
    pub fn from_wire(text: &str) -> Option<SetDigest> {
        let (sum, count) = text.split_once(':')?;
        if sum.len() != 16
            || !sum.bytes().all(|c| c.is_ascii_hexdigit())
            || !count.bytes().all(|c| c.is_ascii_digit())
        {
            return None;
        }
        Some(SetDigest {
            sum: u64::from_str_radix(sum, 16).ok()?,
            count: count.parse().ok()?,
        })
    }
}

/// A set digest split into [`BUCKETS`] bucket digests by member hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketedDigest {
    buckets: Box<[SetDigest; BUCKETS]>,
}

impl Default for BucketedDigest {
    fn default() -> Self {
        Self {
            buckets: Box::new([SetDigest::EMPTY; BUCKETS]),
        }
    }
}

impl BucketedDigest {
    /// The digest of a set of member ids.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a str>) -> Self {
        let mut d = Self::default();
        for m in members {
            d.insert(m);
        }
        d
    }

    /// Adds a member.
    pub fn insert(&mut self, id: &str) {
        let h = member_hash(id);
        self.buckets[(h >> 56) as usize].insert_hash(h);
    }

    /// Removes a member.
    pub fn remove(&mut self, id: &str) {
        let h = member_hash(id);
        self.buckets[(h >> 56) as usize].remove_hash(h);
    }

    /// The digest of the whole set (equal to [`SetDigest::of`] over the same members).
    pub fn total(&self) -> SetDigest {
        self.buckets
            .iter()
            .fold(SetDigest::EMPTY, |acc, b| acc.combine(*b))
    }

    /// The digest of one bucket.
    pub fn bucket(&self, index: u8) -> SetDigest {
        self.buckets[index as usize]
    }

    /// Every bucket's digest.
    pub fn buckets(&self) -> &[SetDigest; BUCKETS] {
        &self.buckets
    }

    /// The buckets whose digests differ from `other`'s, in ascending order.
    pub fn differing(&self, other: &[SetDigest; BUCKETS]) -> Vec<u8> {
        (0..BUCKETS)
            .filter(|i| self.buckets[*i] != other[*i])
            .map(|i| i as u8)
            .collect()
    }

    /// The digest with these buckets' digests (the others empty).
    pub fn from_buckets(buckets: impl IntoIterator<Item = (u8, SetDigest)>) -> Self {
        let mut d = Self::default();
        for (b, digest) in buckets {
            d.buckets[b as usize] = digest;
        }
        d
    }

    /// The compact wire form, in standard base64: a 32-byte bitmap of the non-empty buckets
    /// (bucket `b` is bit `b % 8` of byte `b / 8`), then for each of them in ascending order
    /// its sum (u64) and count (u32), little-endian. 12 bytes per non-empty bucket.
    pub fn to_wire(&self) -> String {
        let mut bitmap = [0u8; BUCKETS / 8];
        let mut entries = Vec::new();
        for (b, d) in self.buckets.iter().enumerate() {
            if *d != SetDigest::EMPTY {
                bitmap[b / 8] |= 1 << (b % 8);
                entries.extend_from_slice(&d.sum.to_le_bytes());
                entries.extend_from_slice(&(d.count as u32).to_le_bytes());
            }
        }
        let mut bytes = bitmap.to_vec();
        bytes.extend_from_slice(&entries);
        STANDARD.encode(bytes)
    }

    /// Reads the compact wire form; `None` if it is not one.
    pub fn from_wire(text: &str) -> Option<Self> {
        let bytes = STANDARD.decode(text).ok()?;
        let (bitmap, mut entries) = bytes.split_at_checked(BUCKETS / 8)?;
        let mut d = Self::default();
        for b in 0..BUCKETS {
            if bitmap[b / 8] & (1 << (b % 8)) == 0 {
                continue;
            }
            let (entry, rest) = entries.split_at_checked(12)?;
            let (sum, count) = entry.split_at(8);
            d.buckets[b] = SetDigest {
                sum: u64::from_le_bytes(sum.try_into().ok()?),
                count: u64::from(u32::from_le_bytes(count.try_into().ok()?)),
            };
            entries = rest;
        }
        entries.is_empty().then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::{btree_set, vec};
    use proptest::prelude::*;

    #[test]
    fn known_value_is_stable_across_releases() {
        // Clients in other languages compute the same digest; pin the hash.
        assert_eq!(member_hash(""), 0x2d06800538d394c2);
        let d = SetDigest::of(["alice", "bob"]);
        assert_eq!(d.count, 2);
        assert_eq!(d.sum, member_hash("alice").wrapping_add(member_hash("bob")));
    }

    #[test]
    fn wire_form_round_trips_and_rejects_junk() {
        let d = SetDigest::of(["alice", "bob", "carol"]);
        assert_eq!(SetDigest::from_wire(&d.to_wire()), Some(d));
        assert_eq!(SetDigest::EMPTY.to_wire(), "0000000000000000:0");
        for bad in [
            "",
            "abc",
            "zz:1",
            "0000000000000000",
            "0000000000000000:x",
            "00:1",
            "+000000000000001:1",
            "0000000000000001:+1",
        ] {
            assert_eq!(SetDigest::from_wire(bad), None, "{bad}");
        }
    }

    #[test]
    fn bucket_wire_form_round_trips_and_rejects_junk() {
        let d = BucketedDigest::of(["alice", "bob", "carol"]);
        let wire = d.to_wire();
        // Bitmap and three entries.
        assert_eq!(wire.len(), (32 + 3 * 12usize).div_ceil(3) * 4);
        assert_eq!(BucketedDigest::from_wire(&wire), Some(d.clone()));
        let empty = BucketedDigest::default();
        assert_eq!(BucketedDigest::from_wire(&empty.to_wire()), Some(empty));
        let mut bytes = STANDARD.decode(&wire).unwrap();
        bytes.pop();
        assert_eq!(
            BucketedDigest::from_wire(&STANDARD.encode(&bytes)),
            None,
            "short"
        );
        bytes.extend_from_slice(&[0; 13]);
        assert_eq!(
            BucketedDigest::from_wire(&STANDARD.encode(&bytes)),
            None,
            "long"
        );
        assert_eq!(BucketedDigest::from_wire("!!"), None);
        assert_eq!(BucketedDigest::from_wire(""), None);
    }

    #[test]
    fn empty_is_default() {
        assert_eq!(SetDigest::of([]), SetDigest::EMPTY);
        assert_eq!(BucketedDigest::default().total(), SetDigest::EMPTY);
    }

    proptest! {
        #[test]
        fn order_does_not_matter(set in btree_set("[a-z0-9]{1,12}", 0..200), seed in any::<u64>()) {
            let mut members: Vec<&str> = set.iter().map(String::as_str).collect();
            let forward = SetDigest::of(members.iter().copied());
            // Deterministic shuffle from the seed.
            let n = members.len();
            let mut s = seed;
            for i in (1..n).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                members.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(SetDigest::of(members.iter().copied()), forward);
        }

        #[test]
        fn incremental_equals_recomputed(
            initial in btree_set("[a-z]{1,8}", 0..100),
            ops in vec(("[a-z]{1,8}", any::<bool>()), 0..200),
        ) {
            let mut set = initial.clone();
            let mut d = SetDigest::of(set.iter().map(String::as_str));
            let mut b = BucketedDigest::of(set.iter().map(String::as_str));
            for (id, add) in ops {
                if add && set.insert(id.clone()) {
                    d.insert(&id);
                    b.insert(&id);
                } else if !add && set.remove(&id) {
                    d.remove(&id);
                    b.remove(&id);
                }
            }
            let fresh = SetDigest::of(set.iter().map(String::as_str));
            prop_assert_eq!(d, fresh);
            prop_assert_eq!(b.total(), fresh);
            prop_assert_eq!(b, BucketedDigest::of(set.iter().map(String::as_str)));
        }

        #[test]
        fn buckets_pinpoint_the_difference(
            set in btree_set("[a-z]{1,8}", 1..300),
            pick in any::<prop::sample::Index>(),
        ) {
            let full = BucketedDigest::of(set.iter().map(String::as_str));
            let missing = pick.get(&set.iter().collect::<Vec<_>>()).to_string();
            let damaged = BucketedDigest::of(set.iter().filter(|m| **m != missing).map(String::as_str));
            prop_assert_ne!(full.total(), damaged.total());
            prop_assert_eq!(full.differing(damaged.buckets()), vec![bucket_of(&missing)]);
        }
    }
}
