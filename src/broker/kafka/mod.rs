//! Kafka partitions in the shards' logs: what the Kafka door calls.
//!
//! A topic of `kafka_topics` has partitions; partition `p` of topic `t` is owned by
//! shard `(stable_hash(t) + p) mod shards`, so a topic's partitions spread over the
//! shards. The owner keeps each batch a producer sends as one record of its WAL
//! (`kafka_batch`, kind 30), stamped with the partition offset of its first record —
//! offsets are dense per partition, as Kafka's are — and otherwise stored as sent
//! (compressed batches stay compressed). Its [`Partition`] index says which WAL record
//! holds which offsets, so a fetch reads the WAL from its batch on, not from the start.
//!
//! Durability: a produce with `acks` 1 or all is answered once its batches are as
//! durable as `fsync_policy` promises (the same wait as an MQTT QoS 1 PUBACK), and
//! consumers only see offsets that far (the high watermark). With one copy of the log,
//! `acks = all` and `acks = 1` promise the same. At start the owner rebuilds the index
//! from its WAL; everything recovered is durable.
//!
//! Retention: each retention tick, a partition drops its batches older than the topic's
//! `retention_ms` and beyond its `retention_bytes` (never the last: it carries the end
//! offset over a restart), and the shard's log keeps every segment from the oldest batch
//! still kept on (see `retention`). A start trims the same way before any door opens: a
//! batch dropped before the restart is still in the log when its segment holds one kept.
//!
//! A request for a partition another shard owns travels the mesh
//! (`ShardMsg::Kafka`/`KafkaReply`); the owner answers. A fetch that finds fewer bytes
//! than it wants asks the owners to tell it when any of its partitions grows (a watch),
//! for at most its wait, then reads again.
//!
//! Body of a `kafka_batch` record: `partition u32 LE | topic length u16 LE | topic |
//! the batch`, its `baseOffset` set to the partition offset.

pub mod batch;
mod bridge;
mod catalog;
pub mod group;
mod groups;
mod partition;
mod relay;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::Config;
use crate::router::{stable_hash, ShardId};
use crate::storage::{Offset, RecordKind, RecordRef, WalError};

use super::persist::unix_ms;
use super::{Broker, Reply, ShardMsg};

pub use batch::BatchError;
pub use bridge::RECORD_KAFKA_BRIDGE;
pub use catalog::{
    decode_topic_change, CatalogError, TopicChange, TopicSpec, CATALOG_PARTITIONS_MAX,
    CATALOG_TOPICS_MAX, RECORD_KAFKA_TOPIC,
};
pub use groups::{
    coordinator_of, decode_commits, GroupAnswer, GroupCall, GroupInfo, RecoveredCommits,
    RECORD_KAFKA_OFFSETS,
};
pub use partition::{BatchEntry, Partition, Sequence};
pub use relay::{decode_mark as decode_relay_mark, RECORD_KAFKA_RELAY, RELAY_PUBLISHER};

/// A Kafka record batch in the owner's log (see the module docs).
pub const RECORD_KAFKA_BATCH: RecordKind = RecordKind(30);

/// Bytes of the newest batches a shard keeps in memory for fetches at the tail (the
/// log is written with O_DIRECT: no page cache holds what was just written).
pub const TAIL_CACHE_BYTES: usize = 32 << 20;

/// The longest a fetch may wait for data, whatever the client asks.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

/// The most record bytes one fetch reads, whatever the client asks (Kafka's
/// `fetch.max.bytes` default is 50 MB): what one request may hold in memory, plus at
/// most one batch per owner shard beyond it.
pub const FETCH_BYTES_MAX: usize = 32 << 20;

/// A topic the Kafka door serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTopic {
    /// Its name.
    pub name: Arc<str>,
    /// 0 for a topic of the config file; a created topic's id (see `catalog`).
    pub id: u64,
    /// How many partitions it has.
    pub partitions: u32,
    /// Batches older than this (ms) are dropped; `None`: kept by age.
    pub retention_ms: Option<u64>,
    /// A partition keeps at most about this many bytes; `None`: no bound.
    pub retention_bytes: Option<u64>,
    /// Whether `retention_ms` is the topic's own setting (not the broker's default).
    pub retention_ms_own: bool,
    /// Whether `retention_bytes` is the topic's own setting.
    pub retention_bytes_own: bool,
}

/// The topics of a configuration.
pub fn topics_of(config: &Config) -> Vec<KafkaTopic> {
    config
        .kafka_topics
        .iter()
        .map(|t| KafkaTopic {
            name: Arc::from(t.name.as_str()),
            id: 0,
            partitions: t.partitions,
            retention_ms: t
                .retention_ms
                .or(Some(config.retention_ms))
                .filter(|&ms| ms > 0),
            retention_bytes: t.retention_bytes.filter(|&b| b > 0),
            retention_ms_own: t.retention_ms.is_some(),
            retention_bytes_own: t.retention_bytes.is_some(),
        })
        .collect()
}

/// Kafka's default partitioner for keyed records (Java clients): murmur2 of the key;
/// the partition is the result's low 31 bits modulo the partition count.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A task parked until there is work (or a time passes): the bridge's and the relay's.
#[derive(Default)]
pub(crate) struct Wakeup {
    waker: std::cell::Cell<Option<std::task::Waker>>,
    due: std::cell::Cell<bool>,
}

impl Wakeup {
    /// There is work: wakes the task, or makes its next wait return at once.
    pub(crate) fn wake(&self) {
        self.due.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Waits until woken, `limit` passes or `shutdown` starts.
    pub(crate) async fn wait(&self, limit: Duration, shutdown: &crate::runtime::Shutdown) {
        let due = poll_fn(|cx| {
            if self.due.replace(false) {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        });
        let _ = glommio::timer::timeout(limit, async {
            futures_lite::future::or(due, shutdown.wait()).await;
            Ok(())
        })
        .await;
    }
}

/// A flag a task waits for, set once.
#[derive(Default)]
pub(crate) struct Latch {
    set: std::cell::Cell<bool>,
    wakeup: Wakeup,
}

impl Latch {
    /// Sets it: its waiter goes on.
    pub(crate) fn set(&self) {
        self.set.set(true);
        self.wakeup.wake();
    }

    /// Waits until it is set, or `shutdown` starts.
    pub(crate) async fn wait_set(&self, shutdown: &crate::runtime::Shutdown) {
        while !self.set.get() && !shutdown.is_stopping() {
            self.wakeup.wait(Duration::from_secs(1), shutdown).await;
        }
    }
}

/// A plain record (no producer id, no headers) at `offset` within its batch, for the
/// batches the broker and the CLI build with `kafka-protocol`'s encoder.
pub fn plain_record(
    key: Option<Bytes>,
    value: Bytes,
    offset: i64,
    timestamp_ms: i64,
) -> kafka_protocol::records::Record {
    kafka_protocol::records::Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: kafka_protocol::records::TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp: timestamp_ms,
        key,
        value: Some(value),
        headers: kafka_protocol::indexmap::IndexMap::new(),
    }
}

/// The shard that owns `partition` of `topic` among `shards`.
pub fn partition_owner(topic: &str, partition: u32, shards: usize) -> ShardId {
    let spread = stable_hash(topic.as_bytes()).wrapping_add(u64::from(partition));
    ShardId::from_index((spread % shards as u64) as usize)
}

/// Why a Kafka request on a partition failed; the door maps each to its error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaError {
    /// No such topic or partition.
    UnknownTopicOrPartition,
    /// A produced batch is damaged (see [`BatchError`]).
    Batch(BatchError),
    /// A batch larger than the log takes in one record.
    RecordTooLarge,
    /// A fetch or lookup outside the offsets kept.
    OffsetOutOfRange,
    /// The log failed (a full disk, a failed write); nothing was acknowledged.
    Storage,
    /// An idempotent producer's batch after a gap in its sequence numbers.
    OutOfOrderSequence,
    /// A batch from an idempotent producer fenced by a newer epoch of its id.
    InvalidProducerEpoch,
}

/// One partition's part of a fetch.
#[derive(Debug, Clone)]
pub struct FetchWant {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: u32,
    /// The first offset wanted.
    pub offset: i64,
    /// Bytes of batches wanted at most (at least one batch is served if any).
    pub max_bytes: u32,
}

/// One partition's answer to a fetch.
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    /// Why nothing was read, if so.
    pub error: Option<KafkaError>,
    /// Where consumers may read up to.
    pub high_watermark: i64,
    /// The first offset kept.
    pub log_start: i64,
    /// Whole batches from the one holding the offset asked for on.
    pub records: Bytes,
}

/// An offset lookup (Kafka's ListOffsets) of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The first offset kept.
    Earliest,
    /// The offset the next record gets (the high watermark).
    Latest,
    /// The first batch with a record stamped at or after this time (ms).
    Time(i64),
    /// The batch with the newest timestamp.
    NewestTimestamp,
}

/// A request to the shard owning the partitions it names.
#[derive(Debug)]
pub enum KafkaRequest {
    /// Append the batches of `records` to a partition.
    Produce {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: u32,
        /// One or more record batches, as the producer sent them.
        records: Bytes,
    },
    /// Read partitions.
    Fetch {
        /// What to read.
        wants: Vec<FetchWant>,
        /// Bytes of batches to read at most, in all (at least one batch).
        budget: usize,
    },
    /// Answer once any of these partitions has offsets at or past the one given (or
    /// after `wait`).
    Watch {
        /// `(topic, partition, offset)`.
        wants: Vec<(Arc<str>, u32, i64)>,
        /// How long at most.
        wait: Duration,
    },
    /// A consumer group call, on the group's coordinator.
    Group {
        /// The group.
        group: Arc<str>,
        /// The call.
        call: GroupCall,
    },
    /// The groups this shard coordinates.
    ListGroups,
    /// To shard 0: a change of the topic catalog.
    Catalog {
        /// The change.
        change: TopicChange,
        /// Check it only.
        validate_only: bool,
    },
    /// From shard 0: log and apply these changes of the catalog.
    CatalogApply(Vec<TopicChange>),
    /// From shard 0 at start: the whole catalog (its topics); make this shard's agree.
    CatalogAgree(Vec<TopicChange>),
    /// Look an offset up.
    Offset {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: u32,
        /// Which offset.
        query: OffsetQuery,
    },
}

/// An owner's answer to a [`KafkaRequest`].
#[derive(Debug)]
pub enum KafkaAnswer {
    /// The first offset given to the batches, once durable.
    Produced(Result<i64, KafkaError>),
    /// One answer per want, in order.
    Fetched(Vec<Fetched>),
    /// A watched partition grew, or the wait ended.
    Watched,
    /// `(offset, timestamp)`; timestamp -1 when the lookup has none.
    Offset(Result<(i64, i64), KafkaError>),
    /// A group call's answer.
    Group(GroupAnswer),
    /// The groups a shard coordinates.
    Groups(Vec<(Arc<str>, group::GroupState)>),
    /// A catalog change's outcome.
    Catalog(Result<(), CatalogError>),
}

impl KafkaRequest {
    /// Bytes it keeps alive on the mesh.
    pub(crate) fn cost_bytes(&self) -> usize {
        match self {
            KafkaRequest::Produce { records, .. } => records.len() + 64,
            _ => 64,
        }
    }
}

impl KafkaAnswer {
    /// Bytes it keeps alive on the mesh.
    pub(crate) fn cost_bytes(&self) -> usize {
        match self {
            KafkaAnswer::Fetched(parts) => {
                parts.iter().map(|f| f.records.len()).sum::<usize>() + 64
            }
            _ => 64,
        }
    }
}

type PartitionKey = (Arc<str>, u32);

/// The Kafka partitions this shard owns.
pub(crate) struct KafkaLog {
    /// This shard.
    id: ShardId,
    /// How many shards.
    shards: usize,
    /// Every topic served: the config file's and the catalog's.
    topics: RefCell<HashMap<Arc<str>, KafkaTopic>>,
    /// The topics of the catalog (see `catalog`).
    created: RefCell<HashMap<Arc<str>, catalog::Created>>,
    /// Shard 0: one catalog change at a time.
    catalog_turn: glommio::sync::Semaphore,
    /// Shard 0: the last topic id given out.
    last_topic_id: std::cell::Cell<u64>,
    /// Other shards: set once shard 0's catalog is applied at start.
    catalog_agreed: Latch,
    partitions: RefCell<HashMap<PartitionKey, Partition>>,
    /// The consumer groups this shard coordinates.
    groups: RefCell<HashMap<Arc<str>, group::Group>>,
    /// The last idempotent producer id given out here.
    last_producer_id: std::cell::Cell<i64>,
    /// MQTT publishes of this shard's topics on their way to Kafka.
    bridge: bridge::Bridge,
    /// Records of this shard's mapped partitions on their way to MQTT.
    relay: relay::Relay,
    /// The batches cached for fetches, oldest first, and their bytes in all (at most
    /// [`TAIL_CACHE_BYTES`]).
    tail: RefCell<(std::collections::VecDeque<PartitionKey>, usize)>,
}

/// A Kafka record read back from the log at start, in log order.
#[derive(Debug)]
pub enum RecoveredKafka {
    /// A batch.
    Batch(RecoveredBatch),
    /// A change of the topic catalog, logged at a WAL offset.
    Topic(TopicChange, u64),
}

/// A batch read back from the log at start.
#[derive(Debug)]
pub struct RecoveredBatch {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Where it is.
    pub entry: BatchEntry,
    /// An idempotent producer's `(id, epoch, first sequence)`.
    pub producer: Option<(i64, i16, i32)>,
}

/// Reads a `kafka_batch` record's header; `None` if the body is not one.
pub fn decode_record(record: &RecordRef<'_>) -> Option<RecoveredBatch> {
    let (partition, topic, batch) = split_body(record.body)?;
    let header = batch::check_stored(batch)?;
    Some(RecoveredBatch {
        topic: topic.to_string(),
        partition,
        entry: BatchEntry {
            base: batch::base_offset(batch),
            records: header.records,
            wal: record.offset.0,
            max_timestamp_ms: header.max_timestamp_ms,
            logged_ms: record.timestamp_ms,
            bytes: u32::try_from(batch.len()).ok()?,
        },
        producer: (header.producer_id >= 0).then_some((
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
        )),
    })
}

fn split_body(body: &[u8]) -> Option<(u32, &str, &[u8])> {
    let partition = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    let len = usize::from(u16::from_le_bytes(body.get(4..6)?.try_into().ok()?));
    let topic = std::str::from_utf8(body.get(6..6 + len)?).ok()?;
    Some((partition, topic, &body[6 + len..]))
}

fn body_prefix(topic: &str, partition: u32) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(6 + topic.len());
    prefix.extend_from_slice(&partition.to_le_bytes());
    prefix.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    prefix.extend_from_slice(topic.as_bytes());
    prefix
}

fn storage_error(e: &WalError) -> KafkaError {
    match e {
        WalError::RecordTooLarge { .. } => KafkaError::RecordTooLarge,
        _ => KafkaError::Storage,
    }
}

impl KafkaLog {
    /// The partitions of `config` this shard owns (`id` of `shards`), empty until
    /// [`KafkaLog::recover`].
    pub(crate) fn new(config: &Config, id: ShardId, shards: usize) -> Self {
        let topics: HashMap<Arc<str>, KafkaTopic> = topics_of(config)
            .into_iter()
            .map(|t| (Arc::clone(&t.name), t))
            .collect();
        let mut partitions = HashMap::new();
        for topic in topics.values() {
            for p in 0..topic.partitions {
                if partition_owner(&topic.name, p, shards) == id {
                    partitions.insert((Arc::clone(&topic.name), p), Partition::default());
                }
            }
        }
        KafkaLog {
            id,
            shards,
            topics: RefCell::new(topics),
            created: RefCell::new(HashMap::new()),
            catalog_turn: glommio::sync::Semaphore::new(1),
            last_topic_id: std::cell::Cell::new(0),
            catalog_agreed: Latch::default(),
            partitions: RefCell::new(partitions),
            groups: RefCell::new(HashMap::new()),
            last_producer_id: std::cell::Cell::new(0),
            bridge: bridge::Bridge::new(config),
            relay: relay::Relay::new(config),
            tail: RefCell::new((std::collections::VecDeque::new(), 0)),
        }
    }

    /// Applies a catalog change logged at `wal`; returns whether the topic's earlier
    /// partitions and commits are gone (deleted, or created anew; a `Keep` of a topic
    /// not known here yet starts it without dropping anything). A change of a topic
    /// the config file now holds is left out: the config file's wins.
    fn apply(&self, change: &TopicChange, wal: u64, config: &Config) -> bool {
        let name = change.name();
        if config.kafka_topics.iter().any(|t| *t.name == **name) {
            tracing::warn!(
                shard = self.id.index(),
                topic = &**name,
                "a created topic of this name is left out: the config file's kafka_topics holds it"
            );
            return false;
        }
        let mut created = self.created.borrow_mut();
        let before = created.get(name).map(|c| c.id);
        let same = match change {
            TopicChange::Keep { id, .. } => before.is_none_or(|b| b == *id),
            TopicChange::Create { .. } | TopicChange::Delete { .. } => false,
        };
        if let TopicChange::Create { id, spec, .. } | TopicChange::Keep { id, spec, .. } = change {
            self.topics
                .borrow_mut()
                .insert(Arc::clone(name), spec.topic(Arc::clone(name), *id, config));
            created.insert(
                Arc::clone(name),
                catalog::Created {
                    id: *id,
                    spec: *spec,
                    wal,
                },
            );
            self.last_topic_id.set(self.last_topic_id.get().max(*id));
        }
        if same {
            // Kept: the settings may change; a topic not known yet gets its partitions.
            let mut partitions = self.partitions.borrow_mut();
            for p in 0..created.get(name).map_or(0, |c| c.spec.partitions) {
                if partition_owner(name, p, self.shards) == self.id {
                    partitions.entry((Arc::clone(name), p)).or_default();
                }
            }
            return false;
        }
        // The topic's partitions here start over (or end): waiting fetches see it.
        let mut partitions = self.partitions.borrow_mut();
        let mut freed = 0;
        partitions.retain(|(topic, _), part| {
            let keep = topic != name;
            if !keep {
                part.wake_waiters();
                freed += part.cached_bytes();
            }
            keep
        });
        let mut tail = self.tail.borrow_mut();
        tail.1 = tail.1.saturating_sub(freed);
        match change {
            TopicChange::Create { spec, .. } | TopicChange::Keep { spec, .. } => {
                for p in 0..spec.partitions {
                    if partition_owner(name, p, self.shards) == self.id {
                        partitions.insert((Arc::clone(name), p), Partition::default());
                    }
                }
            }
            TopicChange::Delete { .. } => {
                created.remove(name);
                self.topics.borrow_mut().remove(name);
            }
        }
        true
    }

    /// Fills the partitions from the batches and catalog changes the log held at
    /// start (in log order); returns, per topic deleted or created anew, the WAL offset
    /// from which its commits count. Batches of topics or partitions no longer served
    /// are left out: their segments go with retention.
    ///
    /// A batch of a topic not known at its place in the log waits: a `Keep` record
    /// further on (the topic logged again once the segment with its creation went)
    /// takes it; a `Create` or `Delete` of the name, or the end of the log, drops it.
    /// The log loses segments only from its start, so the batches before a `Keep` with
    /// no other record of the name between are of the topic it keeps.
    pub(crate) fn recover(
        &self,
        recovered: Vec<RecoveredKafka>,
        config: &Config,
    ) -> HashMap<Arc<str>, u64> {
        let mut fresh = HashMap::new();
        let mut waiting: HashMap<Arc<str>, Vec<RecoveredBatch>> = HashMap::new();
        for item in recovered {
            match item {
                RecoveredKafka::Batch(batch) => {
                    if self.topics.borrow().contains_key(batch.topic.as_str()) {
                        self.recover_batch(batch);
                    } else {
                        let name: Arc<str> = Arc::from(batch.topic.as_str());
                        waiting.entry(name).or_default().push(batch);
                    }
                }
                RecoveredKafka::Topic(change, wal) => {
                    if self.apply(&change, wal, config) {
                        fresh.insert(Arc::clone(change.name()), wal);
                    }
                    let held = waiting.remove(change.name());
                    if let (TopicChange::Keep { .. }, Some(held)) = (&change, held) {
                        for batch in held {
                            self.recover_batch(batch);
                        }
                    }
                }
            }
        }
        fresh
    }

    fn recover_batch(&self, batch: RecoveredBatch) {
        let mut partitions = self.partitions.borrow_mut();
        let key: PartitionKey = (Arc::from(batch.topic.as_str()), batch.partition);
        if let Some(partition) = partitions.get_mut(&key) {
            let entry = batch.entry;
            partition.recover(entry);
            if let Some((producer, epoch, first)) = batch.producer {
                partition.record_sequence(
                    producer,
                    epoch,
                    first,
                    entry.records,
                    entry.base,
                    entry.logged_ms,
                );
            }
        }
    }
}

impl KafkaLog {
    /// A batch of `bytes` was cached in `key`'s partition: the oldest cached batches of
    /// the shard go until the cache is back within [`TAIL_CACHE_BYTES`].
    fn note_cached(
        &self,
        partitions: &mut HashMap<PartitionKey, Partition>,
        key: &PartitionKey,
        bytes: usize,
    ) {
        let mut tail = self.tail.borrow_mut();
        let (order, total) = &mut *tail;
        order.push_back(key.clone());
        *total += bytes;
        while *total > TAIL_CACHE_BYTES {
            let Some(oldest) = order.pop_front() else {
                break;
            };
            // A partition deleted meanwhile took its batches with it: they were
            // counted, so its entries count nothing now.
            let freed = partitions
                .get_mut(&oldest)
                .map_or(0, Partition::uncache_oldest);
            *total = total.saturating_sub(freed);
            if order.is_empty() {
                *total = 0;
            }
        }
    }
}

impl Broker {
    /// The topics the Kafka door serves.
    pub fn kafka_topics(&self) -> Vec<KafkaTopic> {
        let mut topics: Vec<KafkaTopic> = self.kafka.topics.borrow().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    fn kafka_partition_known(&self, topic: &str, partition: u32) -> bool {
        self.kafka
            .topics
            .borrow()
            .get(topic)
            .is_some_and(|t| partition < t.partitions)
    }

    fn kafka_owner(&self, topic: &str, partition: u32) -> ShardId {
        partition_owner(topic, partition, self.mesh.shards())
    }

    /// Sends `request` to shard `to` and waits for its answer.
    async fn ask_kafka(&self, to: ShardId, request: KafkaRequest) -> KafkaAnswer {
        let id = self.requests.open(1);
        self.post(to, ShardMsg::Kafka { id, request });
        match self.requests.replies(id).await.pop() {
            Some(Reply::Kafka(answer)) => answer,
            _ => KafkaAnswer::Produced(Err(KafkaError::Storage)),
        }
    }

    /// Appends the record batches of `records` to `partition` of `topic` and returns the
    /// offset of the first record once they are as durable as the fsync policy promises.
    pub async fn kafka_produce(
        self: &Rc<Self>,
        topic: Arc<str>,
        partition: u32,
        records: Bytes,
    ) -> Result<i64, KafkaError> {
        if !self.kafka_partition_known(&topic, partition) {
            return Err(KafkaError::UnknownTopicOrPartition);
        }
        let owner = self.kafka_owner(&topic, partition);
        if owner == self.id {
            return self.kafka_append(&topic, partition, records).await;
        }
        let request = KafkaRequest::Produce {
            topic,
            partition,
            records,
        };
        match self.ask_kafka(owner, request).await {
            KafkaAnswer::Produced(result) => result,
            _ => Err(KafkaError::Storage),
        }
    }

    /// Reads every partition of `wants` (answers in the same order), at most
    /// `max_bytes` of batches in all (and [`FETCH_BYTES_MAX`]; every owner serves at
    /// least one batch). When the batches found come to fewer than `min_bytes`, waits up
    /// to `wait` for more and reads again.
    pub async fn kafka_fetch(
        self: &Rc<Self>,
        wants: Vec<FetchWant>,
        wait: Duration,
        min_bytes: usize,
        max_bytes: usize,
    ) -> Vec<Fetched> {
        let deadline = Instant::now() + wait.min(FETCH_WAIT_MAX);
        let max_bytes = max_bytes.min(FETCH_BYTES_MAX);
        loop {
            let found = self.kafka_read_all(&wants, max_bytes).await;
            let bytes: usize = found.iter().map(|f| f.records.len()).sum();
            let now = Instant::now();
            if bytes >= min_bytes.max(1)
                || now >= deadline
                || found.iter().all(|f| f.error.is_some())
            {
                return found;
            }
            // Wait for any partition to grow past what was read, then read again.
            let mut by_owner: HashMap<ShardId, Vec<(Arc<str>, u32, i64)>> = HashMap::new();
            for (want, got) in wants.iter().zip(&found) {
                if got.error.is_none() {
                    by_owner
                        .entry(self.kafka_owner(&want.topic, want.partition))
                        .or_default()
                        .push((
                            Arc::clone(&want.topic),
                            want.partition,
                            got.high_watermark.max(want.offset),
                        ));
                }
            }
            // One answer ends the wait: the first owner whose partition grew (or whose
            // wait ended). The later answers find the request gone and are dropped.
            let id = self.requests.open(1);
            for (owner, watched) in by_owner {
                let request = KafkaRequest::Watch {
                    wants: watched,
                    wait: deadline - now,
                };
                self.post(owner, ShardMsg::Kafka { id, request });
            }
            let _ = self.requests.replies(id).await;
        }
    }

    async fn kafka_read_all(
        self: &Rc<Self>,
        wants: &[FetchWant],
        max_bytes: usize,
    ) -> Vec<Fetched> {
        let mut found: Vec<Fetched> = vec![Fetched::default(); wants.len()];
        let mut by_owner: HashMap<ShardId, Vec<usize>> = HashMap::new();
        for (i, want) in wants.iter().enumerate() {
            if !self.kafka_partition_known(&want.topic, want.partition) {
                found[i].error = Some(KafkaError::UnknownTopicOrPartition);
                continue;
            }
            let owner = self.kafka_owner(&want.topic, want.partition);
            by_owner.entry(owner).or_default().push(i);
        }
        // Each owner gets its share of the bytes.
        let budget = (max_bytes / by_owner.len().max(1)).max(1);
        let local = by_owner.remove(&self.id);
        // Ask every other owner at once, read here meanwhile, then collect.
        let asked: Vec<(Vec<usize>, u64)> = by_owner
            .into_iter()
            .map(|(owner, indices)| {
                let id = self.requests.open(1);
                let request = KafkaRequest::Fetch {
                    wants: indices.iter().map(|&i| wants[i].clone()).collect(),
                    budget,
                };
                self.post(owner, ShardMsg::Kafka { id, request });
                (indices, id)
            })
            .collect();
        if let Some(indices) = local {
            let mine: Vec<FetchWant> = indices.iter().map(|&i| wants[i].clone()).collect();
            for (i, part) in indices
                .into_iter()
                .zip(self.kafka_read_many(&mine, budget).await)
            {
                found[i] = part;
            }
        }
        for (indices, id) in asked {
            let answer = self.requests.replies(id).await.pop();
            let Some(Reply::Kafka(KafkaAnswer::Fetched(parts))) = answer else {
                for i in indices {
                    found[i].error = Some(KafkaError::Storage);
                }
                continue;
            };
            for (i, part) in indices.into_iter().zip(parts) {
                found[i] = part;
            }
        }
        found
    }

    /// Looks an offset of `partition` of `topic` up: `(offset, timestamp)`.
    pub async fn kafka_offset(
        self: &Rc<Self>,
        topic: Arc<str>,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<(i64, i64), KafkaError> {
        if !self.kafka_partition_known(&topic, partition) {
            return Err(KafkaError::UnknownTopicOrPartition);
        }
        let owner = self.kafka_owner(&topic, partition);
        if owner == self.id {
            return self.kafka_lookup(&topic, partition, query);
        }
        let request = KafkaRequest::Offset {
            topic,
            partition,
            query,
        };
        match self.ask_kafka(owner, request).await {
            KafkaAnswer::Offset(result) => result,
            _ => Err(KafkaError::Storage),
        }
    }

    /// Owner: a request from shard `from` (this one included). Appends and watches wait,
    /// so they run as tasks of their own: the mesh receiver never waits on them.
    pub(crate) fn on_kafka_request(self: &Rc<Self>, from: ShardId, id: u64, request: KafkaRequest) {
        let broker = Rc::clone(self);
        glommio::spawn_local(async move {
            let answer = match request {
                KafkaRequest::Produce {
                    topic,
                    partition,
                    records,
                } => KafkaAnswer::Produced(broker.kafka_append(&topic, partition, records).await),
                KafkaRequest::Fetch { wants, budget } => {
                    KafkaAnswer::Fetched(broker.kafka_read_many(&wants, budget).await)
                }
                KafkaRequest::Watch { wants, wait } => {
                    broker.kafka_watch(&wants, wait).await;
                    KafkaAnswer::Watched
                }
                KafkaRequest::Offset {
                    topic,
                    partition,
                    query,
                } => KafkaAnswer::Offset(broker.kafka_lookup(&topic, partition, query)),
                KafkaRequest::Group { group, call } => {
                    KafkaAnswer::Group(broker.on_group_call(group, call).await)
                }
                KafkaRequest::ListGroups => KafkaAnswer::Groups(broker.kafka_groups_here()),
                KafkaRequest::Catalog {
                    change,
                    validate_only,
                } => KafkaAnswer::Catalog(broker.kafka_keep_change(change, validate_only).await),
                KafkaRequest::CatalogApply(changes) => {
                    let mut result = Ok(());
                    for change in &changes {
                        if broker.kafka_log_change(change).await.is_err() {
                            result = Err(CatalogError::Storage);
                        }
                    }
                    KafkaAnswer::Catalog(result)
                }
                KafkaRequest::CatalogAgree(state) => KafkaAnswer::Catalog(
                    broker
                        .kafka_agree(state)
                        .await
                        .map_err(|_| CatalogError::Storage),
                ),
            };
            broker.post(from, ShardMsg::KafkaReply { id, answer });
        })
        .detach();
    }

    /// Owner: appends the batches, then waits until they are durable.
    async fn kafka_append(
        &self,
        topic: &str,
        partition: u32,
        records: Bytes,
    ) -> Result<i64, KafkaError> {
        let headers = batch::split(&records).map_err(KafkaError::Batch)?;
        let Some(log) = self.log.get() else {
            return Err(KafkaError::Storage);
        };
        let key: PartitionKey = (Arc::from(topic), partition);
        let prefix = body_prefix(topic, partition);
        let mut first = None;
        let mut last = None;
        let mut at = 0;
        for header in headers {
            let sent = &records[at..at + header.bytes];
            at += header.bytes;
            log.wal
                .reserve(prefix.len() + sent.len())
                .await
                .map_err(|e| storage_error(&e))?;
            // No await from here to the append: the offsets given are the log's order.
            let mut partitions = self.kafka.partitions.borrow_mut();
            let part = partitions
                .get_mut(&key)
                .ok_or(KafkaError::UnknownTopicOrPartition)?;
            let idempotent = header.producer_id >= 0;
            if idempotent {
                let (producer, epoch, seq) = (
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                );
                match part.check_sequence(producer, epoch, seq, header.records) {
                    Sequence::Next => {}
                    Sequence::Duplicate(offset) => {
                        // A resend of a batch already here: answered with its offset,
                        // once it is durable, and not appended again.
                        let Some(entry) = part.find(offset).and_then(|i| part.entry(i)).copied()
                        else {
                            return Err(KafkaError::OutOfOrderSequence);
                        };
                        first.get_or_insert(offset);
                        if last.is_none_or(|(wal, _)| wal < Offset(entry.wal)) {
                            last = Some((Offset(entry.wal), entry.end()));
                        }
                        continue;
                    }
                    Sequence::OutOfOrder => return Err(KafkaError::OutOfOrderSequence),
                    Sequence::StaleEpoch => return Err(KafkaError::InvalidProducerEpoch),
                }
            }
            let base = part.next();
            let now = unix_ms();
            let base_bytes = base.to_be_bytes();
            let leader_epoch = 0i32.to_be_bytes();
            let parts: [&[u8]; 5] = [
                &prefix,
                &base_bytes,
                &sent[8..12],
                &leader_epoch,
                &sent[16..],
            ];
            let wal = log
                .wal
                .append(RECORD_KAFKA_BATCH, now, &parts)
                .map_err(|e| storage_error(&e))?;
            let entry = BatchEntry {
                base,
                records: header.records,
                wal: wal.0,
                max_timestamp_ms: header.max_timestamp_ms,
                logged_ms: now,
                bytes: header.bytes as u32,
            };
            part.push(entry);
            let mut stored = BytesMut::with_capacity(sent.len());
            for piece in &parts[1..] {
                stored.extend_from_slice(piece);
            }
            part.cache(base, entry.end(), stored.freeze());
            if idempotent {
                part.record_sequence(
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                    header.records,
                    base,
                    now,
                );
            }
            self.kafka.note_cached(&mut partitions, &key, sent.len());
            first.get_or_insert(base);
            last = Some((wal, entry.end()));
        }
        let (Some(first), Some((wal, end))) = (first, last) else {
            return Err(KafkaError::Batch(BatchError::Invalid));
        };
        log.wal
            .wait_durable(wal)
            .await
            .map_err(|e| storage_error(&e))?;
        if let Some(part) = self.kafka.partitions.borrow_mut().get_mut(&key) {
            part.durable_to(end);
        }
        self.kafka_relay_grown(topic);
        Ok(first)
    }

    /// Owner: reads `wants` in order, `budget` bytes of batches in all: a partition
    /// read once the budget is spent only tells where it stands (no records), except
    /// that the first batch found is always served.
    async fn kafka_read_many(&self, wants: &[FetchWant], budget: usize) -> Vec<Fetched> {
        let mut left = budget;
        let mut parts = Vec::with_capacity(wants.len());
        for want in wants {
            let mut want = want.clone();
            let served_some = left < budget;
            if served_some {
                want.max_bytes = want.max_bytes.min(u32::try_from(left).unwrap_or(u32::MAX));
            }
            let part = if served_some && left == 0 {
                self.kafka_position(&want)
            } else {
                self.kafka_read(&want).await
            };
            left = left.saturating_sub(part.records.len());
            parts.push(part);
        }
        parts
    }

    /// Owner: where a partition stands, without reading it.
    fn kafka_position(&self, want: &FetchWant) -> Fetched {
        let partitions = self.kafka.partitions.borrow();
        match partitions.get(&(Arc::clone(&want.topic), want.partition)) {
            Some(part) => Fetched {
                high_watermark: part.high_watermark(),
                log_start: part.log_start(),
                ..Fetched::default()
            },
            None => Fetched {
                error: Some(KafkaError::UnknownTopicOrPartition),
                ..Fetched::default()
            },
        }
    }

    /// Owner: reads one partition from the batch holding `want.offset`, up to the high
    /// watermark, jumping over the log's other records batch by batch.
    async fn kafka_read(&self, want: &FetchWant) -> Fetched {
        let key: PartitionKey = (Arc::clone(&want.topic), want.partition);
        let (high_watermark, log_start, next) = {
            let partitions = self.kafka.partitions.borrow();
            let Some(part) = partitions.get(&key) else {
                return Fetched {
                    error: Some(KafkaError::UnknownTopicOrPartition),
                    ..Fetched::default()
                };
            };
            (part.high_watermark(), part.log_start(), part.next())
        };
        let mut fetched = Fetched {
            high_watermark,
            log_start,
            ..Fetched::default()
        };
        if want.offset < log_start || want.offset > next {
            fetched.error = Some(KafkaError::OffsetOutOfRange);
            return fetched;
        }
        let Some(log) = self.log.get() else {
            fetched.error = Some(KafkaError::Storage);
            return fetched;
        };
        let max_bytes = want.max_bytes as usize;
        let mut out = BytesMut::new();
        let mut offset = want.offset;
        while offset < high_watermark && (out.is_empty() || out.len() < max_bytes) {
            // The newest batches come from memory while they are cached.
            if self.kafka_read_cached(&key, &mut offset, high_watermark, max_bytes, &mut out) {
                continue;
            }
            // The next batch to read, looked up again each round: retention may drop
            // batches while the log is read.
            let from = {
                let partitions = self.kafka.partitions.borrow();
                let Some(part) = partitions.get(&key) else {
                    break;
                };
                let Some(entry) = part.find(offset).and_then(|i| part.entry(i)) else {
                    break;
                };
                entry.wal
            };
            let budget = max_bytes.saturating_sub(out.len()).max(1);
            let read = log
                .wal
                .read_from(Offset(from), budget, |record| {
                    if record.kind != RECORD_KAFKA_BATCH
                        || (!out.is_empty() && out.len() >= max_bytes)
                    {
                        return;
                    }
                    let Some((p, t, stored)) = split_body(record.body) else {
                        return;
                    };
                    if p != want.partition || t != &*want.topic {
                        return;
                    }
                    let Some(header) = batch::check_stored(stored) else {
                        return;
                    };
                    let base = batch::base_offset(stored);
                    let end = base + i64::from(header.records);
                    if end <= offset || base >= high_watermark {
                        return;
                    }
                    out.extend_from_slice(stored);
                    offset = end;
                })
                .await;
            match read {
                Ok(_) => {}
                Err(WalError::NotRetained { .. }) if !out.is_empty() => break,
                Err(WalError::NotRetained { .. }) => {
                    fetched.error = Some(KafkaError::OffsetOutOfRange);
                    return fetched;
                }
                Err(e) => {
                    tracing::error!(shard = self.id.index(), topic = &*want.topic, partition = want.partition, error = %e, "reading a Kafka partition failed");
                    fetched.error = Some(KafkaError::Storage);
                    return fetched;
                }
            }
            // A read that found nothing of this partition past `offset` ends it.
            let partitions = self.kafka.partitions.borrow();
            let next_entry = partitions
                .get(&key)
                .and_then(|p| p.find(offset).and_then(|i| p.entry(i)).map(|e| e.wal));
            if next_entry.is_none_or(|wal| wal <= from) {
                break;
            }
        }
        fetched.records = out.freeze();
        fetched
    }

    /// Owner: appends to `out` the cached batches from the one holding `*offset` on,
    /// below `high_watermark`, while `out` is under `max_bytes` (or empty); whether
    /// any was.
    fn kafka_read_cached(
        &self,
        key: &PartitionKey,
        offset: &mut i64,
        high_watermark: i64,
        max_bytes: usize,
        out: &mut BytesMut,
    ) -> bool {
        let partitions = self.kafka.partitions.borrow();
        let Some(part) = partitions.get(key) else {
            return false;
        };
        let mut served = false;
        while *offset < high_watermark && (out.is_empty() || out.len() < max_bytes) {
            let Some((stored, end)) = part.cached(*offset) else {
                break;
            };
            if end > high_watermark {
                break;
            }
            out.extend_from_slice(stored);
            *offset = end;
            served = true;
        }
        served
    }

    /// Owner: waits until any of `wants` has offsets at or past the one given, or
    /// `wait` passes.
    async fn kafka_watch(&self, wants: &[(Arc<str>, u32, i64)], wait: Duration) {
        let grown = poll_fn(|cx| {
            let mut partitions = self.kafka.partitions.borrow_mut();
            for (topic, partition, offset) in wants {
                if let Some(part) = partitions.get_mut(&(Arc::clone(topic), *partition)) {
                    if part.high_watermark() > *offset {
                        return Poll::Ready(());
                    }
                    part.wait(cx.waker());
                } else {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        });
        let stop = self.shutdown.wait();
        let _ = glommio::timer::timeout(wait, async {
            futures_lite::future::or(grown, stop).await;
            Ok(())
        })
        .await;
    }

    /// Owner: one offset lookup.
    fn kafka_lookup(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<(i64, i64), KafkaError> {
        let partitions = self.kafka.partitions.borrow();
        let part = partitions
            .get(&(Arc::from(topic), partition))
            .ok_or(KafkaError::UnknownTopicOrPartition)?;
        Ok(match query {
            OffsetQuery::Earliest => (part.log_start(), -1),
            OffsetQuery::Latest => (part.high_watermark(), -1),
            OffsetQuery::Time(ts) => part
                .offset_for_time(ts)
                .filter(|(offset, _)| *offset < part.high_watermark())
                .unwrap_or((-1, -1)),
            OffsetQuery::NewestTimestamp => part
                .newest_timestamp()
                .filter(|(offset, _)| *offset < part.high_watermark())
                .unwrap_or((-1, -1)),
        })
    }

    /// A producer id for an idempotent producer (InitProducerId), unique across shards
    /// and restarts: the time in µs times the shard bound, plus this shard's index,
    /// never below the last one given.
    pub fn kafka_producer_id(&self) -> i64 {
        let shards = crate::router::SHARDS_MAX as i64;
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let from_clock = micros * shards + self.id.index() as i64;
        let id = from_clock.max(self.kafka.last_producer_id.get() + shards);
        self.kafka.last_producer_id.set(id);
        id
    }

    /// Whether any Kafka topic has a retention limit.
    pub(crate) fn kafka_has_retention(&self) -> bool {
        self.kafka
            .topics
            .borrow()
            .values()
            .any(|t| t.retention_ms.is_some() || t.retention_bytes.is_some())
    }

    /// Retention tick: drops batches past their topic's limits; returns the lowest WAL
    /// offset a partition still needs (`u64::MAX`: none).
    pub(crate) fn kafka_retention(&self, now_ms: u64) -> u64 {
        let mut partitions = self.kafka.partitions.borrow_mut();
        let topics = self.kafka.topics.borrow();
        let mut floor = u64::MAX;
        for ((topic, _), part) in partitions.iter_mut() {
            if let Some(spec) = topics.get(topic) {
                let before = spec.retention_ms.map(|ms| now_ms.saturating_sub(ms));
                part.trim(before, spec.retention_bytes);
            }
            if let Some(wal) = part.oldest_wal() {
                floor = floor.min(wal);
            }
        }
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::murmur2;

    /// Values Kafka's Java `Utils.murmur2` gives (its own test vectors).
    #[test]
    fn murmur2_matches_kafka() {
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }
}
