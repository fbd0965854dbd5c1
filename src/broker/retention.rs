//! Retention floors: which records of a shard's log are still needed, so that the WAL
//! deletes only segments nobody needs (see `storage::retention` for the limits).
//!
//! Needed are the records at or above every session's replay cursor (persistent
//! sessions, and any session catching up from the log) and every retained message's
//! record. Each `RETENTION_TICK_MS` every shard sends every owner the lowest cursor its
//! sessions hold for that owner's log; an owner takes the lowest of the last **two**
//! reports of every shard, so a session moving between shards (counted by neither for a
//! moment) is still covered by the report before or after its move.
//!
//! Retained messages would otherwise pin the oldest segment forever: when retention
//! wants a segment that still holds a retained message's record, the owner writes the
//! message again as a `retained` record (kind 9, rebuilt into the retained index at
//! start, never replayed to sessions) and the segment can go.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::session::{LogPos, Message};
use crate::shard::{Shard, ShardMsg};
use crate::storage::{Offset, RecordKind};

use super::durable::{as_publish, encode_publish_body, publish_body_len};
use super::persist::unix_ms;

/// How often owners tell every shard how far their fan-out has got.
pub const WATERMARK_MS: u64 = 1000;

/// How often floors are reported and applied.
pub const RETENTION_TICK_MS: u64 = 1000;

/// Record kind of a retained message written again to free an old segment.
pub const RECORD_RETAINED: RecordKind = RecordKind(9);

impl Shard {
    /// Runs the floor reports and retention for this shard, if a limit is configured.
    pub(crate) fn spawn_retention(self: &Rc<Self>) {
        if self.config.retention_ms == 0 && self.config.retention_bytes == 0 {
            return;
        }
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            while !shard.shutdown.is_stopping() {
                glommio::timer::sleep(Duration::from_millis(RETENTION_TICK_MS)).await;
                shard.report_floors();
                shard.apply_floor().await;
            }
        })
        .detach();
    }

    /// Owner: tells every shard, every `WATERMARK_MS`, that every record of this log
    /// below the watermark has been sent to it. Behind the deliveries in each channel,
    /// it lets the cursors of sessions that receive nothing from this log advance, so
    /// an idle persistent session does not hold the log (or a replay) back forever.
    pub(crate) fn spawn_watermarks(self: &Rc<Self>) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            while !shard.shutdown.is_stopping() {
                glommio::timer::sleep(Duration::from_millis(WATERMARK_MS)).await;
                let Some(durable) = shard.durable.get() else {
                    return;
                };
                let watermark = durable.sent_watermark();
                for peer in shard.all_shards() {
                    shard.post(peer, ShardMsg::Watermark { watermark });
                }
            }
        })
        .detach();
    }

    /// Every record of `owner`'s log below `watermark` that any session here wanted has
    /// reached it (the channel is in order).
    pub(crate) fn on_watermark(&self, owner: usize, watermark: u64) {
        {
            let mut heard = self.broker.heard_floors.borrow_mut();
            if heard.len() <= owner {
                heard.resize(owner + 1, 0);
            }
            heard[owner] = heard[owner].max(watermark);
        }
        for slot in self.broker.sessions.borrow_mut().values_mut() {
            if slot.session.logged {
                slot.session.replay.raise_quietly(owner, watermark);
            }
        }
    }

    /// Sends every owner the lowest cursor this shard's sessions hold in its log.
    fn report_floors(&self) {
        let shards = self.mesh.shards();
        let mut mins = vec![u64::MAX; shards];
        for slot in self.broker.sessions.borrow().values() {
            let s = &slot.session;
            if !(s.logged || s.replay.has_gaps()) {
                continue;
            }
            let cursors = s.replay.current(&s.outbound);
            for (owner, min) in mins.iter_mut().enumerate() {
                *min = (*min).min(cursors.get(owner).copied().unwrap_or(0));
            }
        }
        self.lower_to_backlogs(&mut mins);
        for (owner, floor) in mins.into_iter().enumerate() {
            self.post(owner, ShardMsg::RetentionFloor { floor });
        }
    }

    /// Owner: a shard's report of the lowest cursor its sessions hold here.
    pub(crate) fn on_retention_floor(&self, from: usize, floor: u64) {
        let mut reports = self.broker.floor_reports.borrow_mut();
        if reports.len() < self.mesh.shards() {
            reports.resize(self.mesh.shards(), (0, None));
        }
        let (count, last) = reports[from];
        let lowest = last.map_or(floor, |(_, current)| current.min(floor));
        reports[from] = (count.saturating_add(1), Some((lowest, floor)));
    }

    /// The floor every shard's last two reports allow; `None` until each sent two.
    fn sessions_floor(&self) -> Option<u64> {
        let reports = self.broker.floor_reports.borrow();
        if reports.len() < self.mesh.shards() || reports.iter().any(|(n, _)| *n < 2) {
            return None;
        }
        reports
            .iter()
            .map(|(_, r)| r.map_or(0, |(two_lowest, _)| two_lowest))
            .min()
    }

    async fn apply_floor(&self) {
        let Some(durable) = self.durable.get() else {
            return;
        };
        let Some(sessions_floor) = self.sessions_floor() else {
            return;
        };
        let Some(candidate) = durable.wal.retention_candidate(unix_ms()) else {
            return;
        };
        let limit = candidate.0.min(sessions_floor);
        let pinned: Vec<Arc<Message>> = {
            let mut found = Vec::new();
            self.broker
                .retained
                .borrow()
                .for_each(|_, msg: &Arc<Message>| {
                    if msg.log.is_some_and(|p| p.offset < limit) {
                        found.push(Arc::clone(msg));
                    }
                });
            found
        };
        for msg in pinned {
            match self.relog_retained(&msg).await {
                Ok(offset) => {
                    let mut copy = (*msg).clone();
                    copy.log = Some(LogPos {
                        shard: self.id as u16,
                        offset,
                        floor: offset + 1,
                    });
                    let mut retained = self.broker.retained.borrow_mut();
                    // Replaced meanwhile by a newer retained message: keep that one.
                    let current = retained.get(msg.topic.as_str()).map(Arc::clone);
                    if current.is_some_and(|c| Arc::ptr_eq(&c, &msg)) {
                        retained.insert(msg.topic.as_str(), Arc::new(copy));
                    }
                }
                Err(e) => {
                    tracing::warn!(shard = self.id, error = %e, "a retained message could not be written again; its segment stays");
                    return;
                }
            }
        }
        let mut floor = sessions_floor;
        self.broker
            .retained
            .borrow()
            .for_each(|_, msg: &Arc<Message>| {
                if let Some(p) = msg.log {
                    floor = floor.min(p.offset);
                }
            });
        durable.wal.set_retention_floor(Offset(floor));
    }

    async fn relog_retained(&self, msg: &Message) -> Result<u64, crate::storage::WalError> {
        let durable = self.durable.get().expect("checked by the caller");
        let publish = as_publish(msg);
        durable
            .wal
            .reserve(publish_body_len(msg, &publish)?)
            .await?;
        let mut body = bytes::BytesMut::new();
        encode_publish_body(msg, &publish, &mut body);
        let offset = durable
            .wal
            .append(RECORD_RETAINED, unix_ms(), &[&body[..]])?;
        // The copy must be durable before the segment holding the original may go.
        durable.wal.wait_durable(offset).await?;
        Ok(offset.0)
    }
}
