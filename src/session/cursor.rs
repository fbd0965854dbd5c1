//! A persistent session's replay cursor: per owner shard, the log offset below which the
//! session needs nothing replayed after a restart.
//!
//! Two facts make it: every logged message carries a *floor* from its owner (all of the
//! owner's records below it had been sent before it, see `LogPos::floor`), and the
//! session knows which logged deliveries it still holds (queued or unacknowledged). The
//! cursor for owner `o` is `min(highest floor seen from o, lowest offset still held
//! from o)`. It errs only low: a crash then replays some messages twice (QoS 1 allows it),
//! never skips one the session still needed.

use super::message::LogPos;
use super::outbound::Outbound;

/// The cursor state carried by a session (it moves with the session between shards).
#[derive(Debug, Default, Clone)]
pub struct ReplayCursor {
    /// Highest floor seen per owner shard.
    floors: Vec<u64>,
    /// Changed since the last `take_changed`.
    dirty: bool,
}

impl ReplayCursor {
    /// A delivery of a logged message arrived in the owner's send order.
    pub fn note(&mut self, pos: LogPos) {
        self.raise(usize::from(pos.shard), pos.floor);
    }

    /// Everything of owner `shard` below `floor` has reached the session.
    pub fn raise(&mut self, shard: usize, floor: u64) {
        if self.floors.len() <= shard {
            self.floors.resize(shard + 1, 0);
        }
        if floor > self.floors[shard] {
            self.floors[shard] = floor;
        }
        self.dirty = true;
    }

    /// Something the session holds changed (an acknowledgement, a drop).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// The cursors `(owner shard, offset)` if anything changed since the last call.
    /// Owners with a cursor of 0 (replay everything) are left out.
    pub fn take_changed(&mut self, outbound: &Outbound) -> Option<Vec<(u16, u64)>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let mut lowest = self.floors.clone();
        outbound.lowest_unfinished(&mut lowest);
        Some(
            lowest
                .into_iter()
                .enumerate()
                .filter(|(_, c)| *c > 0)
                .map(|(s, c)| (s as u16, c))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::mqtt::{ByteStr, PublishProperties, QoS};
    use crate::session::{Delivery, Message, OutboundLimits};

    fn delivery(shard: u16, offset: u64, floor: u64) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: ByteStr::from_static("t"),
                payload: Bytes::from_static(b"p"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                publisher: ByteStr::from_static("pub"),
                expires_at: None,
                log: Some(LogPos {
                    shard,
                    offset,
                    floor,
                }),
            }),
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: Vec::new(),
            share_group: None,
            holds_cursor: true,
        }
    }

    fn outbound() -> Outbound {
        Outbound::new(OutboundLimits {
            queue_messages_max: 100,
            queue_bytes_max: 1 << 20,
            inflight_count_max: 10,
        })
    }

    #[test]
    fn cursor_is_the_lower_of_floor_and_held_offsets() {
        let mut cursor = ReplayCursor::default();
        let mut out = outbound();
        assert_eq!(cursor.take_changed(&out), None, "nothing happened yet");
        for (offset, floor) in [(4, 5), (7, 8)] {
            let d = delivery(1, offset, floor);
            cursor.note(d.msg.log.unwrap());
            out.enqueue(d, false);
        }
        assert_eq!(cursor.take_changed(&out), Some(vec![(1, 4)]));
        assert_eq!(cursor.take_changed(&out), None, "unchanged since");
        // A deferred record below arrives later: the floor (3) holds the cursor back.
        let d = delivery(1, 9, 3);
        cursor.note(d.msg.log.unwrap());
        assert_eq!(cursor.take_changed(&out), Some(vec![(1, 4)]));
        let mut out = outbound();
        cursor.touch();
        assert_eq!(cursor.take_changed(&out), Some(vec![(1, 8)]));
        out.enqueue(delivery(0, 2, 3), false);
        cursor.touch();
        assert_eq!(
            cursor.take_changed(&out),
            Some(vec![(1, 8)]),
            "owner 0 never raised a floor: its cursor stays 0 and is left out"
        );
    }

    #[test]
    fn retained_copies_do_not_hold_the_cursor() {
        let mut cursor = ReplayCursor::default();
        let mut out = outbound();
        cursor.raise(0, 50);
        let mut d = delivery(0, 10, 11);
        d.holds_cursor = false;
        out.enqueue(d, false);
        assert_eq!(cursor.take_changed(&out), Some(vec![(0, 50)]));
    }
}
