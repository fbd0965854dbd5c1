//! Turning the threads' stats into the final report: rates over the measured window,
//! latency percentiles, delivery accounting per publisher and CPU cost per delivery.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::{filter_matches, split_shared, Params};
use crate::stats::{SeqTrack, ThreadStats};

/// Latency percentiles in µs.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub samples: u64,
}

impl Latency {
    /// Percentiles of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            samples: h.len(),
        }
    }
}

/// Delivery accounting over the whole run (warm-up included), against what was sent.
#[derive(Debug, Default, Serialize)]
pub struct Delivery {
    /// Deliveries the subscriptions should have produced.
    pub expected: u64,
    /// Distinct messages delivered.
    pub distinct: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages whose stamp was unreadable or named no publisher.
    pub foreign: u64,
}

/// CPU time spent during the measured window.
#[derive(Debug, Default, Serialize)]
pub struct Cpu {
    pub generator_secs: f64,
    pub generator_us_per_delivery: f64,
    pub broker_secs: Option<f64>,
    pub broker_us_per_delivery: Option<f64>,
}

/// The result of a publish/subscribe run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub window_secs: f64,
    pub published: u64,
    pub published_msgs_per_sec: f64,
    pub published_mb_per_sec: f64,
    pub delivered: u64,
    pub delivered_msgs_per_sec: f64,
    pub delivered_mb_per_sec: f64,
    /// Deliveries that arrived during the window (sent then or earlier), per second.
    pub arrived: u64,
    pub arrived_msgs_per_sec: f64,
    pub latency: Latency,
    pub delivery: Delivery,
    pub cpu: Cpu,
}

/// CPU seconds at the start and end of the window: (generator, broker).
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    pub generator_secs: f64,
    pub broker_secs: Option<f64>,
}

/// Builds the report from every thread's stats.
pub fn build(
    p: &Params,
    threads: Vec<ThreadStats>,
    window_secs: f64,
    cpu: (CpuSample, CpuSample),
) -> Report {
    let mut latency = ThreadStats::new().latency_us;
    let (mut published, mut delivered, mut arrived) = (0, 0, 0);
    let mut sent = vec![0u64; p.publishers];
    let mut streams = Vec::new();
    for t in threads {
        let _ = latency.add(&t.latency_us);
        published += t.published_measured;
        delivered += t.delivered_measured;
        arrived += t.arrived_measured;
        for (i, n) in t.sent {
            sent[i] = n;
        }
        streams.extend(t.streams);
    }
    let delivery = account(p, &sent, streams);
    let per_sec = |n: u64| {
        if window_secs > 0.0 {
            n as f64 / window_secs
        } else {
            0.0
        }
    };
    let mb = |n: u64| per_sec(n) * p.payload_bytes as f64 / 1e6;
    // CPU spent in the window went to what arrived in it, whenever it was sent.
    let per_delivery = |secs: f64| {
        if arrived > 0 {
            secs * 1e6 / arrived as f64
        } else {
            0.0
        }
    };
    let generator_secs = cpu.1.generator_secs - cpu.0.generator_secs;
    let broker_secs = cpu.0.broker_secs.zip(cpu.1.broker_secs).map(|(a, b)| b - a);
    Report {
        window_secs,
        published,
        published_msgs_per_sec: per_sec(published),
        published_mb_per_sec: mb(published),
        delivered,
        delivered_msgs_per_sec: per_sec(delivered),
        delivered_mb_per_sec: mb(delivered),
        arrived,
        arrived_msgs_per_sec: per_sec(arrived),
        latency: Latency::of(&latency),
        delivery,
        cpu: Cpu {
            generator_secs,
            generator_us_per_delivery: per_delivery(generator_secs),
            broker_secs,
            broker_us_per_delivery: broker_secs.map(per_delivery),
        },
    }
}

/// Compares what each subscription received with what its matching publishers sent. Members
/// of one share group are merged into one stream per publisher first.
fn account(p: &Params, sent: &[u64], streams: Vec<crate::stats::StreamStats>) -> Delivery {
    let mut d = Delivery::default();
    // Key: (share group, inner filter); plain subscriptions get a key of their own.
    let mut groups: BTreeMap<(String, String), Vec<SeqTrack>> = BTreeMap::new();
    for s in streams {
        d.foreign += s.foreign;
        let filter = p.filter_of(s.subscriber);
        let (group, inner) = split_shared(&filter);
        let key = match group {
            Some(g) => (g.to_owned(), inner.to_owned()),
            None => (format!("#{}", s.subscriber), inner.to_owned()),
        };
        match groups.get_mut(&key) {
            Some(tracks) => tracks
                .iter_mut()
                .zip(&s.tracks)
                .for_each(|(a, b)| a.merge(b)),
            None => {
                groups.insert(key, s.tracks);
            }
        }
    }
    for ((_, filter), tracks) in groups {
        for (i, track) in tracks.iter().enumerate() {
            d.duplicates += track.duplicates;
            d.out_of_order += track.out_of_order;
            d.distinct += track.distinct;
            if filter_matches(&filter, &p.topic_of(i)) {
                d.expected += sent[i];
                d.lost += sent[i].saturating_sub(track.distinct);
            }
        }
    }
    d
}

/// Prints the human-readable summary.
pub fn print_text(p: &Params, r: &Report) {
    println!(
        "shardmq-bench: {} pub -> {} sub, {} topics, QoS {}, {} B, v{}, window {:.2} s",
        p.publishers, p.subscribers, p.topics, p.qos, p.payload_bytes, p.version, r.window_secs
    );
    println!(
        "  published  {:>12.0} msg/s {:>9.2} MB/s",
        r.published_msgs_per_sec, r.published_mb_per_sec
    );
    println!(
        "  delivered  {:>12.0} msg/s {:>9.2} MB/s (arrived in the window: {:.0} msg/s)",
        r.delivered_msgs_per_sec, r.delivered_mb_per_sec, r.arrived_msgs_per_sec
    );
    let l = &r.latency;
    println!(
        "  latency µs p50 {} p90 {} p99 {} p99.9 {} max {}",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
    let d = &r.delivery;
    println!(
        "  delivery   expected {} distinct {} lost {} dup {} out-of-order {} foreign {}",
        d.expected, d.distinct, d.lost, d.duplicates, d.out_of_order, d.foreign
    );
    let c = &r.cpu;
    print!(
        "  cpu        generator {:.2} s ({:.2} µs/delivery)",
        c.generator_secs, c.generator_us_per_delivery
    );
    match (c.broker_secs, c.broker_us_per_delivery) {
        (Some(s), Some(us)) => println!(", broker {s:.2} s ({us:.2} µs/delivery)"),
        _ => println!(),
    }
}
