//! Subscription matching cost per publish with 10k and 100k filters in one shard's trie,
//! and interest-table routing (which shards to send to) over the same filters.
//!
//! Filters mix exact topics, single-level and multi-level wildcards the way device fleets
//! subscribe (`site/<s>/dev/<d>/temp`, `site/<s>/+/<d>/#`, `site/<s>/#`). Run:
//! `cargo bench --bench topic_match [-- LOOKUPS]`; prints ns per publish.

use std::hint::black_box;
use std::time::Instant;

use shardmq::router::{InterestTable, Route, ShardId, SubscriptionTrie};

const LOOKUPS_DEFAULT: u64 = 1_000_000;

fn filters(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 10 {
            0 => format!("site/{}/+/{}/#", i % 97, i),
            1 => format!("site/{}/#", i % 97),
            _ => format!("site/{}/dev/{}/temp", i % 97, i),
        })
        .collect()
}

fn main() {
    let lookups: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(LOOKUPS_DEFAULT);
    println!("topic_match: {lookups} publishes per case");
    println!("{:<34} {:>10} {:>10}", "case", "ns/publish", "matches");
    for n in [10_000usize, 100_000] {
        let filters = filters(n);
        let mut trie: SubscriptionTrie<u64, u8> = SubscriptionTrie::new();
        let mut interest = InterestTable::new();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i as u64, 1);
            interest.add(f, None, ShardId::from_index(i % 2));
        }
        let topics: Vec<String> = (0..1024)
            .map(|i| format!("site/{}/dev/{}/temp", (i * 7) % 97, (i * 7919) % n))
            .collect();

        let started = Instant::now();
        let mut matches = 0u64;
        for i in 0..lookups {
            let topic = &topics[(i % topics.len() as u64) as usize];
            trie.for_each_match(black_box(topic), |_, _| matches += 1);
        }
        report(
            &format!("trie match, {n} filters"),
            lookups,
            matches,
            started,
        );

        let mut route = Route::new();
        let started = Instant::now();
        let mut shards = 0u64;
        for i in 0..lookups {
            let topic = &topics[(i % topics.len() as u64) as usize];
            interest.route(black_box(topic), &mut route);
            shards += route.shards.len() as u64;
        }
        report(
            &format!("interest route, {n} filters"),
            lookups,
            shards,
            started,
        );
    }
}

fn report(case: &str, lookups: u64, found: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{case:<34} {:>10.1} {:>10.2}",
        secs * 1e9 / lookups as f64,
        found as f64 / lookups as f64
    );
}
