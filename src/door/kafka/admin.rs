//! CreateTopics and DeleteTopics: changes of the topic catalog (see
//! `broker::kafka::catalog`).
//!
//! One copy of each partition, placed on shards by hash: a replication factor other
//! than 1 (or -1, the default) and explicit replica assignments are refused with their
//! codes. The settings a topic takes are `retention.ms`, `retention.bytes` and
//! `cleanup.policy = delete`; any other is refused (INVALID_CONFIG, named), not
//! ignored. With `[[acl]]` rules, creating or deleting a topic takes the right to
//! produce to it.

use std::collections::HashMap;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::kafka::{CatalogError, TopicSpec, CATALOG_PARTITIONS_MAX, CATALOG_TOPICS_MAX};
use crate::config::KAFKA_PARTITIONS_MAX;

use super::sasl::ConnAuth;
use super::KafkaDoor;

/// A refusal: its code and what the client is told.
type Refusal = (ResponseError, String);

/// Kafka's config source "set on the topic" and "the broker's default".
const FROM_TOPIC: i8 = 1;
const DEFAULT: i8 = 5;

/// The settings of a topic to create, or why not.
fn spec_of(topic: &CreatableTopic) -> Result<TopicSpec, Refusal> {
    if !matches!(topic.replication_factor, -1 | 1) {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!(
                "replication factor {}: this broker keeps one copy (1, or -1 for the default)",
                topic.replication_factor
            ),
        ));
    }
    if !topic.assignments.is_empty() {
        return Err((
            ResponseError::InvalidReplicaAssignment,
            "replica assignments are not served: partitions go to shards by hash".into(),
        ));
    }
    let partitions = match topic.num_partitions {
        -1 => 1,
        n if (1..=KAFKA_PARTITIONS_MAX as i32).contains(&n) => n as u32,
        n => {
            return Err((
                ResponseError::InvalidPartitions,
                format!("{n} partitions: 1 to {KAFKA_PARTITIONS_MAX}, or -1 for 1"),
            ))
        }
    };
    let mut spec = TopicSpec {
        partitions,
        retention_ms: None,
        retention_bytes: None,
    };
    for config in &topic.configs {
        let key = config.name.as_str();
        let value = config.value.as_ref().map(|v| v.as_str());
        let limit = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok()).filter(|&v| v >= -1);
        let invalid = |why: &str| Err((ResponseError::InvalidConfig, format!("{key}: {why}")));
        match key {
            "retention.ms" => match limit(value) {
                Some(ms) => spec.retention_ms = Some(ms),
                None => return invalid("a number of ms, or -1 for no limit"),
            },
            "retention.bytes" => match limit(value) {
                Some(bytes) => spec.retention_bytes = Some(bytes),
                None => return invalid("a number of bytes, or -1 for no limit"),
            },
            "cleanup.policy" if value == Some("delete") => {}
            "cleanup.policy" => return invalid("only \"delete\" is served (no compaction)"),
            _ => return invalid(
                "not a setting this broker takes (retention.ms, retention.bytes, cleanup.policy)",
            ),
        }
    }
    Ok(spec)
}

/// CreateTopics: each topic on its own, in order; `validate_only` checks without
/// creating.
pub(super) async fn create_topics(
    door: &KafkaDoor,
    auth: &mut ConnAuth,
    request: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let mut times_named: HashMap<String, usize> = HashMap::new();
    for topic in &request.topics {
        *times_named.entry(topic.name.to_string()).or_default() += 1;
    }
    let mut results = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let name = topic.name.to_string();
        let outcome = async {
            if times_named.get(&name).copied().unwrap_or(0) > 1 {
                return Err((
                    ResponseError::InvalidRequest,
                    "the topic is named more than once in the request".to_string(),
                ));
            }
            if !auth.may_write(door, &name) {
                return Err((
                    ResponseError::TopicAuthorizationFailed,
                    "creating a topic takes the right to produce to it".to_string(),
                ));
            }
            let spec = spec_of(topic)?;
            door.broker
                .kafka_create_topic(&name, spec, request.validate_only)
                .await
                .map_err(refusal)?;
            Ok(spec)
        }
        .await;
        let result = CreatableTopicResult::default().with_name(topic.name.clone());
        results.push(match outcome {
            Ok(spec) if version >= 5 => {
                let made = spec.topic(name.as_str().into(), 0, &door.broker.config);
                let limit = |v: Option<u64>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
                let source = |own: bool| if own { FROM_TOPIC } else { DEFAULT };
                let configs = vec![
                    ("cleanup.policy", "delete".to_string(), DEFAULT),
                    (
                        "retention.ms",
                        limit(made.retention_ms),
                        source(made.retention_ms_own),
                    ),
                    (
                        "retention.bytes",
                        limit(made.retention_bytes),
                        source(made.retention_bytes_own),
                    ),
                ];
                result
                    .with_num_partitions(spec.partitions as i32)
                    .with_replication_factor(1)
                    .with_configs(Some(
                        configs
                            .into_iter()
                            .map(|(key, value, source)| {
                                CreatableTopicConfigs::default()
                                    .with_name(StrBytes::from_static_str(key))
                                    .with_value(Some(StrBytes::from_string(value)))
                                    .with_config_source(source)
                            })
                            .collect(),
                    ))
            }
            Ok(_) => result,
            Err((error, message)) => result
                .with_error_code(error.code())
                .with_error_message(Some(StrBytes::from_string(message))),
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// DeleteTopics: each topic on its own, in order.
pub(super) async fn delete_topics(
    door: &KafkaDoor,
    auth: &mut ConnAuth,
    request: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut responses = Vec::with_capacity(request.topic_names.len());
    for name in &request.topic_names {
        let outcome = if auth.may_write(door, name) {
            door.broker.kafka_delete_topic(name).await.map_err(refusal)
        } else {
            Err((
                ResponseError::TopicAuthorizationFailed,
                "deleting a topic takes the right to produce to it".to_string(),
            ))
        };
        let result = DeletableTopicResult::default().with_name(Some(name.clone()));
        responses.push(match outcome {
            Ok(()) => result,
            Err((error, message)) => {
                let result = result.with_error_code(error.code());
                if version >= 5 {
                    result.with_error_message(Some(StrBytes::from_string(message)))
                } else {
                    result
                }
            }
        });
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

fn refusal(error: CatalogError) -> Refusal {
    match error {
        CatalogError::Exists => (
            ResponseError::TopicAlreadyExists,
            "a topic of that name exists".into(),
        ),
        CatalogError::Unknown => (
            ResponseError::UnknownTopicOrPartition,
            "no such topic".into(),
        ),
        CatalogError::FromConfig => (
            ResponseError::PolicyViolation,
            "the topic is defined in the config file (kafka_topics): remove it there".into(),
        ),
        CatalogError::InvalidName => (
            ResponseError::InvalidTopicException,
            "a Kafka topic name is 1 to 249 of a-z A-Z 0-9 . _ - (not . or ..)".into(),
        ),
        CatalogError::InvalidPartitions => (
            ResponseError::InvalidPartitions,
            format!("1 to {KAFKA_PARTITIONS_MAX} partitions"),
        ),
        CatalogError::Full => (
            ResponseError::PolicyViolation,
            format!(
                "created topics are at most {CATALOG_TOPICS_MAX}, with \
                 {CATALOG_PARTITIONS_MAX} partitions in all"
            ),
        ),
        CatalogError::Storage => (
            ResponseError::KafkaStorageError,
            "the log failed; the change may have reached part of the broker".into(),
        ),
    }
}
