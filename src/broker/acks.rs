//! What a client's acknowledgements do to its session: PUBACK, PUBREC and PUBCOMP of the
//! messages sent to it, and PUBREL of the QoS 2 messages it published. The door reads
//! the packet; the session's in-flight window, replay cursor and the QoS 2 state that
//! outlives a connection are here.

use std::rc::Rc;
use std::time::Instant;

use crate::metrics::Limit;
use crate::mqtt::{Ack, ClientId, ReasonCode};
use crate::session::Outlet;

use super::persist::Releasing;
use super::{Broker, SessionKey};

/// An acknowledgement from a client of a message the broker sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAck {
    /// QoS 1: delivered.
    PubAck,
    /// QoS 2, first half: received (the broker answers PUBREL).
    PubRec,
    /// QoS 2, second half: done.
    PubComp,
}

impl Broker {
    /// The client of session `key` acknowledged `ack` (`kind`). Returns whether the packet
    /// id was in flight (`false`: a late or duplicate ack, harmless), or `None` if the
    /// session is gone.
    pub fn client_ack(self: &Rc<Self>, key: SessionKey, ack: Ack, kind: ClientAck) -> Option<bool> {
        let pid = ack.packet_id.get();
        let now = Instant::now();
        let mut sessions = self.sessions.slots.borrow_mut();
        let slot = sessions.get_mut(&key)?;
        let before = slot.session.outbound.inflight();
        // A logged session's QoS 2 release is logged before its PUBREL (see `hold_release`).
        let logged = slot.session.logged && self.log.get().is_some();
        let mut held = None;
        let known = match kind {
            ClientAck::PubAck => slot.session.outbound.on_puback(pid).is_ok(),
            ClientAck::PubComp => match slot.session.outbound.on_pubcomp(pid) {
                Ok(done) => {
                    if let Some(pos) = done.msg.log {
                        slot.session.replay.completed(pos, logged);
                    }
                    true
                }
                Err(_) => false,
            },
            ClientAck::PubRec => {
                let link = slot.conn.clone();
                let outbound = &mut slot.session.outbound;
                let mut answer = |outlet: &mut Outlet<'_>| match outbound
                    .on_pubrec(pid, ack.reason, logged, outlet, now)
                {
                    Ok(pos) => {
                        held = pos;
                        true
                    }
                    Err(_) => false,
                };
                match link {
                    Some(link) => link.with_outlet(usize::MAX, |outlet| answer(outlet)),
                    None => false,
                }
            }
        };
        if kind == ClientAck::PubRec {
            // Whether or not its release is logged, a PUBREC'd message is never sent to
            // this session as a PUBLISH again (see `ReplayCursor::pubrec`).
            let pubrec = held.or_else(|| slot.session.outbound.qos2_log_pos(pid));
            if let Some(pos) = pubrec {
                let max = self.config.session_qos2_released_max;
                let forgotten = slot.session.replay.pubrec(pos, pid, max);
                self.sessions.watch(key, &slot.session);
                if forgotten > 0 {
                    self.probe.hits(Limit::SessionQos2ReleasedMax, forgotten);
                }
            }
        }
        if let Some(pos) = held {
            self.hold_release(Releasing {
                client_id: slot.session.client_id.clone(),
                pid,
                at: (pos.shard, pos.offset),
            });
        }
        let after = slot.session.outbound.inflight();
        self.probe
            .inflight_current
            .add(after as i64 - before as i64);
        slot.session.replay.touch();
        self.pump(slot, now);
        if let Some(link) = &slot.conn {
            link.wake_writer();
        }
        Some(known)
    }

    /// The client of session `key` released its QoS 2 message `packet_id` (PUBREL): the
    /// id is free again and the owner forgets it. Returns the PUBCOMP's reason, or `None`
    /// if the session is gone.
    pub fn client_pubrel(self: &Rc<Self>, key: SessionKey, packet_id: u16) -> Option<ReasonCode> {
        let (client_id, owner) = self.sessions.slots.borrow_mut().get_mut(&key).map(|slot| {
            let owner = slot.session.awaiting_pubrel.remove(&packet_id);
            (slot.session.client_id.clone(), owner)
        })?;
        self.release_qos2(client_id, packet_id, owner);
        Some(if owner.is_some() {
            ReasonCode::Success
        } else {
            ReasonCode::PacketIdentifierNotFound
        })
    }

    /// Whether the QoS 2 publish `packet_id` of session `key`'s client was accepted and
    /// awaits its PUBREL (a resend is then only answered again); `None` if the session is
    /// gone.
    #[inline]
    pub fn awaits_pubrel(&self, key: SessionKey, packet_id: u16) -> Option<bool> {
        let sessions = self.sessions.slots.borrow();
        let slot = sessions.get(&key)?;
        Some(slot.session.awaiting_pubrel.contains_key(&packet_id))
    }

    /// The client id of session `key`.
    #[inline]
    pub fn client_id_of(&self, key: SessionKey) -> Option<ClientId> {
        let sessions = self.sessions.slots.borrow();
        sessions
            .get(&key)
            .map(|slot| slot.session.client_id.clone())
    }

    /// How many subscriptions session `key` holds.
    pub fn subscription_count(&self, key: SessionKey) -> usize {
        let sessions = self.sessions.slots.borrow();
        sessions
            .get(&key)
            .map_or(0, |s| s.session.subscriptions.len())
    }

    /// Whether session `key` holds a subscription to `filter`.
    pub fn subscribes_to(&self, key: SessionKey, filter: &str) -> bool {
        let sessions = self.sessions.slots.borrow();
        sessions
            .get(&key)
            .is_some_and(|s| s.session.subscriptions.contains_key(filter))
    }

    /// Runs `f` over the filters session `key` subscribes to (none if it is gone).
    pub fn with_filters<R>(
        &self,
        key: SessionKey,
        f: impl FnOnce(&mut dyn Iterator<Item = &str>) -> R,
    ) -> R {
        let sessions = self.sessions.slots.borrow();
        let mut filters = sessions
            .get(&key)
            .into_iter()
            .flat_map(|s| s.session.subscriptions.keys());
        f(&mut filters)
    }
}
