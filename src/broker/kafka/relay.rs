//! Kafka to MQTT over the same logs: a record produced to a Kafka topic with an
//! `mqtt_filter` is published to MQTT on the topic its key names (when the filter
//! matches the key), at QoS 1, with its headers as MQTT 5 user properties.
//!
//! The owner of each mapped partition relays it: a cursor per partition follows the
//! high watermark, reads batches as a fetch does, and publishes their records through
//! the broker as any publisher would; it moves past a read only once every MQTT owner
//! has acknowledged its publishes (logged, as durable as a PUBACK promises). The cursors
//! are logged (`kafka_relay`, kind 33) at most once a second while they move; after a
//! crash a partition is relayed again from its last mark: at least once. A first start
//! with a mapping begins at each partition's end.
//!
//! Loops are cut both ways: the publishes the relay makes carry a publisher no client
//! can have, which the MQTT to Kafka bridge skips, and the records the bridge produces
//! carry the header `shardmq-origin: mqtt`, which the relay skips.
//!
//! Not relayed: records whose key is absent, not UTF-8, not a valid MQTT topic name,
//! a `$` topic, or not matched by the mapping's filter; compressed batches (their
//! records are not decoded here); records past a partition's retention before the
//! relay reached them (reported).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use crate::config::Config;
use crate::mqtt::{ByteStr, ClientId, PublishProperties, QoS};
use crate::router::{filter_matches, validate_topic_name};
use crate::session::Message;
use crate::storage::{RecordKind, RecordRef};

use super::super::persist::unix_ms;
use super::super::{AckTo, ConnRef, Reply};
use super::{Broker, FetchWant, KafkaError, PartitionKey, Wakeup};

/// A relay cursor in its shard's log.
pub const RECORD_KAFKA_RELAY: RecordKind = RecordKind(33);

/// The publisher of the relay's MQTT publishes: not a client id any client can have
/// (MQTT strings exclude U+0000), so the bridge can tell them apart.
pub const RELAY_PUBLISHER: &str = "\u{0}kafka";

/// [`RELAY_PUBLISHER`] as the messages name it, one copy for all of them.
static RELAY_ID: std::sync::OnceLock<ClientId> = std::sync::OnceLock::new();

/// The header the bridge puts on its records, so they are not relayed back.
pub const ORIGIN_HEADER: &str = "shardmq-origin";

/// Tokens at and above this in an `AckTo` name a relay round waiting for its publishes'
/// acknowledgements (a request id), not a connection: connection tokens count up from 1.
pub const RELAY_TOKEN: u64 = 1 << 63;

/// Bytes of a partition read per round.
const READ_BYTES: u32 = 1 << 20;
/// How often the cursors are logged while they move.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// How often partitions are looked at when no append woke the relay.
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// One shard's relay state.
#[derive(Default)]
pub(crate) struct Relay {
    /// Kafka topic → the MQTT filter its keys must match.
    filters: HashMap<Arc<str>, String>,
    /// Per owned mapped partition: the next offset to relay.
    cursors: RefCell<HashMap<PartitionKey, i64>>,
    /// The relay task, parked until a mapped partition grows.
    wakeup: Wakeup,
}

impl Relay {
    pub(crate) fn new(config: &Config) -> Self {
        Relay {
            filters: config
                .kafka_topics
                .iter()
                .filter_map(|t| {
                    t.mqtt_filter
                        .as_ref()
                        .map(|f| (Arc::from(t.name.as_str()), f.clone()))
                })
                .collect(),
            cursors: RefCell::new(HashMap::new()),
            wakeup: Wakeup::default(),
        }
    }
}

/// Reads a `kafka_relay` record: `(topic, partition, next offset)`.
pub fn decode_mark(record: &RecordRef<'_>) -> Option<(String, u32, i64)> {
    let body = record.body;
    let partition = u32::from_le_bytes(body.get(..4)?.try_into().ok()?);
    let next = i64::from_le_bytes(body.get(4..12)?.try_into().ok()?);
    let topic = std::str::from_utf8(body.get(12..)?).ok()?;
    Some((topic.to_string(), partition, next))
}

fn encode_mark(topic: &str, partition: u32, next: i64) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + topic.len());
    body.extend_from_slice(&partition.to_le_bytes());
    body.extend_from_slice(&next.to_le_bytes());
    body.extend_from_slice(topic.as_bytes());
    body
}

impl Broker {
    /// Starts the relay of this shard's mapped partitions from `marks` (the last cursor
    /// logged per partition; a partition without one starts at its end).
    pub(crate) fn spawn_kafka_relay(self: &Rc<Self>, marks: HashMap<(String, u32), i64>) {
        let relay = &self.kafka.relay;
        if relay.filters.is_empty() {
            return;
        }
        {
            let partitions = self.kafka.partitions.borrow();
            let mut cursors = relay.cursors.borrow_mut();
            for (key, part) in partitions.iter() {
                if !relay.filters.contains_key(&key.0) {
                    continue;
                }
                let mark = marks.get(&(key.0.to_string(), key.1)).copied();
                cursors.insert(key.clone(), mark.unwrap_or(part.next()));
            }
            if cursors.is_empty() {
                return;
            }
        }
        let broker = Rc::clone(self);
        glommio::spawn_local(async move {
            let mut marked: HashMap<PartitionKey, i64> = HashMap::new();
            let mut marked_at = Instant::now() - MARK_EVERY;
            while !broker.shutdown.is_stopping() {
                let mut moved = false;
                let keys: Vec<PartitionKey> = broker.kafka.relay.cursors.borrow().keys().cloned().collect();
                for key in keys {
                    match broker.relay_round(&key).await {
                        Ok(more) => moved |= more,
                        Err(why) => {
                            tracing::warn!(shard = broker.id.index(), topic = &*key.0, partition = key.1, %why, "Kafka to MQTT relay: retrying");
                        }
                    }
                }
                if marked_at.elapsed() >= MARK_EVERY {
                    broker.log_relay_marks(&mut marked).await;
                    marked_at = Instant::now();
                }
                if !moved {
                    broker.kafka.relay.wakeup.wait(IDLE_LOOK, &broker.shutdown).await;
                }
            }
        })
        .detach();
    }

    /// Partition `topic` grew (durably): wakes the relay if it is mapped.
    pub(crate) fn kafka_relay_grown(&self, topic: &str) {
        let relay = &self.kafka.relay;
        if relay.filters.is_empty() || !relay.filters.contains_key(topic) {
            return;
        }
        relay.wakeup.wake();
    }

    /// Logs the cursors that moved since `marked`.
    async fn log_relay_marks(&self, marked: &mut HashMap<PartitionKey, i64>) {
        let Some(log) = self.log.get() else { return };
        let moved: Vec<(PartitionKey, i64)> = self
            .kafka
            .relay
            .cursors
            .borrow()
            .iter()
            .filter(|(k, v)| marked.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (key, next) in moved {
            let body = encode_mark(&key.0, key.1, next);
            if log.wal.reserve(body.len()).await.is_err() {
                return;
            }
            if log
                .wal
                .append(RECORD_KAFKA_RELAY, unix_ms(), &[&body])
                .is_ok()
            {
                marked.insert(key, next);
            }
        }
    }

    /// Relays what partition `key` has past its cursor (one read): whether it moved.
    async fn relay_round(self: &Rc<Self>, key: &PartitionKey) -> Result<bool, String> {
        let Some(&from) = self.kafka.relay.cursors.borrow().get(key) else {
            return Ok(false);
        };
        let want = FetchWant {
            topic: Arc::clone(&key.0),
            partition: key.1,
            offset: from,
            max_bytes: READ_BYTES,
        };
        let fetched = self.kafka_read(&want).await;
        match fetched.error {
            None => {}
            Some(KafkaError::OffsetOutOfRange) if from < fetched.log_start => {
                tracing::error!(
                    shard = self.id.index(),
                    topic = &*key.0,
                    partition = key.1,
                    from,
                    first = fetched.log_start,
                    "Kafka to MQTT relay: records went with retention before they were relayed"
                );
                self.kafka
                    .relay
                    .cursors
                    .borrow_mut()
                    .insert(key.clone(), fetched.log_start);
                return Ok(true);
            }
            Some(e) => return Err(format!("{e:?}")),
        }
        if fetched.records.is_empty() {
            return Ok(false);
        }
        let filter = self
            .kafka
            .relay
            .filters
            .get(&key.0)
            .cloned()
            .unwrap_or_default();
        let limits = self.topic_limits();
        let mut messages = Vec::new();
        let mut next = from;
        let mut records = fetched.records;
        while !records.is_empty() {
            // The log holds whole, checked batches: the header always reads.
            let Some((len, end)) = batch_len_and_end(&records) else {
                return Err("a stored batch without a readable header".into());
            };
            let mut batch = records.split_to(len);
            next = next.max(end);
            let set = match RecordBatchDecoder::decode(&mut batch) {
                Ok(set) if set.compression == Compression::None => set,
                _ => {
                    // Compressed (its records are not decoded here): skipped, said.
                    tracing::warn!(
                        shard = self.id.index(),
                        topic = &*key.0,
                        partition = key.1,
                        offset = end,
                        "Kafka to MQTT relay: a compressed batch is not relayed"
                    );
                    continue;
                }
            };
            for record in set.records {
                if record.offset < from {
                    continue;
                }
                let from_mqtt = record.headers.iter().any(|(name, value)| {
                    name.as_str() == ORIGIN_HEADER && value.as_deref() == Some(&b"mqtt"[..])
                });
                if from_mqtt {
                    continue;
                }
                let Some(topic) = record
                    .key
                    .as_ref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                else {
                    continue;
                };
                if topic.starts_with('$')
                    || validate_topic_name(topic, &limits).is_err()
                    || !filter_matches(&filter, topic)
                {
                    continue;
                }
                let mut properties = PublishProperties::default();
                for (name, value) in &record.headers {
                    let Some(value) = value.as_ref().and_then(|v| std::str::from_utf8(v).ok())
                    else {
                        continue;
                    };
                    properties.user_properties.push((
                        ByteStr::from(name.to_string()),
                        ByteStr::from(value.to_string()),
                    ));
                }
                messages.push(Arc::new(Message {
                    topic: ByteStr::from(topic.to_string()),
                    payload: record.value.unwrap_or_default(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    properties,
                    publisher: ClientId::well_known(&RELAY_ID, RELAY_PUBLISHER),
                    expires_at: None,
                    log: None,
                }));
            }
        }
        if !messages.is_empty() {
            // Published as any publisher's QoS 1 messages, each acknowledged by its owner
            // once logged; the cursor moves once all are.
            let id = self.requests.open(messages.len());
            let ack = AckTo {
                conn: ConnRef {
                    shard: self.id,
                    token: RELAY_TOKEN | id,
                },
                packet_id: 0,
                refusable: true,
                exactly_once: false,
                resend: false,
            };
            for msg in messages {
                self.route_publish(msg, Some(ack)).await;
            }
            let _ = self.requests.replies(id).await;
        }
        self.kafka
            .relay
            .cursors
            .borrow_mut()
            .insert(key.clone(), next);
        Ok(next > from)
    }

    /// Whether an acknowledgement is for a relay round: records it.
    pub(crate) fn relay_acked(&self, ack: &AckTo) -> bool {
        if ack.conn.token & RELAY_TOKEN == 0 {
            return false;
        }
        self.requests
            .reply(ack.conn.token & !RELAY_TOKEN, Reply::Ack);
        true
    }
}

/// The length of the batch at the start of `bytes` and the offset after it.
fn batch_len_and_end(bytes: &Bytes) -> Option<(usize, i64)> {
    let len = usize::try_from(i32::from_be_bytes(bytes.get(8..12)?.try_into().ok()?)).ok()? + 12;
    let header = super::batch::check_stored(bytes.get(..len)?)?;
    Some((
        len,
        super::batch::base_offset(bytes) + i64::from(header.records),
    ))
}
