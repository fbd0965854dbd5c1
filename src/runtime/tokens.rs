//! Connection tokens that are also indexes, and the tables they index.
//!
//! A shard names each connection by a token unique for the life of the process; the
//! MQTT door and the broker each keep a table of the live ones by token. Hash tables
//! cost every idle connection a slot, its control byte and the table's slack (≈ 37
//! bytes at 15,000 connections, just past a doubling). A token here carries the index
//! of a slot that is reused once its connection is gone (its low [`INDEX_BITS`] bits)
//! and a serial number that is never reused (the rest), so a [`TokenTable`] is a vector
//! of one pointer per slot, and a stale token finds its slot held by another
//! connection's token, which does not match.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Bits of a token that index its slot: up to 16.7 million connections on one shard.
pub const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
// The configuration keeps a shard's connections within its slots.
const _: () = assert!(crate::config::CONNECTIONS_PER_SHARD_LIMIT as u64 <= INDEX_MASK);

/// The slot `token` indexes: below the most connections a shard may hold, and reused
/// once its connection is gone.
#[inline]
pub fn index(token: u64) -> usize {
    (token & INDEX_MASK) as usize
}

/// Hands out tokens: the lowest-numbered free slots again, each with a serial never
/// used before (2^40 of them: at 50,000 new connections a second, 250 days).
#[derive(Debug, Default)]
pub struct TokenMint {
    serial: u64,
    slots: u32,
    /// Freed slots, lowest first: the tables stay as short as the connections allow.
    free: BinaryHeap<Reverse<u32>>,
}

impl TokenMint {
    /// A new token (never 0), or `None` with every slot taken.
    pub fn mint(&mut self) -> Option<u64> {
        let slot = match self.free.pop() {
            Some(Reverse(slot)) => slot,
            None if u64::from(self.slots) <= INDEX_MASK => {
                self.slots += 1;
                self.slots - 1
            }
            None => return None,
        };
        self.serial += 1;
        Some((self.serial << INDEX_BITS) | u64::from(slot))
    }

    /// `token`'s connection is gone: its slot may be handed out again.
    pub fn release(&mut self, token: u64) {
        self.free.push(Reverse(index(token) as u32));
    }
}

/// What a [`TokenTable`] holds: something that knows its token.
pub trait Tokened {
    /// The token it is kept under.
    fn token(&self) -> u64;
}

impl<T: Tokened> Tokened for std::rc::Rc<T> {
    fn token(&self) -> u64 {
        (**self).token()
    }
}

/// Values by token, in the slots their tokens index.
#[derive(Debug)]
pub struct TokenTable<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

impl<T> Default for TokenTable<T> {
    fn default() -> Self {
        TokenTable {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Tokened> TokenTable<T> {
    /// Keeps `value` under its token; returns what its slot held (a value under
    /// another token whose removal was missed, which is then forgotten).
    pub fn insert(&mut self, value: T) -> Option<T> {
        let i = index(value.token());
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// The value under `token`.
    pub fn get(&self, token: u64) -> Option<&T> {
        self.slots
            .get(index(token))?
            .as_ref()
            .filter(|v| v.token() == token)
    }

    /// The value under `token`, to change.
    pub fn get_mut(&mut self, token: u64) -> Option<&mut T> {
        self.slots
            .get_mut(index(token))?
            .as_mut()
            .filter(|v| v.token() == token)
    }

    /// Takes the value under `token` out.
    pub fn remove(&mut self, token: u64) -> Option<T> {
        let slot = self.slots.get_mut(index(token))?;
        if slot.as_ref()?.token() != token {
            return None;
        }
        self.len -= 1;
        let value = slot.take();
        // Trailing empty slots go, so the table shrinks as a crowd leaves.
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        if self.slots.capacity() > 64 && self.slots.len() < self.slots.capacity() / 4 {
            self.slots.shrink_to(2 * self.slots.len());
        }
        value
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every value, in slot order.
    pub fn values(&self) -> impl Iterator<Item = &T> + '_ {
        self.slots.iter().flatten()
    }

    /// Every value, in slot order, to change.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        self.slots.iter_mut().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[derive(Debug, PartialEq)]
    struct V(u64);

    impl Tokened for V {
        fn token(&self) -> u64 {
            self.0
        }
    }

    #[test]
    fn tokens_are_unique_and_reuse_free_slots() {
        let mut mint = TokenMint::default();
        let a = mint.mint().unwrap();
        let b = mint.mint().unwrap();
        assert_ne!(a, 0);
        assert_eq!((index(a), index(b)), (0, 1));
        mint.release(a);
        let c = mint.mint().unwrap();
        assert_eq!(index(c), 0, "the freed slot again");
        assert_ne!(c, a, "under a new serial");
    }

    #[test]
    fn a_stale_token_finds_nothing() {
        let mut mint = TokenMint::default();
        let mut table = TokenTable::default();
        let a = mint.mint().unwrap();
        table.insert(V(a));
        assert_eq!(table.remove(a), Some(V(a)));
        mint.release(a);
        let b = mint.mint().unwrap();
        table.insert(V(b));
        assert_eq!(table.get(a), None, "a's slot holds b");
        assert_eq!(table.remove(a), None);
        assert_eq!(table.get(b), Some(&V(b)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn behaves_as_a_map_through_churn_and_shrinks() {
        let mut mint = TokenMint::default();
        let mut table = TokenTable::default();
        let mut model = HashMap::new();
        // A pseudo-random walk of opens and closes, then everyone leaves.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 3 != 0 || model.is_empty() {
                let t = mint.mint().unwrap();
                assert!(table.insert(V(t)).is_none());
                model.insert(t, ());
            } else {
                let t = *model.keys().nth((x as usize / 3) % model.len()).unwrap();
                model.remove(&t);
                assert_eq!(table.remove(t), Some(V(t)));
                mint.release(t);
            }
            assert_eq!(table.len(), model.len());
        }
        for t in model.keys() {
            assert_eq!(table.get(*t), Some(&V(*t)));
        }
        assert_eq!(table.values().count(), model.len());
        let peak = table.slots.capacity();
        for (t, ()) in model.drain() {
            assert!(table.remove(t).is_some());
        }
        assert!(table.is_empty());
        assert!(table.slots.capacity() < peak / 8, "gave its room back");
    }
}
