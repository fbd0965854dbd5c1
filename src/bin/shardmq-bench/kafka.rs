//! Kafka mode (`--kafka-topic T`): throughput and produce → fetch latency of partitions
//! 0..`--kafka-partitions` of `T` over the Kafka protocol, against any Kafka broker
//! (`--port` is its Kafka port).
//!
//! One producer connection per partition (a thread each) sends record batches with
//! `acks = all`, up to `--kafka-inflight` requests at a time (librdkafka's
//! `max.in.flight`; 1: one request at a time). With `--rate R` (records/s in all,
//! shared evenly by the partitions) a batch goes at once when nothing is in flight,
//! else when it is full or its oldest record waited `--kafka-linger-us` (librdkafka's
//! `linger.ms`); it holds every record due by then, up to
//! `--kafka-batch-bytes`: open loop, each record stamped with its due time, so a slow
//! broker shows as latency, not as a lower offered rate. With `--rate 0` every batch is
//! full: the maximum rate. One consumer connection long-polls Fetch of every partition
//! from its end and times each record from its due time to its arrival (the stamp is the first 8
//! bytes of the value). Reported over the window after `--warmup-secs`: records and
//! bytes acknowledged per second, produce → fetch latency, produce request latency, and
//! with `--broker-pid` the broker's CPU per record.
//!
//! Records are framed and read by hand (no key, no headers, uncompressed): a generator
//! that allocates per record would be what the run measures on a small machine.

use std::collections::VecDeque;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use shardmq::broker::kafka::batch::encode_fixed;
use shardmq::door::kafka::client::{produce_request, KafkaClient};

use crate::config::{Params, Stop};
use crate::report::Latency;
use crate::stats::now_ns;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait of a fetch for new records.
const FETCH_WAIT_MS: i32 = 500;
/// Bytes a fetch may bring back.
const FETCH_BYTES: i32 = 64 << 20;
/// Highest latency recorded, µs (larger values are clamped).
const LATENCY_US_MAX: u64 = 60_000_000;
/// The Produce version sent.
const PRODUCE_VERSION: i16 = 7;
/// The stamp at the front of every value: its due time, ns since the bench's epoch.
const STAMP_BYTES: usize = 8;

/// What a Kafka run measured.
#[derive(Debug, Serialize)]
pub struct KafkaReport {
    /// Records/s offered (0: as fast as acknowledged).
    pub offered_per_s: u64,
    /// Records acknowledged inside the window, per second.
    pub acked_per_s: f64,
    /// Record value bytes acknowledged inside the window, MB/s.
    pub acked_mb_per_s: f64,
    /// Records fetched whose due time fell inside the window.
    pub fetched: u64,
    /// Produce requests sent inside the window and records per request.
    pub requests: u64,
    pub records_per_request: f64,
    /// Due time to arrival at the consumer.
    pub produce_to_fetch: Latency,
    /// Produce request sent to its answer.
    pub produce_request: Latency,
    /// Broker CPU µs per acknowledged record (with --broker-pid).
    pub broker_cpu_us_per_record: Option<f64>,
    pub window_secs: f64,
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_max(LATENCY_US_MAX, 3).expect("histogram bounds")
}

fn connect(p: &Params) -> Result<KafkaClient, String> {
    let addr: SocketAddr = (p.host.as_str(), p.port)
        .to_socket_addrs()
        .map_err(|e| format!("{}:{}: {e}", p.host, p.port))?
        .next()
        .ok_or("no address")?;
    KafkaClient::connect(addr, TIMEOUT, "shardmq-bench")
}

/// The offset the next record of each of `partitions` gets.
fn end_offsets(client: &mut KafkaClient, topic: &str, partitions: u32) -> Result<Vec<i64>, String> {
    let request = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(
                (0..partitions as i32)
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(p)
                            .with_timestamp(-1)
                    })
                    .collect(),
            )]);
    let response: ListOffsetsResponse = client.call(ApiKey::ListOffsets, 2, &request)?;
    let mut offsets = vec![None; partitions as usize];
    for answer in response.topics.iter().flat_map(|t| &t.partitions) {
        if answer.error_code != 0 {
            return Err(format!(
                "{topic}/{}: ListOffsets error {}",
                answer.partition_index, answer.error_code
            ));
        }
        if let Some(slot) = offsets.get_mut(answer.partition_index as usize) {
            *slot = Some(answer.offset);
        }
    }
    offsets
        .into_iter()
        .enumerate()
        .map(|(p, o)| o.ok_or_else(|| format!("{topic}/{p}: no ListOffsets answer")))
        .collect()
}

/// Runs the producer and the consumer (on the first CPUs of `--cpus`, if given).
pub fn run(p: &Arc<Params>, topic: &str) -> Result<KafkaReport, String> {
    let Stop::DurationSecs(duration) = p.stop else {
        return Err("--kafka-topic runs for --duration-secs (not --count)".into());
    };
    if p.payload_bytes < STAMP_BYTES {
        return Err(format!("--payload-bytes must be at least {STAMP_BYTES}"));
    }
    let partitions = p.kafka_partitions;
    let mut consumer = connect(p)?;
    let start_offsets = end_offsets(&mut consumer, topic, partitions)?;
    let begin = now_ns();
    let window_from = begin + p.warmup_secs * 1_000_000_000;
    let window_to = window_from + duration * 1_000_000_000;
    let producing_done = Arc::new(AtomicBool::new(false));
    let cpus = p.cpus.clone();

    let fetcher = {
        let (topic, done, cpu) = (topic.to_string(), Arc::clone(&producing_done), cpus.get(1));
        let cpu = cpu.copied();
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                crate::sys::pin_to_cpu(cpu);
            }
            fetch_loop(
                consumer,
                &topic,
                start_offsets,
                &done,
                (window_from, window_to),
            )
        })
    };
    let cpu_before = p.broker_pid.and_then(crate::sys::process_cpu_secs);
    let producers: Vec<_> = (0..partitions)
        .map(|partition| {
            let (p, topic, cpu) = (Arc::clone(p), topic.to_string(), cpus.first().copied());
            std::thread::spawn(move || {
                if let Some(cpu) = cpu {
                    crate::sys::pin_to_cpu(cpu);
                }
                produce_loop(&p, &topic, partition, begin, (window_from, window_to))
            })
        })
        .collect();
    let mut produced = Produced::new();
    let mut failed = None;
    for producer in producers {
        match producer.join() {
            Ok(Ok(one)) => {
                produced.acked += one.acked;
                produced.acked_total += one.acked_total;
                produced.requests += one.requests;
                let _ = produced.request_us.add(&one.request_us);
            }
            Ok(Err(e)) => failed = Some(e),
            Err(_) => failed = Some("a producer thread panicked".into()),
        }
    }
    let cpu_after = p.broker_pid.and_then(crate::sys::process_cpu_secs);
    producing_done.store(true, Ordering::Release);
    let fetched = fetcher
        .join()
        .map_err(|_| "the consumer thread panicked".to_string())??;
    if let Some(e) = failed {
        return Err(e);
    }
    let window_secs = duration as f64;
    let broker_cpu_us_per_record = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) if produced.acked > 0 => {
            Some((b - a) * 1e6 / produced.acked_total as f64)
        }
        _ => None,
    };
    Ok(KafkaReport {
        offered_per_s: p.rate,
        acked_per_s: produced.acked as f64 / window_secs,
        acked_mb_per_s: (produced.acked * p.payload_bytes as u64) as f64 / window_secs / 1e6,
        fetched: fetched.len(),
        requests: produced.requests,
        records_per_request: produced.acked as f64 / produced.requests.max(1) as f64,
        produce_to_fetch: Latency::of(&fetched),
        produce_request: Latency::of(&produced.request_us),
        broker_cpu_us_per_record,
        window_secs,
    })
}

impl Produced {
    fn new() -> Self {
        Produced {
            acked: 0,
            acked_total: 0,
            requests: 0,
            request_us: histogram(),
        }
    }
}

struct Produced {
    /// Acknowledged inside the window.
    acked: u64,
    /// Acknowledged in all (for CPU per record: the CPU is read over the whole run).
    acked_total: u64,
    requests: u64,
    request_us: Histogram<u64>,
}

/// When record `i` is due at `rate` records/s from `begin` (ns).
fn due_at(begin: u64, rate: u64, i: u64) -> u64 {
    begin + (u128::from(i) * 1_000_000_000 / u128::from(rate)) as u64
}

/// One partition's producer; `--rate` is shared evenly by the partitions.
fn produce_loop(
    p: &Params,
    topic: &str,
    partition: u32,
    begin: u64,
    (window_from, window_to): (u64, u64),
) -> Result<Produced, String> {
    let mut client = connect(p)?;
    let value_len = p.payload_bytes;
    // Record framing: the value plus at most 16 bytes of varints and attributes.
    let per_record = value_len + 16;
    let batch_max = (p.kafka_batch_bytes / per_record).max(1) as u64;
    let linger = p.kafka_linger_us * 1000;
    let mut produced = Produced::new();
    let rate = p.rate.div_ceil(u64::from(p.kafka_partitions));
    // Sent and not yet answered: (sent at, records, correlation id).
    let mut in_flight: VecDeque<(u64, u64, i32)> = VecDeque::new();
    let mut issued: u64 = 0;
    let mut batch = Vec::with_capacity(p.kafka_batch_bytes + 128);
    loop {
        let now = now_ns();
        // Records due and not sent: at full speed a full batch until the window ends;
        // open loop every record due before now (before the window's end: late ones are
        // sent too).
        let due = if rate == 0 {
            if now < window_to {
                batch_max
            } else {
                0
            }
        } else {
            let upto = now.min(window_to);
            let due_total = (upto - begin) as u128 * rate as u128 / 1_000_000_000;
            (due_total as u64).saturating_sub(issued)
        };
        // As a producer batches: at once when nothing is in flight, else when a batch
        // is full or its oldest record has lingered long enough.
        let oldest_waited = if rate == 0 {
            u64::MAX
        } else {
            now.saturating_sub(due_at(begin, rate, issued))
        };
        let send_now = due > 0
            && in_flight.len() < p.kafka_inflight
            && (in_flight.is_empty() || due >= batch_max || oldest_waited >= linger);
        if send_now {
            let count = due.min(batch_max);
            let id = send_batch(
                &mut client,
                topic,
                partition,
                &mut batch,
                issued,
                count,
                |i| {
                    if rate == 0 {
                        now
                    } else {
                        due_at(begin, rate, i)
                    }
                },
                value_len,
            )?;
            issued += count;
            in_flight.push_back((now_ns(), count, id));
            continue;
        }
        if in_flight.is_empty() {
            if due == 0 && now >= window_to {
                break;
            }
            // Nothing to wait for but the next record's due time (or its linger).
            let next = due_at(begin, rate, issued + 1);
            std::thread::sleep(Duration::from_nanos(next.saturating_sub(now)));
            continue;
        }
        // Wait for the oldest answer; open loop, only until more records are to go.
        let full = in_flight.len() >= p.kafka_inflight;
        if rate > 0 && !full {
            let next_send = if due > 0 {
                due_at(begin, rate, issued) + linger
            } else {
                due_at(begin, rate, issued + 1)
            };
            let wait = Duration::from_nanos(next_send.saturating_sub(now).max(1_000));
            if !client.readable_within(wait)? {
                continue;
            }
        }
        let (sent, count, id) = in_flight.pop_front().expect("one in flight");
        let response: ProduceResponse = client.receive(ApiKey::Produce, PRODUCE_VERSION, id)?;
        let answered = now_ns();
        let error = response
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .map_or(-1, |r| r.error_code);
        if error != 0 {
            return Err(format!("{topic}/{partition}: Produce error {error}"));
        }
        produced.acked_total += count;
        if sent >= window_from {
            produced.requests += 1;
            produced.acked += count;
            let _ = produced
                .request_us
                .record(((answered - sent) / 1000).min(LATENCY_US_MAX));
        }
    }
    Ok(produced)
}

/// Frames records `first..first + count` (stamped with `due_of(record)`) as one batch
/// and sends it to `partition`; the request's correlation id.
#[allow(clippy::too_many_arguments)]
fn send_batch(
    client: &mut KafkaClient,
    topic: &str,
    partition: u32,
    batch: &mut Vec<u8>,
    first: u64,
    count: u64,
    due_of: impl Fn(u64) -> u64,
    value_len: usize,
) -> Result<i32, String> {
    batch.clear();
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    encode_fixed(batch, count as u32, wall_ms, value_len, |i, value| {
        value[..STAMP_BYTES].copy_from_slice(&due_of(first + u64::from(i)).to_le_bytes());
    });
    let records = Bytes::copy_from_slice(batch);
    let request = produce_request(topic, partition as i32, records, TIMEOUT);
    client.send(ApiKey::Produce, PRODUCE_VERSION, &request)
}

/// Fetches every partition from `offsets` on until producing is done and a fetch comes
/// back empty; returns the latencies of the records due inside the window.
fn fetch_loop(
    mut client: KafkaClient,
    topic: &str,
    mut offsets: Vec<i64>,
    done: &AtomicBool,
    (window_from, window_to): (u64, u64),
) -> Result<Histogram<u64>, String> {
    let mut latencies = histogram();
    let share = FETCH_BYTES / offsets.len().max(1) as i32;
    loop {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(FETCH_WAIT_MS)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_BYTES)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(
                    offsets
                        .iter()
                        .enumerate()
                        .map(|(p, &offset)| {
                            FetchPartition::default()
                                .with_partition(p as i32)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(share)
                        })
                        .collect(),
                )]);
        let finished = done.load(Ordering::Acquire);
        let response: FetchResponse = client.call(ApiKey::Fetch, 11, &request)?;
        let arrived = now_ns();
        let mut moved = false;
        for part in response.responses.iter().flat_map(|t| &t.partitions) {
            let index = part.partition_index;
            if part.error_code != 0 {
                return Err(format!("{topic}/{index}: Fetch error {}", part.error_code));
            }
            let Some(offset) = offsets.get_mut(index as usize) else {
                return Err(format!("{topic}/{index}: not asked for"));
            };
            let records = part.records.clone().unwrap_or_default();
            read_values(records, *offset, |at, value| {
                *offset = at + 1;
                moved = true;
                if let Some(stamp) = value.get(..STAMP_BYTES) {
                    let due = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                    if (window_from..window_to).contains(&due) {
                        let us = arrived.saturating_sub(due) / 1000;
                        let _ = latencies.record(us.min(LATENCY_US_MAX));
                    }
                }
            })?;
        }
        if finished && !moved {
            return Ok(latencies);
        }
    }
}

fn varint(b: &mut &[u8]) -> Result<i64, String> {
    let mut z: u64 = 0;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = b.split_first() else {
            return Err("a record cut short".into());
        };
        *b = rest;
        z |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok((z >> 1) as i64 ^ -((z & 1) as i64));
        }
    }
    Err("a varint too long".into())
}

/// Calls `f(offset, value)` for each record at or past `from` of the whole batches in
/// `set` (a fetch may end with part of a batch: left for the next one).
fn read_values(mut set: Bytes, from: i64, mut f: impl FnMut(i64, &[u8])) -> Result<(), String> {
    while set.len() >= 61 {
        let base = i64::from_be_bytes(set[..8].try_into().expect("8 bytes"));
        let length = i32::from_be_bytes(set[8..12].try_into().expect("4 bytes"));
        let end = 12 + usize::try_from(length).map_err(|_| "a negative batch length")?;
        if set.len() < end {
            break;
        }
        let attributes = i16::from_be_bytes([set[21], set[22]]);
        if attributes & 0x7 != 0 {
            return Err("a compressed batch (the bench produces uncompressed ones)".into());
        }
        let count = i32::from_be_bytes(set[57..61].try_into().expect("4 bytes"));
        let mut records = &set[61..end];
        for _ in 0..count {
            let len = usize::try_from(varint(&mut records)?).map_err(|_| "a bad length")?;
            let (mut record, rest) = records.split_at_checked(len).ok_or("a record cut short")?;
            records = rest;
            record = record.get(1..).ok_or("an empty record")?;
            varint(&mut record)?; // timestamp delta
            let at = base + varint(&mut record)?;
            let key = varint(&mut record)?;
            if key > 0 {
                record = record.get(key as usize..).ok_or("a key cut short")?;
            }
            let value_len = varint(&mut record)?;
            let value = record
                .get(..usize::try_from(value_len).unwrap_or(0))
                .ok_or("a value cut short")?;
            if at >= from {
                f(at, value);
            }
        }
        set.advance(end);
    }
    Ok(())
}

/// Prints a report for people.
pub fn print_text(p: &Params, topic: &str, r: &KafkaReport) {
    let offered = if p.rate == 0 {
        "max".to_string()
    } else {
        format!("{}/s", p.rate)
    };
    println!(
        "kafka {topic}, {} partitions  offered {offered}  {} B records  acks=all  window {:.0} s",
        p.kafka_partitions, p.payload_bytes, r.window_secs
    );
    println!(
        "acked      {:>12.0} records/s  {:>8.1} MB/s  ({} requests, {:.0} records each)",
        r.acked_per_s, r.acked_mb_per_s, r.requests, r.records_per_request
    );
    let row = |name: &str, l: &Latency| {
        println!(
            "{name:<10} p50 {:>8} µs  p99 {:>8} µs  p99.9 {:>8} µs  max {:>8} µs  ({} samples)",
            l.p50_us, l.p99_us, l.p999_us, l.max_us, l.samples
        );
    };
    row("produce→fetch", &r.produce_to_fetch);
    row("request", &r.produce_request);
    if let Some(cpu) = r.broker_cpu_us_per_record {
        println!("broker CPU {cpu:.3} µs per record");
    }
}
