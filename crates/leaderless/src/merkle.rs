//! The hash tree of one range of one keyspace on one node (anti-entropy, [`crate::anti_entropy`]).
//!
//! A fixed-depth tree over the 64-bit ring position of each key: the root covers every
//! position, each of its [`FANOUT`] (32) children a 1/32 slice of the ring, and so on down to
//! the [`LEAVES`] (32,768) leaves, the *segments*, each a 1/32,768 slice. Like Riak's and
//! Cassandra's trees the shape never depends on the data, so two replicas' trees line up node
//! for node and can be compared level by level without agreeing on anything first. With a
//! million keys in one range a segment holds about 30 of them: that is what an exchange lists
//! to find one differing key.
//!
//! The levels above the leaves are dense (1,057 hashes, 8.4 KiB); the leaves are kept in
//! blocks of 32 (one per node of the level above), allocated only where keys are, so a small
//! keyspace costs little and a large one 256 KiB per range at most.
//!
//! A node's hash is the wrapping sum of the [`entry_hash`]es of the keys below it: an additive
//! (multiset) hash, so that a write updates the tree in O(depth) additions (subtract the key's
//! old entry hash, add the new one) with no rehashing of sibling lists, and so that the order
//! in which writes arrived cannot matter. Two different contents of a subtree have equal sums
//! with probability 2^-64 (entry hashes are 64-bit SplitMix outputs of the key and its stored
//! bytes); a collision would hide a difference from one exchange, never corrupt anything.

use std::ops::Range;
use triarch_core::hash::{mix64, stable_hash64};

/// Children per inner node, as a power of two.
pub const FANOUT_BITS: u32 = 5;
pub const FANOUT: u32 = 1 << FANOUT_BITS;
/// The level of the leaves (the root is level 0).
pub const LEAF_LEVEL: u8 = 3;
/// Leaves (segments) per tree.
pub const LEAVES: u32 = 1 << (FANOUT_BITS * LEAF_LEVEL as u32);
/// Nodes of the dense levels (all but the leaves).
const UPPER_NODES: usize = 1 + FANOUT as usize + (FANOUT * FANOUT) as usize;
/// A block of leaves: the children of one node of the level above.
type Block = Box<[u64; FANOUT as usize]>;

/// The hash a key with these stored bytes contributes to its tree: never 0, so that a key
/// present with any value differs from a key absent.
pub fn entry_hash(key: &[u8], stored: &[u8]) -> u64 {
    let h = mix64(stable_hash64(key) ^ mix64(stable_hash64(stored).wrapping_add(0x9e37_79b9)));
    h.max(1)
}

/// How many nodes level `level` has.
pub fn width(level: u8) -> u32 {
    assert!(
        level <= LEAF_LEVEL,
        "the tree has {LEAF_LEVEL} levels below the root"
    );
    1 << (FANOUT_BITS * u32::from(level))
}

/// The node of level `level` whose slice holds `position`.
pub fn index_of(level: u8, position: u64) -> u32 {
    if level == 0 {
        0
    } else {
        (position >> (64 - FANOUT_BITS * u32::from(level))) as u32
    }
}

/// The children (at `level + 1`) of node `index` of `level`.
pub fn children(level: u8, index: u32) -> Range<u32> {
    assert!(level < LEAF_LEVEL, "leaves have no children");
    index * FANOUT..(index + 1) * FANOUT
}

/// The positions (inclusive) that node `index` of `level` covers.
pub fn span(level: u8, index: u32) -> (u64, u64) {
    assert!(index < width(level), "node {index} is not on level {level}");
    if level == 0 {
        return (0, u64::MAX);
    }
    let shift = 64 - FANOUT_BITS * u32::from(level);
    let first = u64::from(index) << shift;
    (first, first | ((1u64 << shift) - 1))
}

/// One range's tree: every level's hashes, and how many keys it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    /// The root, then level 1's nodes, then level 2's.
    upper: Vec<u64>,
    /// The leaves, by block (the index of their parent); blocks of zeros are dropped, so equal
    /// trees are equal values.
    leaves: std::collections::BTreeMap<u32, Block>,
    keys: u64,
}

impl Default for MerkleTree {
    fn default() -> Self {
        MerkleTree {
            upper: vec![0; UPPER_NODES],
            leaves: std::collections::BTreeMap::new(),
            keys: 0,
        }
    }
}

impl MerkleTree {
    fn offset(level: u8) -> usize {
        match level {
            0 => 0,
            1 => 1,
            2 => 1 + FANOUT as usize,
            _ => unreachable!("the leaves are not dense"),
        }
    }

    /// A key at `position` with entry hash `hash` joins the tree.
    pub fn insert(&mut self, position: u64, hash: u64) {
        self.keys += 1;
        self.add(position, hash);
    }

    /// The key at `position` now hashes to `new` instead of `old`.
    pub fn replace(&mut self, position: u64, old: u64, new: u64) {
        self.add(position, new.wrapping_sub(old));
    }

    /// The key at `position`, whose entry hash was `hash`, leaves the tree.
    pub fn remove(&mut self, position: u64, hash: u64) {
        assert!(self.keys > 0, "removing a key from an empty tree");
        self.keys -= 1;
        self.add(position, 0u64.wrapping_sub(hash));
    }

    /// Adds `delta` (wrapping) to every node on the path of `position`.
    fn add(&mut self, position: u64, delta: u64) {
        for level in 0..LEAF_LEVEL {
            let i = Self::offset(level) + index_of(level, position) as usize;
            self.upper[i] = self.upper[i].wrapping_add(delta);
        }
        let leaf = index_of(LEAF_LEVEL, position);
        let block = self
            .leaves
            .entry(leaf / FANOUT)
            .or_insert_with(|| Box::new([0; FANOUT as usize]));
        let slot = &mut block[(leaf % FANOUT) as usize];
        *slot = slot.wrapping_add(delta);
        if block.iter().all(|h| *h == 0) {
            self.leaves.remove(&(leaf / FANOUT));
        }
    }

    /// The hash of node `index` of `level` (0 for a subtree holding nothing).
    pub fn hash(&self, level: u8, index: u32) -> u64 {
        assert!(index < width(level), "node {index} is not on level {level}");
        if level < LEAF_LEVEL {
            self.upper[Self::offset(level) + index as usize]
        } else {
            self.leaves
                .get(&(index / FANOUT))
                .map_or(0, |b| b[(index % FANOUT) as usize])
        }
    }

    pub fn root(&self) -> u64 {
        self.upper[0]
    }

    /// How many keys the tree covers.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Each level sums its children: checked by the engine's invariants in tests.
    pub fn check_invariants(&self) {
        for level in 0..LEAF_LEVEL {
            for index in 0..width(level) {
                let sum = children(level, index)
                    .map(|c| self.hash(level + 1, c))
                    .fold(0u64, u64::wrapping_add);
                assert_eq!(self.hash(level, index), sum, "level {level} node {index}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_tile_the_ring_and_children_nest() {
        for level in 0..=LEAF_LEVEL {
            let mut next = 0u64;
            for index in 0..width(level) {
                let (first, last) = span(level, index);
                assert_eq!(first, next, "level {level} node {index}");
                assert_eq!(index_of(level, first), index);
                assert_eq!(index_of(level, last), index);
                next = last.wrapping_add(1);
                if level < LEAF_LEVEL {
                    let c = children(level, index);
                    assert_eq!(span(level + 1, c.start).0, first);
                    assert_eq!(span(level + 1, c.end - 1).1, last);
                }
            }
            assert_eq!(next, 0, "level {level} ends at the top of the ring");
        }
        assert_eq!(width(LEAF_LEVEL), LEAVES);
    }

    #[test]
    fn replacing_an_entry_is_adding_the_difference() {
        let mut t = MerkleTree::default();
        let p = 0xdead_beef_0000_0001;
        let a = entry_hash(b"k", b"1");
        let b = entry_hash(b"k", b"2");
        t.insert(p, a);
        t.insert(7, entry_hash(b"other", b"1"));
        t.replace(p, a, b);
        let mut u = MerkleTree::default();
        u.insert(7, entry_hash(b"other", b"1"));
        u.insert(p, b);
        assert_eq!(t, u, "the same keys and values in another order");
        t.check_invariants();
        t.remove(p, b);
        t.remove(7, entry_hash(b"other", b"1"));
        assert!(t.is_empty());
        assert_eq!(t, MerkleTree::default(), "no block of zeros is kept");
        assert_ne!(entry_hash(b"k", b""), entry_hash(b"", b"k"));
    }
}
