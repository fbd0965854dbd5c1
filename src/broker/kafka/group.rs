//! One Kafka consumer group on its coordinator shard: the classic group protocol's
//! membership and generations (JoinGroup, SyncGroup, Heartbeat, LeaveGroup), with the
//! partition assignment left to the clients (the leader computes it), and the group's
//! committed offsets.
//!
//! The state machine is synchronous; the broker drives it (`kafka::groups`): a join or
//! sync that must wait for the others polls [`Group::join_result`] /
//! [`Group::sync_result`] after each change, and a periodic round ends rebalances whose
//! time is up and removes members whose session expired.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Where a group is in its rebalance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Waiting for the members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
}

impl GroupState {
    /// Kafka's name for it (DescribeGroups, the admin CLI).
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// Why a group call fails; the door maps each to its Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupError {
    /// The member is not (or no longer) in the group.
    UnknownMember,
    /// The call names another generation.
    IllegalGeneration,
    /// A rebalance is under way: rejoin.
    RebalanceInProgress,
    /// A new member must rejoin with the id it was given (JoinGroup v4+).
    MemberIdRequired,
    /// The member's protocol type or protocols do not match the group's.
    InconsistentProtocol,
    /// A session timeout outside what the broker allows.
    InvalidSessionTimeout,
    /// The group has [`MEMBERS_MAX`] members, or its coordinator [`GROUPS_MAX`] groups.
    Full,
}

/// Members one group may have.
pub const MEMBERS_MAX: usize = 1000;
/// Groups one coordinator shard keeps.
pub const GROUPS_MAX: usize = 10_000;

/// A member's join, as the client sent it.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// The client's id (for member ids and DescribeGroups).
    pub client_id: String,
    /// Its address.
    pub client_host: String,
    /// Heard nothing for this long: the member is gone.
    pub session_timeout: Duration,
    /// How long a rebalance waits for it to rejoin.
    pub rebalance_timeout: Duration,
    /// "consumer" for consumers.
    pub protocol_type: String,
    /// The assignment strategies it supports, best first, with its metadata for each.
    pub protocols: Vec<(String, Bytes)>,
}

#[derive(Debug)]
struct Member {
    params: JoinParams,
    last_heard: Instant,
    /// Joined in the rebalance under way (or the last one).
    joined: bool,
    assignment: Bytes,
}

/// What a completed join tells a member.
#[derive(Debug, Clone)]
pub struct JoinResult {
    /// The new generation.
    pub generation: i32,
    /// The strategy every member supports, chosen for this generation.
    pub protocol: String,
    /// The protocol type.
    pub protocol_type: String,
    /// The leader's member id.
    pub leader: String,
    /// The member's own id.
    pub member_id: String,
    /// To the leader only: every member with its metadata for the chosen strategy.
    pub members: Vec<(String, Bytes)>,
}

/// A committed offset.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The next offset to consume.
    pub offset: i64,
    /// The client's metadata string.
    pub metadata: String,
    /// The WAL record that holds it.
    pub wal: u64,
}

/// One consumer group.
#[derive(Debug)]
pub struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Rebalances started; a join waits for the one it took part in to complete.
    started: u64,
    completed: u64,
    /// When the rebalance under way ends regardless of members not rejoined.
    deadline: Option<Instant>,
    next_member: u64,
    /// Member ids given to new members (JoinGroup v4+) that have not joined with them
    /// yet, with when they were given.
    pending: BTreeMap<String, Instant>,
    /// Committed offsets by topic and partition.
    pub offsets: HashMap<(Arc<str>, u32), Committed>,
    /// Calls waiting for a change (a rebalance completing, the leader's assignment).
    waiters: Vec<Waker>,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            started: 0,
            completed: 0,
            deadline: None,
            next_member: 0,
            pending: BTreeMap::new(),
            offsets: HashMap::new(),
            waiters: Vec::new(),
        }
    }
}

/// Shortest and longest session timeouts accepted (Kafka's broker defaults).
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(6);
/// See [`SESSION_TIMEOUT_MIN`].
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(1800);

impl Group {
    /// Its state.
    pub fn state(&self) -> GroupState {
        self.state
    }

    /// Its generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// The chosen strategy and protocol type.
    pub fn protocol(&self) -> (Option<&str>, Option<&str>) {
        (self.protocol.as_deref(), self.protocol_type.as_deref())
    }

    /// `(member id, client id, client host, assignment)` of every member.
    pub fn members(&self) -> Vec<(String, String, String, Bytes)> {
        self.members
            .iter()
            .map(|(id, m)| {
                (
                    id.clone(),
                    m.params.client_id.clone(),
                    m.params.client_host.clone(),
                    m.assignment.clone(),
                )
            })
            .collect()
    }

    /// Wakes `waker` at the next change. A call that gave up (its wait timed out)
    /// leaves its waker behind: past [`super::partition::WAITERS_MAX`] every waiter is
    /// woken (those still waiting look again), so the list stays bounded.
    pub fn wait(&mut self, waker: &Waker) {
        if self.waiters.iter().any(|w| w.will_wake(waker)) {
            return;
        }
        if self.waiters.len() >= super::partition::WAITERS_MAX {
            self.changed();
        }
        self.waiters.push(waker.clone());
    }

    fn changed(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    /// A member joins (`member_id` empty: a new member). Returns its member id and the
    /// rebalance its join completes with (see [`Group::join_result`]).
    ///
    /// As in Kafka, a member that joins again with the protocols it joined with gets the
    /// current generation back at once, without a rebalance, while the group waits for
    /// the leader's assignment, and also once the group is stable unless it leads: it
    /// lost the answer to its last join, or its client threw it away, and only needs
    /// to sync again. A leader that joins again while the group is stable still starts
    /// a rebalance (that is how a client asks for one, e.g. for a topic's new
    /// partitions), and so does a member whose protocols changed.
    pub fn join(
        &mut self,
        member_id: &str,
        params: JoinParams,
        require_known_id: bool,
        shard: usize,
        now: Instant,
    ) -> Result<(String, u64), (GroupError, String)> {
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&params.session_timeout) {
            return Err((GroupError::InvalidSessionTimeout, member_id.to_string()));
        }
        if let Some(kind) = &self.protocol_type {
            let shared = params
                .protocols
                .iter()
                .any(|(name, _)| self.members.values().all(|m| m.supports(name)));
            if *kind != params.protocol_type || (!self.members.is_empty() && !shared) {
                return Err((GroupError::InconsistentProtocol, member_id.to_string()));
            }
        }
        if !self.members.contains_key(member_id)
            && self.members.len() + self.pending.len() >= MEMBERS_MAX
        {
            return Err((GroupError::Full, member_id.to_string()));
        }
        let member_id = if member_id.is_empty() {
            self.next_member += 1;
            // Unique within the group; the start time tells this run's ids from an
            // earlier run's.
            let run = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            let id = format!("{}-{shard}-{}-{run:x}", params.client_id, self.next_member);
            if require_known_id {
                // The client joins again with it (KIP-394).
                self.pending.insert(id.clone(), now);
                return Err((GroupError::MemberIdRequired, id));
            }
            id
        } else if self.members.contains_key(member_id) || self.pending.remove(member_id).is_some() {
            member_id.to_string()
        } else {
            return Err((GroupError::UnknownMember, member_id.to_string()));
        };
        if let Some(m) = self.members.get_mut(&member_id) {
            let unchanged = m.params.protocols == params.protocols;
            let settled = match self.state {
                GroupState::CompletingRebalance => unchanged,
                GroupState::Stable => unchanged && self.leader.as_ref() != Some(&member_id),
                GroupState::Empty | GroupState::PreparingRebalance => false,
            };
            if settled {
                m.last_heard = now;
                return Ok((member_id, self.completed));
            }
        }
        if self.members.is_empty() {
            self.protocol_type = Some(params.protocol_type.clone());
        }
        let rebalance_timeout = params.rebalance_timeout;
        let member = self.members.entry(member_id.clone()).or_insert(Member {
            params: params.clone(),
            last_heard: now,
            joined: false,
            assignment: Bytes::new(),
        });
        member.params = params;
        member.last_heard = now;
        if self.state != GroupState::PreparingRebalance {
            self.start_rebalance(now);
        }
        if let Some(m) = self.members.get_mut(&member_id) {
            m.joined = true;
        }
        let deadline = now + rebalance_timeout;
        if self.deadline.is_none_or(|d| d < deadline) {
            self.deadline = Some(deadline);
        }
        self.try_complete(now);
        Ok((member_id, self.started))
    }

    fn start_rebalance(&mut self, now: Instant) {
        self.state = GroupState::PreparingRebalance;
        self.started += 1;
        for m in self.members.values_mut() {
            m.joined = false;
            m.assignment = Bytes::new();
        }
        let longest = self
            .members
            .values()
            .map(|m| m.params.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.deadline = Some(now + longest);
        self.changed();
    }

    /// Ends the rebalance under way if every member rejoined or its time is up (those
    /// that did not rejoin are dropped); returns whether it ended.
    pub fn try_complete(&mut self, now: Instant) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let all_in = self.members.values().all(|m| m.joined);
        if !all_in && self.deadline.is_some_and(|d| now < d) {
            return false;
        }
        self.members.retain(|_, m| m.joined);
        self.generation += 1;
        self.completed = self.started;
        self.deadline = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
        } else {
            // The first strategy of the leader's that every member supports.
            if !self
                .leader
                .as_ref()
                .is_some_and(|l| self.members.contains_key(l))
            {
                self.leader = self.members.keys().next().cloned();
            }
            let leader = &self.members[self.leader.as_ref().expect("a member leads")];
            self.protocol = leader
                .params
                .protocols
                .iter()
                .map(|(name, _)| name)
                .find(|name| self.members.values().all(|m| m.supports(name)))
                .cloned();
            self.state = GroupState::CompletingRebalance;
        }
        self.changed();
        true
    }

    /// The outcome of `member_id`'s join in rebalance `round`: `None` while it runs.
    pub fn join_result(
        &self,
        member_id: &str,
        round: u64,
    ) -> Option<Result<JoinResult, GroupError>> {
        if self.completed < round {
            return None;
        }
        if self.completed > round && self.state == GroupState::PreparingRebalance {
            return Some(Err(GroupError::RebalanceInProgress));
        }
        if !self.members.contains_key(member_id) {
            return Some(Err(GroupError::UnknownMember));
        }
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            self.members
                .iter()
                .map(|(id, m)| (id.clone(), m.metadata_for(&protocol)))
                .collect()
        } else {
            Vec::new()
        };
        Some(Ok(JoinResult {
            generation: self.generation,
            protocol,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            leader,
            member_id: member_id.to_string(),
            members,
        }))
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), GroupError> {
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMember);
        }
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration);
        }
        Ok(())
    }

    /// A member's SyncGroup: the leader brings every member's assignment.
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Result<(), GroupError> {
        self.check_member(member_id, generation)?;
        self.heard(member_id, now);
        match self.state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            GroupState::Empty => Err(GroupError::UnknownMember),
            GroupState::Stable => Ok(()),
            GroupState::CompletingRebalance => {
                if self.leader.as_deref() == Some(member_id) {
                    for (id, assignment) in assignments {
                        if let Some(m) = self.members.get_mut(&id) {
                            m.assignment = assignment;
                        }
                    }
                    self.state = GroupState::Stable;
                    self.changed();
                }
                Ok(())
            }
        }
    }

    /// A synced member's assignment: `None` while the leader's is awaited.
    pub fn sync_result(
        &self,
        member_id: &str,
        generation: i32,
    ) -> Option<Result<Bytes, GroupError>> {
        if let Err(e) = self.check_member(member_id, generation) {
            return Some(Err(e));
        }
        match self.state {
            GroupState::Stable => Some(Ok(self.members[member_id].assignment.clone())),
            GroupState::CompletingRebalance => None,
            _ => Some(Err(GroupError::RebalanceInProgress)),
        }
    }

    fn heard(&mut self, member_id: &str, now: Instant) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heard = now;
        }
    }

    /// A member's Heartbeat.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        generation: i32,
        now: Instant,
    ) -> Result<(), GroupError> {
        self.check_member(member_id, generation)?;
        self.heard(member_id, now);
        match self.state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// A member leaves: the others rebalance.
    pub fn leave(&mut self, member_id: &str, now: Instant) -> Result<(), GroupError> {
        if self.members.remove(member_id).is_none() {
            return Err(GroupError::UnknownMember);
        }
        self.after_removal(now);
        Ok(())
    }

    fn after_removal(&mut self, now: Instant) {
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.generation += 1;
            self.completed = self.started;
            self.protocol = None;
            self.protocol_type = None;
            self.leader = None;
            self.deadline = None;
            self.changed();
        } else if self.state == GroupState::PreparingRebalance {
            self.try_complete(now);
        } else {
            self.start_rebalance(now);
        }
    }

    /// Removes members not heard from within their session timeout (a member waiting
    /// in a join is heard from) and ends rebalances whose time is up; returns whether
    /// anything changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let before = self.members.len();
        let preparing = self.state == GroupState::PreparingRebalance;
        self.members.retain(|_, m| {
            (preparing && m.joined) || now.duration_since(m.last_heard) <= m.params.session_timeout
        });
        let removed = self.members.len() != before;
        self.pending.retain(|_, given| {
            now.duration_since(*given) <= SESSION_TIMEOUT_MAX.min(Duration::from_secs(300))
        });
        if removed {
            self.after_removal(now);
        }
        removed | self.try_complete(now)
    }

    /// Keeps a member waiting in a join alive.
    pub fn touch(&mut self, member_id: &str, now: Instant) {
        self.heard(member_id, now);
    }

    /// A commit from `member_id` in `generation` (-1 with no member: a consumer that
    /// assigns its partitions itself) may be taken.
    pub fn may_commit(&self, member_id: &str, generation: i32) -> Result<(), GroupError> {
        if generation < 0 && member_id.is_empty() {
            return Ok(());
        }
        self.check_member(member_id, generation)?;
        if self.state == GroupState::PreparingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Whether the group holds nothing worth keeping.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.offsets.is_empty()
    }
}

impl Member {
    fn supports(&self, protocol: &str) -> bool {
        self.params
            .protocols
            .iter()
            .any(|(name, _)| name == protocol)
    }

    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.params
            .protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(client: &str, protocols: &[&str]) -> JoinParams {
        JoinParams {
            client_id: client.into(),
            client_host: "127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("{client}:{p}"))))
                .collect(),
        }
    }

    #[test]
    fn two_members_join_sync_and_rebalance_when_one_leaves() {
        let now = Instant::now();
        let mut g = Group::default();
        // JoinGroup v4+: a new member is first told its id.
        let (code, a) = g
            .join("", params("a", &["range", "roundrobin"]), true, 0, now)
            .unwrap_err();
        assert_eq!(code, GroupError::MemberIdRequired);
        assert_eq!(
            g.join("made-up", params("a", &["range"]), true, 0, now)
                .unwrap_err()
                .0,
            GroupError::UnknownMember
        );
        let (a, round) = g
            .join(&a, params("a", &["range", "roundrobin"]), true, 0, now)
            .unwrap();
        let first = g
            .join_result(&a, round)
            .expect("alone: complete at once")
            .unwrap();
        assert_eq!((first.generation, first.leader.as_str()), (1, a.as_str()));
        assert_eq!(first.protocol, "range");
        g.sync(&a, 1, vec![(a.clone(), Bytes::from_static(b"all"))], now)
            .unwrap();
        assert_eq!(
            g.sync_result(&a, 1).unwrap().unwrap(),
            Bytes::from_static(b"all")
        );
        assert_eq!(g.state(), GroupState::Stable);

        // b joins (it only speaks roundrobin): a learns of the rebalance by heartbeat.
        let (b, round_b) = g
            .join("", params("b", &["roundrobin"]), false, 0, now)
            .unwrap();
        assert!(g.join_result(&b, round_b).is_none(), "waits for a");
        assert_eq!(
            g.heartbeat(&a, 1, now),
            Err(GroupError::RebalanceInProgress)
        );
        let (_, round_a) = g
            .join(&a, params("a", &["range", "roundrobin"]), true, 0, now)
            .unwrap();
        assert_eq!(round_a, round_b);
        let to_a = g.join_result(&a, round_a).unwrap().unwrap();
        let to_b = g.join_result(&b, round_b).unwrap().unwrap();
        assert_eq!(to_a.generation, 2);
        assert_eq!(to_a.protocol, "roundrobin", "the first both support");
        assert_eq!(to_a.members.len(), 2, "the leader sees every member");
        assert!(to_b.members.is_empty());
        assert!(g.sync_result(&b, 2).is_none(), "b waits for the leader");
        g.sync(&b, 2, Vec::new(), now).unwrap();
        g.sync(
            &a,
            2,
            vec![
                (a.clone(), Bytes::from_static(b"p0")),
                (b.clone(), Bytes::from_static(b"p1")),
            ],
            now,
        )
        .unwrap();
        assert_eq!(
            g.sync_result(&b, 2).unwrap().unwrap(),
            Bytes::from_static(b"p1")
        );
        assert_eq!(g.heartbeat(&b, 1, now), Err(GroupError::IllegalGeneration));

        g.leave(&a, now).unwrap();
        assert_eq!(g.heartbeat(&a, 2, now), Err(GroupError::UnknownMember));
        assert_eq!(
            g.heartbeat(&b, 2, now),
            Err(GroupError::RebalanceInProgress)
        );
        let (_, round) = g
            .join(&b, params("b", &["roundrobin"]), false, 0, now)
            .unwrap();
        let alone = g.join_result(&b, round).unwrap().unwrap();
        assert_eq!((alone.generation, alone.leader), (3, b.clone()));
    }

    /// A client that lost (or threw away) the answer to its join joins again with the
    /// same protocols: a follower gets the current generation back and syncs again; the
    /// others are not made to rebalance. Rebalancing there instead let two consumers
    /// whose follower did so after every rebalance rebalance forever.
    #[test]
    fn a_follower_joining_again_unchanged_does_not_rebalance_the_group() {
        let now = Instant::now();
        let mut g = Group::default();
        let (a, _) = g.join("", params("a", &["range"]), false, 0, now).unwrap();
        g.sync(&a, 1, Vec::new(), now).unwrap();
        let (b, round) = g.join("", params("b", &["range"]), false, 0, now).unwrap();
        let (_, _) = g.join(&a, params("a", &["range"]), false, 0, now).unwrap();
        assert_eq!(g.join_result(&b, round).unwrap().unwrap().generation, 2);

        // Waiting for the leader's assignment, either joins again unchanged: the same
        // generation, the leader sees every member again.
        let (_, again) = g.join(&b, params("b", &["range"]), false, 0, now).unwrap();
        let to_b = g.join_result(&b, again).expect("answered at once").unwrap();
        assert_eq!((to_b.generation, to_b.leader.as_str()), (2, a.as_str()));
        let (_, again) = g.join(&a, params("a", &["range"]), false, 0, now).unwrap();
        let to_a = g.join_result(&a, again).expect("answered at once").unwrap();
        assert_eq!((to_a.generation, to_a.members.len()), (2, 2));
        assert_eq!(g.state(), GroupState::CompletingRebalance);
        g.sync(&b, 2, Vec::new(), now).unwrap();
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"p0")),
            (b.clone(), Bytes::from_static(b"p1")),
        ];
        g.sync(&a, 2, assignments, now).unwrap();
        assert_eq!(g.state(), GroupState::Stable);

        // Stable: the follower joins again unchanged and syncs again; no rebalance.
        let (_, again) = g.join(&b, params("b", &["range"]), false, 0, now).unwrap();
        let to_b = g.join_result(&b, again).expect("answered at once").unwrap();
        assert_eq!((to_b.generation, to_b.members.len()), (2, 0));
        assert_eq!(g.state(), GroupState::Stable);
        assert_eq!(g.heartbeat(&a, 2, now), Ok(()), "a is not told to rejoin");
        g.sync(&b, 2, Vec::new(), now).unwrap();
        assert_eq!(
            g.sync_result(&b, 2).unwrap().unwrap(),
            Bytes::from_static(b"p1")
        );

        // The leader joining again, or a follower with other protocols, rebalances.
        let (_, round) = g.join(&a, params("a", &["range"]), false, 0, now).unwrap();
        assert!(g.join_result(&a, round).is_none(), "waits for b");
        assert_eq!(g.state(), GroupState::PreparingRebalance);
        let (_, _) = g.join(&b, params("b", &["range"]), false, 0, now).unwrap();
        assert_eq!(g.join_result(&a, round).unwrap().unwrap().generation, 3);
        g.sync(&a, 3, Vec::new(), now).unwrap();
        let (_, round) = g
            .join(&b, params("b", &["range", "roundrobin"]), false, 0, now)
            .unwrap();
        assert!(g.join_result(&b, round).is_none(), "waits for a");
        assert_eq!(
            g.heartbeat(&a, 3, now),
            Err(GroupError::RebalanceInProgress)
        );
    }

    #[test]
    fn a_silent_member_is_dropped_after_its_session_timeout() {
        let now = Instant::now();
        let mut g = Group::default();
        let (a, _) = g.join("", params("a", &["range"]), false, 0, now).unwrap();
        g.sync(&a, 1, vec![(a.clone(), Bytes::new())], now).unwrap();
        let (b, round) = g.join("", params("b", &["range"]), false, 0, now).unwrap();
        // a never rejoins: the rebalance ends at its deadline without it.
        assert!(!g.tick(now + Duration::from_secs(5)));
        assert!(g.tick(now + Duration::from_secs(31)));
        let result = g.join_result(&b, round).unwrap().unwrap();
        assert_eq!((result.leader.as_str(), result.generation), (b.as_str(), 2));
        assert_eq!(g.heartbeat(&a, 2, now), Err(GroupError::UnknownMember));
        // b goes quiet past its session timeout: the group empties.
        g.sync(&b, 2, Vec::new(), now + Duration::from_secs(31))
            .unwrap();
        assert!(g.tick(now + Duration::from_secs(42)));
        assert_eq!(g.state(), GroupState::Empty);
    }

    #[test]
    fn a_group_takes_at_most_members_max_members() {
        let now = Instant::now();
        let mut g = Group::default();
        for i in 0..MEMBERS_MAX {
            g.join("", params(&format!("c{i}"), &["range"]), false, 0, now)
                .unwrap();
        }
        assert_eq!(
            g.join("", params("one-more", &["range"]), false, 0, now)
                .unwrap_err()
                .0,
            GroupError::Full
        );
        assert_eq!(
            g.join("", params("one-more", &["range"]), true, 0, now)
                .unwrap_err()
                .0,
            GroupError::Full,
            "no member id is handed out either"
        );
    }

    #[test]
    fn commits_need_the_current_generation_unless_standalone() {
        let now = Instant::now();
        let mut g = Group::default();
        assert_eq!(g.may_commit("", -1), Ok(()));
        assert_eq!(g.may_commit("nobody", 1), Err(GroupError::UnknownMember));
        let (a, _) = g.join("", params("a", &["range"]), false, 0, now).unwrap();
        assert_eq!(g.may_commit(&a, 0), Err(GroupError::IllegalGeneration));
        assert_eq!(g.may_commit(&a, 1), Ok(()));
        let mut other = params("z", &["range"]);
        other.protocol_type = "connect".into();
        assert_eq!(
            g.join("", other, false, 0, now).unwrap_err().0,
            GroupError::InconsistentProtocol
        );
    }
}
