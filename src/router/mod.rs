//! Topic routing: which shard owns a topic, which filters match it, and which
//! shards must receive it.
//!
//! This module owns:
//! - [`ShardId`], [`ShardSet`] and topic ownership ([`stable_hash`], [`owner_of`]);
//! - topic-name and topic-filter validity ([`validate_topic_name`], [`parse_filter`])
//!   and the matching rule ([`filter_matches`]) of MQTT 5.0 section 4.7;
//! - the per-shard [`SubscriptionTrie`], the replicated [`InterestTable`] and the
//!   owner's [`RetainedIndex`];
//! - [`SmallMap`], the few-entry map a filter's subscribers and a session's tables are
//!   kept in.
//!
//! It is pure: no I/O, no executor. Every structure is owned by exactly one shard
//! (they use `Rc`, so they are deliberately `!Send`).
//!
//! May use: no other shardmq module.
//!
//! Decisions:
//! - All three tries key children by the level string in a hash map and keep
//!   separate slots for `+` and `#`, so a lookup costs one hash probe per level
//!   per live branch instead of a scan over 100k filters. The subscription trie's
//!   (and so the interest table's) hold one pointer per child, the child boxed with
//!   its level inline (see `levels`): the devices' own level is the widest table.
//! - Matching walks the topic with `str::split`-style slicing: no allocation.
//! - Shared subscriptions (`$share/<group>/<filter>`) are parsed by
//!   [`parse_filter`]; the interest table stores the group next to the filter,
//!   the subscription trie sees only plain filters (see [`SubscriptionTrie`]).

#![warn(missing_docs)]

mod interest;
mod levels;
mod retained;
mod shard;
mod small_map;
mod topic;
mod trie;

pub use interest::{GroupRoute, InterestTable, Route};
pub use retained::RetainedIndex;
pub use shard::{owner_of, stable_hash, ShardId, ShardSet, ShardSetIter, SHARDS_MAX};
pub use small_map::SmallMap;
pub use topic::{
    filter_matches, parse_filter, validate_topic_name, FilterError, ParsedFilter, TopicError,
    TopicLimits,
};
pub use trie::SubscriptionTrie;

/// Splits `rest` at its first `/`: the first level and what follows it.
///
/// `None` as the tail means `level` was the last level. An empty string is a
/// real level (`"a//b"` has three levels), as MQTT requires.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    }
}
