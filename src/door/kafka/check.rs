//! The Kafka request decoder's contract, for the `kafka_request` fuzz target and the
//! corpus replay test (`shardmq::fuzzing`).
//!
//! Input: one request frame without its size, as a client sends it. Checked: decoding
//! never panics, whatever the bytes; a decoded Produce's record sets go through the
//! batch checks the owner runs, and a set they accept is split into batches that cover
//! it exactly, each with at least one record.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest,
    JoinGroupRequest, MetadataRequest, OffsetCommitRequest, ProduceRequest, RequestHeader,
    RequestKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::handlers::{decode, Decoded};
use crate::broker::kafka::batch;

/// Runs the decoder on `data` and checks what it accepts.
pub fn request_check(data: &[u8]) {
    let Ok(Decoded::Request {
        request: RequestKind::Produce(produce),
        ..
    }) = decode(Bytes::copy_from_slice(data))
    else {
        return;
    };
    for topic in produce.topic_data {
        for partition in topic.partition_data {
            let Some(records) = partition.records else {
                continue;
            };
            if let Ok(batches) = batch::split(&records) {
                let covered: usize = batches.iter().map(|b| b.bytes).sum();
                assert_eq!(covered, records.len(), "the batches cover the record set");
                assert!(batches.iter().all(|b| b.records >= 1));
            }
        }
    }
}

/// A request frame of `api` at `version` with `body`, as a client frames it (without
/// the size).
fn frame<M: Encodable>(api: ApiKey, version: i16, body: &M) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("seed")));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, api.request_header_version(version))
        .expect("the header encodes");
    body.encode(&mut out, version).expect("the body encodes");
    out.to_vec()
}

/// Named seed inputs: a request of several served APIs at their lowest and highest
/// versions, Produce with one and with two batches.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let produce = |records: Vec<u8>| {
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("telemetry")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from(records)))])])
    };
    let mut seeds = vec![
        (
            "api_versions_v0".into(),
            frame(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default()),
        ),
        (
            "api_versions_v3".into(),
            frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default()),
        ),
        (
            "metadata_v1".into(),
            frame(ApiKey::Metadata, 1, &MetadataRequest::default()),
        ),
        (
            "metadata_v12".into(),
            frame(ApiKey::Metadata, 12, &MetadataRequest::default()),
        ),
        (
            "fetch_v4".into(),
            frame(ApiKey::Fetch, 4, &FetchRequest::default()),
        ),
        (
            "fetch_v12".into(),
            frame(ApiKey::Fetch, 12, &FetchRequest::default()),
        ),
        (
            "join_group_v7".into(),
            frame(ApiKey::JoinGroup, 7, &JoinGroupRequest::default()),
        ),
        (
            "offset_commit_v8".into(),
            frame(ApiKey::OffsetCommit, 8, &OffsetCommitRequest::default()),
        ),
        (
            "create_topics_v7".into(),
            frame(
                ApiKey::CreateTopics,
                7,
                &CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_num_partitions(2)
                    .with_replication_factor(-1)]),
            ),
        ),
        (
            "delete_topics_v5".into(),
            frame(
                ApiKey::DeleteTopics,
                5,
                &DeleteTopicsRequest::default()
                    .with_topic_names(vec![TopicName(StrBytes::from_static_str("t"))]),
            ),
        ),
    ];
    for version in [3, 9] {
        seeds.push((
            format!("produce_v{version}_one_batch"),
            frame(
                ApiKey::Produce,
                version,
                &produce(batch::example(3, 1_700_000_000_000)),
            ),
        ));
    }
    let two = [batch::example(1, 1), batch::example(2, 2)].concat();
    seeds.push((
        "produce_v3_two_batches".into(),
        frame(ApiKey::Produce, 3, &produce(two)),
    ));
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_decodes_and_passes_the_check() {
        for (name, seed) in seeds() {
            assert!(
                matches!(
                    decode(Bytes::from(seed.clone())),
                    Ok(Decoded::Request { .. })
                ),
                "{name}"
            );
            request_check(&seed);
        }
    }
}
