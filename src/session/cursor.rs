//! A persistent session's replay cursor: per owner shard, the log offset below which the
//! session needs nothing replayed after a restart.
//!
//! Two facts make it: every logged message carries a *floor* from its owner (all of the
//! owner's records below it had been sent before it, see `LogPos::floor`), and the
//! session knows which logged deliveries it still holds (queued or unacknowledged). The
//! cursor for owner `o` is `min(highest floor seen from o, lowest offset still held
//! from o)`. It errs only low: a crash then replays some messages twice (QoS 1 allows it),
//! never skips one the session still needed.
//!
//! # Catching up from the log
//! A logged message that does not fit the session's queue is not dropped: the session
//! opens a *gap* for its owner at that offset and skips the owner's live messages from
//! there on. Once the queue has room the broker asks the owner to read the matching
//! records from the gap on (`take_catch_ups`), a batch at a time; the answer says where
//! the read stopped (`caught_up`). The gap closes when a read reached the log's end and
//! no live message at or above that end was skipped meanwhile; live messages in the
//! range the reads covered are then ignored (the read had them), and the ones below it
//! are queued when they come (a QoS 2 message waits for its fsync and can arrive after
//! a later message opened the gap). So a slow subscriber costs the broker a bounded
//! queue, not memory, and loses nothing that was logged.
//!
//! While the gap stays open (a read cut short, or refused by a full queue), the offsets
//! its reads covered are remembered (`Gap::read`): a live delivery among them arrives
//! late (a QoS 2 message is fanned out only once durable, when a catch-up read may
//! already have brought it) and is left to the log too, or the session would hold the
//! message twice and send it under two packet ids.
//!
//! # QoS 2: once per session
//! Reading the log errs low on purpose: a catch-up read from a gap lowered by an older
//! delivery, a takeover reading from the floor, a shared group's backlog read, and a
//! replay after a restart all bring messages the session may have had already. For QoS
//! 1 that is a repeat MQTT allows; a QoS 2 message the client PUBREC'd must never be
//! sent as a PUBLISH again (it would take it as a new message once its exchange is
//! over). So the cursor keeps the set of logged QoS 2 messages the client PUBREC'd
//! (`released`) as live state: every path that hands a logged message to the session
//! asks it first, through the one check `Session::had` (which also refuses a message
//! the session still holds, queued or in flight: a second copy would go out under a
//! new packet id), and it moves with the session between shards. An
//! entry goes only once it is below the cursors that are logged (backlog holds and gaps
//! included), which no read for this session reaches; a shared group's member keeps
//! its entries up to the bound (a read of the group on another shard may reach lower). The set is bounded by
//! `session_qos2_released_max`: past it the lowest completed entry is forgotten and
//! counted (a read that still reached it would send that message again); exchanges
//! awaiting PUBCOMP are bounded by the in-flight window and never forgotten.

use std::collections::{BTreeMap, HashMap};

use crate::router::ShardId;

use super::message::LogPos;
use super::outbound::Outbound;

/// The cursor state carried by a session (it moves with the session between shards).
#[derive(Debug, Default, Clone)]
pub struct ReplayCursor {
    /// Highest floor seen per owner shard.
    floors: super::PerShard,
    /// Changed since the last `take_changed`.
    dirty: bool,
    /// Gaps, catch-up ranges and QoS 2 records: built the first time one is needed (a
    /// queue overflowed, a takeover, a QoS 2 exchange), so that the many sessions that
    /// never need them do not carry their empty tables.
    rare: Option<Box<Rare>>,
}

/// The part of a [`ReplayCursor`] most sessions never use.
#[derive(Debug, Default, Clone)]
struct Rare {
    /// Open gaps by owner shard.
    gaps: Vec<(ShardId, Gap)>,
    /// Per owner shard: live messages in this range of offsets were read from the log by
    /// the catch-ups of a gap that closed. Only the range the reads covered: a message
    /// below it may still be on its way (a QoS 2 message is fanned out only once durable,
    /// after later QoS 0/1 ones) and must be queued when it comes.
    accept_from: Vec<(u64, u64)>,
    /// The logged QoS 2 messages the client PUBREC'd, by `(owner shard, offset)`, with
    /// the packet id still awaiting PUBCOMP (0: completed): inserted at the PUBREC,
    /// restored at start from the `qos2_delivered` records above the cursors, and asked
    /// on every path that hands a logged message to the session (live fan-out, shared
    /// picks and backlog refills, catch-up reads, replay), which never sends one of them
    /// as a PUBLISH again. Pruned only below the logged cursors (`prune_released`): no
    /// read for this session reaches below them. See "QoS 2: once per session".
    released: BTreeMap<(ShardId, u64), u16>,
    /// Restored at start: QoS 2 messages that were in flight (sent, not PUBREC'd) when the
    /// broker stopped, with their packet id; a replay or catch-up read that returns one
    /// resends it under that id (`qos2_sent`).
    sent: HashMap<(ShardId, u64), u16>,
    /// PUBCOMPs of logged messages not yet logged (`qos2_delivered` with id 0).
    completed: Vec<(ShardId, u64)>,
}

/// Logged messages of one owner the session must read back from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    /// The lowest offset not queued.
    from: u64,
    /// The catch-up read under way, if any.
    request: Option<u64>,
    /// The highest live offset skipped since the read was asked for.
    skipped_max: Option<u64>,
    /// Where the read under way began.
    asked_from: u64,
    /// The offsets `[from, to)` the reads of this gap brought (every matching record
    /// in them was queued, or held already).
    read: Option<(u64, u64)>,
}

/// What to do with a live logged delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Queue it.
    Queue,
    /// Skip it: a catch-up read brings it (or brought it) from the log.
    FromLog,
}

/// A catch-up read to ask an owner for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// The owner shard.
    pub shard: ShardId,
    /// Read from this offset.
    pub from: u64,
    /// The request id, echoed in the answer.
    pub request: u64,
}

impl ReplayCursor {
    /// The rarely used part, if it was ever built.
    fn rare(&self) -> Option<&Rare> {
        self.rare.as_deref()
    }

    /// The rarely used part, built now if it was not.
    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// A delivery of a logged message arrived in the owner's send order.
    pub fn note(&mut self, pos: LogPos) {
        self.raise(pos.shard, pos.floor);
    }

    /// Everything of owner `shard` below `floor` has reached the session.
    pub fn raise(&mut self, shard: ShardId, floor: u64) {
        let seen = self.floors.get_mut(shard.index());
        if floor > *seen {
            *seen = floor;
        }
        self.dirty = true;
    }

    /// Whether a live delivery at `pos` is queued or left to the log.
    pub fn admit(&mut self, pos: LogPos) -> Admit {
        let Some(rare) = self.rare.as_deref_mut() else {
            return Admit::Queue;
        };
        if rare
            .accept_from
            .get(pos.shard.index())
            .is_some_and(|(lo, hi)| (*lo..*hi).contains(&pos.offset))
        {
            return Admit::FromLog;
        }
        match rare.gap_mut(pos.shard) {
            Some(gap) if pos.offset >= gap.from => {
                if gap.request.is_some() {
                    gap.skipped_max = gap.skipped_max.max(Some(pos.offset));
                }
                Admit::FromLog
            }
            Some(gap)
                if gap
                    .read
                    .is_some_and(|(lo, hi)| (lo..hi).contains(&pos.offset)) =>
            {
                Admit::FromLog
            }
            _ => Admit::Queue,
        }
    }

    /// The queue had no room for the logged delivery at `pos`: read it from the log later.
    pub fn overflowed(&mut self, pos: LogPos) {
        self.dirty = true;
        let rare = self.rare_mut();
        match rare.gap_mut(pos.shard) {
            Some(gap) => gap.from = gap.from.min(pos.offset),
            None => rare.gaps.push((
                pos.shard,
                Gap {
                    from: pos.offset,
                    request: None,
                    skipped_max: None,
                    asked_from: pos.offset,
                    read: None,
                },
            )),
        }
    }

    /// The session was taken over by a new connection (on another shard or this one):
    /// what was sent to it while it was out of the shard's tables may be lost on the way,
    /// so every owner's messages from the floor on are read from the log (deliveries the
    /// session already holds are not queued twice).
    pub fn moved(&mut self, shards: usize) {
        for shard in ShardId::all(shards) {
            let floor = self.floors.get(shard.index());
            self.overflowed(LogPos {
                shard,
                offset: floor,
                floor,
            });
        }
    }

    /// Whether a gap is open.
    pub fn has_gaps(&self) -> bool {
        self.rare().is_some_and(|r| !r.gaps.is_empty())
    }

    /// The open gaps: `(owner shard, lowest offset not queued)`.
    pub fn gaps(&self) -> impl Iterator<Item = (ShardId, u64)> + '_ {
        self.rare()
            .into_iter()
            .flat_map(|r| r.gaps.iter().map(|(shard, gap)| (*shard, gap.from)))
    }

    /// The catch-up reads to ask for now (gaps without one under way); `next_request`
    /// numbers them.
    pub fn take_catch_ups(&mut self, next_request: &mut u64) -> Vec<CatchUp> {
        let mut asks = Vec::new();
        let Some(rare) = self.rare.as_deref_mut() else {
            return asks;
        };
        for (shard, gap) in &mut rare.gaps {
            if gap.request.is_none() {
                *next_request += 1;
                gap.request = Some(*next_request);
                gap.skipped_max = None;
                gap.asked_from = gap.from;
                asks.push(CatchUp {
                    shard: *shard,
                    from: gap.from,
                    request: *next_request,
                });
            }
        }
        asks
    }

    /// The session moved to another shard: reads asked for by the old one are lost.
    pub fn forget_requests(&mut self) {
        if let Some(rare) = self.rare.as_deref_mut() {
            for (_, gap) in &mut rare.gaps {
                gap.request = None;
            }
        }
    }

    /// Whether `request` is the read under way for `shard`.
    pub fn is_current(&self, shard: ShardId, request: u64) -> bool {
        self.rare().is_some_and(|r| {
            r.gaps
                .iter()
                .any(|(s, g)| *s == shard && g.request == Some(request))
        })
    }

    /// A catch-up read of `shard` answered: it stopped at `resume` (the first matching
    /// record it did not return) or read everything up to the log's `end`; `refused` is
    /// the first returned message the queue had no room for.
    pub fn caught_up(
        &mut self,
        shard: ShardId,
        resume: Option<u64>,
        end: u64,
        refused: Option<u64>,
    ) {
        self.dirty = true;
        let Some(rare) = self.rare.as_deref_mut() else {
            return;
        };
        let Some(i) = rare.gaps.iter().position(|(s, _)| *s == shard) else {
            return;
        };
        let gap = &mut rare.gaps[i].1;
        gap.request = None;
        let stopped = refused.into_iter().chain(resume).min().unwrap_or(end);
        if gap.asked_from < stopped {
            let (lo, hi) = gap.read.unwrap_or((gap.asked_from, stopped));
            gap.read = Some((lo.min(gap.asked_from), hi.max(stopped)));
        }
        if let Some(at) = refused.into_iter().chain(resume).min() {
            gap.from = at;
            return;
        }
        // The floor is not raised to `end`: the reads covered only `gap.read`, and a
        // message of the owner below it may not have reached the session yet. The
        // floors of the live deliveries and the owner's watermarks move it on.
        if gap.skipped_max.is_some_and(|m| m >= end) {
            // Everything the reads covered up to `end` was read; what was skipped since
            // is read next.
            gap.from = end;
            return;
        }
        let (lo, hi) = gap.read.unwrap_or((end, end));
        rare.gaps.swap_remove(i);
        let s = shard.index();
        if rare.accept_from.len() <= s {
            rare.accept_from.resize(s + 1, (0, 0));
        }
        let (old_lo, old_hi) = rare.accept_from[s];
        // Ranges that touch are one; otherwise the newer read's range is kept.
        rare.accept_from[s] = if old_hi >= lo && old_lo <= hi && old_lo < old_hi {
            (old_lo.min(lo), old_hi.max(hi))
        } else {
            (lo, hi)
        };
    }

    /// At start: the logged releases of this session at or above its cursors.
    pub fn restore_released(&mut self, released: HashMap<(ShardId, u64), u16>) {
        if released.is_empty() && self.rare.is_none() {
            return;
        }
        self.rare_mut().released = released.into_iter().collect();
    }

    /// The client PUBREC'd the logged QoS 2 message at `pos`, sent under `pid`: it is
    /// never sent as a PUBLISH to this session again. Keeps at most `max` entries
    /// (see the module docs); returns how many completed entries it forgot for room.
    pub fn pubrec(&mut self, pos: LogPos, pid: u16, max: usize) -> u64 {
        let released = &mut self.rare_mut().released;
        released.insert((pos.shard, pos.offset), pid);
        let mut forgotten = 0;
        while released.len() > max {
            let Some(lowest) = released
                .iter()
                .find(|(_, pid)| **pid == 0)
                .map(|(at, _)| *at)
            else {
                break;
            };
            released.remove(&lowest);
            forgotten += 1;
        }
        forgotten
    }

    /// Whether the client PUBREC'd the logged message at `pos`: `Some(packet id)` still
    /// awaiting PUBCOMP, `Some(0)` completed (see the module docs).
    pub fn released(&self, pos: LogPos) -> Option<u16> {
        let released = &self.rare()?.released;
        if released.is_empty() {
            return None;
        }
        released.get(&(pos.shard, pos.offset)).copied()
    }

    /// Forgets the releases below `cursors` (the cursors as logged, backlog holds
    /// included): nothing below them is read for this session again.
    pub fn prune_released(&mut self, cursors: &[(ShardId, u64)]) {
        let Some(rare) = self.rare.as_deref_mut() else {
            return;
        };
        if rare.released.is_empty() {
            return;
        }
        for &(shard, cursor) in cursors {
            let below: Vec<(ShardId, u64)> = rare
                .released
                .range((shard, 0)..(shard, cursor))
                .map(|(at, _)| *at)
                .collect();
            for at in below {
                rare.released.remove(&at);
            }
        }
    }

    /// How many releases the session remembers.
    pub fn released_len(&self) -> usize {
        self.rare().map_or(0, |r| r.released.len())
    }

    /// At start: the logged in-flight QoS 2 packet ids at or above the cursors.
    pub fn restore_sent(&mut self, sent: HashMap<(ShardId, u64), u16>) {
        if sent.is_empty() && self.rare.is_none() {
            return;
        }
        self.rare_mut().sent = sent;
    }

    /// Whether the QoS 2 message at `pos` was in flight (sent, not PUBREC'd) when the
    /// broker stopped and has not been met by a read since.
    pub fn sent_at(&self, pos: LogPos) -> bool {
        self.rare()
            .is_some_and(|r| !r.sent.is_empty() && r.sent.contains_key(&(pos.shard, pos.offset)))
    }

    /// The packet id the QoS 2 message at `pos` was in flight under when the broker
    /// stopped, if logged. Asked once per replayed message; the answer is forgotten.
    pub fn take_sent(&mut self, pos: LogPos) -> Option<u16> {
        let sent = &mut self.rare.as_deref_mut()?.sent;
        if sent.is_empty() {
            return None;
        }
        sent.remove(&(pos.shard, pos.offset))
    }

    /// The QoS 2 exchange for the logged message at `pos` completed (PUBCOMP). With
    /// `log` (a logged session) it is logged with the next cursors, so a restart does not
    /// resend its PUBREL.
    pub fn completed(&mut self, pos: LogPos, log: bool) {
        if let Some(pid) = self
            .rare
            .as_deref_mut()
            .and_then(|r| r.released.get_mut(&(pos.shard, pos.offset)))
        {
            *pid = 0;
        }
        if log {
            self.rare_mut().completed.push((pos.shard, pos.offset));
            self.dirty = true;
        }
    }

    /// The completions to log now (see `completed`).
    pub fn take_completed(&mut self) -> Vec<(ShardId, u64)> {
        self.rare
            .as_deref_mut()
            .map(|r| std::mem::take(&mut r.completed))
            .unwrap_or_default()
    }

    /// Like `raise`, but marks the cursor changed only if the floor rose.
    pub fn raise_quietly(&mut self, shard: ShardId, floor: u64) {
        if self.floors.get(shard.index()) < floor {
            self.raise(shard, floor);
        }
    }

    /// Something the session holds changed (an acknowledgement, a drop).
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// The cursors `(owner shard, offset)` if anything changed since the last call, for
    /// every owner the session has heard of (a 0 replaces an older, higher cursor).
    pub fn take_changed(&mut self, outbound: &Outbound) -> Option<Vec<(ShardId, u64)>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let current = self.current(outbound);
        if let Some(rare) = self.rare.as_deref_mut() {
            if !rare.sent.is_empty() {
                rare.sent
                    .retain(|(s, offset), _| current.get(s.index()).is_none_or(|c| offset >= c));
            }
        }
        Some(
            current
                .into_iter()
                .enumerate()
                .map(|(s, c)| (ShardId::from_index(s), c))
                .collect(),
        )
    }

    /// The cursor per owner shard (index) now.
    pub fn current(&self, outbound: &Outbound) -> Vec<u64> {
        let mut lowest = self.floors.as_slice().to_vec();
        outbound.lowest_unfinished(&mut lowest);
        for (shard, from) in self.gaps() {
            let s = shard.index();
            if lowest.len() <= s {
                lowest.resize(s + 1, 0);
            }
            lowest[s] = lowest[s].min(from);
        }
        lowest
    }
}

impl Rare {
    fn gap_mut(&mut self, shard: ShardId) -> Option<&mut Gap> {
        self.gaps
            .iter_mut()
            .find(|(s, _)| *s == shard)
            .map(|(_, g)| g)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::mqtt::{ByteStr, ClientId, PublishProperties, QoS};
    use crate::session::{Delivery, Message, OutboundLimits};

    fn delivery(shard: ShardId, offset: u64, floor: u64) -> Delivery {
        Delivery {
            msg: Arc::new(Message {
                topic: ByteStr::from_static("t"),
                payload: Bytes::from_static(b"p"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                publisher: ClientId::from("pub"),
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

    const LIMITS: OutboundLimits = OutboundLimits {
        queue_messages_max: 100,
        queue_bytes_max: 1 << 20,
        inflight_count_max: 10,
    };

    fn outbound() -> Outbound {
        Outbound::new(LIMITS)
    }

    #[test]
    fn cursor_is_the_lower_of_floor_and_held_offsets() {
        let mut cursor = ReplayCursor::default();
        let mut out = outbound();
        assert_eq!(cursor.take_changed(&out), None, "nothing happened yet");
        for (offset, floor) in [(4, 5), (7, 8)] {
            let d = delivery(ShardId(1), offset, floor);
            cursor.note(d.msg.log.unwrap());
            out.enqueue(d, false, &LIMITS);
        }
        assert_eq!(
            cursor.take_changed(&out),
            Some(vec![(ShardId(0), 0), (ShardId(1), 4)])
        );
        assert_eq!(cursor.take_changed(&out), None, "unchanged since");
        // A deferred record below arrives later: the floor (3) holds the cursor back.
        let d = delivery(ShardId(1), 9, 3);
        cursor.note(d.msg.log.unwrap());
        assert_eq!(
            cursor.take_changed(&out),
            Some(vec![(ShardId(0), 0), (ShardId(1), 4)])
        );
        let mut out = outbound();
        cursor.touch();
        assert_eq!(
            cursor.take_changed(&out),
            Some(vec![(ShardId(0), 0), (ShardId(1), 8)])
        );
        out.enqueue(delivery(ShardId(0), 2, 3), false, &LIMITS);
        cursor.touch();
        assert_eq!(
            cursor.take_changed(&out),
            Some(vec![(ShardId(0), 0), (ShardId(1), 8)]),
            "owner 0 never raised a floor: its cursor stays 0"
        );
    }

    #[test]
    fn an_overflow_opens_a_gap_that_holds_the_cursor_until_caught_up() {
        let mut cursor = ReplayCursor::default();
        let out = outbound();
        let pos = |offset| LogPos {
            shard: ShardId(2),
            offset,
            floor: offset + 1,
        };
        cursor.note(pos(10));
        cursor.overflowed(pos(10));
        for o in 11..20 {
            cursor.note(pos(o));
            assert_eq!(cursor.admit(pos(o)), Admit::FromLog, "behind the gap");
        }
        assert_eq!(cursor.take_changed(&out).unwrap()[2], (ShardId(2), 10));
        let mut ids = 0;
        let asks = cursor.take_catch_ups(&mut ids);
        assert_eq!(
            asks,
            vec![CatchUp {
                shard: ShardId(2),
                from: 10,
                request: 1
            }]
        );
        assert!(
            cursor.take_catch_ups(&mut ids).is_empty(),
            "one read at a time"
        );
        // A live message beyond what the read will see is skipped while it runs.
        cursor.note(pos(25));
        assert_eq!(cursor.admit(pos(25)), Admit::FromLog);
        cursor.caught_up(ShardId(2), None, 22, None);
        assert!(cursor.has_gaps(), "25 was skipped after the read started");
        assert_eq!(cursor.take_changed(&out).unwrap()[2], (ShardId(2), 22));
        let asks = cursor.take_catch_ups(&mut ids);
        assert_eq!(asks[0].from, 22);
        cursor.caught_up(ShardId(2), None, 30, None);
        assert!(!cursor.has_gaps());
        assert_eq!(cursor.admit(pos(29)), Admit::FromLog, "the read had it");
        assert_eq!(cursor.admit(pos(30)), Admit::Queue);
        assert_eq!(
            cursor.admit(pos(9)),
            Admit::Queue,
            "below what the reads covered"
        );
        // The floor is what the owner said (the live deliveries' floors), not the end
        // of the read: something below it may still be on its way.
        assert_eq!(cursor.take_changed(&out).unwrap()[2], (ShardId(2), 26));
        cursor.raise(ShardId(2), 30);
        assert_eq!(cursor.take_changed(&out).unwrap()[2], (ShardId(2), 30));
    }

    /// A QoS 2 message below the offset a gap opened at may be fanned out after the gap's
    /// read reached the log's end (it waited for its fsync while a later QoS 1 message
    /// overflowed the queue): once the gap closed it is still queued, and the cursor does
    /// not claim it reached the session before it did.
    #[test]
    fn a_late_delivery_below_a_closed_gap_is_queued() {
        let mut cursor = ReplayCursor::default();
        let out = outbound();
        let pos = |offset, floor| LogPos {
            shard: ShardId(0),
            offset,
            floor,
        };
        // 105 (QoS 2) waits for its fsync; 110 (QoS 1) goes out first, floor 105.
        cursor.note(pos(110, 105));
        cursor.overflowed(pos(110, 105));
        let mut ids = 0;
        let asks = cursor.take_catch_ups(&mut ids);
        assert_eq!(asks[0].from, 110);
        cursor.caught_up(ShardId(0), None, 200, None);
        assert!(!cursor.has_gaps());
        assert_eq!(cursor.take_changed(&out).unwrap()[0], (ShardId(0), 105));
        assert_eq!(cursor.admit(pos(105, 105)), Admit::Queue, "never read");
        assert_eq!(
            cursor.admit(pos(150, 105)),
            Admit::FromLog,
            "the read had it"
        );
    }

    /// A QoS 2 message is fanned out live only once durable: a catch-up read cut short
    /// may have brought it already. Its late live delivery must not queue it again.
    #[test]
    fn a_live_delivery_a_read_already_brought_is_left_to_the_log() {
        let mut cursor = ReplayCursor::default();
        let pos = |offset| LogPos {
            shard: ShardId(1),
            offset,
            floor: offset + 1,
        };
        cursor.overflowed(pos(10));
        let mut next = 0;
        let ask = cursor.take_catch_ups(&mut next);
        assert_eq!(ask[0].from, 10);
        // The read brought 10..20 and stopped there (its batch was full).
        cursor.caught_up(ShardId(1), Some(20), 40, None);
        assert_eq!(cursor.admit(pos(15)), Admit::FromLog, "read already");
        assert_eq!(cursor.admit(pos(25)), Admit::FromLog, "for the next read");
        assert_eq!(cursor.admit(pos(5)), Admit::Queue, "below what was read");
        // The next read continues from 20; a refusal at 30 keeps 20..30 read.
        let ask = cursor.take_catch_ups(&mut next);
        assert_eq!(ask[0].from, 20);
        cursor.caught_up(ShardId(1), None, 40, Some(30));
        assert_eq!(cursor.admit(pos(12)), Admit::FromLog);
        assert_eq!(cursor.admit(pos(22)), Admit::FromLog);
        assert_eq!(cursor.admit(pos(9)), Admit::Queue);
    }

    #[test]
    fn a_read_cut_short_or_refused_resumes_there() {
        let mut cursor = ReplayCursor::default();
        let pos = LogPos {
            shard: ShardId(0),
            offset: 5,
            floor: 6,
        };
        cursor.overflowed(pos);
        let mut ids = 0;
        cursor.take_catch_ups(&mut ids);
        cursor.caught_up(ShardId(0), Some(40), 100, None);
        assert_eq!(cursor.take_catch_ups(&mut ids)[0].from, 40);
        cursor.caught_up(ShardId(0), None, 100, Some(70));
        assert_eq!(cursor.take_catch_ups(&mut ids)[0].from, 70);
        cursor.forget_requests();
        assert_eq!(
            cursor.take_catch_ups(&mut ids)[0].from,
            70,
            "asked again after a move"
        );
    }

    #[test]
    fn releases_stay_until_below_the_logged_cursor_and_are_bounded() {
        let mut cursor = ReplayCursor::default();
        let pos = |shard, offset| LogPos {
            shard,
            offset,
            floor: offset + 1,
        };
        assert_eq!(cursor.released(pos(ShardId(0), 5)), None);
        assert_eq!(cursor.pubrec(pos(ShardId(0), 5), 7, 3), 0);
        assert_eq!(cursor.pubrec(pos(ShardId(1), 2), 8, 3), 0);
        assert_eq!(
            cursor.released(pos(ShardId(0), 5)),
            Some(7),
            "awaiting PUBCOMP"
        );
        cursor.completed(pos(ShardId(0), 5), false);
        assert_eq!(cursor.released(pos(ShardId(0), 5)), Some(0), "completed");
        assert_eq!(
            cursor.released(pos(ShardId(0), 5)),
            Some(0),
            "asked again: still known"
        );
        assert!(cursor.take_completed().is_empty(), "not logged");
        // Only what no read reaches any more goes.
        cursor.prune_released(&[(ShardId(0), 5), (ShardId(1), 2)]);
        assert_eq!(cursor.released_len(), 2);
        cursor.prune_released(&[(ShardId(0), 6)]);
        assert_eq!(cursor.released(pos(ShardId(0), 5)), None);
        assert_eq!(cursor.released(pos(ShardId(1), 2)), Some(8));
        // Past the bound the lowest completed one goes, never one awaiting PUBCOMP.
        for (offset, pid) in [(10, 0), (11, 0)] {
            assert_eq!(cursor.pubrec(pos(ShardId(0), offset), pid, 3), 0);
        }
        assert_eq!(cursor.pubrec(pos(ShardId(0), 12), 9, 3), 1);
        assert_eq!(cursor.released(pos(ShardId(0), 10)), None);
        assert_eq!(cursor.released(pos(ShardId(1), 2)), Some(8));
        assert_eq!(cursor.released_len(), 3);
    }

    #[test]
    fn retained_copies_do_not_hold_the_cursor() {
        let mut cursor = ReplayCursor::default();
        let mut out = outbound();
        cursor.raise(ShardId(0), 50);
        let mut d = delivery(ShardId(0), 10, 11);
        d.holds_cursor = false;
        out.enqueue(d, false, &LIMITS);
        assert_eq!(cursor.take_changed(&out), Some(vec![(ShardId(0), 50)]));
    }
}
