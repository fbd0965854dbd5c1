//! A trie node's literal children: a hash table of one pointer per child, each child
//! boxed with its level's text beside it.
//!
//! The widest level of a trie is the devices' own: one child per device, a leaf. In a
//! `HashMap<Box<str>, Child>` each costs its 40-byte slot and control byte divided by
//! how full the table is (7/8 at best, 7/16 just past a doubling: 94 bytes then), and
//! the level's text in an allocation of its own. Here a slot is a pointer: the table
//! costs 9 bytes a child divided by its fullness, and the child with its level (inline
//! up to [`INLINE`] bytes) is one allocation of 48 bytes. A lookup reads the same two
//! places as before: the table, then the box holding the text it compares.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Level texts up to this long are kept inline (a device's id, a word); longer ones
/// are boxed apart.
pub(super) const INLINE: usize = 22;

/// Children by level text, hashed with `S`.
pub(super) struct Levels<C, S> {
    table: HashTable<Box<Entry<C>>>,
    hasher: S,
}

struct Entry<C> {
    level: Level,
    child: C,
}

/// A level's text.
enum Level {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<str>),
}

// A level costs 24 bytes inline or boxed: beside a 24-byte child, the entry fills
// mimalloc's 48-byte size class.
const _: () = assert!(std::mem::size_of::<Level>() == 24);

impl Level {
    fn new(text: &str) -> Self {
        if text.len() <= INLINE {
            let mut bytes = [0; INLINE];
            bytes[..text.len()].copy_from_slice(text.as_bytes());
            Level::Inline {
                len: text.len() as u8,
                bytes,
            }
        } else {
            Level::Boxed(Box::from(text))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Level::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Level::Boxed(text) => text.as_bytes(),
        }
    }
}

impl<C, S: Default> Default for Levels<C, S> {
    fn default() -> Self {
        Levels {
            table: HashTable::new(),
            hasher: S::default(),
        }
    }
}

impl<C, S: BuildHasher> Levels<C, S> {
    fn hash(&self, level: &[u8]) -> u64 {
        self.hasher.hash_one(level)
    }

    /// The child under `level`.
    pub(super) fn get(&self, level: &str) -> Option<&C> {
        let level = level.as_bytes();
        self.table
            .find(self.hash(level), |e| e.level.as_bytes() == level)
            .map(|e| &e.child)
    }

    /// The child under `level`, to change.
    pub(super) fn get_mut(&mut self, level: &str) -> Option<&mut C> {
        let level = level.as_bytes();
        let hash = self.hash(level);
        self.table
            .find_mut(hash, |e| e.level.as_bytes() == level)
            .map(|e| &mut e.child)
    }

    /// Puts `child` under `level`, which holds none.
    pub(super) fn insert_new(&mut self, level: &str, child: C) {
        debug_assert!(self.get(level).is_none(), "{level:?} holds a child already");
        let hash = self.hash(level.as_bytes());
        let entry = Box::new(Entry {
            level: Level::new(level),
            child,
        });
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, entry, |e| hasher.hash_one(e.level.as_bytes()));
    }

    /// Takes the child under `level` out.
    pub(super) fn remove(&mut self, level: &str) -> Option<C> {
        let level = level.as_bytes();
        let hash = self.hash(level);
        let found = self
            .table
            .find_entry(hash, |e| e.level.as_bytes() == level)
            .ok()?;
        let (entry, _) = found.remove();
        Some(entry.child)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// What one child costs in its box.
#[cfg(test)]
pub(super) fn entry_size<C>() -> usize {
    std::mem::size_of::<Entry<C>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Fixed;

    impl BuildHasher for Fixed {
        type Hasher = std::collections::hash_map::DefaultHasher;
        fn build_hasher(&self) -> Self::Hasher {
            std::collections::hash_map::DefaultHasher::new()
        }
    }

    #[test]
    fn short_and_long_levels_behave_as_a_map() {
        let mut levels: Levels<u32, Fixed> = Levels::default();
        let mut model = HashMap::new();
        let long = "x".repeat(INLINE + 1);
        let names: Vec<String> = (0..2_000)
            .map(|i| match i % 4 {
                0 => format!("dev-{i}"),
                1 => format!("{long}{i}"),
                2 => "é".repeat(i % 15),
                _ => "y".repeat(INLINE - (i % 3)) + &i.to_string(),
            })
            .collect();
        for (i, name) in names.iter().enumerate() {
            if model.contains_key(name) {
                continue;
            }
            levels.insert_new(name, i as u32);
            model.insert(name.clone(), i as u32);
        }
        for (name, v) in &model {
            assert_eq!(levels.get(name), Some(v), "{name:?}");
        }
        assert_eq!(levels.get(""), model.get(""));
        assert_eq!(levels.get("dev-"), None);
        assert_eq!(levels.get(&long), None, "a prefix of a longer level");
        *levels.get_mut("dev-4").unwrap() += 1;
        assert_eq!(levels.get("dev-4"), Some(&5));
        for name in model.keys() {
            assert!(levels.remove(name).is_some(), "{name:?}");
            assert_eq!(levels.get(name), None);
        }
        assert!(levels.is_empty());
        assert_eq!(levels.remove("dev-4"), None);
    }
}
