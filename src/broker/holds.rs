//! What the members and backlogs of shared groups still hold of each owner's log: the
//! floor below which a session's logged cursors and QoS 2 releases may not go. Used by
//! the groups (`shared`) and by the cursor flush (`persist`), below both.

use std::collections::HashMap;
use std::sync::Arc;

use crate::router::ShardId;
use crate::session::Session;

/// What the backlogs of one shard still have to deliver: per backlog its members'
/// subscription key and `GroupBacklog::lowest_by_owner`. Taken once per cursor flush.
pub(crate) type BacklogHolds = Vec<(String, Vec<Option<u64>>)>;

/// Per group (by name), the lowest log offset per owner shard that a member on this
/// shard holds (queued or in flight). When that member leaves, the delivery goes back to
/// the group, and if the backlog is full it opens or lowers the group's gap there: the
/// catch-up read then brings the messages above it again, also those another member
/// already completed. So a member's releases are kept down to these too.
pub(crate) type MemberHolds = HashMap<Arc<str>, Vec<u64>>;

/// What the members of every group here hold (see [`MemberHolds`]).
pub(crate) fn member_holds<'a>(sessions: impl Iterator<Item = &'a Session>) -> MemberHolds {
    let mut holds = MemberHolds::new();
    for s in sessions {
        for (group, pos) in s.outbound.shared_held() {
            let lowest = match holds.get_mut(group) {
                Some(l) => l,
                None => holds.entry(Arc::clone(group)).or_default(),
            };
            let owner = pos.shard.index();
            if lowest.len() <= owner {
                lowest.resize(owner + 1, u64::MAX);
            }
            lowest[owner] = lowest[owner].min(pos.offset);
        }
    }
    holds
}

/// Lowers `cursors` to what the other members of the session's groups hold (see
/// [`MemberHolds`]): the bound below which its QoS 2 releases can go.
pub(crate) fn lower_by_members(holds: &MemberHolds, s: &Session, cursors: &mut [(ShardId, u64)]) {
    if holds.is_empty() {
        return;
    }
    let groups = s
        .subscriptions
        .keys()
        .filter_map(|f| f.strip_prefix("$share/")?.split('/').next());
    for group in groups {
        let Some(lowest) = holds.get(group) else {
            continue;
        };
        for (owner, cursor) in cursors.iter_mut() {
            if let Some(low) = lowest.get(owner.index()) {
                *cursor = (*cursor).min(*low);
            }
        }
    }
}

/// Before logging a session's cursors: every group backlog the session is a member of
/// holds them down to what it has yet to deliver.
pub(crate) fn lower_by_groups(holds: &BacklogHolds, s: &Session, cursors: &mut [(ShardId, u64)]) {
    for (member_filter, lowest) in holds {
        if !s.subscriptions.contains_key(member_filter.as_str()) {
            continue;
        }
        for (owner, cursor) in cursors.iter_mut() {
            if let Some(Some(low)) = lowest.get(owner.index()) {
                *cursor = (*cursor).min(*low);
            }
        }
    }
}
