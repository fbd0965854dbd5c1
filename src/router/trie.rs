//! The subscription trie of one shard: filter -> (subscriber key -> options).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::rc::Rc;
use std::sync::OnceLock;

use super::{split_level, SmallMap};

/// Filters held by one shard's sessions, indexed level by level.
///
/// `K` identifies a subscriber (for example a session slot), `V` holds its
/// subscription options. Each node keys its literal children by level string in
/// a hash map and keeps the `+` and `#` children in their own slots, so a match
/// costs one hash lookup per level per live branch, whatever the number of
/// filters, and [`for_each_match`](Self::for_each_match) never allocates.
///
/// The trie sees only plain filters. For shared subscriptions
/// (`$share/<group>/<filter>`) the recommended way is to encode the group into
/// the key (`K = (Option<GroupId>, SessionSlot)`): one walk then finds both the
/// ordinary subscribers and every group's members, and the caller picks one
/// member per group from what the walk reports.
///
/// The filter is stored once per node as an `Rc<str>`, so the trie is `!Send`:
/// it belongs to exactly one shard.
pub struct SubscriptionTrie<K, V> {
    root: Node<K, V>,
    len: usize,
    /// Whether each node keeps its filter to hand out with its matches; `None` for a
    /// trie made [`without_filters`](SubscriptionTrie::without_filters), which hands out
    /// this empty one instead.
    no_filter: Option<Rc<str>>,
}

struct Node<K, V> {
    /// The levels below, boxed apart: most nodes are leaves (a device's own topic), and a
    /// leaf then costs its parent's table 48 bytes a slot rather than 96.
    children: Option<Box<Children<K, V>>>,
    /// The full filter ending at this node; set while `subscribers` is non-empty.
    filter: Option<Rc<str>>,
    /// A filter's subscribers: most have one (a device's own topic).
    subscribers: SmallMap<K, V>,
}

struct Children<K, V> {
    /// Literal children by level. Hashed with aHash: a lookup per level per publish is the
    /// hottest part of matching, and SipHash cost several times as much; aHash is still
    /// keyed per process, so clients cannot choose colliding topic levels.
    literal: HashMap<Box<str>, Node<K, V>, LevelKeys>,
    plus: Option<Box<Node<K, V>>>,
    hash: Option<Box<Node<K, V>>>,
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

impl<K: Eq + Hash, V> Node<K, V> {
    fn new() -> Self {
        Self {
            children: None,
            filter: None,
            subscribers: SmallMap::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.subscribers.is_empty() && self.children.is_none()
    }

    /// The child for `level`, if present (read-only walk).
    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        let children = self.children.as_deref()?;
        match level {
            "+" => children.plus.as_deref(),
            "#" => children.hash.as_deref(),
            _ => children.literal.get(level),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        let children = self.children.as_deref_mut()?;
        match level {
            "+" => children.plus.as_deref_mut(),
            "#" => children.hash.as_deref_mut(),
            _ => children.literal.get_mut(level),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        let children = self.children.get_or_insert_with(|| {
            Box::new(Children {
                literal: HashMap::default(),
                plus: None,
                hash: None,
            })
        });
        match level {
            "+" => children.plus.get_or_insert_with(|| Box::new(Node::new())),
            "#" => children.hash.get_or_insert_with(|| Box::new(Node::new())),
            _ => children
                .literal
                .entry(Box::from(level))
                .or_insert_with(Node::new),
        }
    }

    /// Drops the child for `level`, and the children's box once it holds none.
    fn drop_child(&mut self, level: &str) {
        let Some(children) = self.children.as_deref_mut() else {
            return;
        };
        match level {
            "+" => children.plus = None,
            "#" => children.hash = None,
            _ => {
                children.literal.remove(level);
            }
        }
        if children.is_empty() {
            self.children = None;
        }
    }
}

impl<K: Eq + Hash + Clone, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
            no_filter: None,
        }
    }

    /// An empty trie whose matches come without their filter (an empty one is handed
    /// out): for a caller that needs only the keys, a filter's own copy of its text is
    /// most of what a device's one subscription costs the trie.
    pub fn without_filters() -> Self {
        Self {
            no_filter: Some(Rc::from("")),
            ..Self::new()
        }
    }

    /// Subscribes `key` to the plain, validated `filter`; returns the replaced value if `key` already held it.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut rest = Some(filter);
        while let Some(levels) = rest {
            let (level, tail) = split_level(levels);
            node = node.child_or_insert(level);
            rest = tail;
        }
        if node.filter.is_none() && self.no_filter.is_none() {
            node.filter = Some(Rc::from(filter));
        }
        let old = node.subscribers.insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Unsubscribes `key` from `filter`, pruning nodes left empty; returns its value.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let removed = remove_at(&mut self.root, Some(filter), key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The options `key` holds for `filter`, for in-place updates.
    pub fn get_mut(&mut self, filter: &str, key: &K) -> Option<&mut V> {
        self.node_mut(filter)?.subscribers.get_mut(key)
    }

    /// Calls `f(filter, key, value)` for every subscription whose filter matches
    /// the topic name `topic` (`filter` is empty in a trie made
    /// [`without_filters`](Self::without_filters)). Allocates nothing.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        self.for_each_match_rc(topic, &mut |filter, key, value| f(filter, key, value));
    }

    /// As [`for_each_match`](Self::for_each_match), handing out the shared filter handle.
    pub(crate) fn for_each_match_rc(&self, topic: &str, f: &mut dyn FnMut(&Rc<str>, &K, &V)) {
        let dollar = topic.starts_with('$');
        let mut visit = Visit {
            no_filter: self.no_filter.as_ref(),
            f,
        };
        match_at(&self.root, topic, dollar, &mut visit);
    }

    /// How many keys subscribe to exactly `filter`.
    pub fn subscriber_count(&self, filter: &str) -> usize {
        self.node(filter).map_or(0, |n| n.subscribers.len())
    }

    /// The number of (filter, key) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn node(&self, filter: &str) -> Option<&Node<K, V>> {
        let mut node = &self.root;
        let mut rest = Some(filter);
        while let Some(levels) = rest {
            let (level, tail) = split_level(levels);
            node = node.child(level)?;
            rest = tail;
        }
        Some(node)
    }

    fn node_mut(&mut self, filter: &str) -> Option<&mut Node<K, V>> {
        let mut node = &mut self.root;
        let mut rest = Some(filter);
        while let Some(levels) = rest {
            let (level, tail) = split_level(levels);
            node = node.child_mut(level)?;
            rest = tail;
        }
        Some(node)
    }
}

/// Removes `key` below `node` along `rest`, dropping children that end up empty.
/// Recursion depth is bounded by the filter's level count (`topic_levels_max`).
fn remove_at<K: Eq + Hash, V>(node: &mut Node<K, V>, rest: Option<&str>, key: &K) -> Option<V> {
    let Some(levels) = rest else {
        let removed = node.subscribers.remove(key);
        if node.subscribers.is_empty() {
            node.filter = None;
        }
        return removed;
    };
    let (level, tail) = split_level(levels);
    let child = node.child_mut(level)?;
    let removed = remove_at(child, tail, key);
    if child.is_empty() {
        node.drop_child(level);
    }
    removed
}

/// What a match walk hands each matching subscription to.
struct Visit<'a, 'f, K, V> {
    /// The filter handed out by a trie without filters.
    no_filter: Option<&'a Rc<str>>,
    f: &'f mut dyn FnMut(&Rc<str>, &K, &V),
}

fn emit<K: Eq + Hash, V>(node: &Node<K, V>, visit: &mut Visit<'_, '_, K, V>) {
    let Some(filter) = node.filter.as_ref().or(visit.no_filter) else {
        return;
    };
    let f = &mut *visit.f;
    node.subscribers
        .iter()
        .for_each(|(key, value)| f(filter, key, value));
}

/// Visits the subscriptions below `node` matching the topic levels in `rest`.
/// `dollar_first` is true only at the root of a `$`-topic, where wildcards must not match.
fn match_at<K: Eq + Hash, V>(
    node: &Node<K, V>,
    rest: &str,
    dollar_first: bool,
    visit: &mut Visit<'_, '_, K, V>,
) {
    let Some(children) = node.children.as_deref() else {
        return;
    };
    let (level, tail) = split_level(rest);
    if !dollar_first {
        if let Some(hash) = &children.hash {
            emit(hash, visit);
        }
        if let Some(plus) = &children.plus {
            descend(plus, tail, visit);
        }
    }
    if let Some(child) = children.literal.get(level) {
        descend(child, tail, visit);
    }
}

fn descend<K: Eq + Hash, V>(
    node: &Node<K, V>,
    tail: Option<&str>,
    visit: &mut Visit<'_, '_, K, V>,
) {
    match tail {
        Some(rest) => match_at(node, rest, false, visit),
        None => {
            emit(node, visit);
            // "a/#" also matches "a": the parent level.
            if let Some(hash) = node.children.as_deref().and_then(|c| c.hash.as_deref()) {
                emit(hash, visit);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::filter_matches;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_leaf_costs_its_parent_table_48_bytes() {
        // The table slot of a device's own filter: children boxed apart, the filter, the
        // subscribers' vector.
        assert_eq!(std::mem::size_of::<Node<u64, u64>>(), 48);
    }

    fn matches(trie: &SubscriptionTrie<u32, u8>, topic: &str) -> BTreeSet<(String, u32, u8)> {
        let mut out = BTreeSet::new();
        trie.for_each_match(topic, |f, k, v| {
            assert!(out.insert((f.to_string(), *k, *v)), "duplicate {f} {k}");
        });
        out
    }

    #[test]
    fn insert_replace_remove() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert("a/+", 1u32, 0u8), None);
        assert_eq!(trie.insert("a/+", 1, 2), Some(0));
        assert_eq!(trie.insert("a/+", 2, 1), None);
        assert_eq!(trie.insert("#", 3, 0), None);
        assert_eq!(trie.len(), 3);
        assert_eq!(trie.subscriber_count("a/+"), 2);
        assert_eq!(trie.subscriber_count("a"), 0);
        *trie.get_mut("#", &3).expect("present") = 9;
        let got = matches(&trie, "a/b");
        let want: BTreeSet<_> = [
            ("#".into(), 3, 9),
            ("a/+".into(), 1, 2),
            ("a/+".into(), 2, 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(got, want);
        assert_eq!(trie.remove("a/+", &1), Some(2));
        assert_eq!(trie.remove("a/+", &1), None);
        assert_eq!(trie.remove("a/b", &2), None);
        assert_eq!(trie.remove("a/+", &2), Some(1));
        assert_eq!(trie.remove("#", &3), Some(9));
        assert!(trie.is_empty());
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn a_filter_outgrows_its_few_subscribers_and_keeps_them_all() {
        let mut trie = SubscriptionTrie::new();
        let n = super::super::small_map::FEW as u32 * 3;
        for key in 0..n {
            assert_eq!(trie.insert("a/b", key, 0u8), None);
            assert_eq!(
                trie.insert("a/b", key, key as u8),
                Some(0),
                "replaced in place"
            );
            assert_eq!(trie.subscriber_count("a/b"), key as usize + 1);
        }
        trie.insert("a/+", 0, 1);
        *trie.get_mut("a/b", &(n - 1)).expect("present") = 200;
        let got = matches(&trie, "a/b");
        assert_eq!(got.len(), n as usize + 1);
        assert!(got.contains(&("a/b".into(), n - 1, 200)));
        assert!(got.contains(&("a/b".into(), 3, 3)));
        for key in 0..n {
            assert!(trie.remove("a/b", &key).is_some());
            assert_eq!(trie.subscriber_count("a/b"), (n - key - 1) as usize);
        }
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.remove("a/+", &0), Some(1));
        assert!(trie.root.is_empty(), "empty nodes are pruned");
    }

    #[test]
    fn dollar_and_parent_rules() {
        let mut trie = SubscriptionTrie::new();
        for (i, f) in ["#", "+/x", "$SYS/#", "a/#", "+"].iter().enumerate() {
            trie.insert(f, i as u32, 0u8);
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
            let mut keys: Vec<u32> = matches(&trie, t).into_iter().map(|m| m.1).collect();
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

    proptest! {
        #[test]
        fn trie_agrees_with_filter_matches(
            subs in prop::collection::vec((filter_strategy(), 0u32..4), 0..40),
            removals in prop::collection::vec(0usize..40, 0..10),
            topics in prop::collection::vec(topic_strategy(), 1..20),
        ) {
            let mut trie = SubscriptionTrie::new();
            let mut bare = SubscriptionTrie::without_filters();
            let mut model = BTreeSet::new();
            for (filter, key) in &subs {
                trie.insert(filter, *key, 0u8);
                bare.insert(filter, *key, 0u8);
                model.insert((filter.clone(), *key));
            }
            for i in removals {
                if let Some((filter, key)) = subs.get(i) {
                    let was = model.remove(&(filter.clone(), *key));
                    prop_assert_eq!(trie.remove(filter, key).is_some(), was);
                    prop_assert_eq!(bare.remove(filter, key).is_some(), was);
                }
            }
            prop_assert_eq!(trie.len(), model.len());
            for topic in &topics {
                let got: BTreeSet<_> = matches(&trie, topic).into_iter().map(|m| (m.0, m.1)).collect();
                let want: BTreeSet<_> = model
                    .iter()
                    .filter(|(f, _)| filter_matches(f, topic))
                    .cloned()
                    .collect();
                // Without filters: the same subscribers (one per filter they match), each
                // handed out with an empty filter.
                let mut want_keys: Vec<_> = want.iter().map(|(_, k)| *k).collect();
                let mut bare_keys = Vec::new();
                let mut bare_filters = String::new();
                bare.for_each_match(topic, |f, k, _| {
                    bare_keys.push(*k);
                    bare_filters.push_str(f);
                });
                prop_assert_eq!(bare_filters, "");
                want_keys.sort_unstable();
                bare_keys.sort_unstable();
                prop_assert_eq!(bare_keys, want_keys, "topic {:?}", topic);
                prop_assert_eq!(got, want, "topic {:?}", topic);
            }
        }
    }
}
