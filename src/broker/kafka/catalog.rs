//! Topics created and deleted while the broker runs (Kafka's CreateTopics and
//! DeleteTopics): the topic catalog.
//!
//! The topics of `kafka_topics` come from the config file; the catalog holds the others.
//! Every shard must know every topic (any shard answers Metadata and routes a produce),
//! and each shard's own log must say which of its batches belong to a topic that still
//! exists — so every shard logs every change of the catalog in its own WAL
//! (`kafka_topic`, kind 34), in order with its batches: recovery replays the changes and
//! the batches in log order, so batches of a deleted topic, or of an earlier topic of
//! the same name, are never served again.
//!
//! Shard 0 keeps the catalog: a change is checked there, one at a time, logged there
//! first, then on every other shard, and answered once every shard's log holds it as
//! durably as `fsync_policy` promises. A crash between those steps leaves some shards
//! behind; at start, before any door opens, shard 0 sends its catalog to every shard,
//! which logs what it lacks (or deletes what shard 0 does not know). Shard 0 is always
//! the one that logged a change first, so the catalog it sends is the latest.
//!
//! A created topic has an id (the time it was created, in µs, never reused), so that a
//! topic deleted and created again under the same name starts from offset 0 in every
//! log. Before the segment holding a topic's record goes, retention logs it again as a
//! `Keep` (same id): recovery then gives the batches before it, whose creation record
//! is gone, to that topic (the log loses segments only from its start, so they can be
//! no other topic's), where a `Create` starts the topic over.
//!
//! Body of a `kafka_topic` record: `op u8 (1 create, 2 delete, 3 keep) | id u64 LE | partitions
//! u32 LE | retention_ms i64 LE | retention_bytes i64 LE | name length u16 LE | name`;
//! a retention of `i64::MIN` is "not set" (the broker's default applies), -1 is "no
//! limit" (Kafka's meaning).

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::Config;
use crate::router::ShardId;
use crate::storage::{RecordKind, RecordRef};

use super::groups::{put_str, take, take_str};
use super::{KafkaAnswer, KafkaError, KafkaRequest, KafkaTopic};
use crate::broker::persist::unix_ms;
use crate::broker::{Broker, Reply, ShardMsg};

/// A change of the topic catalog (see the module docs).
pub const RECORD_KAFKA_TOPIC: RecordKind = RecordKind(34);

/// The most topics the catalog holds (besides those of the config file).
pub const CATALOG_TOPICS_MAX: usize = 10_000;

/// The most partitions the catalog's topics have in all: each is an index and a few
/// hundred bytes on its owner, so what clients may create stays bounded.
pub const CATALOG_PARTITIONS_MAX: u64 = 100_000;

/// The shard that keeps the catalog.
fn catalog_shard() -> ShardId {
    ShardId::from_index(0)
}

const NOT_SET: i64 = i64::MIN;
const OP_CREATE: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_KEEP: u8 = 3;

/// What a created topic was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// How many partitions.
    pub partitions: u32,
    /// `retention.ms`: `None` not set (the broker's default), -1 no limit.
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: `None` not set (no limit), -1 no limit.
    pub retention_bytes: Option<i64>,
}

impl TopicSpec {
    /// The topic these settings make under `config`'s defaults.
    pub(crate) fn topic(&self, name: Arc<str>, id: u64, config: &Config) -> KafkaTopic {
        KafkaTopic {
            name,
            id,
            partitions: self.partitions,
            retention_ms: match self.retention_ms {
                Some(ms) => u64::try_from(ms).ok().filter(|&ms| ms > 0),
                None => Some(config.retention_ms).filter(|&ms| ms > 0),
            },
            retention_bytes: self
                .retention_bytes
                .and_then(|b| u64::try_from(b).ok())
                .filter(|&b| b > 0),
            retention_ms_own: self.retention_ms.is_some(),
            retention_bytes_own: self.retention_bytes.is_some(),
        }
    }
}

/// One change of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicChange {
    /// A topic is created: its partitions start empty, from offset 0.
    Create {
        /// Its name.
        name: Arc<str>,
        /// Its id (see the module docs).
        id: u64,
        /// Its settings.
        spec: TopicSpec,
    },
    /// A topic goes on with these settings: logged again before the segment with its
    /// creation goes, or its settings brought in line with shard 0's. The batches
    /// before it (back to the last other record of the name) are its own.
    Keep {
        /// Its name.
        name: Arc<str>,
        /// Its id.
        id: u64,
        /// Its settings.
        spec: TopicSpec,
    },
    /// A topic is gone.
    Delete {
        /// Its name.
        name: Arc<str>,
    },
}

impl TopicChange {
    /// The topic it is about.
    pub fn name(&self) -> &Arc<str> {
        match self {
            TopicChange::Create { name, .. }
            | TopicChange::Keep { name, .. }
            | TopicChange::Delete { name } => name,
        }
    }
}

/// Why a catalog change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogError {
    /// A topic of that name exists.
    Exists,
    /// No created topic of that name.
    Unknown,
    /// The topic comes from the config file: change it there.
    FromConfig,
    /// The name is not a Kafka topic name.
    InvalidName,
    /// The partition count is outside 1..=`KAFKA_PARTITIONS_MAX`.
    InvalidPartitions,
    /// The catalog holds [`CATALOG_TOPICS_MAX`] topics, or the topic's partitions
    /// would take it past [`CATALOG_PARTITIONS_MAX`].
    Full,
    /// A log failed; the change may have reached some shards (the next start makes
    /// them agree).
    Storage,
}

/// Encodes a change as a record body.
fn encode(change: &TopicChange) -> Vec<u8> {
    let (op, id, spec) = match change {
        TopicChange::Create { id, spec, .. } => (OP_CREATE, *id, Some(*spec)),
        TopicChange::Keep { id, spec, .. } => (OP_KEEP, *id, Some(*spec)),
        TopicChange::Delete { .. } => (OP_DELETE, 0, None),
    };
    let mut body = Vec::with_capacity(32 + change.name().len());
    body.push(op);
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(&spec.map_or(0, |s| s.partitions).to_le_bytes());
    let ms = spec.and_then(|s| s.retention_ms).unwrap_or(NOT_SET);
    let bytes = spec.and_then(|s| s.retention_bytes).unwrap_or(NOT_SET);
    body.extend_from_slice(&ms.to_le_bytes());
    body.extend_from_slice(&bytes.to_le_bytes());
    put_str(&mut body, change.name());
    body
}

/// Reads a `kafka_topic` record; `None` if its body does not decode.
pub fn decode_topic_change(record: &RecordRef<'_>) -> Option<TopicChange> {
    let mut body = record.body;
    let op = take(&mut body, 1)?[0];
    let id = u64::from_le_bytes(take(&mut body, 8)?.try_into().ok()?);
    let partitions = u32::from_le_bytes(take(&mut body, 4)?.try_into().ok()?);
    let ms = i64::from_le_bytes(take(&mut body, 8)?.try_into().ok()?);
    let bytes = i64::from_le_bytes(take(&mut body, 8)?.try_into().ok()?);
    let name: Arc<str> = Arc::from(take_str(&mut body)?);
    if !body.is_empty() {
        return None;
    }
    let set = |v: i64| (v != NOT_SET).then_some(v);
    let spec = TopicSpec {
        partitions,
        retention_ms: set(ms),
        retention_bytes: set(bytes),
    };
    match op {
        OP_CREATE if partitions > 0 => Some(TopicChange::Create { name, id, spec }),
        OP_KEEP if partitions > 0 => Some(TopicChange::Keep { name, id, spec }),
        OP_DELETE => Some(TopicChange::Delete { name }),
        _ => None,
    }
}

/// A topic of the catalog on one shard.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Created {
    /// Its id.
    pub id: u64,
    /// Its settings.
    pub spec: TopicSpec,
    /// The WAL offset of its latest `kafka_topic` record here.
    pub wal: u64,
}

impl Broker {
    /// Creates a Kafka topic (CreateTopics): answers once every shard's log holds it
    /// as durably as the fsync policy promises. `validate_only` checks without
    /// creating.
    pub async fn kafka_create_topic(
        self: &Rc<Self>,
        name: &str,
        spec: TopicSpec,
        validate_only: bool,
    ) -> Result<(), CatalogError> {
        let change = TopicChange::Create {
            name: Arc::from(name),
            id: 0,
            spec,
        };
        self.kafka_catalog_change(change, validate_only).await
    }

    /// Deletes a topic the catalog holds (DeleteTopics), on every shard: its partitions
    /// and the groups' commits of it are gone at once; its batches stay in the logs
    /// until retention drops their segments, never served again.
    pub async fn kafka_delete_topic(self: &Rc<Self>, name: &str) -> Result<(), CatalogError> {
        let change = TopicChange::Delete {
            name: Arc::from(name),
        };
        self.kafka_catalog_change(change, false).await
    }

    async fn kafka_catalog_change(
        self: &Rc<Self>,
        change: TopicChange,
        validate_only: bool,
    ) -> Result<(), CatalogError> {
        let keeper = catalog_shard();
        if self.id == keeper {
            return self.kafka_keep_change(change, validate_only).await;
        }
        let request = KafkaRequest::Catalog {
            change,
            validate_only,
        };
        match self.ask_kafka(keeper, request).await {
            KafkaAnswer::Catalog(result) => result,
            _ => Err(CatalogError::Storage),
        }
    }

    /// Shard 0: checks a change, then logs it here and on every other shard, one change
    /// at a time.
    pub(super) async fn kafka_keep_change(
        self: &Rc<Self>,
        change: TopicChange,
        validate_only: bool,
    ) -> Result<(), CatalogError> {
        let _one_at_a_time = self
            .kafka
            .catalog_turn
            .acquire_permit(1)
            .await
            .map_err(|_| CatalogError::Storage)?;
        let change = self.kafka_check_change(change)?;
        if validate_only {
            return Ok(());
        }
        if matches!(change, TopicChange::Create { .. }) {
            // A data dir holding Kafka partitions keeps its shard count (see
            // `persist::migrate`): marked before the first created topic is logged.
            crate::broker::persist::migrate::mark_kafka_data(&self.config.data_dir)
                .map_err(|e| {
                    tracing::error!(shard = self.id.index(), error = %e, "cannot mark the data dir as holding Kafka partitions");
                    CatalogError::Storage
                })?;
        }
        self.kafka_log_change(&change)
            .await
            .map_err(|_| CatalogError::Storage)?;
        let others: Vec<ShardId> = self.all_shards().filter(|&s| s != self.id).collect();
        if others.is_empty() {
            return Ok(());
        }
        let id = self.requests.open(others.len());
        for shard in others {
            let request = KafkaRequest::CatalogApply(vec![change.clone()]);
            self.post(shard, ShardMsg::Kafka { id, request });
        }
        let replies = self.requests.replies(id).await;
        let all_logged = replies
            .iter()
            .all(|r| matches!(r, Reply::Kafka(KafkaAnswer::Catalog(Ok(())))));
        if all_logged && replies.len() + 1 == self.mesh.shards() {
            Ok(())
        } else {
            tracing::error!(
                shard = self.id.index(),
                topic = &**change.name(),
                "a topic change did not reach every shard's log; the next start makes them agree"
            );
            Err(CatalogError::Storage)
        }
    }

    /// Shard 0: whether `change` may be made; a create gets its id.
    fn kafka_check_change(&self, change: TopicChange) -> Result<TopicChange, CatalogError> {
        let from_config = |name: &str| self.config.kafka_topics.iter().any(|t| t.name == name);
        match change {
            TopicChange::Create { name, spec, .. } => {
                if crate::config::kafka_topic_name_problem(&name).is_some() {
                    return Err(CatalogError::InvalidName);
                }
                if !(1..=crate::config::KAFKA_PARTITIONS_MAX).contains(&spec.partitions) {
                    return Err(CatalogError::InvalidPartitions);
                }
                if from_config(&name) || self.kafka.topics.borrow().contains_key(&name) {
                    return Err(CatalogError::Exists);
                }
                let created = self.kafka.created.borrow();
                let partitions: u64 = created.values().map(|c| u64::from(c.spec.partitions)).sum();
                if created.len() >= CATALOG_TOPICS_MAX
                    || partitions + u64::from(spec.partitions) > CATALOG_PARTITIONS_MAX
                {
                    return Err(CatalogError::Full);
                }
                // Never an id given before, even across a clock step back.
                let newest = created.values().map(|c| c.id).max().unwrap_or(0);
                let id = (unix_ms().saturating_mul(1000))
                    .max(newest + 1)
                    .max(self.kafka.last_topic_id.get() + 1);
                self.kafka.last_topic_id.set(id);
                Ok(TopicChange::Create { name, id, spec })
            }
            // Only retention and the start's agreement log a Keep, never a client.
            TopicChange::Keep { .. } => Err(CatalogError::Unknown),
            TopicChange::Delete { name } => {
                if from_config(&name) {
                    return Err(CatalogError::FromConfig);
                }
                if !self.kafka.created.borrow().contains_key(&name) {
                    return Err(CatalogError::Unknown);
                }
                Ok(TopicChange::Delete { name })
            }
        }
    }

    /// Logs `change` in this shard's WAL, applies it, and waits until it is durable.
    pub(super) async fn kafka_log_change(&self, change: &TopicChange) -> Result<(), KafkaError> {
        let log = self.log.get().ok_or(KafkaError::Storage)?;
        let body = encode(change);
        log.wal
            .reserve(body.len())
            .await
            .map_err(|e| super::storage_error(&e))?;
        // No await from the append to the change: batches logged after the record
        // belong to what it says.
        let wal = log
            .wal
            .append(RECORD_KAFKA_TOPIC, unix_ms(), &[&body])
            .map_err(|e| super::storage_error(&e))?;
        self.kafka_apply_change(change, wal.0);
        log.wal
            .wait_durable(wal)
            .await
            .map_err(|e| super::storage_error(&e))
    }

    /// Applies a change logged at `wal` (live or read back at start); the groups this
    /// shard coordinates forget their commits of a topic deleted or created anew.
    pub(super) fn kafka_apply_change(&self, change: &TopicChange, wal: u64) {
        let fresh = self.kafka.apply(change, wal, &self.config);
        if fresh {
            let name = change.name();
            for group in self.kafka.groups.borrow_mut().values_mut() {
                group.offsets.retain(|(topic, _), _| topic != name);
            }
        }
    }

    /// Shard 0 at start, before any door opens: sends the catalog to every other shard,
    /// which makes its own agree (see the module docs), and waits for all of them.
    pub(crate) async fn kafka_share_catalog(self: &Rc<Self>) {
        let others: Vec<ShardId> = self.all_shards().filter(|&s| s != self.id).collect();
        if self.id != catalog_shard() || others.is_empty() {
            return;
        }
        let Ok(_one_at_a_time) = self.kafka.catalog_turn.acquire_permit(1).await else {
            return;
        };
        let state: Vec<TopicChange> = self
            .kafka
            .created
            .borrow()
            .iter()
            .map(|(name, c)| TopicChange::Create {
                name: Arc::clone(name),
                id: c.id,
                spec: c.spec,
            })
            .collect();
        let id = self.requests.open(others.len());
        for shard in others {
            let request = KafkaRequest::CatalogAgree(state.clone());
            self.post(shard, ShardMsg::Kafka { id, request });
        }
        for reply in self.requests.replies(id).await {
            if !matches!(reply, Reply::Kafka(KafkaAnswer::Catalog(Ok(())))) {
                tracing::error!(
                    shard = self.id.index(),
                    "a shard could not log the topic catalog; it serves what its own log says"
                );
            }
        }
    }

    /// Another shard at start: waits until shard 0 sent the catalog and it is applied.
    pub(crate) async fn kafka_catalog_agreed(&self) {
        if self.id == catalog_shard() || self.mesh.shards() == 1 {
            return;
        }
        self.kafka.catalog_agreed.wait_set(&self.shutdown).await;
    }

    /// Another shard: makes its catalog equal to `state` (shard 0's), logging each
    /// difference.
    pub(super) async fn kafka_agree(&self, state: Vec<TopicChange>) -> Result<(), KafkaError> {
        let mut changes = Vec::new();
        {
            let created = self.kafka.created.borrow();
            let mut wanted: HashMap<&Arc<str>, (u64, TopicSpec)> = HashMap::new();
            for change in &state {
                if let TopicChange::Create { name, id, spec } = change {
                    wanted.insert(name, (*id, *spec));
                    match created.get(name) {
                        Some(c) if c.id == *id && c.spec == *spec => {}
                        Some(c) if c.id == *id => changes.push(TopicChange::Keep {
                            name: Arc::clone(name),
                            id: *id,
                            spec: *spec,
                        }),
                        _ => changes.push(change.clone()),
                    }
                }
            }
            for name in created.keys() {
                if !wanted.contains_key(name) {
                    changes.push(TopicChange::Delete {
                        name: Arc::clone(name),
                    });
                }
            }
        }
        let mut result = Ok(());
        for change in &changes {
            if let Err(e) = self.kafka_log_change(change).await {
                result = Err(e);
            }
        }
        self.kafka.catalog_agreed.set();
        result
    }

    /// Retention: logs again the created topics whose record lies below `limit`, and
    /// waits until they are durable.
    pub(crate) async fn kafka_keep_catalog(&self, limit: u64) -> Result<(), KafkaError> {
        let due: Vec<TopicChange> = self
            .kafka
            .created
            .borrow()
            .iter()
            .filter(|(_, c)| c.wal < limit)
            .map(|(name, c)| TopicChange::Keep {
                name: Arc::clone(name),
                id: c.id,
                spec: c.spec,
            })
            .collect();
        for change in &due {
            self.kafka_log_change(change).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Offset;

    fn read_back(change: &TopicChange) -> Option<TopicChange> {
        let body = encode(change);
        decode_topic_change(&RecordRef {
            kind: RECORD_KAFKA_TOPIC,
            offset: Offset(0),
            timestamp_ms: 0,
            body: &body,
        })
    }

    #[test]
    fn changes_read_back() {
        let create = TopicChange::Create {
            name: Arc::from("orders.v2"),
            id: 1_764_000_000_000_123,
            spec: TopicSpec {
                partitions: 12,
                retention_ms: Some(-1),
                retention_bytes: None,
            },
        };
        assert_eq!(read_back(&create), Some(create.clone()));
        let TopicChange::Create { name, id, spec } = create else {
            unreachable!()
        };
        let keep = TopicChange::Keep { name, id, spec };
        assert_eq!(read_back(&keep), Some(keep));
        let delete = TopicChange::Delete {
            name: Arc::from("orders.v2"),
        };
        assert_eq!(read_back(&delete), Some(delete));
    }

    #[test]
    fn a_damaged_body_is_refused() {
        let create = TopicChange::Create {
            name: Arc::from("t"),
            id: 7,
            spec: TopicSpec {
                partitions: 0,
                retention_ms: None,
                retention_bytes: None,
            },
        };
        assert_eq!(read_back(&create), None, "no partitions");
        let delete = encode(&TopicChange::Delete {
            name: Arc::from("t"),
        });
        let decodes = |body: &[u8]| {
            decode_topic_change(&RecordRef {
                kind: RECORD_KAFKA_TOPIC,
                offset: Offset(0),
                timestamp_ms: 0,
                body,
            })
        };
        assert!(decodes(&delete).is_some());
        let mut longer = delete.clone();
        longer.push(0);
        assert_eq!(decodes(&longer), None, "trailing bytes");
        let mut other = delete.clone();
        other[0] = 9;
        assert_eq!(decodes(&other), None, "unknown op");
    }
}
