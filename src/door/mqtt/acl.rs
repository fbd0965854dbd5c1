//! Where the connection tasks ask the ACL (`auth::acl`): the client id and the will at
//! CONNECT, each PUBLISH and SUBSCRIBE filter. Deliveries are checked where they reach
//! the wire (`Broker::pump`). Each refusal is counted in `shardmq_acl_denied_total` and
//! logged at debug.

use super::Door;
use crate::auth::acl::{Coverage, Identity};
use crate::broker::sys::is_sys_topic;
use crate::config::AclPublishDenied;
use crate::metrics::AclAction;
use crate::mqtt::{Protocol, QoS, ReasonCode};
use crate::session::Will;

use super::conn::Conn;
use super::conn::Ending;

/// Whether this client may use `client_id` (ownership, `client_id_owner`).
pub(super) fn may_use_client_id(door: &Door, identity: Identity<'_>, client_id: &str) -> bool {
    let allowed = door
        .broker
        .auth()
        .acl()
        .may_use_client_id(identity, client_id);
    if !allowed {
        door.probe.acl_denied(AclAction::Connect, 1);
        tracing::debug!(target: super::CONNECTION_LOG, client_id,
            ?identity,
            "acl: client id belongs to another user"
        );
    }
    allowed
}

/// The will, if its client may publish to its topic; a will it may not is dropped (it
/// would never be published).
pub(super) fn permitted_will(door: &Door, conn: &Conn, will: Option<Will>) -> Option<Will> {
    let will = will?;
    let allowed = !is_sys_topic(will.topic.as_str())
        && conn
            .link
            .acl
            .borrow_mut()
            .as_mut()
            .is_none_or(|acl| acl.may_publish(will.topic.as_str()));
    if allowed {
        return Some(will);
    }
    door.probe.acl_denied(AclAction::Will, 1);
    tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token,
        topic = will.topic.as_str(),
        "acl: will dropped"
    );
    None
}

/// Classifies the subscriptions a resumed session brought (see `ClientAcl::settle`).
pub(crate) fn settle(door: &Door, conn: &Conn, key: u64) {
    let mut acl = conn.link.acl.borrow_mut();
    let Some(acl) = acl.as_mut() else { return };
    door.broker.with_filters(key, |filters| acl.settle(filters));
}

/// Classifies again, under rules a reload swapped in while they were being added, the
/// filters a SUBSCRIBE granted (the reload's pass did not find them in the session yet).
pub(super) fn settle_added<'a>(conn: &Conn, filters: impl Iterator<Item = &'a str>) {
    if let Some(acl) = conn.link.acl.borrow_mut().as_mut() {
        acl.settle(filters);
    }
}

/// What the outcome of a refused PUBLISH is.
pub(super) enum PublishDenied {
    /// Not refused.
    No,
    /// Refused and answered; read on.
    Answered,
    /// Refused; close the connection (3.1.1 with `acl_publish_denied_v3 = "disconnect"`).
    Close(Ending),
}

/// Checks a PUBLISH; a refused one is answered as its protocol allows: v5 PUBACK/PUBREC
/// 0x87 (QoS 0: dropped), 3.1.1 acked as usual and dropped, or the connection closed.
pub(super) fn check_publish(
    door: &Door,
    conn: &Conn,
    topic: &str,
    qos: QoS,
    packet_id: Option<u16>,
) -> PublishDenied {
    // `$SYS` is the broker's own (see `broker::sys`), whatever the rules.
    let allowed = !is_sys_topic(topic)
        && conn
            .link
            .acl
            .borrow_mut()
            .as_mut()
            .is_none_or(|acl| acl.may_publish(topic));
    if allowed {
        return PublishDenied::No;
    }
    door.probe.acl_denied(AclAction::Publish, 1);
    tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token, topic, "acl: publish refused");
    let v5 = conn.link.protocol.get() == Protocol::V5;
    if !v5 && door.config.acl_publish_denied_v3 == AclPublishDenied::Disconnect {
        conn.link.close(ReasonCode::NotAuthorized);
        return PublishDenied::Close(Ending::Abnormal);
    }
    if let Some(pid) = packet_id.filter(|_| qos != QoS::AtMostOnce) {
        // In receive order with the publishes before it, as every ack.
        conn.link.expect_ack(pid, qos);
        let reason = if v5 {
            ReasonCode::NotAuthorized
        } else {
            ReasonCode::Success
        };
        conn.link.complete_ack(pid, reason, |us| {
            door.probe.publish_ack_latency.0.record(us)
        });
    }
    PublishDenied::Answered
}

/// What a SUBSCRIBE filter reaches for this client (everything without rules).
pub(super) fn subscribe(door: &Door, conn: &Conn, filter: &str) -> Coverage {
    let coverage = conn
        .link
        .acl
        .borrow_mut()
        .as_mut()
        .map_or(Coverage::Whole, |acl| acl.subscribe(filter));
    if coverage == Coverage::Denied {
        door.probe.acl_denied(AclAction::Subscribe, 1);
        tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token, filter, "acl: subscription refused");
    }
    coverage
}

/// A subscription ended.
pub(super) fn unsubscribe(conn: &Conn, filter: &str) {
    if let Some(acl) = conn.link.acl.borrow_mut().as_mut() {
        acl.unsubscribe(filter);
    }
}
