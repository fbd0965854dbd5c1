//! One Kafka request to broker calls and its response.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::task::JoinHandle;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, DescribeConfigsRequest, DescribeConfigsResponse,
    FetchRequest, FetchResponse, InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, RequestKind, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::broker::kafka::{BatchError, FetchWant, Fetched, KafkaError, KafkaTopic, OffsetQuery};

use super::sasl::{ConnAuth, Gate};
use super::{admin, framed, groups, key_and_version, KafkaDoor, KAFKA_LOG};

/// The APIs served and their versions: what ApiVersions lists.
const SERVED: [(ApiKey, i16, i16); 20] = [
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
];

/// The one broker clients see.
pub(super) const NODE: BrokerId = BrokerId(0);

/// What clients are told the cluster is called.
const CLUSTER_ID: &str = "shardmq";

/// A request frame, decoded. Returned once per request and matched at once: its size
/// costs a move, boxing it an allocation per request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Decoded {
    /// A request this broker serves, at a version it serves.
    Request {
        /// Its header.
        header: RequestHeader,
        /// Its API.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// Its body.
        request: RequestKind,
    },
    /// ApiVersions at a version newer than served: answered at version 0 (KIP-511).
    NewerApiVersions {
        /// The request's correlation id.
        correlation_id: i32,
    },
}

/// Decodes a request frame (without its size): `Err` with the reason the connection
/// is closed for when the API, the version, the header or the body is not one served.
pub fn decode(frame: Bytes) -> Result<Decoded, &'static str> {
    let (key, version) = key_and_version(&frame).ok_or("a frame too short for a request header")?;
    let api = ApiKey::try_from(key).map_err(|_| "an unknown API key")?;
    let served = SERVED.iter().find(|(k, _, _)| *k == api);
    if api == ApiKey::ApiVersions && served.is_some_and(|&(_, _, max)| version > max) {
        let correlation_id = frame
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
            .ok_or("a frame too short for a request header")?;
        return Ok(Decoded::NewerApiVersions { correlation_id });
    }
    let &(_, min, max) = served.ok_or("an API this broker does not serve")?;
    if !(min..=max).contains(&version) {
        return Err("an API version this broker does not serve");
    }
    let mut body = frame;
    let header = RequestHeader::decode(&mut body, api.request_header_version(version))
        .map_err(|_| "a request header that does not decode")?;
    let request = RequestKind::decode(api, &mut body, version)
        .map_err(|_| "a request body that does not decode")?;
    Ok(Decoded::Request {
        header,
        api,
        version,
        request,
    })
}

/// What one request frame comes to.
pub(super) struct Handled {
    /// Its response.
    pub response: Answer,
    /// Close the connection once it is written (a failed authentication).
    pub close: bool,
}

/// A request's response: ready, or still being made (a produce waiting for its
/// batches to be durable; `None` for acks 0, `Err` if it cannot be encoded).
pub(super) enum Answer {
    /// Ready.
    Now(BytesMut),
    /// Made by a task.
    Later(JoinHandle<Result<Option<BytesMut>, &'static str>>),
}

/// The answer to one request frame, or (`Err`) the reason the connection must close.
pub(super) async fn handle(
    door: &Rc<KafkaDoor>,
    auth: &mut ConnAuth,
    local: Option<SocketAddr>,
    peer: Option<SocketAddr>,
    frame: Bytes,
) -> Result<Handled, &'static str> {
    let (header, api, version, request) = match decode(frame) {
        Ok(Decoded::Request {
            header,
            api,
            version,
            request,
        }) => (header, api, version, request),
        Ok(Decoded::NewerApiVersions { correlation_id }) => {
            return match api_versions_unsupported(correlation_id) {
                Some(response) => Ok(Handled {
                    response: Answer::Now(response),
                    close: false,
                }),
                None => Err("a response that does not encode"),
            };
        }
        Err(why) => return Err(refused(door, why)),
    };
    let client_id = header.client_id.as_ref().map_or("", |c| c.as_str());
    let sasl = matches!(
        request,
        RequestKind::ApiVersions(_)
            | RequestKind::SaslHandshake(_)
            | RequestKind::SaslAuthenticate(_)
    );
    if !sasl && matches!(auth.gate(door, client_id), Gate::Refuse) {
        return Err(refused(door, "a request before SASL authentication"));
    }
    let reply = Reply {
        correlation_id: header.correlation_id,
        response_header_version: api.response_header_version(version),
        version,
    };
    let mut close = false;
    let response = match request {
        RequestKind::ApiVersions(_) => reply.encode(&api_versions(0)),
        RequestKind::SaslHandshake(request) => {
            reply.encode(&auth.handshake(&request.mechanism, version == 0))
        }
        RequestKind::SaslAuthenticate(request) => {
            let (response, stays) = auth
                .authenticate(door, client_id, &request.auth_bytes)
                .await;
            close = !stays;
            reply.encode(&response)
        }
        RequestKind::Metadata(request) => {
            reply.encode(&metadata(door, auth, local, request, version))
        }
        RequestKind::Produce(request) => {
            // Answered later, in order: the connection reads its next request meanwhile.
            let acks = request.acks;
            let started = start_produce(door, auth, request);
            let answer = glommio::spawn_local(async move {
                let response = finish_produce(started).await;
                if acks == 0 {
                    return Ok(None);
                }
                reply
                    .encode(&response)
                    .map(Some)
                    .ok_or("a response that does not encode")
            })
            .detach();
            return Ok(Handled {
                response: Answer::Later(answer),
                close: false,
            });
        }
        RequestKind::Fetch(request) => reply.encode(&fetch(door, auth, request, version).await),
        RequestKind::ListOffsets(request) => {
            reply.encode(&list_offsets(door, auth, request, version).await)
        }
        RequestKind::FindCoordinator(request) => {
            reply.encode(&groups::find_coordinator(door, local, request, version))
        }
        RequestKind::JoinGroup(request) => {
            reply.encode(&groups::join(door, client_id, peer, request, version).await)
        }
        RequestKind::SyncGroup(request) => {
            reply.encode(&groups::sync(door, request, version).await)
        }
        RequestKind::Heartbeat(request) => reply.encode(&groups::heartbeat(door, request).await),
        RequestKind::LeaveGroup(request) => {
            reply.encode(&groups::leave(door, request, version).await)
        }
        RequestKind::OffsetCommit(request) => {
            reply.encode(&groups::offset_commit(door, auth, request).await)
        }
        RequestKind::OffsetFetch(request) => {
            reply.encode(&groups::offset_fetch(door, request).await)
        }
        RequestKind::DescribeGroups(request) => {
            reply.encode(&groups::describe_groups(door, request).await)
        }
        RequestKind::ListGroups(_) => reply.encode(&groups::list_groups(door, version).await),
        RequestKind::InitProducerId(request) => reply.encode(&init_producer_id(door, request)),
        RequestKind::DescribeConfigs(request) => {
            reply.encode(&describe_configs(door, auth, request, version))
        }
        RequestKind::CreateTopics(request) => {
            reply.encode(&admin::create_topics(door, auth, request, version).await)
        }
        RequestKind::DeleteTopics(request) => {
            reply.encode(&admin::delete_topics(door, auth, request, version).await)
        }
        // `decode` lets through only what SERVED lists.
        _ => None,
    };
    match response {
        Some(response) => Ok(Handled {
            response: Answer::Now(response),
            close,
        }),
        None => Err("a response that does not encode"),
    }
}

/// Counts a request the connection is closed for; returns why.
fn refused(door: &KafkaDoor, why: &'static str) -> &'static str {
    door.broker.probe.protocol_errors_total.inc();
    tracing::debug!(target: KAFKA_LOG, shard = door.broker.id.index(), why, "request refused");
    why
}

#[derive(Clone, Copy)]
struct Reply {
    correlation_id: i32,
    response_header_version: i16,
    version: i16,
}

impl Reply {
    fn encode<M: Encodable>(&self, message: &M) -> Option<BytesMut> {
        framed(|out| {
            let header = ResponseHeader::default().with_correlation_id(self.correlation_id);
            header.encode(out, self.response_header_version).is_ok()
                && message.encode(out, self.version).is_ok()
        })
    }
}

fn code(error: Option<KafkaError>) -> i16 {
    let Some(error) = error else {
        return 0;
    };
    match error {
        KafkaError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
        KafkaError::Batch(BatchError::Corrupt) => ResponseError::CorruptMessage,
        KafkaError::Batch(BatchError::OldFormat) => ResponseError::UnsupportedForMessageFormat,
        KafkaError::Batch(BatchError::Invalid | BatchError::Transactional) => {
            ResponseError::InvalidRecord
        }
        KafkaError::RecordTooLarge => ResponseError::MessageTooLarge,
        KafkaError::OffsetOutOfRange => ResponseError::OffsetOutOfRange,
        KafkaError::Storage => ResponseError::KafkaStorageError,
        KafkaError::OutOfOrderSequence => ResponseError::OutOfOrderSequenceNumber,
        KafkaError::InvalidProducerEpoch => ResponseError::InvalidProducerEpoch,
    }
    .code()
}

/// A producer id for an idempotent producer, or a new epoch of its own (KIP-360).
/// Transactions are not served: a transactional id is refused.
fn init_producer_id(door: &KafkaDoor, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let response = InitProducerIdResponse::default();
    if request.transactional_id.is_some() {
        return response
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let (id, epoch) = match (request.producer_id.0, request.producer_epoch) {
        (id, epoch) if id >= 0 && (0..i16::MAX).contains(&epoch) => (id, epoch + 1),
        _ => (door.broker.kafka_producer_id(), 0),
    };
    response
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch)
}

/// DescribeConfigs: what a topic's (or the broker's) settings come to, in Kafka's
/// names, read only (they come from the config file).
fn describe_configs(
    door: &KafkaDoor,
    auth: &mut ConnAuth,
    request: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    const TOPIC: i8 = 2;
    const BROKER: i8 = 4;
    // Config sources: a topic's own setting, the broker's, the default.
    const FROM_TOPIC: i8 = 1;
    const FROM_BROKER: i8 = 4;
    const DEFAULT: i8 = 5;
    let config = &door.broker.config;
    let limit = |v: Option<u64>| v.map_or_else(|| "-1".to_string(), |v| v.to_string());
    let topics = door.broker.kafka_topics();
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let name = resource.resource_name.to_string();
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(resource.resource_type)
                .with_resource_name(resource.resource_name.clone());
            // Config types: 1 BOOLEAN, 2 STRING, 3 INT, 5 LONG.
            let (string, int, long, boolean) = (2, 3, 5, 1);
            let entries: Vec<(&str, String, i8, i8)> = match resource.resource_type {
                TOPIC => {
                    let Some(topic) = topics.iter().find(|t| *t.name == *name) else {
                        return result
                            .with_error_code(ResponseError::UnknownTopicOrPartition.code());
                    };
                    if !(auth.may_read(door, &name) || auth.may_write(door, &name)) {
                        return result
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                    }
                    let ms_source = if topic.retention_ms_own {
                        FROM_TOPIC
                    } else {
                        FROM_BROKER
                    };
                    let bytes_source = if topic.retention_bytes_own {
                        FROM_TOPIC
                    } else {
                        FROM_BROKER
                    };
                    let packet = config.max_packet_bytes.to_string();
                    let segment = config.segment_bytes.to_string();
                    vec![
                        ("cleanup.policy", "delete".into(), DEFAULT, string),
                        ("retention.ms", limit(topic.retention_ms), ms_source, long),
                        (
                            "retention.bytes",
                            limit(topic.retention_bytes),
                            bytes_source,
                            long,
                        ),
                        ("max.message.bytes", packet, FROM_BROKER, int),
                        ("segment.bytes", segment, FROM_BROKER, int),
                        ("min.insync.replicas", "1".into(), DEFAULT, int),
                        ("compression.type", "producer".into(), DEFAULT, string),
                        (
                            "message.timestamp.type",
                            "CreateTime".into(),
                            DEFAULT,
                            string,
                        ),
                    ]
                }
                BROKER if name.is_empty() || name == "0" => {
                    let retention_ms = (config.retention_ms > 0).then_some(config.retention_ms);
                    let retention_bytes =
                        (config.retention_bytes > 0).then_some(config.retention_bytes);
                    let packet = config.max_packet_bytes.to_string();
                    let segment = config.segment_bytes.to_string();
                    vec![
                        ("broker.id", "0".into(), FROM_BROKER, int),
                        ("message.max.bytes", packet, FROM_BROKER, int),
                        ("log.segment.bytes", segment, FROM_BROKER, int),
                        ("log.retention.ms", limit(retention_ms), FROM_BROKER, long),
                        (
                            "log.retention.bytes",
                            limit(retention_bytes),
                            FROM_BROKER,
                            long,
                        ),
                        (
                            "auto.create.topics.enable",
                            "false".into(),
                            FROM_BROKER,
                            boolean,
                        ),
                        ("default.replication.factor", "1".into(), DEFAULT, int),
                    ]
                }
                _ => {
                    return result.with_error_code(ResponseError::InvalidRequest.code());
                }
            };
            // None or empty: every config (as Kafka brokers read it).
            let wanted = resource
                .configuration_keys
                .as_ref()
                .filter(|keys| !keys.is_empty());
            let configs = entries
                .into_iter()
                .filter(|(key, _, _, _)| {
                    wanted.is_none_or(|keys| keys.iter().any(|k| k.as_str() == *key))
                })
                .map(|(key, value, source, kind)| {
                    let entry = DescribeConfigsResourceResult::default()
                        .with_name(StrBytes::from_static_str(key))
                        .with_value(Some(StrBytes::from_string(value)))
                        .with_read_only(true)
                        .with_config_source(source);
                    if version >= 3 {
                        entry.with_config_type(kind)
                    } else {
                        entry
                    }
                })
                .collect();
            result.configs = configs;
            result
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SERVED
                .iter()
                .map(|&(key, min, max)| {
                    ApiVersion::default()
                        .with_api_key(key as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

/// ApiVersions at a version above those served: UNSUPPORTED_VERSION and the list, in
/// version 0 (header v0), which every client reads.
fn api_versions_unsupported(correlation_id: i32) -> Option<BytesMut> {
    let reply = Reply {
        correlation_id,
        response_header_version: 0,
        version: 0,
    };
    reply.encode(&api_versions(ResponseError::UnsupportedVersion.code()))
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn metadata(
    door: &KafkaDoor,
    auth: &mut ConnAuth,
    local: Option<SocketAddr>,
    request: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let advertised = advertised(door, local);
    let topics = door.broker.kafka_topics();
    let mut visible = |name: &str| auth.may_read(door, name) || auth.may_write(door, name);
    // Asked for every topic: those the client may read or write.
    let mut all = || {
        topics
            .iter()
            .filter(|t| visible(&t.name))
            .map(|t| t.name.to_string())
            .collect::<Vec<_>>()
    };
    let wanted: Vec<String> = match &request.topics {
        // Version 0 has no null: an empty list means every topic there.
        None => all(),
        Some(list) if list.is_empty() && version == 0 => all(),
        Some(list) => list
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.as_str().to_string()))
            .collect(),
    };
    let described = wanted
        .iter()
        .map(
            |name| match topics.iter().find(|t| &*t.name == name.as_str()) {
                Some(_)
                    if request.topics.is_some()
                        && !(auth.may_read(door, name) || auth.may_write(door, name)) =>
                {
                    MetadataResponseTopic::default()
                        .with_name(Some(topic_name(name)))
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                }
                Some(topic) => describe_topic(topic, version),
                None => MetadataResponseTopic::default()
                    .with_name(Some(topic_name(name)))
                    .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
            },
        )
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(NODE)
            .with_host(StrBytes::from_string(advertised.ip().to_string()))
            .with_port(i32::from(advertised.port()))])
        .with_cluster_id((version >= 2).then(|| StrBytes::from_static_str(CLUSTER_ID)))
        .with_controller_id(NODE)
        .with_topics(described)
}

/// The address clients are told to connect to: `kafka_listen`, or for a wildcard
/// address the one this client reached.
pub(super) fn advertised(door: &KafkaDoor, local: Option<SocketAddr>) -> SocketAddr {
    match (door.listen.ip().is_unspecified(), local) {
        (true, Some(local)) => SocketAddr::new(local.ip(), door.listen.port()),
        _ => door.listen,
    }
}

fn describe_topic(topic: &KafkaTopic, version: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(&topic.name)))
        .with_partitions(
            (0..topic.partitions)
                .map(|p| {
                    MetadataResponsePartition::default()
                        .with_partition_index(p as i32)
                        .with_leader_id(NODE)
                        .with_leader_epoch(if version >= 7 { 0 } else { -1 })
                        .with_replica_nodes(vec![NODE])
                        .with_isr_nodes(vec![NODE])
                })
                .collect(),
        )
}

/// A produce whose appends have started: each partition's own task (detached: an
/// append runs to its end, and its high watermark moves, whether or not the response
/// is still wanted), or the code it was refused with.
type StartedTopic = (
    TopicName,
    Vec<(i32, Result<JoinHandle<Result<i64, KafkaError>>, i16>)>,
);

/// Starts appending every partition's batches, all partitions at once and in request
/// order: the tasks are spawned before this returns, so a later request's appends come
/// after this one's.
fn start_produce(
    door: &Rc<KafkaDoor>,
    auth: &mut ConnAuth,
    request: ProduceRequest,
) -> Vec<StartedTopic> {
    let refusal = if request.transactional_id.is_some() {
        // Transactions are not served.
        Some(ResponseError::TransactionalIdAuthorizationFailed.code())
    } else if !matches!(request.acks, -1..=1) {
        Some(ResponseError::InvalidRequiredAcks.code())
    } else {
        None
    };
    let mut started = Vec::new();
    for topic in request.topic_data {
        let name: Arc<str> = Arc::from(topic.name.as_str());
        let refusal = refusal.or_else(|| {
            (!auth.may_write(door, &name)).then(|| ResponseError::TopicAuthorizationFailed.code())
        });
        let mut partitions = Vec::new();
        for data in topic.partition_data {
            let index = data.index;
            let task = match (refusal, u32::try_from(index), data.records) {
                (Some(code), _, _) => Err(code),
                (None, Ok(partition), Some(records)) => {
                    let broker = Rc::clone(&door.broker);
                    let topic = Arc::clone(&name);
                    Ok(glommio::spawn_local(async move {
                        broker.kafka_produce(topic, partition, records).await
                    })
                    .detach())
                }
                (None, Err(_), _) => Err(ResponseError::UnknownTopicOrPartition.code()),
                (None, Ok(_), None) => Err(ResponseError::InvalidRecord.code()),
            };
            partitions.push((index, task));
        }
        started.push((topic.name, partitions));
    }
    started
}

/// Waits for a started produce's appends and answers it.
async fn finish_produce(started: Vec<StartedTopic>) -> ProduceResponse {
    let mut responses = Vec::with_capacity(started.len());
    for (name, partitions) in started {
        let mut answered = Vec::with_capacity(partitions.len());
        for (index, task) in partitions {
            let (error_code, base_offset) = match task {
                Err(code) => (code, -1),
                Ok(task) => match task.await {
                    Some(Ok(base)) => (0, base),
                    Some(Err(e)) => (code(Some(e)), -1),
                    None => (code(Some(KafkaError::Storage)), -1),
                },
            };
            answered.push(
                PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(error_code)
                    .with_base_offset(base_offset)
                    .with_log_append_time_ms(-1)
                    .with_log_start_offset(-1),
            );
        }
        responses.push(
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(answered),
        );
    }
    ProduceResponse::default().with_responses(responses)
}

// The codec refuses to encode a field its version lacks unless it holds the field's
// default: fields of later versions are set only where the version has them.

async fn fetch(
    door: &Rc<KafkaDoor>,
    auth: &mut ConnAuth,
    request: FetchRequest,
    version: i16,
) -> FetchResponse {
    let mut wants = Vec::new();
    let mut shape = Vec::new();
    for topic in &request.topics {
        let name: Arc<str> = Arc::from(topic.topic.as_str());
        let allowed = auth.may_read(door, &name);
        let mut indices = Vec::new();
        for p in &topic.partitions {
            indices.push((p.partition, allowed));
            if !allowed {
                continue;
            }
            wants.push(FetchWant {
                topic: Arc::clone(&name),
                partition: u32::try_from(p.partition).unwrap_or(u32::MAX),
                offset: p.fetch_offset,
                max_bytes: u32::try_from(p.partition_max_bytes).unwrap_or(0),
            });
        }
        shape.push((topic.topic.clone(), indices));
    }
    let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
    let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
    let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0);
    let mut found = door
        .broker
        .kafka_fetch(wants, wait, min_bytes, max_bytes)
        .await
        .into_iter();
    // The response's own bound: once it is reached, later partitions send no records
    // (the first batch found is always sent, as Kafka does).
    let mut total = 0usize;
    let responses = shape
        .into_iter()
        .map(|(topic, indices)| {
            let partitions = indices
                .into_iter()
                .map(|(index, allowed)| {
                    if !allowed {
                        return PartitionData::default()
                            .with_partition_index(index)
                            .with_error_code(ResponseError::TopicAuthorizationFailed.code());
                    }
                    let Fetched {
                        error,
                        high_watermark,
                        log_start,
                        mut records,
                    } = found.next().unwrap_or_default();
                    if total > 0 && total + records.len() > max_bytes {
                        records = Bytes::new();
                    }
                    total += records.len();
                    PartitionData::default()
                        .with_partition_index(index)
                        .with_error_code(code(error))
                        .with_high_watermark(high_watermark)
                        .with_last_stable_offset(high_watermark)
                        .with_log_start_offset(if version >= 5 { log_start } else { -1 })
                        .with_aborted_transactions(Some(Vec::new()))
                        .with_preferred_read_replica(BrokerId(-1))
                        .with_records(Some(records))
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(topic)
                .with_partitions(partitions)
        })
        .collect();
    FetchResponse::default().with_responses(responses)
}

async fn list_offsets(
    door: &Rc<KafkaDoor>,
    auth: &mut ConnAuth,
    request: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let name: Arc<str> = Arc::from(topic.name.as_str());
        let allowed = auth.may_read(door, &name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            if !allowed {
                partitions.push(
                    ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(ResponseError::TopicAuthorizationFailed.code()),
                );
                continue;
            }
            let query = match p.timestamp {
                -2 => OffsetQuery::Earliest,
                -1 => OffsetQuery::Latest,
                -3 => OffsetQuery::NewestTimestamp,
                ts => OffsetQuery::Time(ts),
            };
            let answer = match u32::try_from(p.partition_index) {
                Ok(partition) => {
                    door.broker
                        .kafka_offset(Arc::clone(&name), partition, query)
                        .await
                }
                Err(_) => Err(KafkaError::UnknownTopicOrPartition),
            };
            let (error, (offset, timestamp)) = match answer {
                Ok(found) => (None, found),
                Err(e) => (Some(e), (-1, -1)),
            };
            partitions.push(
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(p.partition_index)
                    .with_error_code(code(error))
                    .with_offset(offset)
                    .with_timestamp(timestamp)
                    .with_leader_epoch(if version >= 4 { 0 } else { -1 }),
            );
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(topic.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}
