//! The owner's index of retained topics, searchable by filter.

use std::collections::HashMap;

use super::split_level;

/// Topic name -> `V` (a retained message or its location), kept as a level trie
/// so [`for_each_matching`](Self::for_each_matching) walks only the branches a
/// filter can reach instead of scanning every retained topic.
pub struct RetainedIndex<V> {
    root: Node<V>,
    len: usize,
}

struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    /// The full topic name ending here and its value.
    entry: Option<(Box<str>, V)>,
}

impl<V> Node<V> {
    fn new() -> Self {
        Self {
            children: HashMap::new(),
            entry: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.entry.is_none() && self.children.is_empty()
    }
}

impl<V> Default for RetainedIndex<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> RetainedIndex<V> {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            root: Node::new(),
            len: 0,
        }
    }

    /// Stores `value` for the validated topic name `topic`; returns the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut rest = Some(topic);
        while let Some(levels) = rest {
            let (level, tail) = split_level(levels);
            node = node
                .children
                .entry(Box::from(level))
                .or_insert_with(Node::new);
            rest = tail;
        }
        let old = node.entry.replace((Box::from(topic), value)).map(|e| e.1);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `topic`, pruning emptied nodes; returns its value.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let removed = remove_at(&mut self.root, topic);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The value stored for `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        let mut rest = Some(topic);
        while let Some(levels) = rest {
            let (level, tail) = split_level(levels);
            node = node.children.get(level)?;
            rest = tail;
        }
        node.entry.as_ref().map(|e| &e.1)
    }

    /// The number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Calls `f(topic, value)` for every stored topic matched by the plain,
    /// validated `filter`, with the same rules as [`super::filter_matches`]
    /// (a leading wildcard does not match a `$`-topic).
    pub fn for_each_matching(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        visit(&self.root, filter, true, &mut f);
    }

    /// Calls `f(topic, value)` for every stored topic, `$`-topics included.
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        emit_subtree(&self.root, &mut f);
    }
}

/// Recursion depth is bounded by the topic's level count.
fn remove_at<V>(node: &mut Node<V>, rest: &str) -> Option<V> {
    let (level, tail) = split_level(rest);
    let child = node.children.get_mut(level)?;
    let removed = match tail {
        Some(tail) => remove_at(child, tail),
        None => child.entry.take().map(|e| e.1),
    };
    if child.is_empty() {
        node.children.remove(level);
    }
    removed
}

/// Visits topics below `node` matched by the filter levels in `rest`;
/// `first` is true at the root, where wildcards skip `$`-levels.
fn visit<V>(node: &Node<V>, rest: &str, first: bool, f: &mut dyn FnMut(&str, &V)) {
    let (level, tail) = split_level(rest);
    match level {
        "#" => {
            // "a/#" matches "a" itself, then everything below.
            emit(node, f);
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    emit_subtree(child, f);
                }
            }
        }
        "+" => {
            for (name, child) in &node.children {
                if !(first && name.starts_with('$')) {
                    step(child, tail, f);
                }
            }
        }
        literal => {
            if let Some(child) = node.children.get(literal) {
                step(child, tail, f);
            }
        }
    }
}

fn step<V>(node: &Node<V>, tail: Option<&str>, f: &mut dyn FnMut(&str, &V)) {
    match tail {
        Some(rest) => visit(node, rest, false, f),
        None => emit(node, f),
    }
}

fn emit<V>(node: &Node<V>, f: &mut dyn FnMut(&str, &V)) {
    if let Some((topic, value)) = &node.entry {
        f(topic, value);
    }
}

fn emit_subtree<V>(node: &Node<V>, f: &mut dyn FnMut(&str, &V)) {
    emit(node, f);
    for child in node.children.values() {
        emit_subtree(child, f);
    }
}

#[cfg(test)]
mod tests {
    use super::super::filter_matches;
    use super::super::trie::tests::filter_strategy;
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn matching(index: &RetainedIndex<u32>, filter: &str) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        index.for_each_matching(filter, |t, v| {
            assert!(out.insert(t.to_string(), *v).is_none(), "duplicate {t}");
        });
        out
    }

    #[test]
    fn insert_get_remove() {
        let mut index = RetainedIndex::new();
        assert_eq!(index.insert("a/b", 1), None);
        assert_eq!(index.insert("a/b", 2), Some(1));
        assert_eq!(index.insert("a", 3), None);
        assert_eq!(index.insert("$SYS/x", 4), None);
        assert_eq!(index.len(), 3);
        assert_eq!(index.get("a/b"), Some(&2));
        assert_eq!(index.get("a/b/c"), None);
        assert_eq!(matching(&index, "a/#").len(), 2);
        assert_eq!(
            matching(&index, "#").keys().collect::<Vec<_>>(),
            vec!["a", "a/b"]
        );
        assert_eq!(matching(&index, "+/x").len(), 0);
        assert_eq!(matching(&index, "$SYS/+").len(), 1);
        assert_eq!(index.remove("a/b"), Some(2));
        assert_eq!(index.remove("a/b"), None);
        assert_eq!(index.remove("a"), Some(3));
        assert_eq!(index.remove("$SYS/x"), Some(4));
        assert!(index.is_empty());
        assert!(index.root.is_empty(), "empty nodes are pruned");
    }

    proptest! {
        #[test]
        fn for_each_matching_agrees_with_filter_matches(
            topics in prop::collection::vec(
                prop::collection::vec(prop::sample::select(&["a", "b", "$x", ""][..]), 1..5)
                    .prop_map(|l| l.join("/")),
                0..30),
            removals in prop::collection::vec(0usize..30, 0..8),
            filters in prop::collection::vec(filter_strategy(), 1..20),
        ) {
            let mut index = RetainedIndex::new();
            let mut model = BTreeMap::new();
            for (i, topic) in topics.iter().enumerate() {
                prop_assert_eq!(index.insert(topic, i as u32), model.insert(topic.clone(), i as u32));
            }
            for i in removals {
                if let Some(topic) = topics.get(i) {
                    prop_assert_eq!(index.remove(topic), model.remove(topic));
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for filter in &filters {
                let want: BTreeMap<String, u32> = model
                    .iter()
                    .filter(|(t, _)| filter_matches(filter, t))
                    .map(|(t, v)| (t.clone(), *v))
                    .collect();
                prop_assert_eq!(matching(&index, filter), want, "filter {:?}", filter);
            }
        }
    }
}
