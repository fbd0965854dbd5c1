//! A session's subscriptions, by full filter (`$share/<group>/` prefix included).
//!
//! Most devices subscribe to one or two filters and never change them, while every
//! session, connected or not, keeps its table. Up to [`FEW`] subscriptions are a boxed
//! slice of exactly their number, searched in order, each entry 32 bytes: its options
//! and one allocation holding where it began per owner shard followed by the filter's
//! text. (A map entry of a boxed filter beside options and a boxed table of positions is
//! 48 bytes and two allocations more.) The table itself is 16 bytes in the session. Past
//! [`FEW`] it is a hash table; emptied, it is an empty slice again. A change reallocates
//! the slice: subscriptions change seldom, and never on a delivery's path.

use std::collections::HashMap;

use crate::router::ShardId;

use super::SubOptions;

/// Subscriptions kept in order in the slice at most.
pub const FEW: usize = 8;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Subscriptions(Repr);

// 16 bytes in every session: the slice's pointer doubles as the tag.
const _: () = assert!(std::mem::size_of::<Subscriptions>() == 16);

#[derive(Debug)]
enum Repr {
    Few(Box<[Entry]>),
    // Boxed: the slice's size is the table's.
    #[allow(clippy::box_collection)]
    Many(Box<HashMap<Box<str>, Kept>>),
}

/// A subscription in the hash table: its options and its starts (as in [`Entry`]).
type Kept = (SubOptions, Box<[u8]>);

impl Default for Repr {
    fn default() -> Self {
        Repr::Few(Box::default())
    }
}

/// One subscription in the slice: `text` is its start per owner shard (`from_len`
/// little-endian `u64`s) followed by the filter's UTF-8 text.
#[derive(Debug)]
struct Entry {
    text: Box<[u8]>,
    opts: SubOptions,
    from_len: u16,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 32);

impl Entry {
    fn new(filter: &str, opts: SubOptions, from: &[u64]) -> Self {
        let mut text = Vec::with_capacity(8 * from.len() + filter.len());
        text.extend(from.iter().flat_map(|v| v.to_le_bytes()));
        text.extend_from_slice(filter.as_bytes());
        Entry {
            text: text.into_boxed_slice(),
            opts,
            from_len: from_len(from),
        }
    }

    fn filter(&self) -> &str {
        let bytes = &self.text[8 * usize::from(self.from_len)..];
        // SAFETY: `new` wrote these bytes from a `&str`, and nothing changes them after.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    fn sub(&self) -> Sub<'_> {
        Sub {
            opts: self.opts,
            from: &self.text[..8 * usize::from(self.from_len)],
        }
    }
}

/// The number of positions in a start table: one per owner shard, at most
/// `SHARDS_MAX`.
fn from_len(from: &[u64]) -> u16 {
    u16::try_from(from.len()).expect("one start per shard")
}

fn from_bytes(from: &[u64]) -> Box<[u8]> {
    from.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// One subscription as the table holds it.
#[derive(Debug, Clone, Copy)]
pub struct Sub<'a> {
    /// Its options, as granted.
    pub opts: SubOptions,
    /// Where it began per owner shard, as little-endian `u64`s.
    from: &'a [u8],
}

impl Sub<'_> {
    /// The offset of `owner`'s log from which the subscription wants messages: a read
    /// from the log returns only records at or past it for the subscription that matches
    /// them. A log position, not a clock: a clock stepping back would skip messages. Set
    /// once per owner when the subscription begins; 0 for an owner it has no position
    /// for.
    pub fn from(&self, owner: ShardId) -> u64 {
        let at = 8 * owner.index();
        self.from
            .get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Where it began, for every owner shard it has a position for (index = shard).
    pub fn from_all(&self) -> Vec<u64> {
        self.from
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    }
}

impl Subscriptions {
    /// No subscriptions; allocates nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(v) => v.len(),
            Repr::Many(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The subscription to `filter`.
    pub fn get(&self, filter: &str) -> Option<Sub<'_>> {
        match &self.0 {
            Repr::Few(v) => v.iter().find(|e| e.filter() == filter).map(Entry::sub),
            Repr::Many(m) => m.get(filter).map(|(opts, from)| Sub { opts: *opts, from }),
        }
    }

    /// Whether there is a subscription to `filter`.
    pub fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// Subscribes to `filter` with `opts`, begun at `from` (per owner shard), replacing
    /// any subscription to it.
    pub fn insert(&mut self, filter: &str, opts: SubOptions, from: &[u64]) {
        if self.set(filter, |o, f| {
            *o = opts;
            *f = Some(from);
        }) {
            return;
        }
        match &mut self.0 {
            Repr::Few(v) if v.len() < FEW => {
                let mut grown = std::mem::take(v).into_vec();
                grown.reserve_exact(1);
                grown.push(Entry::new(filter, opts, from));
                *v = grown.into_boxed_slice();
            }
            Repr::Few(v) => {
                let mut m: HashMap<_, _> = std::mem::take(v)
                    .into_vec()
                    .into_iter()
                    .map(|e| {
                        let from = e.sub().from.into();
                        (Box::from(e.filter()), (e.opts, from))
                    })
                    .collect();
                m.insert(Box::from(filter), (opts, from_bytes(from)));
                self.0 = Repr::Many(Box::new(m));
            }
            Repr::Many(m) => {
                m.insert(Box::from(filter), (opts, from_bytes(from)));
            }
        }
    }

    /// Changes the options of the subscription to `filter`; false if there is none.
    pub fn set_opts(&mut self, filter: &str, opts: SubOptions) -> bool {
        self.set(filter, |o, _| *o = opts)
    }

    /// Sets where the subscription to `filter` began, per owner shard; false if there is
    /// none.
    pub fn set_from(&mut self, filter: &str, from: &[u64]) -> bool {
        self.set(filter, |_, f| *f = Some(from))
    }

    /// Runs `change` on the options of the subscription to `filter` and on a new start
    /// table it may give; false if there is none.
    fn set<'f>(
        &mut self,
        filter: &str,
        change: impl FnOnce(&mut SubOptions, &mut Option<&'f [u64]>),
    ) -> bool {
        let mut from = None;
        match &mut self.0 {
            Repr::Few(v) => {
                let Some(e) = v.iter_mut().find(|e| e.filter() == filter) else {
                    return false;
                };
                change(&mut e.opts, &mut from);
                if let Some(from) = from {
                    *e = Entry::new(filter, e.opts, from);
                }
            }
            Repr::Many(m) => {
                let Some((opts, old)) = m.get_mut(filter) else {
                    return false;
                };
                change(opts, &mut from);
                if let Some(from) = from {
                    *old = from_bytes(from);
                }
            }
        }
        true
    }

    /// Unsubscribes from `filter`; returns the options it had.
    pub fn remove(&mut self, filter: &str) -> Option<SubOptions> {
        match &mut self.0 {
            Repr::Few(v) => {
                let at = v.iter().position(|e| e.filter() == filter)?;
                let mut shrunk = std::mem::take(v).into_vec();
                let gone = shrunk.remove(at);
                *v = shrunk.into_boxed_slice();
                Some(gone.opts)
            }
            Repr::Many(m) => {
                let (opts, _) = m.remove(filter)?;
                if m.is_empty() {
                    self.0 = Repr::default();
                }
                Some(opts)
            }
        }
    }

    /// The filters.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(filter, _)| filter)
    }

    /// Every subscription with its filter.
    pub fn iter(&self) -> Iter<'_> {
        match &self.0 {
            Repr::Few(v) => Iter(IterRepr::Few(v.iter())),
            Repr::Many(m) => Iter(IterRepr::Many(m.iter())),
        }
    }
}

/// The subscriptions of a [`Subscriptions`], with their filters.
pub struct Iter<'a>(IterRepr<'a>);

enum IterRepr<'a> {
    Few(std::slice::Iter<'a, Entry>),
    Many(std::collections::hash_map::Iter<'a, Box<str>, Kept>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, Sub<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Few(it) => it.next().map(|e| (e.filter(), e.sub())),
            IterRepr::Many(it) => it
                .next()
                .map(|(filter, (opts, from))| (&**filter, Sub { opts: *opts, from })),
        }
    }
}

impl<'a> IntoIterator for &'a Subscriptions {
    type Item = (&'a str, Sub<'a>);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::QoS;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn opts(qos: u8, id: Option<u32>) -> SubOptions {
        SubOptions {
            qos: QoS::from_u8(qos).expect("0..=2"),
            no_local: id.is_some(),
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: id,
        }
    }

    #[test]
    fn a_subscription_keeps_its_filter_options_and_starts() {
        let mut subs = Subscriptions::new();
        subs.insert("$share/g/a/+", opts(1, Some(7)), &[5, 0, u64::MAX]);
        subs.insert("b/#", opts(2, None), &[]);
        let a = subs.get("$share/g/a/+").expect("subscribed");
        assert_eq!(a.opts, opts(1, Some(7)));
        assert_eq!(a.from(ShardId(0)), 5);
        assert_eq!(a.from(ShardId(2)), u64::MAX);
        assert_eq!(a.from(ShardId(3)), 0, "no position: the log's start");
        assert_eq!(a.from_all(), [5, 0, u64::MAX]);
        assert_eq!(subs.get("b/#").map(|s| s.from_all()), Some(vec![]));
        assert!(subs.get("b").is_none());
        assert!(subs.set_from("b/#", &[9]));
        assert!(subs.set_opts("b/#", opts(0, None)));
        assert!(!subs.set_opts("c", opts(0, None)));
        let b = subs.get("b/#").expect("still there");
        assert_eq!((b.opts, b.from(ShardId(0))), (opts(0, None), 9));
        assert_eq!(subs.keys().collect::<Vec<_>>(), ["$share/g/a/+", "b/#"]);
        assert_eq!(subs.remove("$share/g/a/+"), Some(opts(1, Some(7))));
        assert_eq!(subs.remove("$share/g/a/+"), None);
        assert_eq!(subs.len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, u8, Vec<u64>),
        SetOpts(usize, u8),
        SetFrom(usize, Vec<u64>),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = 0..2 * FEW + 2;
        let from = prop::collection::vec(any::<u64>(), 0..4);
        prop_oneof![
            (key.clone(), 0..3u8, from.clone()).prop_map(|(k, q, f)| Op::Insert(k, q, f)),
            (key.clone(), 0..3u8).prop_map(|(k, q)| Op::SetOpts(k, q)),
            (key.clone(), from).prop_map(|(k, f)| Op::SetFrom(k, f)),
            key.prop_map(Op::Remove),
        ]
    }

    proptest! {
        // Across the slice and the hash table and back, the table answers as a plain
        // map of filter to options and starts would.
        #[test]
        fn the_table_is_a_map(ops in prop::collection::vec(op(), 0..80)) {
            let filter = |k: usize| format!("dev/{k}/{}", "x".repeat(k));
            let mut subs = Subscriptions::new();
            let mut model: BTreeMap<String, (SubOptions, Vec<u64>)> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, q, f) => {
                        subs.insert(&filter(k), opts(q, None), &f);
                        model.insert(filter(k), (opts(q, None), f));
                    }
                    Op::SetOpts(k, q) => {
                        let had = model.get_mut(&filter(k)).map(|e| e.0 = opts(q, None));
                        prop_assert_eq!(subs.set_opts(&filter(k), opts(q, None)), had.is_some());
                    }
                    Op::SetFrom(k, f) => {
                        prop_assert_eq!(
                            subs.set_from(&filter(k), &f),
                            model.contains_key(&filter(k))
                        );
                        if let Some(e) = model.get_mut(&filter(k)) {
                            e.1 = f;
                        }
                    }
                    Op::Remove(k) => {
                        let gone = model.remove(&filter(k)).map(|e| e.0);
                        prop_assert_eq!(subs.remove(&filter(k)), gone);
                    }
                }
                prop_assert_eq!(subs.len(), model.len());
                let mut seen: Vec<(String, SubOptions, Vec<u64>)> = subs
                    .iter()
                    .map(|(f, s)| (f.to_string(), s.opts, s.from_all()))
                    .collect();
                seen.sort_by(|a, b| a.0.cmp(&b.0));
                let want: Vec<_> = model
                    .iter()
                    .map(|(f, (o, from))| (f.clone(), *o, from.clone()))
                    .collect();
                prop_assert_eq!(seen, want);
                for (f, (o, from)) in &model {
                    let s = subs.get(f).expect("in the model");
                    prop_assert_eq!(s.opts, *o);
                    prop_assert_eq!(s.from_all(), from.clone());
                }
            }
        }
    }
}
