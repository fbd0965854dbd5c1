//! Reading a log back for sessions: at start (a home asks every owner) and while running
//! (catch-up reads), with the rule that decides which records a session wants.

use std::sync::Arc;

use crate::session::{Delivery, Message, Session};
use crate::shard::{Shard, ShardMsg};
use crate::storage::{Offset, RecordRef, Wal};

use super::super::durable::decode_any_publish;
use super::ReplayWant;
use crate::router::filter_matches;

/// Bytes read per step while replaying (bounds one read buffer).
const REPLAY_READ_BYTES: usize = 4 << 20;

impl Shard {
    /// Owner shard: reads its log from the lowest wanted offset and answers with the
    /// messages each session wants.
    pub(crate) async fn on_replay(&self, from: usize, id: u64, wants: Vec<ReplayWant>) {
        let Some(durable) = self.durable.get() else {
            let resume = vec![None; wants.len()];
            let found = Vec::new();
            self.post(
                from,
                ShardMsg::ReplayReply {
                    id,
                    end: 0,
                    found,
                    resume,
                },
            );
            return;
        };
        let scan = scan_for_replay(&durable.wal, self.id as u16, &wants, None).await;
        tracing::info!(
            shard = self.id,
            to = from,
            messages = scan.found.len(),
            "replayed for persistent sessions"
        );
        let (end, found, resume) = (scan.end, scan.found, scan.resume);
        self.post(
            from,
            ShardMsg::ReplayReply {
                id,
                end,
                found,
                resume,
            },
        );
    }
}

/// What a replay scan of one log found.
pub struct ReplayScan {
    /// `(index into wants, message)` in offset order.
    pub found: Vec<(u32, Arc<Message>)>,
    /// Every record below this was scanned.
    pub end: u64,
    /// Per want: the first matching record that did not fit its `messages_max`.
    pub resume: Vec<Option<u64>>,
}

/// Reads `wal` (the log of shard `shard`) from the lowest wanted offset up to `stop`
/// (or its end) and returns the messages each want asks for.
pub async fn scan_for_replay(
    wal: &Wal,
    shard: u16,
    wants: &[ReplayWant],
    stop: Option<u64>,
) -> ReplayScan {
    // A cursor may lie past the log's end: the session acknowledged QoS 1 messages that
    // reached it before they were durable, and the crash cut them off. Those offsets
    // are given to new records now, so the replay (and the cursor after it) restarts at
    // the end.
    let end = stop.unwrap_or(u64::MAX).min(wal.next_offset().0);
    // Whole segments older than every subscription of a want hold nothing for it.
    let starts: Vec<u64> = wants
        .iter()
        .map(|w| match w.filters.iter().map(|(_, since)| *since).min() {
            Some(since) => w.from.max(wal.first_offset_since(since).0),
            None => w.from,
        })
        .collect();
    let lowest = starts
        .iter()
        .copied()
        .min()
        .unwrap_or(0)
        .max(wal.first_offset().0);
    let mut next = Offset(lowest.min(end));
    let mut found: Vec<(u32, Arc<Message>)> = Vec::new();
    let mut counts = vec![0usize; wants.len()];
    let mut resume: Vec<Option<u64>> = vec![None; wants.len()];
    while next.0 < end && resume.iter().any(Option::is_none) {
        let read = wal.read_from(next, REPLAY_READ_BYTES, |record| {
            // Decode only what some want may still take.
            if record.offset.0 >= end || resume.iter().all(Option::is_some) {
                return;
            }
            let Some((recipients, msg)) = decode_any_publish(&record, shard) else {
                return;
            };
            let msg = Arc::new(msg);
            for (i, want) in wants.iter().enumerate() {
                if resume[i].is_some()
                    || record.offset.0 < starts[i]
                    || !wanted(want, &recipients, &record, &msg)
                {
                    continue;
                }
                if counts[i] >= want.messages_max {
                    resume[i] = Some(record.offset.0);
                    continue;
                }
                counts[i] += 1;
                found.push((i as u32, Arc::clone(&msg)));
            }
        });
        match read.await {
            Ok(after) if after > next => next = after.min(Offset(end)),
            Ok(_) => break,
            Err(e) => {
                tracing::error!(shard, error = %e, "replay could not read the log");
                break;
            }
        }
    }
    ReplayScan {
        found,
        end: next.0,
        resume,
    }
}

/// Whether a replayed record is for `want`: a `publish_for` names it; a plain publish
/// matches one of its filters and is not older than that subscription.
fn wanted(
    want: &ReplayWant,
    recipients: &Option<Vec<String>>,
    record: &RecordRef<'_>,
    msg: &Message,
) -> bool {
    match recipients {
        Some(names) => names.iter().any(|n| n == want.client_id.as_str()),
        None => want.filters.iter().any(|(filter, since)| {
            record.timestamp_ms >= *since && filter_matches(filter, msg.topic.as_str())
        }),
    }
}

/// The delivery of a replayed message to a restored session, by its subscriptions
/// (the same overlap rule as live delivery).
pub(crate) fn replayed_delivery(session: &Session, msg: Arc<Message>) -> Option<Delivery> {
    let own = session.client_id == msg.publisher;
    let mut qos = None;
    let mut ids = Vec::new();
    let mut all_rap = true;
    let mut group = None;
    for (full, opts) in &session.subscriptions {
        let Some((plain, share)) = split_share(full) else {
            continue;
        };
        if !filter_matches(plain, msg.topic.as_str()) || (own && opts.no_local) {
            continue;
        }
        qos = Some(qos.map_or(opts.qos, |q: crate::mqtt::QoS| q.max(opts.qos)));
        all_rap &= opts.retain_as_published;
        ids.extend(opts.subscription_id);
        if let Some(g) = share {
            group = Some(Arc::<str>::from(g));
        }
    }
    Some(Delivery {
        qos: qos?.min(msg.qos),
        retain: msg.retain && all_rap,
        subscription_ids: ids,
        share_group: group,
        holds_cursor: true,
        msg,
    })
}

/// `(plain filter, share group)` of a full filter.
fn split_share(full: &str) -> Option<(&str, Option<&str>)> {
    match full.strip_prefix("$share/") {
        Some(rest) => {
            let (group, filter) = rest.split_once('/')?;
            Some((filter, Some(group)))
        }
        None => Some((full, None)),
    }
}
