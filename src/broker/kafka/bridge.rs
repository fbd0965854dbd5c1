//! MQTT to Kafka over the same logs: a Kafka topic with an `mqtt_filter` receives every
//! logged MQTT publish whose topic the filter matches, as a record keyed by the MQTT
//! topic with the payload as its value and the v5 user properties as headers, in the
//! partition the key hashes to (murmur2, as Java producers place keys).
//!
//! Each shard bridges the publishes of the topics it owns, reading its own log: a
//! cursor follows the log (only what is durable), and the records it finds go to their
//! partitions' owners as ordinary produces, one batch per partition per read, waited on
//! until durable before the cursor moves past them. So a message reaches Kafka only once
//! it is as durable as its MQTT acknowledgement promises, and the bridge never holds
//! more than one read of the log in memory, whatever the publish rate: a bridge behind
//! the publishers reads further back in the log, it does not queue. The cursor holds
//! the log's retention floor.
//!
//! The cursor is logged (`kafka_bridge`, kind 32, the offset as u64 LE) at most once a
//! second while it moves; after a crash the bridge reads again from the last one logged,
//! so the records of up to that second's publishes can reach Kafka twice (at least
//! once, never lost). A first start with a mapping begins at the log's end: older
//! publishes are not bridged.
//!
//! What reaches Kafka is what the log holds: QoS 1 and 2 publishes and retained ones,
//! and QoS 0 ones with `log_qos0`; other QoS 0 publishes are not bridged.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions};

use crate::config::Config;
use crate::router::filter_matches;
use crate::storage::{Offset, RecordKind, WalError};

use super::super::durable::{decode_publish_body_even_expired, RECORD_PUBLISH};
use super::super::persist::unix_ms;
use super::relay::{ORIGIN_HEADER, RELAY_PUBLISHER};
use super::{murmur2, plain_record, Broker, PartitionKey, Wakeup};

/// The bridge's cursor in its shard's log.
pub const RECORD_KAFKA_BRIDGE: RecordKind = RecordKind(32);

/// Bytes of log read per round.
const READ_BYTES: usize = 1 << 20;
/// How often the cursor is logged while it moves.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// The wait after a failed read or produce before the bridge tries again.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// An MQTT filter bridged to a Kafka topic.
#[derive(Debug, Clone)]
struct Mapping {
    filter: String,
    topic: Arc<str>,
    partitions: u32,
}

/// One shard's bridge state.
#[derive(Default)]
pub(crate) struct Bridge {
    mappings: Vec<Mapping>,
    /// Every record of the log below it is bridged.
    cursor: Cell<u64>,
    /// The bridge task, parked until a mapped publish is logged.
    wakeup: Wakeup,
}

impl Bridge {
    pub(crate) fn new(config: &Config) -> Self {
        let mappings = config
            .kafka_topics
            .iter()
            .filter_map(|t| {
                t.mqtt_filter.as_ref().map(|filter| Mapping {
                    filter: filter.clone(),
                    topic: Arc::from(t.name.as_str()),
                    partitions: t.partitions,
                })
            })
            .collect();
        Bridge {
            mappings,
            ..Bridge::default()
        }
    }

    /// Whether any mapping wants `mqtt_topic`.
    fn wants(&self, mqtt_topic: &str) -> bool {
        self.mappings
            .iter()
            .any(|m| filter_matches(&m.filter, mqtt_topic))
    }

    /// The Kafka topics and partitions `mqtt_topic` is bridged to.
    fn targets<'a>(
        &'a self,
        mqtt_topic: &'a str,
    ) -> impl Iterator<Item = (&'a Arc<str>, u32)> + 'a {
        self.mappings
            .iter()
            .filter(move |m| filter_matches(&m.filter, mqtt_topic))
            .map(move |m| {
                (
                    &m.topic,
                    (murmur2(mqtt_topic.as_bytes()) & 0x7fff_ffff) % m.partitions,
                )
            })
    }
}

/// A record for Kafka from an MQTT publish, at `offset` within its batch.
fn record(
    topic: &str,
    payload: &Bytes,
    users: &[(crate::mqtt::ByteStr, crate::mqtt::ByteStr)],
    offset: i64,
    now_ms: i64,
) -> Record {
    let mut record = plain_record(
        Some(Bytes::copy_from_slice(topic.as_bytes())),
        payload.clone(),
        offset,
        now_ms,
    );
    // So the relay does not publish it back to MQTT.
    record.headers.insert(
        StrBytes::from_static_str(ORIGIN_HEADER),
        Some(Bytes::from_static(b"mqtt")),
    );
    for (name, value) in users {
        record.headers.insert(
            StrBytes::from_string(name.as_str().to_string()),
            Some(Bytes::copy_from_slice(value.as_str().as_bytes())),
        );
    }
    record
}

impl Broker {
    /// Whether a logged publish on `topic` is bridged to Kafka: wakes the bridge.
    pub(crate) fn kafka_bridge_logged(&self, topic: &str) {
        let bridge = &self.kafka.bridge;
        if bridge.mappings.is_empty() || !bridge.wants(topic) {
            return;
        }
        bridge.wakeup.wake();
    }

    /// The lowest log offset the bridge still needs (`u64::MAX` without mappings).
    pub(crate) fn kafka_bridge_floor(&self) -> u64 {
        if self.kafka.bridge.mappings.is_empty() {
            u64::MAX
        } else {
            self.kafka.bridge.cursor.get()
        }
    }

    /// Starts the bridge from `mark` (the last cursor logged; `None`: the log's end).
    pub(crate) fn spawn_kafka_bridge(self: &Rc<Self>, mark: Option<u64>) {
        if self.kafka.bridge.mappings.is_empty() {
            return;
        }
        let Some(log) = self.log.get() else {
            return;
        };
        let start = mark.unwrap_or(log.wal.next_offset().0);
        self.kafka.bridge.cursor.set(start);
        let broker = Rc::clone(self);
        glommio::spawn_local(async move {
            let mut marked = (mark.is_some()).then_some(start);
            let mut marked_at = Instant::now();
            while !broker.shutdown.is_stopping() {
                let cursor = broker.kafka.bridge.cursor.get();
                let mark_due = marked != Some(cursor)
                    && (marked.is_none() || marked_at.elapsed() >= MARK_EVERY);
                if mark_due && broker.log_bridge_mark().await {
                    marked = Some(cursor);
                    marked_at = Instant::now();
                }
                match broker.bridge_round().await {
                    Ok(true) => continue,
                    Ok(false) => broker.kafka.bridge.wakeup.wait(MARK_EVERY, &broker.shutdown).await,
                    Err(why) => {
                        tracing::warn!(shard = broker.id.index(), %why, "MQTT to Kafka bridge: retrying");
                        glommio::timer::sleep(RETRY_AFTER).await;
                    }
                }
            }
        })
        .detach();
    }

    /// Logs the cursor; whether it was.
    async fn log_bridge_mark(&self) -> bool {
        let Some(log) = self.log.get() else {
            return false;
        };
        let body = self.kafka.bridge.cursor.get().to_le_bytes();
        if log.wal.reserve(body.len()).await.is_err() {
            return false;
        }
        log.wal
            .append(RECORD_KAFKA_BRIDGE, unix_ms(), &[&body])
            .is_ok()
    }

    /// One read of the log past the cursor, bridged: whether there may be more to read.
    async fn bridge_round(self: &Rc<Self>) -> Result<bool, String> {
        let log = self.log.get().ok_or("no log")?;
        let from = self.kafka.bridge.cursor.get();
        let end = log.wal.next_offset().0;
        if from >= end {
            return Ok(false);
        }
        // Only what is durable: what an MQTT acknowledgement may already have promised.
        log.wal
            .wait_durable(Offset(end - 1))
            .await
            .map_err(|e| e.to_string())?;
        let now_ms = unix_ms() as i64;
        // Per (Kafka topic, partition), in log order: the records and their batch.
        let mut groups: Vec<(PartitionKey, Vec<Record>)> = Vec::new();
        let mut last = from;
        let read = log
            .wal
            .read_from(Offset(from), READ_BYTES, |rec| {
                if rec.offset.0 >= end {
                    return;
                }
                last = rec.offset.0 + 1;
                if rec.kind != RECORD_PUBLISH {
                    return;
                }
                let Some(msg) = decode_publish_body_even_expired(&rec, rec.body, self.id) else {
                    return;
                };
                // What the relay published from Kafka does not go back.
                if msg.publisher.as_str() == RELAY_PUBLISHER {
                    return;
                }
                for (topic, partition) in self.kafka.bridge.targets(msg.topic.as_str()) {
                    let key = (Arc::clone(topic), partition);
                    let at = match groups.iter().position(|(k, _)| *k == key) {
                        Some(at) => at,
                        None => {
                            groups.push((key, Vec::new()));
                            groups.len() - 1
                        }
                    };
                    let records = &mut groups[at].1;
                    let offset = records.len() as i64;
                    records.push(record(
                        msg.topic.as_str(),
                        &msg.payload,
                        &msg.properties.user_properties,
                        offset,
                        now_ms,
                    ));
                }
            })
            .await;
        let next = match read {
            Ok(next) => next.0.min(end).max(last),
            Err(WalError::NotRetained { .. }) => {
                // Cannot happen while the cursor holds the floor; if it does, say so and
                // go on from what is kept.
                let first = log.wal.first_offset().0;
                tracing::error!(
                    shard = self.id.index(),
                    from,
                    first,
                    "MQTT to Kafka bridge: log records gone before they were bridged"
                );
                self.kafka.bridge.cursor.set(first);
                return Ok(true);
            }
            Err(e) => return Err(e.to_string()),
        };
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        for ((topic, partition), records) in groups {
            let mut batch = BytesMut::new();
            RecordBatchEncoder::encode(&mut batch, records.iter(), &options)
                .map_err(|e| e.to_string())?;
            self.kafka_produce(Arc::clone(&topic), partition, batch.freeze())
                .await
                .map_err(|e| format!("{topic}/{partition}: {e:?}"))?;
        }
        self.kafka.bridge.cursor.set(next);
        Ok(next < end)
    }
}
