//! The second digest level: an invertible sketch of the members under the differing buckets.
//!
//! Bucket digests say *where* two copies differ, not *what* differs: fetching a whole bucket
//! again costs its ~n/256 members however little of it is damaged. A [`Sketch`] (an invertible
//! Bloom lookup table) of the members of those buckets costs a fixed 16 bytes per cell, and
//! the cells needed follow the number of differences, not the size of the group: the client
//! subtracts a sketch of its own members of the same buckets and [decodes](Sketch::decode)
//! the member hashes only the server has and those only it has. It then fetches just the
//! former and drops the latter.
//!
//! Each member hash goes into [`HASHES`] cells, one in each quarter of the table, chosen by
//! xxh3-64 of the hash's little-endian bytes with the seeds 1 to 4 (modulo a quarter's size). A
//! cell holds the count of hashes in it, their XOR, and the XOR of a check value of each
//! (xxh3-64 with seed 5, low 32 bits), by which a cell holding exactly one hash is recognised.
//! Four cells per hash rather than three: two differences then rarely share all their cells,
//! which with three is what makes small sketches fail. Decoding fails — rarely,
//! given [`Sketch::cells_for`] cells — when too many differences share cells; the client then
//! asks for a larger sketch or falls back to the buckets' members.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Cells each member hash is added to.
pub const HASHES: usize = 4;
/// Bytes of one cell on the wire: count (i32), hash XOR (u64), check XOR (u32), little-endian.
pub const CELL_BYTES: usize = 16;
/// The most cells a sketch may have (96 KiB on the wire, before base64).
pub const MAX_CELLS: usize = 6144;

const CHECK_SEED: u64 = 5;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Cell {
    count: i32,
    keys: u64,
    checks: u32,
}

impl Cell {
    fn toggle(&mut self, h: u64, sign: i32) {
        self.count = self.count.wrapping_add(sign);
        self.keys ^= h;
        self.checks ^= check(h);
    }

    /// The hash this cell holds alone, with its sign, if it holds exactly one.
    fn pure(&self) -> Option<(u64, i32)> {
        (matches!(self.count, 1 | -1) && check(self.keys) == self.checks)
            .then_some((self.keys, self.count))
    }

    fn is_empty(&self) -> bool {
        *self == Cell::default()
    }
}

fn check(h: u64) -> u32 {
    xxh3_64_with_seed(&h.to_le_bytes(), CHECK_SEED) as u32
}

/// An invertible sketch of a set of member hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sketch {
    cells: Vec<Cell>,
}

/// What a decoded difference of two sketches holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Difference {
    /// Hashes only in the sketch subtracted from (the server's, for a client), sorted.
    pub only_there: Vec<u64>,
    /// Hashes only in the sketch subtracted (the client's own), sorted.
    pub only_here: Vec<u64>,
}

impl Sketch {
    /// An empty sketch of `cells` cells, rounded up to a multiple of [`HASHES`] and to at
    /// least [`HASHES`]. Callers bound `cells` by [`MAX_CELLS`].
    pub fn new(cells: usize) -> Self {
        let cells = cells.max(HASHES).div_ceil(HASHES) * HASHES;
        Sketch {
            cells: vec![Cell::default(); cells],
        }
    }

    /// The cells to ask for when about `differences` hashes are expected to differ: two and a
    /// half per difference and 24 more, so that decoding fails less than once in a hundred.
    pub fn cells_for(differences: u64) -> usize {
        let wanted = differences.saturating_mul(5) / 2 + 24;
        usize::try_from(wanted)
            .unwrap_or(MAX_CELLS)
            .min(MAX_CELLS)
            .div_ceil(HASHES)
            * HASHES
    }

    /// Its number of cells.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Whether it has no cells (never, for a sketch made by [`Sketch::new`]).
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    fn positions(&self, h: u64) -> [usize; HASHES] {
        let part = (self.cells.len() / HASHES) as u64;
        let bytes = h.to_le_bytes();
        std::array::from_fn(|i| {
            (i as u64 * part + xxh3_64_with_seed(&bytes, i as u64 + 1) % part) as usize
        })
    }

    fn toggle(&mut self, h: u64, sign: i32) {
        for p in self.positions(h) {
            self.cells[p].toggle(h, sign);
        }
    }

    /// Adds a member hash (each hash once).
    pub fn insert(&mut self, h: u64) {
        self.toggle(h, 1);
    }

    /// Subtracts `other` (of the same size) cell by cell: what is left is the difference of
    /// the two sets. `None` if the sizes differ.
    pub fn subtract(mut self, other: &Sketch) -> Option<Sketch> {
        if self.cells.len() != other.cells.len() {
            return None;
        }
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            a.count = a.count.wrapping_sub(b.count);
            a.keys ^= b.keys;
            a.checks ^= b.checks;
        }
        Some(self)
    }

    /// Decodes a difference (see [`Sketch::subtract`]) by peeling cells that hold one hash.
    /// `None` when it cannot be decoded completely: too many differences for its size.
    pub fn decode(mut self) -> Option<Difference> {
        let mut diff = Difference::default();
        let mut queue: Vec<usize> = (0..self.cells.len()).collect();
        // Each peel empties at least one cell, so this ends; the bound guards against a
        // crafted table that keeps yielding "pure" cells.
        let mut budget = self.cells.len() * HASHES + HASHES;
        while let Some(i) = queue.pop() {
            let Some((h, sign)) = self.cells[i].pure() else {
                continue;
            };
            if budget == 0 {
                return None;
            }
            budget -= 1;
            if sign > 0 {
                diff.only_there.push(h);
            } else {
                diff.only_here.push(h);
            }
            for p in self.positions(h) {
                self.cells[p].toggle(h, -sign);
                queue.push(p);
            }
        }
        if !self.cells.iter().all(Cell::is_empty) {
            return None;
        }
        diff.only_there.sort_unstable();
        diff.only_here.sort_unstable();
        // A hash peeled twice with opposite signs cancels; one peeled twice alike is bogus.
        if diff.only_there.windows(2).any(|w| w[0] == w[1])
            || diff.only_here.windows(2).any(|w| w[0] == w[1])
        {
            return None;
        }
        Some(diff)
    }

    /// The wire form: the cells, [`CELL_BYTES`] each, in standard base64.
    pub fn to_wire(&self) -> String {
        let mut bytes = Vec::with_capacity(self.cells.len() * CELL_BYTES);
        for c in &self.cells {
            bytes.extend_from_slice(&c.count.to_le_bytes());
            bytes.extend_from_slice(&c.keys.to_le_bytes());
            bytes.extend_from_slice(&c.checks.to_le_bytes());
        }
        STANDARD.encode(bytes)
    }

    /// Reads the wire form of a sketch of `cells` cells; `None` if it is not one.
    pub fn from_wire(text: &str, cells: usize) -> Option<Sketch> {
        if cells == 0 || !cells.is_multiple_of(HASHES) || cells > MAX_CELLS {
            return None;
        }
        let bytes = STANDARD.decode(text).ok()?;
        if bytes.len() != cells * CELL_BYTES {
            return None;
        }
        let cells = bytes
            .chunks_exact(CELL_BYTES)
            .map(|c| {
                let (count, rest) = c.split_at(4);
                let (keys, checks) = rest.split_at(8);
                Some(Cell {
                    count: i32::from_le_bytes(count.try_into().ok()?),
                    keys: u64::from_le_bytes(keys.try_into().ok()?),
                    checks: u32::from_le_bytes(checks.try_into().ok()?),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Sketch { cells })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member_hash;
    use proptest::collection::btree_set;
    use proptest::prelude::*;

    fn sketch_of<'a>(cells: usize, members: impl IntoIterator<Item = &'a String>) -> Sketch {
        let mut s = Sketch::new(cells);
        for m in members {
            s.insert(member_hash(m));
        }
        s
    }

    #[test]
    fn sizes_are_whole_and_bounded() {
        assert_eq!(Sketch::new(0).len(), 4);
        assert_eq!(Sketch::new(10).len(), 12);
        assert_eq!(Sketch::cells_for(0), 24);
        assert_eq!(Sketch::cells_for(40), 124);
        assert_eq!(Sketch::cells_for(u64::MAX), MAX_CELLS);
    }

    #[test]
    fn forty_missing_of_a_large_set_decode_from_a_small_sketch() {
        let server: Vec<String> = (0..20_000).map(|n| format!("u{n:06}")).collect();
        let client: Vec<&String> = server.iter().filter(|m| !m.ends_with("37")).collect();
        let missing = server.len() - client.len();
        assert_eq!(missing, 200);
        let cells = Sketch::cells_for(missing as u64);
        let theirs = sketch_of(cells, &server);
        let ours = sketch_of(cells, client.iter().copied());
        let wire = theirs.to_wire();
        assert_eq!(wire.len(), (cells * CELL_BYTES).div_ceil(3) * 4);
        let theirs = Sketch::from_wire(&wire, cells).unwrap();
        let diff = theirs.subtract(&ours).unwrap().decode().unwrap();
        let mut expected: Vec<u64> = server
            .iter()
            .filter(|m| m.ends_with("37"))
            .map(|m| member_hash(m))
            .collect();
        expected.sort_unstable();
        assert_eq!(diff.only_there, expected);
        assert!(diff.only_here.is_empty());
    }

    #[test]
    fn too_many_differences_fail_to_decode_instead_of_lying() {
        let server: Vec<String> = (0..2_000).map(|n| format!("m{n}")).collect();
        let diff = sketch_of(24, &server)
            .subtract(&Sketch::new(24))
            .unwrap()
            .decode();
        assert_eq!(diff, None);
    }

    #[test]
    fn wire_form_rejects_junk() {
        let s = sketch_of(12, &["a".to_owned(), "b".to_owned()]);
        let wire = s.to_wire();
        assert_eq!(Sketch::from_wire(&wire, 12), Some(s));
        assert_eq!(Sketch::from_wire(&wire, 16), None, "wrong size");
        assert_eq!(Sketch::from_wire(&wire, 0), None);
        assert_eq!(Sketch::from_wire(&wire, 14), None, "not a multiple of 4");
        assert_eq!(Sketch::from_wire("not base64!", 12), None);
        assert_eq!(Sketch::from_wire(&wire, MAX_CELLS + 4), None);
        assert_eq!(Sketch::new(12).subtract(&Sketch::new(16)), None);
    }

    proptest! {
        #[test]
        fn decodes_both_sides_of_a_small_difference(
            common in btree_set("[a-z0-9]{1,10}", 0..400),
            only_server in btree_set("S[a-z0-9]{1,10}", 0..30),
            only_client in btree_set("C[a-z0-9]{1,10}", 0..30),
        ) {
            let d = (only_server.len() + only_client.len()) as u64;
            let cells = Sketch::cells_for(d);
            let theirs = sketch_of(cells, common.iter().chain(&only_server));
            let ours = sketch_of(cells, common.iter().chain(&only_client));
            // Decoding may fail (then the client asks for more); when it answers, it is right.
            if let Some(diff) = theirs.subtract(&ours).unwrap().decode() {
                let mut there: Vec<u64> = only_server.iter().map(|m| member_hash(m)).collect();
                let mut here: Vec<u64> = only_client.iter().map(|m| member_hash(m)).collect();
                there.sort_unstable();
                here.sort_unstable();
                prop_assert_eq!(diff.only_there, there);
                prop_assert_eq!(diff.only_here, here);
            }
        }
    }

    #[test]
    fn small_differences_decode_nearly_always() {
        let mut failures = 0;
        for trial in 0..1000 {
            let d = 1 + trial % 100;
            let extra: Vec<String> = (0..d).map(|n| format!("t{trial}-{n}")).collect();
            let cells = Sketch::cells_for(d as u64);
            if sketch_of(cells, &extra)
                .subtract(&Sketch::new(cells))
                .unwrap()
                .decode()
                .is_none()
            {
                failures += 1;
            }
        }
        assert!(failures <= 15, "{failures} of 1000 failed to decode");
    }
}
