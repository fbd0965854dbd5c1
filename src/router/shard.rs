//! Shard identities, fixed-size shard sets and topic ownership.

use std::fmt;

/// Compile-time limit on the number of shards; [`ShardSet`] is a bitset of this size.
pub const SHARDS_MAX: usize = 256;

const SET_WORDS: usize = SHARDS_MAX / 64;
const _: () = assert!(SHARDS_MAX % 64 == 0);
const _: () = assert!(SHARDS_MAX <= u16::MAX as usize + 1);

/// The index of a shard (one pinned executor), `0..shards`: the one type of a shard id in
/// the crate. A `u16`, as the WAL records store it (their encoding converts with
/// [`ShardId::to_wal`] and [`ShardId::from_wal`]). The runtime knows nothing of routing and
/// numbers its shards and mesh peers with plain `usize` indices: the server names its shard
/// with [`ShardId::from_index`] when it starts the broker, the broker names a mesh sender
/// the same way, and [`ShardId::index`] gives the index back for the mesh and for tables
/// with one entry per shard.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl ShardId {
    /// The shard with this index.
    ///
    /// # Panics
    /// If `index` is [`SHARDS_MAX`] or more (a shard count above it is rejected at
    /// startup).
    pub fn from_index(index: usize) -> Self {
        assert!(index < SHARDS_MAX, "shard {index} beyond SHARDS_MAX");
        // index < SHARDS_MAX <= u16::MAX + 1, checked at compile time above.
        ShardId(index as u16)
    }

    /// The shard's index as a `usize`, for tables with one entry per shard.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The shards `0..shards`, in order.
    pub fn all(shards: usize) -> impl ExactSizeIterator<Item = ShardId> + Clone {
        (0..shards).map(ShardId::from_index)
    }

    /// The shard id as a WAL record stores it.
    pub fn to_wal(self) -> u16 {
        self.0
    }

    /// The shard id a WAL record stored.
    pub fn from_wal(raw: u16) -> Self {
        ShardId(raw)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// As the bare index, like the plain integers shard ids were: logs and messages that
/// print a shard id with `{:?}` read as before.
impl fmt::Debug for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A set of shards as a fixed bitset: copying or clearing it never allocates.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ShardSet {
    words: [u64; SET_WORDS],
}

impl ShardSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self {
            words: [0; SET_WORDS],
        }
    }

    fn slot(shard: ShardId) -> (usize, u64) {
        let i = shard.index();
        assert!(i < SHARDS_MAX, "shard {i} beyond SHARDS_MAX");
        (i / 64, 1u64 << (i % 64))
    }

    /// Adds `shard`; true if it was not already present.
    pub fn insert(&mut self, shard: ShardId) -> bool {
        let (w, bit) = Self::slot(shard);
        let new = self.words[w] & bit == 0;
        self.words[w] |= bit;
        new
    }

    /// Removes `shard`; true if it was present.
    pub fn remove(&mut self, shard: ShardId) -> bool {
        let (w, bit) = Self::slot(shard);
        let present = self.words[w] & bit != 0;
        self.words[w] &= !bit;
        present
    }

    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: ShardId) -> bool {
        let (w, bit) = Self::slot(shard);
        self.words[w] & bit != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The number of shards in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Adds every shard of `other`.
    pub fn union_with(&mut self, other: &ShardSet) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= *b;
        }
    }

    /// Removes every shard.
    pub fn clear(&mut self) {
        self.words = [0; SET_WORDS];
    }

    /// The shards in ascending order.
    pub fn iter(&self) -> ShardSetIter {
        ShardSetIter {
            words: self.words,
            word: 0,
        }
    }
}

impl fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(|s| s.0)).finish()
    }
}

impl FromIterator<ShardId> for ShardSet {
    fn from_iter<I: IntoIterator<Item = ShardId>>(iter: I) -> Self {
        let mut set = ShardSet::new();
        for shard in iter {
            set.insert(shard);
        }
        set
    }
}

impl IntoIterator for &ShardSet {
    type Item = ShardId;
    type IntoIter = ShardSetIter;
    fn into_iter(self) -> ShardSetIter {
        self.iter()
    }
}

/// Iterator over a [`ShardSet`] in ascending order (works on a copy of the bits).
#[derive(Clone, Debug)]
pub struct ShardSetIter {
    words: [u64; SET_WORDS],
    word: usize,
}

impl Iterator for ShardSetIter {
    type Item = ShardId;
    fn next(&mut self) -> Option<ShardId> {
        while self.word < SET_WORDS {
            let w = &mut self.words[self.word];
            if *w != 0 {
                let bit = w.trailing_zeros() as usize;
                *w &= *w - 1; // clear the lowest set bit
                return Some(ShardId::from_index(self.word * 64 + bit));
            }
            self.word += 1;
        }
        None
    }
}

/// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
///
/// This value decides which shard's WAL holds a topic and which shard is a
/// client id's session home, so it must never change across versions or
/// platforms: it depends only on the bytes, never on `std`'s randomized
/// `Hasher`, pointer width or endianness. The test vectors below freeze it.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    })
}

/// The shard that owns `topic` among `shards` shards: `stable_hash(topic) mod shards`.
///
/// The same function gives a client id's session home.
///
/// # Panics
/// If `shards` is 0 or above [`SHARDS_MAX`] (a configuration bug, rejected at startup).
pub fn owner_of(topic: &str, shards: usize) -> ShardId {
    assert!(
        (1..=SHARDS_MAX).contains(&shards),
        "shard count {shards} outside 1..={SHARDS_MAX}"
    );
    // Below `shards`, so it fits a usize on every platform.
    ShardId::from_index((stable_hash(topic.as_bytes()) % shards as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_frozen_fnv1a_64() {
        // Published FNV-1a 64 vectors; changing them moves topics between WALs.
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(stable_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn owner_of_is_frozen() {
        let h = stable_hash(b"sensors/room1/temp");
        for shards in [1usize, 2, 3, 7, 64, 256] {
            assert_eq!(
                owner_of("sensors/room1/temp", shards).index() as u64,
                h % shards as u64
            );
        }
        assert_eq!(owner_of("anything", 1), ShardId(0));
        assert_eq!(
            owner_of("foobar", 7),
            ShardId::from_index((0x8594_4171_f739_67e8u64 % 7) as usize)
        );
    }

    #[test]
    #[should_panic]
    fn owner_of_rejects_zero_shards() {
        owner_of("a", 0);
    }

    #[test]
    fn shard_set_operations() {
        let mut set = ShardSet::new();
        assert!(set.is_empty());
        assert!(set.insert(ShardId(0)));
        assert!(set.insert(ShardId(63)));
        assert!(set.insert(ShardId(64)));
        assert!(set.insert(ShardId(255)));
        assert!(!set.insert(ShardId(64)));
        assert_eq!(set.len(), 4);
        assert!(set.contains(ShardId(255)));
        assert!(!set.contains(ShardId(1)));
        let ids: Vec<u16> = set.iter().map(|s| s.0).collect();
        assert_eq!(ids, vec![0, 63, 64, 255]);
        assert!(set.remove(ShardId(63)));
        assert!(!set.remove(ShardId(63)));
        let mut other: ShardSet = [ShardId(5), ShardId(0)].into_iter().collect();
        other.union_with(&set);
        assert_eq!(
            other.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![0, 5, 64, 255]
        );
        other.clear();
        assert!(other.is_empty());
        assert_eq!(other.iter().next(), None);
        assert_eq!(ShardId(7).to_string(), "7");
    }

    #[test]
    #[should_panic]
    fn shard_set_rejects_out_of_range() {
        ShardSet::new().insert(ShardId(u16::try_from(SHARDS_MAX).unwrap()));
    }
}
