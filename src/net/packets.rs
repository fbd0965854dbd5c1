//! One handler per packet type a client may send after CONNECT.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::acl::Coverage;
use crate::metrics::Limit;
use crate::mqtt::{
    Ack, ByteStr, Packet, Protocol, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::router::{parse_filter, validate_topic_name};
use crate::session::{Message, SubOptions};
use crate::shard::{AckTo, ConnRef, Shard};

use super::acl::PublishDenied;
use super::conn::Conn;
use super::connect::Accepted;
use super::serve::Ending;

/// Whether the packet loop goes on.
pub(super) enum Flow {
    /// Keep reading.
    Continue,
    /// Stop, for this reason.
    End(Ending),
}

/// Per-connection protocol state the handlers share.
pub(super) struct ConnState {
    /// Inbound topic aliases (v5).
    aliases: HashMap<u16, ByteStr>,
    /// Session expiry from CONNECT.
    connect_expiry_secs: u32,
}

impl ConnState {
    pub(super) fn new(accepted: &Accepted) -> Self {
        ConnState {
            aliases: HashMap::new(),
            connect_expiry_secs: accepted.expiry_secs,
        }
    }
}

/// Handles one packet.
pub(super) async fn handle(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    state: &mut ConnState,
    packet: Packet,
) -> Flow {
    match packet {
        Packet::Publish(publish) => on_publish(shard, conn, state, publish).await,
        Packet::PubAck(ack) => on_client_ack(shard, conn, ack, AckKind::Ack),
        Packet::PubRec(ack) => on_client_ack(shard, conn, ack, AckKind::Rec),
        Packet::PubComp(ack) => on_client_ack(shard, conn, ack, AckKind::Comp),
        Packet::PubRel(ack) => on_pubrel(shard, conn, ack),
        Packet::Subscribe(sub) => on_subscribe(shard, conn, sub).await,
        Packet::Unsubscribe(unsub) => on_unsubscribe(shard, conn, unsub),
        Packet::PingReq => {
            conn.send(&Packet::PingResp);
            Flow::Continue
        }
        Packet::Disconnect(d) => on_disconnect(conn, state, d),
        Packet::Connect(_) => protocol_error(shard, conn, "second CONNECT"),
        Packet::Auth(_) => {
            conn.close(ReasonCode::BadAuthenticationMethod);
            Flow::End(Ending::Abnormal)
        }
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            protocol_error(shard, conn, "server-to-client packet from a client")
        }
    }
}

fn protocol_error(shard: &Shard, conn: &Conn, what: &str) -> Flow {
    tracing::debug!(token = conn.token, what, "protocol error");
    shard.probe.protocol_errors_total.inc();
    conn.close(ReasonCode::ProtocolError);
    Flow::End(Ending::Abnormal)
}

fn fail(shard: &Shard, conn: &Conn, reason: ReasonCode) -> Flow {
    shard.probe.protocol_errors_total.inc();
    conn.close(reason);
    Flow::End(Ending::Abnormal)
}

async fn on_publish(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    state: &mut ConnState,
    mut publish: Publish,
) -> Flow {
    let Some(key) = conn.session.get() else {
        return Flow::End(Ending::ByServer);
    };
    if let Some(alias) = publish.properties.topic_alias.take() {
        if alias == 0 || alias > shard.config.topic_alias_max {
            return fail(shard, conn, ReasonCode::TopicAliasInvalid);
        }
        if publish.topic.is_empty() {
            match state.aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => return fail(shard, conn, ReasonCode::ProtocolError),
            }
        } else {
            state.aliases.insert(alias, publish.topic.clone());
        }
    }
    if validate_topic_name(publish.topic.as_str(), &shard.topic_limits()).is_err() {
        return fail(shard, conn, ReasonCode::TopicNameInvalid);
    }
    let qos = publish.qos;
    shard.probe.messages_received_by_qos[qos as usize].inc();
    let pid = publish.packet_id.map(|p| p.get());
    match super::acl::check_publish(shard, conn, publish.topic.as_str(), qos, pid) {
        PublishDenied::No => {}
        PublishDenied::Answered => return Flow::Continue,
        PublishDenied::Close(ending) => return Flow::End(ending),
    }
    let ack = match publish.packet_id {
        Some(pid) if qos != QoS::AtMostOnce => {
            let pid = pid.get();
            if conn.protocol.get() == Protocol::V5
                && conn.acks_pending() >= usize::from(shard.config.receive_maximum)
            {
                return fail(shard, conn, ReasonCode::ReceiveMaximumExceeded);
            }
            let exactly_once = qos == QoS::ExactlyOnce;
            if exactly_once {
                let accepted = {
                    let sessions = shard.broker.sessions.borrow();
                    let Some(slot) = sessions.get(&key) else {
                        return Flow::End(Ending::ByServer);
                    };
                    slot.session.awaiting_pubrel.contains_key(&pid)
                };
                if accepted {
                    // Accepted, durable and forwarded already: only answer again (exactly once).
                    conn.expect_ack(pid, qos);
                    conn.complete_ack(pid, ReasonCode::Success, &shard.probe.publish_ack_latency.0);
                    return Flow::Continue;
                }
            }
            // The id is taken only once the owner accepted the publish (`publish_done`);
            // until then a repeat is a resend, answered for the first copy by the owner.
            let resend = exactly_once && (publish.dup || conn.awaits_verdict(pid));
            conn.expect_ack(pid, qos);
            Some(AckTo {
                conn: ConnRef {
                    shard: shard.id,
                    token: conn.token,
                },
                packet_id: pid,
                refusable: conn.protocol.get() == Protocol::V5,
                exactly_once,
                resend,
            })
        }
        _ => None,
    };
    let mut properties = publish.properties;
    properties.subscription_identifiers.clear();
    let expires_at = properties
        .message_expiry_interval_secs
        .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
    let publisher = shard
        .broker
        .sessions
        .borrow()
        .get(&key)
        .map(|s| s.session.client_id.clone())
        .unwrap_or_else(|| ByteStr::from_static(""));
    let msg = Arc::new(Message {
        topic: publish.topic,
        payload: publish.payload,
        qos,
        retain: publish.retain,
        properties,
        publisher,
        expires_at,
        log: None,
    });
    super::room::mesh_room(shard, conn).await;
    shard.route_publish(msg, ack).await;
    Flow::Continue
}

#[derive(Clone, Copy)]
enum AckKind {
    Ack,
    Rec,
    Comp,
}

fn on_client_ack(shard: &Rc<Shard>, conn: &Conn, ack: Ack, kind: AckKind) -> Flow {
    let Some(key) = conn.session.get() else {
        return Flow::End(Ending::ByServer);
    };
    let pid = ack.packet_id.get();
    let now = Instant::now();
    let mut sessions = shard.broker.sessions.borrow_mut();
    let Some(slot) = sessions.get_mut(&key) else {
        return Flow::End(Ending::ByServer);
    };
    let before = slot.session.outbound.inflight();
    // A logged session's QoS 2 release is logged before its PUBREL (see `hold_release`).
    let logged = slot.session.logged && shard.durable.get().is_some();
    let mut held = None;
    let known = match kind {
        AckKind::Ack => slot.session.outbound.on_puback(pid).is_ok(),
        AckKind::Comp => match slot.session.outbound.on_pubcomp(pid) {
            Ok(done) => {
                if let Some(pos) = done.msg.log {
                    slot.session.replay.completed(pos, logged);
                }
                true
            }
            Err(_) => false,
        },
        AckKind::Rec => conn.with_outlet(usize::MAX, |outlet| {
            match slot
                .session
                .outbound
                .on_pubrec(pid, ack.reason, logged, outlet, now)
            {
                Ok(pos) => {
                    held = pos;
                    true
                }
                Err(_) => false,
            }
        }),
    };
    if let AckKind::Rec = kind {
        // Whether or not its release is logged, a PUBREC'd message is never sent to this
        // session as a PUBLISH again (see `ReplayCursor::pubrec`).
        let pubrec = held.or_else(|| slot.session.outbound.qos2_log_pos(pid));
        if let Some(pos) = pubrec {
            let max = shard.config.session_qos2_released_max;
            let forgotten = slot.session.replay.pubrec(pos, pid, max);
            if forgotten > 0 {
                shard
                    .probe
                    .hits(crate::metrics::Limit::SessionQos2ReleasedMax, forgotten);
            }
        }
    }
    if let Some(pos) = held {
        shard.hold_release(crate::broker::persist::Releasing {
            client_id: slot.session.client_id.clone(),
            pid,
            at: (pos.shard, pos.offset),
        });
    }
    if !known {
        // A late or duplicate ack (e.g. after a resend): harmless, ignore it.
        tracing::debug!(token = conn.token, pid, "ack for an unknown packet id");
    }
    let after = slot.session.outbound.inflight();
    shard
        .probe
        .inflight_current
        .add(after as i64 - before as i64);
    slot.session.replay.touch();
    shard.pump(slot, now);
    conn.wake_writer();
    Flow::Continue
}

fn on_pubrel(shard: &Rc<Shard>, conn: &Conn, ack: Ack) -> Flow {
    let Some(key) = conn.session.get() else {
        return Flow::End(Ending::ByServer);
    };
    let pid = ack.packet_id;
    let released = shard
        .broker
        .sessions
        .borrow_mut()
        .get_mut(&key)
        .map(|slot| {
            let owner = slot.session.awaiting_pubrel.remove(&pid.get());
            (slot.session.client_id.clone(), owner)
        });
    let Some((client_id, owner)) = released else {
        return Flow::End(Ending::ByServer);
    };
    shard.release_qos2(client_id, pid.get(), owner);
    let reason = if owner.is_some() {
        ReasonCode::Success
    } else {
        ReasonCode::PacketIdentifierNotFound
    };
    conn.send(&Packet::PubComp(Ack::with_reason(pid, reason)));
    Flow::Continue
}

async fn on_subscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, sub: Subscribe) -> Flow {
    let Some(key) = conn.session.get() else {
        return Flow::End(Ending::ByServer);
    };
    let limits = shard.topic_limits();
    let mut codes = Vec::with_capacity(sub.filters.len());
    let mut wanted: Vec<(String, SubOptions)> = Vec::with_capacity(sub.filters.len());
    let mut quota = SubscriptionQuota::of(shard, key);
    let acl_epoch = conn.acl_epoch.get();
    for f in &sub.filters {
        let (filter, options) = (f.0.as_str(), f.1);
        let parsed = match parse_filter(filter, &limits) {
            Ok(p) => p,
            Err(_) => {
                codes.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
        };
        if parsed.share_group.is_some() && options.no_local {
            return protocol_error(shard, conn, "no-local on a shared subscription");
        }
        if super::acl::subscribe(shard, conn, filter) == Coverage::Denied {
            codes.push(ReasonCode::NotAuthorized);
            continue;
        }
        let opts = SubOptions {
            qos: options.qos,
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            retain_handling: options.retain_handling as u8,
            subscription_id: sub.properties.subscription_identifier,
        };
        if !quota.admit(shard, filter, &wanted) {
            shard.probe.hit(Limit::SubscriptionsPerSessionMax);
            codes.push(ReasonCode::QuotaExceeded);
            continue;
        }
        codes.push(granted_code(opts.qos));
        wanted.push((filter.to_string(), opts));
    }
    let Some(added) = shard.subscribe(key, wanted).await else {
        // The subscriptions could not be made durable: refuse every one that was valid.
        for code in codes
            .iter_mut()
            .filter(|c| **c != ReasonCode::TopicFilterInvalid)
        {
            *code = crate::broker::persist::SUBSCRIBE_NOT_LOGGED;
        }
        conn.send(&Packet::SubAck(SubAck::new(sub.packet_id, codes)));
        conn.wake_writer();
        return Flow::Continue;
    };
    if conn.acl_epoch.get() != acl_epoch {
        super::acl::settle_added(conn, added.iter().map(|(filter, ..)| filter.as_str()));
    }
    conn.send(&Packet::SubAck(SubAck::new(sub.packet_id, codes)));
    for (filter, opts, is_new) in added {
        shard.send_retained(key, &filter, opts, is_new).await;
    }
    conn.wake_writer();
    Flow::Continue
}

/// The room a session has left under `subscriptions_per_session_max`, for one SUBSCRIBE.
struct SubscriptionQuota {
    key: u64,
    /// Filters the session holds, with those this SUBSCRIBE added so far.
    held: usize,
    max: usize,
}

impl SubscriptionQuota {
    fn of(shard: &Shard, key: u64) -> Self {
        let held = shard
            .broker
            .sessions
            .borrow()
            .get(&key)
            .map_or(0, |s| s.session.subscriptions.len());
        SubscriptionQuota {
            key,
            held,
            max: shard.config.subscriptions_per_session_max,
        }
    }

    /// Whether `filter` fits: it replaces one the session holds (or one earlier in
    /// `wanted`), or there is room for one more.
    fn admit(&mut self, shard: &Shard, filter: &str, wanted: &[(String, SubOptions)]) -> bool {
        let replaces = wanted.iter().any(|(f, _)| f == filter)
            || shard
                .broker
                .sessions
                .borrow()
                .get(&self.key)
                .is_some_and(|s| s.session.subscriptions.contains_key(filter));
        if replaces {
            return true;
        }
        if self.held >= self.max {
            return false;
        }
        self.held += 1;
        true
    }
}

fn granted_code(qos: QoS) -> ReasonCode {
    match qos {
        QoS::AtMostOnce => ReasonCode::Success,
        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
    }
}

fn on_unsubscribe(shard: &Shard, conn: &Conn, unsub: Unsubscribe) -> Flow {
    let Some(key) = conn.session.get() else {
        return Flow::End(Ending::ByServer);
    };
    let filters: Vec<String> = unsub
        .filters
        .iter()
        .map(|f| f.as_str().to_string())
        .collect();
    for filter in &filters {
        super::acl::unsubscribe(conn, filter);
    }
    let codes = shard.unsubscribe(key, &filters);
    conn.send(&Packet::UnsubAck(UnsubAck::new(unsub.packet_id, codes)));
    Flow::Continue
}

fn on_disconnect(conn: &Conn, state: &ConnState, d: crate::mqtt::Disconnect) -> Flow {
    let expiry = d.properties.session_expiry_interval_secs;
    if expiry.is_some_and(|e| e > 0) && state.connect_expiry_secs == 0 {
        // v5 §3.14.2.2.2: raising the expiry from 0 at DISCONNECT is a protocol error.
        conn.close(ReasonCode::ProtocolError);
        return Flow::End(Ending::Abnormal);
    }
    // v5 §3.1.2.5: only a normal disconnection (0x00) deletes the will; 0x04 asks for
    // it, and any other reason reports an error, after which it is published too.
    if d.reason != ReasonCode::Success {
        Flow::End(Ending::WithWill {
            expiry_secs: expiry,
        })
    } else {
        Flow::End(Ending::Normal {
            expiry_secs: expiry,
        })
    }
}
