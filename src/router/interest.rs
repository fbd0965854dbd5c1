//! The cross-shard interest table: which shards subscribe to which filters.

use std::sync::Arc;

use super::{ShardId, ShardSet, SubscriptionTrie};

/// Every shard's replica of "which shards have at least one subscriber for this filter".
///
/// An entry is a plain filter, or a (share group, plain filter). Shards broadcast a
/// change only when their first subscriber to an entry arrives or their last leaves, so
/// the table holds sets, not counts. The topic's owner calls [`route`](Self::route) for
/// every publish.
///
/// A shard needs no entry for its own plain subscribers, whom its subscription trie
/// already holds under the filter: the broker lists only its peers' plain filters here
/// (a publish always visits the owner's own trie), and every shard's groups, its own
/// included, since a group's member is picked among the shards of its route. A
/// device's own topic then costs one trie leaf on its shard, not two, and a single
/// shard keeps no table of plain filters at all.
///
/// Plain filters and groups are kept apart: a plain entry is its shards alone (a leaf of
/// 40 bytes), with no group key and no filter beside them.
#[derive(Default)]
pub struct InterestTable {
    /// Plain filters: the shards with subscribers to each.
    plain: SubscriptionTrie<(), ShardSet>,
    /// Shared subscriptions: by group, the shards with members and the filter.
    groups: SubscriptionTrie<Arc<str>, GroupEntry>,
}

/// The shards of one (share group, filter) entry.
struct GroupEntry {
    shards: ShardSet,
    /// The entry's filter, shared with every route that names it (a route crosses
    /// shards, so it carries `Arc`s: cloning one is a count, never an allocation).
    filter: Arc<str>,
}

/// Where a published message must go: filled by [`InterestTable::route`].
#[derive(Debug, Default)]
pub struct Route {
    /// Shards with at least one ordinary (non-shared) matching subscription.
    pub shards: ShardSet,
    /// One entry per matching (share group, filter): exactly one member gets the message.
    pub groups: Vec<GroupRoute>,
}

/// One matching shared subscription and the shards holding its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRoute {
    /// The share name.
    pub group: Arc<str>,
    /// The plain filter the group subscribed with.
    pub filter: Arc<str>,
    /// The shards with at least one member of this group on this filter.
    pub shards: ShardSet,
}

impl Route {
    /// An empty route; keep one per shard and reuse it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Empties the route, keeping the group buffer's capacity.
    pub fn clear(&mut self) {
        self.shards.clear();
        self.groups.clear();
    }

    /// Whether the message goes nowhere.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty() && self.groups.is_empty()
    }
}

impl InterestTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `shard` has a subscriber to the plain, validated `filter`
    /// (within `share_group` if shared); true if that shard was new for the entry.
    pub fn add(&mut self, filter: &str, share_group: Option<&str>, shard: ShardId) -> bool {
        let Some(group) = share_group else {
            if let Some(shards) = self.plain.get_mut(filter, &()) {
                return shards.insert(shard);
            }
            let mut shards = ShardSet::new();
            shards.insert(shard);
            self.plain.insert(filter, (), shards);
            return true;
        };
        // Subscription changes are rare next to publishes: one small allocation here is fine.
        let group: Arc<str> = Arc::from(group);
        if let Some(entry) = self.groups.get_mut(filter, &group) {
            return entry.shards.insert(shard);
        }
        let mut entry = GroupEntry {
            shards: ShardSet::new(),
            filter: Arc::from(filter),
        };
        entry.shards.insert(shard);
        self.groups.insert(filter, group, entry);
        true
    }

    /// Records that `shard` has no subscriber left for the entry; true if it was listed.
    pub fn remove(&mut self, filter: &str, share_group: Option<&str>, shard: ShardId) -> bool {
        let Some(group) = share_group else {
            let Some(shards) = self.plain.get_mut(filter, &()) else {
                return false;
            };
            let was = shards.remove(shard);
            if shards.is_empty() {
                self.plain.remove(filter, &());
            }
            return was;
        };
        let group: Arc<str> = Arc::from(group);
        let Some(entry) = self.groups.get_mut(filter, &group) else {
            return false;
        };
        let was = entry.shards.remove(shard);
        if entry.shards.is_empty() {
            self.groups.remove(filter, &group);
        }
        was
    }

    /// Fills `route` for the published `topic`: the union of shards with
    /// ordinary matching filters, and one [`GroupRoute`] per matching shared
    /// entry. `route` is cleared first; once its buffer has grown, this does not allocate.
    pub fn route(&self, topic: &str, route: &mut Route) {
        route.clear();
        self.plain
            .for_each_match(topic, |_, shards| route.shards.union_with(shards));
        self.groups.for_each_match(topic, |group, entry| {
            route.groups.push(GroupRoute {
                group: Arc::clone(group),
                filter: Arc::clone(&entry.filter),
                shards: entry.shards,
            })
        });
    }

    /// The number of (group, filter) entries, a plain filter's group being none.
    pub fn len(&self) -> usize {
        self.plain.len() + self.groups.len()
    }

    /// Whether no shard subscribes to anything.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::super::filter_matches;
    use super::super::trie::tests::filter_strategy;
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn ids(set: &ShardSet) -> Vec<u16> {
        set.iter().map(|s| s.0).collect()
    }

    #[test]
    fn add_remove_and_route() {
        let mut table = InterestTable::new();
        assert!(table.add("a/+", None, ShardId(1)));
        assert!(!table.add("a/+", None, ShardId(1)));
        assert!(table.add("a/#", None, ShardId(3)));
        assert!(table.add("a/b", Some("g"), ShardId(2)));
        assert!(table.add("a/b", Some("g"), ShardId(0)));
        assert!(table.add("a/b", Some("h"), ShardId(5)));
        assert!(table.add("#", None, ShardId(7)));
        let mut route = Route::new();
        table.route("a/b", &mut route);
        assert_eq!(ids(&route.shards), vec![1, 3, 7]);
        route.groups.sort_by(|x, y| x.group.cmp(&y.group));
        assert_eq!(route.groups.len(), 2);
        assert_eq!(
            (&*route.groups[0].group, &*route.groups[0].filter),
            ("g", "a/b")
        );
        assert_eq!(ids(&route.groups[0].shards), vec![0, 2]);
        assert_eq!(ids(&route.groups[1].shards), vec![5]);

        table.route("$SYS/a", &mut route);
        assert!(route.is_empty(), "reused route is cleared");

        assert!(table.remove("a/b", Some("g"), ShardId(2)));
        assert!(!table.remove("a/b", Some("g"), ShardId(2)));
        assert!(table.remove("a/b", Some("g"), ShardId(0)));
        assert!(!table.remove("x", None, ShardId(0)));
        table.route("a/b", &mut route);
        assert_eq!(route.groups.len(), 1);
        assert_eq!(table.len(), 4);
    }

    proptest! {
        #[test]
        fn route_agrees_with_filter_matches(
            adds in prop::collection::vec(
                (filter_strategy(), prop::option::of(prop::sample::select(&["g", "h"][..])), 0u16..8),
                0..40),
            removals in prop::collection::vec(0usize..40, 0..10),
            topics in prop::collection::vec(
                prop::collection::vec(prop::sample::select(&["a", "b", "$x", ""][..]), 1..5)
                    .prop_map(|l| l.join("/")),
                1..20),
        ) {
            let mut table = InterestTable::new();
            let mut model: BTreeSet<(String, Option<&str>, u16)> = BTreeSet::new();
            for (filter, group, shard) in &adds {
                let fresh = model.insert((filter.clone(), *group, *shard));
                prop_assert_eq!(table.add(filter, *group, ShardId(*shard)), fresh);
            }
            for i in removals {
                if let Some((filter, group, shard)) = adds.get(i) {
                    let was = model.remove(&(filter.clone(), *group, *shard));
                    prop_assert_eq!(table.remove(filter, *group, ShardId(*shard)), was);
                }
            }
            let mut route = Route::new();
            for topic in &topics {
                table.route(topic, &mut route);
                let mut want_shards = BTreeSet::new();
                let mut want_groups: BTreeMap<(String, String), BTreeSet<u16>> = BTreeMap::new();
                for (filter, group, shard) in model.iter().filter(|e| filter_matches(&e.0, topic)) {
                    match group {
                        None => { want_shards.insert(*shard); }
                        Some(g) => {
                            want_groups.entry((g.to_string(), filter.clone())).or_default().insert(*shard);
                        }
                    }
                }
                let got_shards: BTreeSet<u16> = route.shards.iter().map(|s| s.0).collect();
                prop_assert_eq!(got_shards, want_shards);
                let mut got_groups = BTreeMap::new();
                for g in &route.groups {
                    let key = (g.group.to_string(), g.filter.to_string());
                    let set: BTreeSet<u16> = g.shards.iter().map(|s| s.0).collect();
                    prop_assert!(got_groups.insert(key, set).is_none(), "duplicate group entry");
                }
                prop_assert_eq!(got_groups, want_groups);
            }
        }
    }
}
