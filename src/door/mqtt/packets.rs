//! One handler per packet type a client may send after CONNECT.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::acl::Coverage;
use crate::broker::{AckTo, ClientAck, ConnRef};
use crate::metrics::Limit;
use crate::mqtt::{
    Ack, ByteStr, Packet, Protocol, Publish, QoS, ReasonCode, SubAck, Subscribe, UnsubAck,
    Unsubscribe,
};
use crate::router::{parse_filter, validate_topic_name};
use crate::session::{BuiltOnUse, Message, SubOptions};

use super::Door;

use super::acl::PublishDenied;
use super::conn::Conn;
use super::conn::Ending;
use super::connect::Accepted;

/// Whether the packet loop goes on.
pub(super) enum Flow {
    /// Keep reading.
    Continue,
    /// Stop, for this reason.
    End(Ending),
}

/// Per-connection protocol state the handlers share.
pub(super) struct ConnState {
    /// Inbound topic aliases (v5), built by the first one a client sets.
    aliases: BuiltOnUse<u16, ByteStr>,
    /// Session expiry from CONNECT.
    connect_expiry_secs: u32,
}

impl ConnState {
    pub(super) fn new(accepted: &Accepted) -> Self {
        ConnState {
            aliases: BuiltOnUse::default(),
            connect_expiry_secs: accepted.expiry_secs,
        }
    }
}

/// Handles one packet.
pub(super) async fn handle(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    state: &mut ConnState,
    packet: Packet,
) -> Flow {
    match packet {
        Packet::Publish(publish) => on_publish(door, conn, state, publish).await,
        Packet::PubAck(ack) => on_client_ack(door, conn, ack, ClientAck::PubAck),
        Packet::PubRec(ack) => on_client_ack(door, conn, ack, ClientAck::PubRec),
        Packet::PubComp(ack) => on_client_ack(door, conn, ack, ClientAck::PubComp),
        Packet::PubRel(ack) => on_pubrel(door, conn, ack),
        Packet::Subscribe(sub) => on_subscribe(door, conn, sub).await,
        Packet::Unsubscribe(unsub) => on_unsubscribe(door, conn, unsub),
        Packet::PingReq => {
            conn.link.send(&Packet::PingResp);
            Flow::Continue
        }
        Packet::Disconnect(d) => on_disconnect(conn, state, d),
        Packet::Connect(_) => protocol_error(door, conn, "second CONNECT"),
        Packet::Auth(_) => {
            conn.link.close(ReasonCode::BadAuthenticationMethod);
            Flow::End(Ending::Abnormal)
        }
        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
            protocol_error(door, conn, "server-to-client packet from a client")
        }
    }
}

fn protocol_error(door: &Door, conn: &Conn, what: &str) -> Flow {
    tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token, what, "protocol error");
    door.probe.protocol_errors_total.inc();
    conn.link.close(ReasonCode::ProtocolError);
    Flow::End(Ending::Abnormal)
}

fn fail(door: &Door, conn: &Conn, reason: ReasonCode) -> Flow {
    door.probe.protocol_errors_total.inc();
    conn.link.close(reason);
    Flow::End(Ending::Abnormal)
}

async fn on_publish(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    state: &mut ConnState,
    mut publish: Publish,
) -> Flow {
    let Some(key) = conn.link.session() else {
        return Flow::End(Ending::ByServer);
    };
    if let Some(alias) = publish.properties.topic_alias.take() {
        if alias == 0 || alias > door.config.topic_alias_max {
            return fail(door, conn, ReasonCode::TopicAliasInvalid);
        }
        if publish.topic.is_empty() {
            match state.aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => return fail(door, conn, ReasonCode::ProtocolError),
            }
        } else {
            state.aliases.insert(alias, publish.topic.clone());
        }
    }
    if validate_topic_name(publish.topic.as_str(), &door.broker.topic_limits()).is_err() {
        return fail(door, conn, ReasonCode::TopicNameInvalid);
    }
    let qos = publish.qos;
    door.probe.messages_received_by_qos[qos as usize].inc();
    let pid = publish.packet_id.map(|p| p.get());
    match super::acl::check_publish(door, conn, publish.topic.as_str(), qos, pid) {
        PublishDenied::No => {}
        PublishDenied::Answered => return Flow::Continue,
        PublishDenied::Close(ending) => return Flow::End(ending),
    }
    let ack = match publish.packet_id {
        Some(pid) if qos != QoS::AtMostOnce => {
            let pid = pid.get();
            if conn.link.protocol.get() == Protocol::V5
                && conn.link.acks_pending() >= usize::from(door.config.receive_maximum)
            {
                return fail(door, conn, ReasonCode::ReceiveMaximumExceeded);
            }
            let exactly_once = qos == QoS::ExactlyOnce;
            if exactly_once {
                let Some(accepted) = door.broker.awaits_pubrel(key, pid) else {
                    return Flow::End(Ending::ByServer);
                };
                if accepted {
                    // Accepted, durable and forwarded already: only answer again (exactly once).
                    conn.link.expect_ack(pid, qos);
                    conn.link.complete_ack(pid, ReasonCode::Success, |us| {
                        door.probe.publish_ack_latency.0.record(us)
                    });
                    return Flow::Continue;
                }
            }
            // The id is taken only once the owner accepted the publish (`publish_done`);
            // until then a repeat is a resend, answered for the first copy by the owner.
            let resend = exactly_once && (publish.dup || conn.link.awaits_verdict(pid));
            conn.link.expect_ack(pid, qos);
            Some(AckTo {
                conn: ConnRef {
                    shard: door.id,
                    token: conn.link.token,
                },
                packet_id: pid,
                refusable: conn.link.protocol.get() == Protocol::V5,
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
    let publisher = door.broker.client_id_of(key).unwrap_or_default();
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
    super::link_room::wait_for_mesh_room(door, conn).await;
    door.broker.route_publish(msg, ack).await;
    Flow::Continue
}

fn on_client_ack(door: &Rc<Door>, conn: &Conn, ack: Ack, kind: ClientAck) -> Flow {
    let Some(key) = conn.link.session() else {
        return Flow::End(Ending::ByServer);
    };
    let pid = ack.packet_id.get();
    match door.broker.client_ack(key, ack, kind) {
        None => Flow::End(Ending::ByServer),
        Some(known) => {
            if !known {
                // A late or duplicate ack (e.g. after a resend): harmless, ignore it.
                tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token, pid, "ack for an unknown packet id");
            }
            Flow::Continue
        }
    }
}

fn on_pubrel(door: &Rc<Door>, conn: &Conn, ack: Ack) -> Flow {
    let Some(key) = conn.link.session() else {
        return Flow::End(Ending::ByServer);
    };
    let Some(reason) = door.broker.client_pubrel(key, ack.packet_id.get()) else {
        return Flow::End(Ending::ByServer);
    };
    conn.link
        .send(&Packet::PubComp(Ack::with_reason(ack.packet_id, reason)));
    Flow::Continue
}

async fn on_subscribe(door: &Rc<Door>, conn: &Rc<Conn>, sub: Subscribe) -> Flow {
    let Some(key) = conn.link.session() else {
        return Flow::End(Ending::ByServer);
    };
    let limits = door.broker.topic_limits();
    let mut codes = Vec::with_capacity(sub.filters.len());
    let mut wanted: Vec<(String, SubOptions)> = Vec::with_capacity(sub.filters.len());
    let mut quota = SubscriptionQuota::of(door, key);
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
            return protocol_error(door, conn, "no-local on a shared subscription");
        }
        if super::acl::subscribe(door, conn, filter) == Coverage::Denied {
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
        if !quota.admit(door, filter, &wanted) {
            door.probe.hit(Limit::SubscriptionsPerSessionMax);
            codes.push(ReasonCode::QuotaExceeded);
            continue;
        }
        codes.push(granted_code(opts.qos));
        wanted.push((filter.to_string(), opts));
    }
    let added = match door.broker.subscribe(key, wanted).await {
        Ok(added) => added,
        Err(refused) => {
            // The subscriptions could not be made durable: refuse every one that was valid.
            for code in codes
                .iter_mut()
                .filter(|c| **c != ReasonCode::TopicFilterInvalid)
            {
                *code = refused;
            }
            conn.link
                .send(&Packet::SubAck(SubAck::new(sub.packet_id, codes)));
            conn.link.wake_writer();
            return Flow::Continue;
        }
    };
    if conn.acl_epoch.get() != acl_epoch {
        super::acl::settle_added(conn, added.iter().map(|(filter, ..)| filter.as_str()));
    }
    conn.link
        .send(&Packet::SubAck(SubAck::new(sub.packet_id, codes)));
    for (filter, opts, is_new) in added {
        door.broker.send_retained(key, &filter, opts, is_new).await;
    }
    conn.link.wake_writer();
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
    fn of(door: &Door, key: u64) -> Self {
        let held = door.broker.subscription_count(key);
        SubscriptionQuota {
            key,
            held,
            max: door.config.subscriptions_per_session_max,
        }
    }

    /// Whether `filter` fits: it replaces one the session holds (or one earlier in
    /// `wanted`), or there is room for one more.
    fn admit(&mut self, door: &Door, filter: &str, wanted: &[(String, SubOptions)]) -> bool {
        let replaces =
            wanted.iter().any(|(f, _)| f == filter) || door.broker.subscribes_to(self.key, filter);
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

fn on_unsubscribe(door: &Door, conn: &Conn, unsub: Unsubscribe) -> Flow {
    let Some(key) = conn.link.session() else {
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
    let codes = door.broker.unsubscribe(key, &filters);
    conn.link
        .send(&Packet::UnsubAck(UnsubAck::new(unsub.packet_id, codes)));
    Flow::Continue
}

fn on_disconnect(conn: &Conn, state: &ConnState, d: crate::mqtt::Disconnect) -> Flow {
    let expiry = d.properties.session_expiry_interval_secs;
    if expiry.is_some_and(|e| e > 0) && state.connect_expiry_secs == 0 {
        // v5 §3.14.2.2.2: raising the expiry from 0 at DISCONNECT is a protocol error.
        conn.link.close(ReasonCode::ProtocolError);
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
