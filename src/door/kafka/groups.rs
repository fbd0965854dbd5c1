//! Consumer group requests: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups and ListGroups, each to the
//! group's coordinator shard through the broker.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::broker::kafka::group::{GroupError, JoinParams};
use crate::broker::kafka::{GroupAnswer, GroupCall};

use super::handlers::{advertised, NODE};
use super::sasl::ConnAuth;
use super::KafkaDoor;

fn group_code(error: GroupError) -> i16 {
    match error {
        GroupError::UnknownMember => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::InconsistentProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::Full => ResponseError::GroupMaxSizeReached,
    }
    .code()
}

fn result_code(result: Result<(), GroupError>) -> i16 {
    result.err().map_or(0, group_code)
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A group id: 1 to 255 bytes.
fn valid_group(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255
}

fn ms(value: i32) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

pub(super) fn find_coordinator(
    door: &KafkaDoor,
    local: Option<SocketAddr>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let at = advertised(door, local);
    let host = text(&at.ip().to_string());
    let port = i32::from(at.port());
    // Every group's coordinator is this broker (node 0); transactions are not served.
    let code = if request.key_type == 0 {
        0
    } else {
        ResponseError::InvalidRequest.code()
    };
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(NODE)
                    .with_host(host.clone())
                    .with_port(port)
                    .with_error_code(code)
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    FindCoordinatorResponse::default()
        .with_error_code(code)
        .with_node_id(NODE)
        .with_host(host)
        .with_port(port)
}

pub(super) async fn join(
    door: &Rc<KafkaDoor>,
    client_id: &str,
    peer: Option<SocketAddr>,
    request: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let response = JoinGroupResponse::default();
    if !valid_group(&request.group_id) {
        return response.with_error_code(ResponseError::InvalidGroupId.code());
    }
    let params = JoinParams {
        client_id: client_id.to_string(),
        client_host: peer.map(|p| p.ip().to_string()).unwrap_or_default(),
        session_timeout: ms(request.session_timeout_ms),
        // Version 0 has no rebalance timeout: the session timeout stands in.
        rebalance_timeout: if version >= 1 {
            ms(request.rebalance_timeout_ms)
        } else {
            ms(request.session_timeout_ms)
        },
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
    };
    let call = GroupCall::Join {
        member_id: request.member_id.to_string(),
        params,
        require_known_id: version >= 4,
    };
    let group = Arc::from(request.group_id.as_str());
    let GroupAnswer::Joined(answer) = door.broker.kafka_group(group, call).await else {
        return response.with_error_code(ResponseError::CoordinatorNotAvailable.code());
    };
    match answer {
        Ok(joined) => response
            .with_generation_id(joined.generation)
            .with_protocol_type(Some(text(&joined.protocol_type)))
            .with_protocol_name(Some(text(&joined.protocol)))
            .with_leader(text(&joined.leader))
            .with_member_id(text(&joined.member_id))
            .with_members(
                joined
                    .members
                    .into_iter()
                    .map(|(id, metadata)| {
                        JoinGroupResponseMember::default()
                            .with_member_id(text(&id))
                            .with_metadata(metadata)
                    })
                    .collect(),
            ),
        Err((error, member_id)) => response
            .with_error_code(group_code(error))
            .with_member_id(text(&member_id)),
    }
}

pub(super) async fn sync(
    door: &Rc<KafkaDoor>,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let call = GroupCall::Sync {
        member_id: request.member_id.to_string(),
        generation: request.generation_id,
        assignments: request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect(),
    };
    let response = SyncGroupResponse::default();
    let response = if version >= 5 {
        response
            .with_protocol_type(request.protocol_type)
            .with_protocol_name(request.protocol_name)
    } else {
        response
    };
    let group = Arc::from(request.group_id.as_str());
    match door.broker.kafka_group(group, call).await {
        GroupAnswer::Synced(Ok(assignment)) => response.with_assignment(assignment),
        GroupAnswer::Synced(Err(e)) => response.with_error_code(group_code(e)),
        _ => response.with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}

pub(super) async fn heartbeat(
    door: &Rc<KafkaDoor>,
    request: HeartbeatRequest,
) -> HeartbeatResponse {
    let call = GroupCall::Heartbeat {
        member_id: request.member_id.to_string(),
        generation: request.generation_id,
    };
    let group = Arc::from(request.group_id.as_str());
    let code = match door.broker.kafka_group(group, call).await {
        GroupAnswer::Beat(result) => result_code(result),
        _ => ResponseError::CoordinatorNotAvailable.code(),
    };
    HeartbeatResponse::default().with_error_code(code)
}

pub(super) async fn leave(
    door: &Rc<KafkaDoor>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let member_ids: Vec<String> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect()
    } else {
        vec![request.member_id.to_string()]
    };
    let group = Arc::from(request.group_id.as_str());
    let call = GroupCall::Leave {
        member_ids: member_ids.clone(),
    };
    let GroupAnswer::Left(results) = door.broker.kafka_group(group, call).await else {
        return LeaveGroupResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code());
    };
    if version >= 3 {
        let members = member_ids
            .iter()
            .zip(&results)
            .map(|(id, r)| {
                MemberResponse::default()
                    .with_member_id(text(id))
                    .with_error_code(result_code(*r))
            })
            .collect();
        return LeaveGroupResponse::default().with_members(members);
    }
    LeaveGroupResponse::default().with_error_code(results.first().map_or(0, |r| result_code(*r)))
}

pub(super) async fn offset_commit(
    door: &Rc<KafkaDoor>,
    auth: &mut ConnAuth,
    request: OffsetCommitRequest,
) -> OffsetCommitResponse {
    // Only partitions that exist are committed: a group holds at most one offset per
    // partition served.
    let topics = door.broker.kafka_topics();
    let known = |topic: &str, partition: i32| {
        topics
            .iter()
            .any(|t| &*t.name == topic && u32::try_from(partition).is_ok_and(|p| p < t.partitions))
    };
    // Committing needs read access to the topic, as in Kafka.
    let readable: Vec<bool> = request
        .topics
        .iter()
        .map(|t| auth.may_read(door, &t.name))
        .collect();
    let mut offsets = Vec::new();
    for (topic, _) in request.topics.iter().zip(&readable).filter(|(_, r)| **r) {
        let name: Arc<str> = Arc::from(topic.name.as_str());
        for p in topic
            .partitions
            .iter()
            .filter(|p| known(&name, p.partition_index))
        {
            offsets.push((
                Arc::clone(&name),
                p.partition_index as u32,
                p.committed_offset,
                p.committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            ));
        }
    }
    let nothing = offsets.is_empty();
    let call = GroupCall::Commit {
        member_id: request.member_id.to_string(),
        generation: request.generation_id_or_member_epoch,
        offsets,
    };
    let code = if !valid_group(&request.group_id) {
        ResponseError::InvalidGroupId.code()
    } else if nothing {
        0
    } else {
        let group = Arc::from(request.group_id.as_str());
        match door.broker.kafka_group(group, call).await {
            GroupAnswer::Committed(Ok(())) => 0,
            GroupAnswer::Committed(Err(Some(e))) => group_code(e),
            _ => ResponseError::KafkaStorageError.code(),
        }
    };
    let topics = request
        .topics
        .into_iter()
        .zip(readable)
        .map(|(topic, readable)| {
            let partitions = topic
                .partitions
                .iter()
                .map(|p| {
                    let code = if !readable {
                        ResponseError::TopicAuthorizationFailed.code()
                    } else if known(&topic.name, p.partition_index) {
                        code
                    } else {
                        ResponseError::UnknownTopicOrPartition.code()
                    };
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            OffsetCommitResponseTopic::default()
                .with_name(topic.name)
                .with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

pub(super) async fn offset_fetch(
    door: &Rc<KafkaDoor>,
    request: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let partitions = request.topics.as_ref().map(|topics| {
        topics
            .iter()
            .flat_map(|t| {
                let name: Arc<str> = Arc::from(t.name.as_str());
                t.partition_indexes
                    .iter()
                    .map(move |p| (Arc::clone(&name), u32::try_from(*p).unwrap_or(u32::MAX)))
            })
            .collect::<Vec<_>>()
    });
    let group = Arc::from(request.group_id.as_str());
    let GroupAnswer::Offsets(found) = door
        .broker
        .kafka_group(group, GroupCall::Offsets { partitions })
        .await
    else {
        return OffsetFetchResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code());
    };
    // In the order asked (every commit, by topic, when the request named none).
    let mut topics: Vec<(Arc<str>, Vec<OffsetFetchResponsePartition>)> = Vec::new();
    for (topic, partition, committed) in found {
        let (offset, metadata) = committed.unwrap_or((-1, String::new()));
        let entry = OffsetFetchResponsePartition::default()
            .with_partition_index(partition as i32)
            .with_committed_offset(offset)
            .with_committed_leader_epoch(-1)
            .with_metadata(Some(text(&metadata)));
        match topics.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, list)) => list.push(entry),
            None => topics.push((topic, vec![entry])),
        }
    }
    OffsetFetchResponse::default().with_topics(
        topics
            .into_iter()
            .map(|(name, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(text(&name)))
                    .with_partitions(partitions)
            })
            .collect(),
    )
}

pub(super) async fn describe_groups(
    door: &Rc<KafkaDoor>,
    request: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(request.groups.len());
    for id in request.groups {
        let group = Arc::from(id.as_str());
        let described = match door.broker.kafka_group(group, GroupCall::Describe).await {
            GroupAnswer::Described(info) => DescribedGroup::default()
                .with_group_id(id)
                .with_group_state(text(info.state))
                .with_protocol_type(text(&info.protocol_type))
                .with_protocol_data(text(&info.protocol))
                .with_members(
                    info.members
                        .into_iter()
                        .map(|(member, client, host, assignment)| {
                            DescribedGroupMember::default()
                                .with_member_id(text(&member))
                                .with_client_id(text(&client))
                                .with_client_host(text(&host))
                                .with_member_assignment(assignment)
                        })
                        .collect(),
                ),
            _ => DescribedGroup::default()
                .with_group_id(id)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code()),
        };
        groups.push(described);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

pub(super) async fn list_groups(door: &Rc<KafkaDoor>, version: i16) -> ListGroupsResponse {
    let groups = door
        .broker
        .kafka_list_groups()
        .await
        .into_iter()
        .map(|(name, state)| {
            let listed = ListedGroup::default()
                .with_group_id(GroupId(text(&name)))
                .with_protocol_type(text("consumer"));
            if version >= 4 {
                listed.with_group_state(text(state.name()))
            } else {
                listed
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}
