//! Kafka consumer groups on their coordinator shards: the group calls of the door, and
//! committed offsets in the coordinator's log.
//!
//! Group `g` is coordinated by shard `owner_of("kafka-group/" + g)`. Membership lives
//! in memory (consumers rejoin after a restart, as after any coordinator change);
//! committed offsets are logged: an OffsetCommit is answered once its `kafka_offsets`
//! record (kind 31) is as durable as `fsync_policy` promises, and recovery rebuilds
//! every group's offsets from those records. Retention writes a group's commits again
//! (one record) before a segment holding them goes, as it does retained messages.
//!
//! Body of a `kafka_offsets` record: `group length u16 LE | group | count u32 LE`, then
//! per partition `topic length u16 LE | topic | partition u32 LE | offset i64 LE |
//! metadata length u16 LE | metadata`.

use std::collections::HashMap;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::router::{owner_of, ShardId};
use crate::storage::{RecordKind, RecordRef, WalError};

use super::group::{Committed, Group, GroupError, GroupState, JoinParams, JoinResult, GROUPS_MAX};
use super::{KafkaAnswer, KafkaRequest};
use crate::broker::persist::unix_ms;
use crate::broker::Broker;

/// Committed offsets of one group (see the module docs).
pub const RECORD_KAFKA_OFFSETS: RecordKind = RecordKind(31);

/// How often groups look for members whose session expired and rebalances whose time
/// is up.
const GROUP_TICK: Duration = Duration::from_millis(250);

/// A commit as the door hands it over: `(topic, partition, offset, metadata)`.
pub type Commit = (Arc<str>, u32, i64, String);
/// A commit read back from a record: `(topic, partition, offset, metadata)`.
pub type LoggedCommit = (String, u32, i64, String);
/// A committed offset asked for: `(topic, partition, offset and metadata if any)`.
pub type CommittedOffset = (Arc<str>, u32, Option<(i64, String)>);

/// A group call of the door.
#[derive(Debug)]
pub enum GroupCall {
    /// JoinGroup.
    Join {
        /// Empty for a new member.
        member_id: String,
        /// What the member sent.
        params: JoinParams,
        /// JoinGroup v4+: a new member is first given its id.
        require_known_id: bool,
    },
    /// SyncGroup.
    Sync {
        /// The member.
        member_id: String,
        /// Its generation.
        generation: i32,
        /// From the leader: every member's assignment.
        assignments: Vec<(String, Bytes)>,
    },
    /// Heartbeat.
    Heartbeat {
        /// The member.
        member_id: String,
        /// Its generation.
        generation: i32,
    },
    /// LeaveGroup.
    Leave {
        /// The members leaving.
        member_ids: Vec<String>,
    },
    /// OffsetCommit.
    Commit {
        /// The member (empty for a consumer outside the group protocol).
        member_id: String,
        /// Its generation (-1 outside the group protocol).
        generation: i32,
        /// `(topic, partition, offset, metadata)`.
        offsets: Vec<Commit>,
    },
    /// OffsetFetch: `None` for every partition with a commit.
    Offsets {
        /// `(topic, partition)`.
        partitions: Option<Vec<(Arc<str>, u32)>>,
    },
    /// DescribeGroups.
    Describe,
}

/// What a group describes itself as.
#[derive(Debug, Clone)]
pub struct GroupInfo {
    /// Its state ("Dead" for a group the coordinator does not know).
    pub state: &'static str,
    /// The protocol type.
    pub protocol_type: String,
    /// The chosen strategy.
    pub protocol: String,
    /// `(member id, client id, client host, assignment)`.
    pub members: Vec<(String, String, String, Bytes)>,
    /// `(topic, partition, committed offset)`.
    pub offsets: Vec<(Arc<str>, u32, i64)>,
}

/// The coordinator's answer to a [`GroupCall`].
#[derive(Debug)]
pub enum GroupAnswer {
    /// To Join.
    Joined(Result<JoinResult, (GroupError, String)>),
    /// To Sync: the member's assignment.
    Synced(Result<Bytes, GroupError>),
    /// To Heartbeat.
    Beat(Result<(), GroupError>),
    /// To Leave: one per member.
    Left(Vec<Result<(), GroupError>>),
    /// To Commit: `Err(None)` when the log failed.
    Committed(Result<(), Option<GroupError>>),
    /// To Offsets: `(topic, partition, offset and metadata if committed)`.
    Offsets(Vec<CommittedOffset>),
    /// To Describe.
    Described(GroupInfo),
}

/// Commits read back at start: `(group, entries, record offset)`, in log order.
pub type RecoveredCommits = Vec<(String, Vec<LoggedCommit>, u64)>;

/// `group`, made if it is new and the coordinator keeps fewer than [`GROUPS_MAX`].
fn with_group<'a>(
    groups: &'a mut HashMap<Arc<str>, Group>,
    group: &Arc<str>,
) -> Option<&'a mut Group> {
    if !groups.contains_key(group) && groups.len() >= GROUPS_MAX {
        return None;
    }
    Some(groups.entry(Arc::clone(group)).or_default())
}

/// The coordinator of `group` among `shards`.
pub fn coordinator_of(group: &str, shards: usize) -> ShardId {
    owner_of(&format!("kafka-group/{group}"), shards)
}

fn encode_commits<'a>(
    group: &str,
    entries: impl ExactSizeIterator<Item = (&'a str, u32, i64, &'a str)>,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, group);
    body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (topic, partition, offset, metadata) in entries {
        put_str(&mut body, topic);
        body.extend_from_slice(&partition.to_le_bytes());
        body.extend_from_slice(&offset.to_le_bytes());
        put_str(&mut body, metadata);
    }
    body
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

pub(super) fn take<'a>(body: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (body.get(..n)?, body.get(n..)?);
    *body = rest;
    Some(head)
}

pub(super) fn take_str(body: &mut &[u8]) -> Option<String> {
    let len = u16::from_le_bytes(take(body, 2)?.try_into().ok()?) as usize;
    String::from_utf8(take(body, len)?.to_vec()).ok()
}

/// Reads a `kafka_offsets` record; `None` if its body does not decode.
pub fn decode_commits(record: &RecordRef<'_>) -> Option<(String, Vec<LoggedCommit>)> {
    let mut body = record.body;
    let group = take_str(&mut body)?;
    let count = u32::from_le_bytes(take(&mut body, 4)?.try_into().ok()?);
    let mut entries = Vec::with_capacity(count.min(1 << 16) as usize);
    for _ in 0..count {
        let topic = take_str(&mut body)?;
        let partition = u32::from_le_bytes(take(&mut body, 4)?.try_into().ok()?);
        let offset = i64::from_le_bytes(take(&mut body, 8)?.try_into().ok()?);
        let metadata = take_str(&mut body)?;
        entries.push((topic, partition, offset, metadata));
    }
    body.is_empty().then_some((group, entries))
}

impl Broker {
    /// Runs `call` on `group`'s coordinator.
    pub async fn kafka_group(self: &Rc<Self>, group: Arc<str>, call: GroupCall) -> GroupAnswer {
        let coordinator = coordinator_of(&group, self.mesh.shards());
        if coordinator == self.id {
            return self.on_group_call(group, call).await;
        }
        match self
            .ask_kafka(coordinator, KafkaRequest::Group { group, call })
            .await
        {
            KafkaAnswer::Group(answer) => answer,
            _ => GroupAnswer::Committed(Err(None)),
        }
    }

    /// Coordinator: one group call; a join or sync waits for the rest of the group.
    pub(crate) async fn on_group_call(
        self: &Rc<Self>,
        group: Arc<str>,
        call: GroupCall,
    ) -> GroupAnswer {
        let now = Instant::now();
        let groups = || self.kafka.groups.borrow_mut();
        match call {
            GroupCall::Join {
                member_id,
                params,
                require_known_id,
            } => {
                let wait = params.rebalance_timeout + Duration::from_secs(5);
                let joined = match with_group(&mut groups(), &group) {
                    Some(g) => g.join(&member_id, params, require_known_id, self.id.index(), now),
                    None => Err((GroupError::Full, member_id)),
                };
                let (member, round) = match joined {
                    Ok(joined) => joined,
                    Err(e) => {
                        tracing::debug!(shard = self.id.index(), %group, member = %e.1, error = ?e.0, "join refused");
                        return GroupAnswer::Joined(Err(e));
                    }
                };
                tracing::debug!(shard = self.id.index(), %group, %member, round, state = ?groups().get(&group).map(Group::state), "join taken");
                let result = poll_fn(|cx| {
                    let mut groups = self.kafka.groups.borrow_mut();
                    let Some(g) = groups.get_mut(&group) else {
                        return Poll::Ready(Err(GroupError::UnknownMember));
                    };
                    g.touch(&member, Instant::now());
                    match g.join_result(&member, round) {
                        Some(result) => Poll::Ready(result),
                        None => {
                            g.wait(cx.waker());
                            Poll::Pending
                        }
                    }
                });
                let result = self.group_wait(wait, result).await;
                tracing::debug!(
                    shard = self.id.index(),
                    %group,
                    %member,
                    generation = result.as_ref().map_or(-1, |r| r.generation),
                    leader = result.as_ref().map_or("", |r| r.leader.as_str()),
                    error = ?result.as_ref().err(),
                    "join answered"
                );
                GroupAnswer::Joined(result.map_err(|e| (e, member)))
            }
            GroupCall::Sync {
                member_id,
                generation,
                assignments,
            } => {
                let synced = match groups().get_mut(&group) {
                    Some(g) => g.sync(&member_id, generation, assignments, now),
                    None => Err(GroupError::UnknownMember),
                };
                if let Err(e) = synced {
                    tracing::debug!(shard = self.id.index(), %group, member = %member_id, generation, error = ?e, "sync refused");
                    return GroupAnswer::Synced(Err(e));
                }
                let result = poll_fn(|cx| {
                    let mut groups = self.kafka.groups.borrow_mut();
                    let Some(g) = groups.get_mut(&group) else {
                        return Poll::Ready(Err(GroupError::UnknownMember));
                    };
                    match g.sync_result(&member_id, generation) {
                        Some(result) => Poll::Ready(result),
                        None => {
                            g.wait(cx.waker());
                            Poll::Pending
                        }
                    }
                });
                let result = self.group_wait(Duration::from_secs(60), result).await;
                tracing::debug!(shard = self.id.index(), %group, member = %member_id, generation, ok = result.is_ok(), error = ?result.as_ref().err(), "sync answered");
                GroupAnswer::Synced(result)
            }
            GroupCall::Heartbeat {
                member_id,
                generation,
            } => {
                let beat = match groups().get_mut(&group) {
                    Some(g) => g.heartbeat(&member_id, generation, now),
                    None => Err(GroupError::UnknownMember),
                };
                if let Err(e) = beat {
                    tracing::debug!(shard = self.id.index(), %group, member = %member_id, generation, error = ?e, "heartbeat refused");
                }
                GroupAnswer::Beat(beat)
            }
            GroupCall::Leave { member_ids } => {
                let mut groups = groups();
                let left = member_ids
                    .iter()
                    .map(|m| match groups.get_mut(&group) {
                        Some(g) => g.leave(m, now),
                        None => Err(GroupError::UnknownMember),
                    })
                    .collect();
                tracing::debug!(shard = self.id.index(), %group, ?member_ids, ?left, "left");
                GroupAnswer::Left(left)
            }
            GroupCall::Commit {
                member_id,
                generation,
                offsets,
            } => GroupAnswer::Committed(self.commit(&group, &member_id, generation, offsets).await),
            GroupCall::Offsets { partitions } => {
                let groups = groups();
                let committed = groups.get(&group).map(|g| &g.offsets);
                let answer = match partitions {
                    Some(wanted) => wanted
                        .into_iter()
                        .map(|(topic, p)| {
                            let found = committed
                                .and_then(|o| o.get(&(Arc::clone(&topic), p)))
                                .map(|c| (c.offset, c.metadata.clone()));
                            (topic, p, found)
                        })
                        .collect(),
                    None => committed
                        .into_iter()
                        .flatten()
                        .map(|((topic, p), c)| {
                            (Arc::clone(topic), *p, Some((c.offset, c.metadata.clone())))
                        })
                        .collect(),
                };
                GroupAnswer::Offsets(answer)
            }
            GroupCall::Describe => {
                let groups = groups();
                let info = match groups.get(&group) {
                    Some(g) => {
                        let (protocol, protocol_type) = g.protocol();
                        let mut offsets: Vec<(Arc<str>, u32, i64)> = g
                            .offsets
                            .iter()
                            .map(|((t, p), c)| (Arc::clone(t), *p, c.offset))
                            .collect();
                        offsets.sort();
                        GroupInfo {
                            state: g.state().name(),
                            protocol_type: protocol_type.unwrap_or_default().to_string(),
                            protocol: protocol.unwrap_or_default().to_string(),
                            members: g.members(),
                            offsets,
                        }
                    }
                    None => GroupInfo {
                        state: "Dead",
                        protocol_type: String::new(),
                        protocol: String::new(),
                        members: Vec::new(),
                        offsets: Vec::new(),
                    },
                };
                GroupAnswer::Described(info)
            }
        }
    }

    /// Waits for `result` at most `limit` (a rebalance in progress after it) or until
    /// the shard stops.
    async fn group_wait<T>(
        &self,
        limit: Duration,
        result: impl std::future::Future<Output = Result<T, GroupError>>,
    ) -> Result<T, GroupError> {
        let stop = async {
            self.shutdown.wait().await;
            Err(GroupError::RebalanceInProgress)
        };
        let waited = glommio::timer::timeout(limit, async {
            Ok(futures_lite::future::or(result, stop).await)
        })
        .await;
        waited.unwrap_or(Err(GroupError::RebalanceInProgress))
    }

    /// Coordinator: logs a commit and waits until it is durable.
    async fn commit(
        &self,
        group: &Arc<str>,
        member_id: &str,
        generation: i32,
        offsets: Vec<Commit>,
    ) -> Result<(), Option<GroupError>> {
        {
            let mut groups = self.kafka.groups.borrow_mut();
            let g = with_group(&mut groups, group).ok_or(Some(GroupError::Full))?;
            g.may_commit(member_id, generation).map_err(Some)?;
        }
        let Some(log) = self.log.get() else {
            return Err(None);
        };
        let body = encode_commits(
            group,
            offsets
                .iter()
                .map(|(t, p, o, m)| (&**t, *p, *o, m.as_str())),
        );
        log.wal.reserve(body.len()).await.map_err(|_| None)?;
        let wal = log
            .wal
            .append(RECORD_KAFKA_OFFSETS, unix_ms(), &[&body])
            .map_err(|_| None)?;
        log.wal.wait_durable(wal).await.map_err(|_| None)?;
        let mut groups = self.kafka.groups.borrow_mut();
        let g = groups.entry(Arc::clone(group)).or_default();
        for (topic, partition, offset, metadata) in offsets {
            g.offsets.insert(
                (topic, partition),
                Committed {
                    offset,
                    metadata,
                    wal: wal.0,
                },
            );
        }
        Ok(())
    }

    /// Coordinator: the groups' commits read back at start; a commit of a topic
    /// deleted or created anew later in the log (`fresh`: from which WAL offset its
    /// commits count) is left out.
    pub(crate) fn recover_commits(
        &self,
        recovered: RecoveredCommits,
        fresh: &HashMap<Arc<str>, u64>,
    ) {
        let shards = self.mesh.shards();
        let mut groups = self.kafka.groups.borrow_mut();
        for (group, entries, wal) in recovered {
            if coordinator_of(&group, shards) != self.id {
                continue;
            }
            let g = groups.entry(Arc::from(group.as_str())).or_default();
            for (topic, partition, offset, metadata) in entries {
                if fresh.get(topic.as_str()).is_some_and(|&from| wal < from) {
                    continue;
                }
                g.offsets.insert(
                    (Arc::from(topic.as_str()), partition),
                    Committed {
                        offset,
                        metadata,
                        wal,
                    },
                );
            }
        }
    }

    /// Every `GROUP_TICK`: members whose session expired leave, rebalances whose time
    /// is up end, groups with nothing left are forgotten.
    pub(crate) fn spawn_group_ticks(self: &Rc<Self>) {
        crate::runtime::spawn_every(GROUP_TICK, self, |shard| async move {
            let now = Instant::now();
            let mut groups = shard.kafka.groups.borrow_mut();
            for (name, g) in groups.iter_mut() {
                if g.tick(now) {
                    tracing::debug!(shard = shard.id.index(), group = %name, state = ?g.state(), generation = g.generation(), members = g.members().len(), "members expired or a rebalance's time ran out");
                }
            }
            groups.retain(|_, g| !g.is_idle());
        });
    }

    /// Retention: writes again, as one record per group, the commits that lie below
    /// `limit`, and waits until they are durable.
    pub(crate) async fn kafka_keep_commits(&self, limit: u64) -> Result<(), WalError> {
        let due: Vec<(Arc<str>, Vec<Commit>)> = {
            let groups = self.kafka.groups.borrow();
            groups
                .iter()
                .filter(|(_, g)| g.offsets.values().any(|c| c.wal < limit))
                .map(|(name, g)| {
                    let entries = g
                        .offsets
                        .iter()
                        .map(|((t, p), c)| (Arc::clone(t), *p, c.offset, c.metadata.clone()))
                        .collect();
                    (Arc::clone(name), entries)
                })
                .collect()
        };
        let Some(log) = self.log.get() else {
            return Ok(());
        };
        for (group, entries) in due {
            let body = encode_commits(
                &group,
                entries
                    .iter()
                    .map(|(t, p, o, m)| (&**t, *p, *o, m.as_str())),
            );
            log.wal.reserve(body.len()).await?;
            let wal = log.wal.append(RECORD_KAFKA_OFFSETS, unix_ms(), &[&body])?;
            log.wal.wait_durable(wal).await?;
            let mut groups = self.kafka.groups.borrow_mut();
            if let Some(g) = groups.get_mut(&group) {
                // Only the commits this record holds: a newer one made meanwhile has its
                // own record.
                for (topic, partition, offset, _) in &entries {
                    if let Some(c) = g.offsets.get_mut(&(Arc::clone(topic), *partition)) {
                        if c.offset == *offset && c.wal < wal.0 {
                            c.wal = wal.0;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Every group of every coordinator, with its state, by name.
    pub async fn kafka_list_groups(self: &Rc<Self>) -> Vec<(Arc<str>, GroupState)> {
        let id = self.requests.open(self.mesh.shards());
        for shard in self.all_shards() {
            self.post(
                shard,
                crate::broker::ShardMsg::Kafka {
                    id,
                    request: KafkaRequest::ListGroups,
                },
            );
        }
        let mut all: Vec<(Arc<str>, GroupState)> = self
            .requests
            .replies(id)
            .await
            .into_iter()
            .filter_map(|r| match r {
                crate::broker::Reply::Kafka(KafkaAnswer::Groups(list)) => Some(list),
                _ => None,
            })
            .flatten()
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every group this shard coordinates, with its state.
    pub(crate) fn kafka_groups_here(&self) -> Vec<(Arc<str>, GroupState)> {
        let groups = self.kafka.groups.borrow();
        let mut list: Vec<_> = groups
            .iter()
            .map(|(n, g)| (Arc::clone(n), g.state()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Offset;

    #[test]
    fn a_commit_record_reads_back() {
        let body = encode_commits(
            "billing",
            [("telemetry", 3u32, 42i64, "meta"), ("audit", 0, 7, "")].into_iter(),
        );
        let record = RecordRef {
            offset: Offset(9),
            kind: RECORD_KAFKA_OFFSETS,
            timestamp_ms: 0,
            body: &body,
        };
        let (group, entries) = decode_commits(&record).expect("decodes");
        assert_eq!(group, "billing");
        assert_eq!(
            entries,
            vec![
                ("telemetry".to_string(), 3, 42, "meta".to_string()),
                ("audit".to_string(), 0, 7, String::new())
            ]
        );
        let cut = RecordRef {
            body: &body[..body.len() - 1],
            ..record
        };
        assert!(decode_commits(&cut).is_none(), "a short body is refused");
    }
}
