//! The owner shard's share of `retained_messages_max` and `retained_bytes_max`: what a
//! retained publish is measured against before it is logged.

use std::cell::Cell;
use std::sync::Arc;

use crate::metrics::Limit;
use crate::mqtt::QoS;
use crate::session::Message;

use super::msg::AckTo;
use super::Broker;

/// What this owner stores and has admitted of retained messages.
#[derive(Default)]
pub struct RetainedQuota {
    /// New retained topics admitted and not yet stored (their WAL append is pending).
    retained_reserved: Cell<usize>,
    /// Bytes (`Message::cost_bytes`) of the retained messages this owner stores.
    retained_bytes: Cell<usize>,
    /// Bytes by which admitted, not yet stored retained messages grow `retained_bytes`.
    retained_bytes_reserved: Cell<usize>,
}

impl RetainedQuota {
    /// The retained store took `added` bytes and let go of `removed`.
    pub(crate) fn retained_bytes_changed(&self, added: usize, removed: usize) {
        let bytes = self.retained_bytes.get() + added;
        self.retained_bytes.set(bytes - removed);
    }

    /// Bytes of the retained messages this owner stores.
    pub(crate) fn retained_bytes(&self) -> usize {
        self.retained_bytes.get()
    }
}

/// A retained publish's standing against the owner's shares of `retained_messages_max`
/// and `retained_bytes_max`.
pub enum RetainedAdmission<'a> {
    /// Store it (a clear, or within both shares). A new topic, or a message larger than
    /// the one it replaces, holds a reservation until the guard drops, after the store.
    Admitted(Option<RetainedReservation<'a>>),
    /// Over the share and the publisher can be told (v5, QoS 1/2): refuse the publish
    /// with 0x97 Quota exceeded; it is neither stored nor delivered.
    Refused,
}

/// A new retained topic and the bytes it adds, counted against the shares until its
/// store is done.
pub struct RetainedReservation<'a> {
    quota: &'a RetainedQuota,
    topics: usize,
    bytes: usize,
}

impl Drop for RetainedReservation<'_> {
    fn drop(&mut self) {
        let quota = self.quota;
        quota
            .retained_reserved
            .set(quota.retained_reserved.get() - self.topics);
        quota
            .retained_bytes_reserved
            .set(quota.retained_bytes_reserved.get() - self.bytes);
    }
}

impl Broker {
    /// On the owner, before a retained publish is logged: a new topic beyond this
    /// shard's share of `retained_messages_max`, or a message that would take the bytes
    /// stored past its share of `retained_bytes_max` (a new topic, or one replacing a
    /// smaller message), is not stored; the topic keeps what it had. A v5 QoS 1/2
    /// publisher is refused (PUBACK/PUBREC 0x97). A QoS 0 or 3.1.1 publisher cannot be
    /// told, so its message loses the RETAIN flag and is delivered (and logged) as a plain
    /// publish: neither now nor after a restart does it count as retained.
    pub(crate) fn admit_retained(
        &self,
        msg: &mut Arc<Message>,
        ack: Option<&AckTo>,
    ) -> RetainedAdmission<'_> {
        if msg.payload.is_empty() {
            return RetainedAdmission::Admitted(None);
        }
        let quota = &self.quota;
        let (stored, known_bytes) = {
            let retained = self.retained.index.borrow();
            let known = retained.get(msg.topic.as_str()).map(|m| m.cost_bytes());
            (retained.len(), known)
        };
        let topics = usize::from(known_bytes.is_none());
        let bytes = msg.cost_bytes().saturating_sub(known_bytes.unwrap_or(0));
        let topics_after = stored + quota.retained_reserved.get() + topics;
        let bytes_after = quota.retained_bytes.get() + quota.retained_bytes_reserved.get() + bytes;
        let over = if topics > 0 && topics_after > self.config.retained_messages_per_shard_max() {
            Some(Limit::RetainedMessagesMax)
        } else if bytes > 0 && bytes_after > self.config.retained_bytes_per_shard_max() {
            Some(Limit::RetainedBytesMax)
        } else {
            None
        };
        let Some(limit) = over else {
            if topics == 0 && bytes == 0 {
                return RetainedAdmission::Admitted(None);
            }
            quota
                .retained_reserved
                .set(quota.retained_reserved.get() + topics);
            quota
                .retained_bytes_reserved
                .set(quota.retained_bytes_reserved.get() + bytes);
            return RetainedAdmission::Admitted(Some(RetainedReservation {
                quota,
                topics,
                bytes,
            }));
        };
        self.probe.hit(limit);
        if msg.qos != QoS::AtMostOnce && ack.is_some_and(|a| a.refusable) {
            return RetainedAdmission::Refused;
        }
        Arc::make_mut(msg).retain = false;
        RetainedAdmission::Admitted(None)
    }
}
