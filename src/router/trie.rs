//! The subscription trie of one shard: filter -> (subscriber key -> options).

use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

use super::levels::Levels;
use super::{split_level, SmallMap};

/// Filters held by one shard's sessions, indexed level by level.
///
/// `K` identifies a subscriber (for example a session slot), `V` holds its
/// subscription options. Each node keys its literal children by level string in
/// a hash map and keeps the `+` and `#` children in their own slots, so a match
/// costs one hash lookup per level per live branch, whatever the number of
/// filters, and [`for_each_match`](Self::for_each_match) never allocates.
///
/// The trie sees only plain filters and does not keep them: a match hands out the
/// key and value only (the session that subscribed holds its filter). For shared
/// subscriptions (`$share/<group>/<filter>`) the recommended way is to encode the
/// group into the key (`K = (Option<GroupId>, SessionSlot)`): one walk then finds both
/// the ordinary subscribers and every group's members, and
/// [`for_each_at`](Self::for_each_at) lists one filter's members.
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

/// What sits under a level: most filters are a device's own topic, one subscriber and
/// nothing below, and that one is kept in its parent's table as it is (a leaf), with no
/// node and no subscriber vector of its own. A level with more subscribers or levels
/// below is a node.
enum Child<K, V> {
    Leaf(K, V),
    Node(Box<Node<K, V>>),
}

struct Node<K, V> {
    /// The levels below, boxed apart: a node with none costs 8 bytes for them.
    children: Option<Box<Children<K, V>>>,
    /// The subscribers of the filter ending here.
    subscribers: SmallMap<K, V>,
}

struct Children<K, V> {
    /// Literal children by level (one pointer each, see `levels`). Hashed with aHash: a
    /// lookup per level per publish is the hottest part of matching, and SipHash cost
    /// several times as much; aHash is still keyed per process, so clients cannot choose
    /// colliding topic levels.
    literal: Levels<Child<K, V>, LevelKeys>,
    plus: Option<Child<K, V>>,
    hash: Option<Child<K, V>>,
}

impl<K, V> Children<K, V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.plus.is_none() && self.hash.is_none()
    }
}

/// The aHash keys of every level table: drawn once per process, so a table costs no
/// 32 bytes of keys of its own (a trie has a table in every node, and most nodes are
/// one device's own filter).
#[derive(Clone, Copy, Default)]
struct LevelKeys;

impl BuildHasher for LevelKeys {
    type Hasher = ahash::AHasher;

    fn build_hasher(&self) -> ahash::AHasher {
        static KEYS: OnceLock<ahash::RandomState> = OnceLock::new();
        KEYS.get_or_init(ahash::RandomState::new).build_hasher()
    }
}

impl<K: Eq + Hash, V> Child<K, V> {
    /// The node below this level, made from a leaf if need be (a second subscriber, or
    /// a longer filter through it).
    fn node_mut(&mut self) -> &mut Node<K, V> {
        if let Child::Leaf(..) = self {
            let Child::Leaf(key, value) = std::mem::replace(self, Child::Node(Box::default()))
            else {
                unreachable!("matched a leaf just above");
            };
            if let Child::Node(node) = self {
                node.subscribers.insert(key, value);
            }
        }
        match self {
            Child::Node(node) => node,
            Child::Leaf(..) => unreachable!("made a node just above"),
        }
    }

    /// The node below this level when it is one.
    fn node(&self) -> Option<&Node<K, V>> {
        match self {
            Child::Node(node) => Some(node),
            Child::Leaf(..) => None,
        }
    }

    /// Adds or replaces `key`'s subscription ending at this level.
    fn put(&mut self, key: K, value: V) -> Option<V> {
        if let Child::Leaf(k, v) = self {
            if *k == key {
                return Some(std::mem::replace(v, value));
            }
        }
        self.node_mut().subscribers.insert(key, value)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        match self {
            Child::Leaf(k, v) => (k == key).then_some(v),
            Child::Node(node) => node.subscribers.get_mut(key),
        }
    }

    fn subscriber_count(&self) -> usize {
        match self {
            Child::Leaf(..) => 1,
            Child::Node(node) => node.subscribers.len(),
        }
    }

    fn for_each_subscriber(&self, f: &mut dyn FnMut(&K, &V)) {
        match self {
            Child::Leaf(key, value) => f(key, value),
            Child::Node(node) => node.subscribers.iter().for_each(|(k, v)| f(k, v)),
        }
    }

    /// After a removal at or below this level: true when nothing is left (the caller
    /// drops it); a node left with one subscriber and nothing below becomes a leaf again
    /// (a device that resubscribed keeps costing what it did).
    fn settle(&mut self) -> bool {
        let Child::Node(node) = self else {
            return false;
        };
        if node.children.is_some() || node.subscribers.len() > 1 {
            return false;
        }
        match std::mem::take(&mut node.subscribers).into_iter().next() {
            Some((key, value)) => {
                *self = Child::Leaf(key, value);
                false
            }
            None => true,
        }
    }
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            children: None,
            subscribers: SmallMap::default(),
        }
    }
}

impl<K: Eq + Hash, V> Node<K, V> {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.children.is_none()
    }

    /// The child for `level`, if present.
    fn child(&self, level: &str) -> Option<&Child<K, V>> {
        let children = self.children.as_deref()?;
        match level {
            "+" => children.plus.as_ref(),
            "#" => children.hash.as_ref(),
            _ => children.literal.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Child<K, V>> {
        let children = self.children.as_deref_mut()?;
        match level {
            "+" => children.plus.as_mut(),
            "#" => children.hash.as_mut(),
            _ => children.literal.get_mut(level),
        }
    }

    /// Puts `child` under `level`, which holds none.
    fn add_child(&mut self, level: &str, child: Child<K, V>) {
        let children = self.children.get_or_insert_with(|| {
            Box::new(Children {
                literal: Levels::default(),
                plus: None,
                hash: None,
            })
        });
        match level {
            "+" => children.plus = Some(child),
            "#" => children.hash = Some(child),
            _ => {
                children.literal.insert_new(level, child);
            }
        }
    }

    /// Takes the child for `level` out, and the children's box once it holds none.
    fn take_child(&mut self, level: &str) -> Option<Child<K, V>> {
        let children = self.children.as_deref_mut()?;
        let child = match level {
            "+" => children.plus.take(),
            "#" => children.hash.take(),
            _ => children.literal.remove(level),
        };
        if children.is_empty() {
            self.children = None;
        }
        child
    }

    /// The node under `level`, added or made from a leaf if need be.
    fn node_below(&mut self, level: &str) -> &mut Node<K, V> {
        if self.child(level).is_none() {
            self.add_child(level, Child::Node(Box::default()));
        }
        self.child_mut(level)
            .expect("present: added just above")
            .node_mut()
    }
}

impl<K: Eq + Hash, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }

    /// Subscribes `key` to the plain, validated `filter`; returns the replaced value if `key` already held it.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let (mut level, mut rest) = split_level(filter);
        while let Some(levels) = rest {
            node = node.node_below(level);
            (level, rest) = split_level(levels);
        }
        let old = match node.child_mut(level) {
            Some(child) => child.put(key, value),
            None => {
                node.add_child(level, Child::Leaf(key, value));
                None
            }
        };
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Unsubscribes `key` from `filter`, pruning what is left empty; returns its value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let removed = remove_below(&mut self.root, filter, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The options `key` holds for `filter`, for in-place updates.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        self.child_mut(filter)?.get_mut(key)
    }

    /// Calls `f(key, value)` for every subscription whose filter matches the topic name
    /// `topic`. Allocates nothing.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&K, &V)) {
        let dollar = topic.starts_with('$');
        match_at(&self.root, topic, dollar, &mut f);
    }

    /// Calls `f(key, value)` for every subscription to exactly `filter`.
    pub fn for_each_at(&self, filter: &str, mut f: impl FnMut(&K, &V)) {
        if let Some(child) = self.child(filter) {
            child.for_each_subscriber(&mut f);
        }
    }

    /// How many keys subscribe to exactly `filter`.
    pub fn subscriber_count(&self, filter: &str) -> usize {
        self.child(filter).map_or(0, Child::subscriber_count)
    }

    /// The number of (filter, key) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What ends at `filter`'s last level.
    fn child(&self, filter: &str) -> Option<&Child<K, V>> {
        let mut node = &self.root;
        let (mut level, mut rest) = split_level(filter);
        while let Some(levels) = rest {
            node = node.child(level)?.node()?;
            (level, rest) = split_level(levels);
        }
        node.child(level)
    }

    fn child_mut(&mut self, filter: &str) -> Option<&mut Child<K, V>> {
        let mut node = &mut self.root;
        let (mut level, mut rest) = split_level(filter);
        while let Some(levels) = rest {
            node = match node.child_mut(level)? {
                Child::Node(node) => node,
                Child::Leaf(..) => return None,
            };
            (level, rest) = split_level(levels);
        }
        node.child_mut(level)
    }
}

/// Removes `key`'s subscription to `levels` below `node`, pruning children that end up
/// empty and turning a node back into a leaf where one subscriber is all that is left.
/// Recursion depth is bounded by the filter's level count (`topic_levels_max`).
fn remove_below<K: Eq + Hash, V>(node: &mut Node<K, V>, levels: &str, key: &K) -> Option<V> {
    let (level, rest) = split_level(levels);
    let child = node.child_mut(level)?;
    let removed = match (rest, &mut *child) {
        (None, Child::Leaf(k, _)) if k == key => {
            let Some(Child::Leaf(_, value)) = node.take_child(level) else {
                unreachable!("the leaf matched just above");
            };
            return Some(value);
        }
        (None, Child::Leaf(..)) | (Some(_), Child::Leaf(..)) => return None,
        (None, Child::Node(below)) => below.subscribers.remove(key)?,
        (Some(rest), Child::Node(below)) => remove_below(below, rest, key)?,
    };
    if child.settle() {
        node.take_child(level);
    }
    Some(removed)
}

/// Visits the subscriptions below `node` matching the topic levels in `rest`.
/// `dollar_first` is true only at the root of a `$`-topic, where wildcards must not match.
fn match_at<K, V>(node: &Node<K, V>, rest: &str, dollar_first: bool, f: &mut dyn FnMut(&K, &V))
where
    K: Eq + Hash,
{
    let Some(children) = node.children.as_deref() else {
        return;
    };
    let (level, tail) = split_level(rest);
    if !dollar_first {
        if let Some(hash) = &children.hash {
            hash.for_each_subscriber(f);
        }
        if let Some(plus) = &children.plus {
            descend(plus, tail, f);
        }
    }
    if let Some(child) = children.literal.get(level) {
        descend(child, tail, f);
    }
}

fn descend<K: Eq + Hash, V>(child: &Child<K, V>, tail: Option<&str>, f: &mut dyn FnMut(&K, &V)) {
    match (tail, child) {
        (Some(rest), Child::Node(node)) => match_at(node, rest, false, f),
        (Some(_), Child::Leaf(..)) => {}
        (None, _) => {
            child.for_each_subscriber(f);
            // "a/#" also matches "a": the parent level.
            let hash = child
                .node()
                .and_then(|n| n.children.as_deref()?.hash.as_ref());
            if let Some(hash) = hash {
                hash.for_each_subscriber(f);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::filter_matches;
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn a_device_filter_costs_its_parent_table_one_leaf() {
        // A session key and its options (12 bytes, aligned to 4, as a subscription's
        // are) beside the level's key: no node, no vector.
        type Broker = Child<u64, [u32; 3]>;
        assert_eq!(std::mem::size_of::<Broker>(), 24);
        // With its level inline: mimalloc's 48-byte size class.
        assert_eq!(super::super::levels::entry_size::<Broker>(), 48);
        // An interest table's plain filter: its shard set alone.
        type Plain = Child<(), super::super::ShardSet>;
        assert_eq!(std::mem::size_of::<Plain>(), 40);
        assert_eq!(super::super::levels::entry_size::<Plain>(), 64);
    }

    /// The trie under test: a subscriber's value names its filter, so a match says which
    /// filter it came by.
    type Trie = SubscriptionTrie<u32, (String, u8)>;

    fn matches(trie: &Trie, topic: &str) -> BTreeSet<(String, u32, u8)> {
        let mut out = BTreeSet::new();
        trie.for_each_match(topic, |k, (f, v)| {
            assert!(out.insert((f.clone(), *k, *v)), "duplicate {f} {k}");
        });
        out
    }

    fn put(trie: &mut Trie, filter: &str, key: u32, value: u8) -> Option<u8> {
        trie.insert(filter, key, (filter.to_string(), value))
            .map(|(_, v)| v)
    }

    #[test]
    fn insert_replace_remove() {
        let mut trie = Trie::new();
        assert_eq!(put(&mut trie, "a/+", 1, 0), None);
        assert_eq!(put(&mut trie, "a/+", 1, 2), Some(0));
        assert_eq!(put(&mut trie, "a/+", 2, 1), None);
        assert_eq!(put(&mut trie, "#", 3, 0), None);
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.subscriber_count("a/+"), 2);
        assert_eq!(trie.subscriber_count("a"), 0);
        trie.get_mut("#", &3).expect("present").1 = 9;
        let got = matches(&trie, "a/b");
        let want: BTreeSet<_> = [
            ("#".into(), 3, 9),
            ("a/+".into(), 1, 2),
            ("a/+".into(), 2, 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
        assert_eq!(trie.remove("a/+", &1).map(|v| v.1), Some(2));
        assert_eq!(trie.remove("a/+", &1), None);
        assert_eq!(trie.remove("a/b", &2), None);
        assert_eq!(trie.remove("a/+", &2).map(|v| v.1), Some(1));
        assert_eq!(trie.remove("#", &3).map(|v| v.1), Some(9));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn a_leaf_becomes_a_node_and_back() {
        let mut trie = Trie::new();
        put(&mut trie, "dev/1", 1, 0);
        put(&mut trie, "dev/1", 2, 0);
        put(&mut trie, "dev/1/x", 3, 0);
        let child = |t: &Trie| match t.child("dev/1") {
            Some(Child::Leaf(k, _)) => format!("leaf {k}"),
            Some(Child::Node(n)) => format!("node {}", n.subscribers.len()),
            None => "none".into(),
        };
        assert_eq!(child(&trie), "node 2");
        assert_eq!(trie.remove("dev/1/x", &3).map(|v| v.1), Some(0));
        assert_eq!(child(&trie), "node 2", "two subscribers stay a node");
        assert!(trie.remove("dev/1", &1).is_some());
        assert_eq!(
            child(&trie),
            "leaf 2",
            "one subscriber, nothing below: a leaf"
        );
        put(&mut trie, "dev/1/x", 3, 0);
        assert!(trie.remove("dev/1", &2).is_some());
        assert_eq!(child(&trie), "node 0", "a level through to another filter");
        assert_eq!(trie.subscriber_count("dev/1/x"), 1);
        assert!(trie.remove("dev/1/x", &3).is_some());
        assert_eq!(child(&trie), "none");
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn a_filter_outgrows_its_few_subscribers_and_keeps_them_all() {
        let mut trie = Trie::new();
        let n = super::super::small_map::FEW as u32 * 3;
        for key in 0..n {
            assert_eq!(put(&mut trie, "a/b", key, 0), None);
            assert_eq!(
                put(&mut trie, "a/b", key, key as u8),
                Some(0),
                "replaced in place"
            );
            assert_eq!(trie.subscriber_count("a/b"), key as usize + 1);
        }
        put(&mut trie, "a/+", 0, 1);
        trie.get_mut("a/b", &(n - 1)).expect("present").1 = 200;
        let got = matches(&trie, "a/b");
        assert_eq!(got.len(), n as usize + 1);
        assert!(got.contains(&("a/b".into(), n - 1, 200)));
        assert!(got.contains(&("a/b".into(), 3, 3)));
        let mut at = Vec::new();
        trie.for_each_at("a/b", |k, _| at.push(*k));
        at.sort_unstable();
        assert_eq!(at, (0..n).collect::<Vec<_>>(), "exactly the filter's own");
        for key in 0..n {
            assert!(trie.remove("a/b", &key).is_some());
            assert_eq!(trie.subscriber_count("a/b"), (n - key - 1) as usize);
        }
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.remove("a/+", &0).map(|v| v.1), Some(1));
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn dollar_and_parent_rules() {
        let mut trie = Trie::new();
        for (i, f) in ["#", "+/x", "$SYS/#", "a/#", "+"].iter().enumerate() {
            put(&mut trie, f, i as u32, 0);
        }
        let keys = |t: &str| {
            let mut keys: Vec<u32> = matches(&trie, t).into_iter().map(|m| m.1).collect();
            keys.sort_unstable();
            keys
        };
        assert_eq!(keys("$SYS/x"), vec![2]);
        assert_eq!(keys("$SYS"), vec![2]);
        assert_eq!(keys("a"), vec![0, 3, 4]);
        assert_eq!(keys("/x"), vec![0, 1]);
    }

    #[test]
    fn many_filters_match_only_their_branch() {
        let mut trie = SubscriptionTrie::new();
        for i in 0..100_000u32 {
            trie.insert(&format!("dev/{i}/temp"), i, 0u8);
        }
        trie.insert("dev/+/temp", 100_000, 0);
        trie.insert("dev/#", 100_001, 0);
        assert_eq!(trie.len(), 100_002);
        let keys = |t: &str| {
            let mut keys = Vec::new();
            trie.for_each_match(t, |k, _| keys.push(*k));
            keys.sort_unstable();
            keys
        };
        assert_eq!(keys("dev/4242/temp"), vec![4242, 100_000, 100_001]);
        assert_eq!(keys("dev/4242"), vec![100_001]);
        assert_eq!(keys("dev/x/temp"), vec![100_000, 100_001]);
        assert_eq!(keys("other/1/temp"), Vec::<u32>::new());
    }

    const LEVELS: &[&str] = &["a", "b", "$x", ""];

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(LEVELS), 1..5).prop_map(|l| l.join("/"))
    }

    /// Filters over a tiny alphabet so that random topics often match them.
    pub(crate) fn filter_strategy() -> impl Strategy<Value = String> {
        let level = prop::sample::select(&["a", "b", "$x", "", "+"][..]);
        (prop::collection::vec(level, 0..4), any::<bool>()).prop_filter_map(
            "empty filter",
            |(mut levels, hash)| {
                if hash {
                    levels.push("#");
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            },
        )
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(String, u32, u8),
        Remove(String, u32),
        Update(String, u32, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Few keys, so that filters gain and lose second subscribers (leaf to node and
        // back) and levels gain and lose filters below them.
        let key = 0u32..3;
        prop_oneof![
            5 => (filter_strategy(), key.clone(), any::<u8>()).prop_map(|(f, k, v)| Op::Insert(f, k, v)),
            4 => (filter_strategy(), key.clone()).prop_map(|(f, k)| Op::Remove(f, k)),
            1 => (filter_strategy(), key, any::<u8>()).prop_map(|(f, k, v)| Op::Update(f, k, v)),
        ]
    }

    proptest! {
        /// Whatever is subscribed, replaced and unsubscribed in whatever order, the trie
        /// answers as a plain map of (filter, key) does, and keeps nothing once empty.
        #[test]
        fn trie_agrees_with_filter_matches(
            ops in prop::collection::vec(op(), 0..80),
            topics in prop::collection::vec(topic_strategy(), 1..20),
        ) {
            let mut trie = Trie::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(f, k, v) => prop_assert_eq!(
                        put(&mut trie, &f, k, v),
                        model.insert((f.clone(), k), v)
                    ),
                    Op::Remove(f, k) => prop_assert_eq!(
                        trie.remove(&f, &k).map(|v| v.1),
                        model.remove(&(f.clone(), k))
                    ),
                    Op::Update(f, k, v) => {
                        let got = trie.get_mut(&f, &k).map(|held| std::mem::replace(&mut held.1, v));
                        let want = model.get_mut(&(f.clone(), k)).map(|held| std::mem::replace(held, v));
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(trie.len(), model.len());
            }
            for topic in &topics {
                let got = matches(&trie, topic);
                let want: BTreeSet<_> = model
                    .iter()
                    .filter(|((f, _), _)| filter_matches(f, topic))
                    .map(|((f, k), v)| (f.clone(), *k, *v))
                    .collect();
                prop_assert_eq!(got, want, "topic {:?}", topic);
            }
            for ((f, _), _) in model.iter() {
                let mut at = BTreeSet::new();
                trie.for_each_at(f, |k, (held, _)| {
                    assert_eq!(held, f);
                    at.insert(*k);
                });
                let want: BTreeSet<u32> = model.keys().filter(|(g, _)| g == f).map(|(_, k)| *k).collect();
                prop_assert_eq!(trie.subscriber_count(f), want.len());
                prop_assert_eq!(at, want);
            }
            let keys: Vec<_> = model.keys().cloned().collect();
            for (f, k) in keys {
                prop_assert!(trie.remove(&f, &k).is_some());
            }
            prop_assert!(trie.is_empty());
            prop_assert!(trie.root.is_empty(), "empty nodes are pruned");
        }
    }
}
