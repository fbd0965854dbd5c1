//! Reading a log back for sessions: at start (a home asks every owner) and while running
//! (catch-up reads), with the rule that decides which records a session wants.
//!
//! A scan that cannot read on (an I/O error, a damaged frame, a poisoned log) is never
//! taken for one that reached the log's end: every want it had not cut off yet resumes
//! where it stopped (`ReplayScan::resume`), so the session's gap stays open from there and
//! the read is asked for again (see `catchup`), and a restart replays from there.

use std::sync::Arc;

use crate::broker::{Broker, ShardMsg};
use crate::mqtt::QoS;
use crate::session::{Delivery, Message, Session};
use crate::storage::{Offset, RecordRef, Wal};

use super::super::durable::{decode_any_publish, decode_any_publish_even_expired};
use super::ReplayWant;
use crate::router::{filter_matches, ShardId};

/// Most messages one catch-up read returns.
pub const CATCH_UP_MESSAGES_MAX: usize = 1024;

/// Bytes read per step while replaying (bounds one read buffer).
const REPLAY_READ_BYTES: usize = 4 << 20;

impl Broker {
    /// Owner shard: reads its log from the lowest wanted offset and answers with the
    /// messages each session wants.
    pub(crate) async fn on_replay(&self, from: ShardId, id: u64, wants: Vec<ReplayWant>) {
        let Some(durable) = self.log.get() else {
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
        let scan = scan_for_replay(&durable.wal, self.id, &wants, None).await;
        tracing::info!(
            shard = self.id.index(),
            to = from.index(),
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
    /// Per want: where a later read must resume: the first matching record that did
    /// not fit its `messages_max`, or where a failed read stopped.
    pub resume: Vec<Option<u64>>,
    /// The read stopped before `end` it was asked for (an I/O error, a damaged frame, a
    /// poisoned log): everything from `end` on is unread.
    pub failed: bool,
}

impl ReplayScan {
    /// A read that could not start at `from` (a poisoned log): every want resumes there.
    pub fn failed_at(from: u64, wants: usize) -> Self {
        ReplayScan {
            found: Vec::new(),
            end: from,
            resume: vec![Some(from); wants],
            failed: true,
        }
    }
}

/// Reads `wal` (the log of shard `shard`) from the lowest wanted offset up to `stop`
/// (or its end) and returns the messages each want asks for.
pub async fn scan_for_replay(
    wal: &Wal,
    shard: ShardId,
    wants: &[ReplayWant],
    stop: Option<u64>,
) -> ReplayScan {
    // A cursor may lie past the log's end: the session acknowledged QoS 1 messages that
    // reached it before they were durable, and the crash cut them off. Those offsets
    // are given to new records now, so the replay (and the cursor after it) restarts at
    // the end.
    let end = stop.unwrap_or(u64::MAX).min(wal.next_offset().0);
    // Records below where every subscription of a want began hold nothing for it.
    let starts: Vec<u64> = wants
        .iter()
        .map(|w| match w.filters.iter().map(|(_, since)| *since).min() {
            Some(since) => w.from.max(since),
            None => w.from,
        })
        .collect();
    // The started exchanges are read wherever they lie, up to the highest of them.
    let exact_low = wants.iter().filter_map(|w| w.exact.first().copied()).min();
    let exact_top = wants.iter().filter_map(|w| w.exact.last().copied()).max();
    let exact_at = |offset: u64| {
        exact_top.is_some_and(|top| offset <= top)
            && wants.iter().any(|w| w.exact.binary_search(&offset).is_ok())
    };
    let lowest = starts
        .iter()
        .copied()
        .chain(exact_low)
        .min()
        .unwrap_or(0)
        .max(wal.first_offset().0);
    let mut next = Offset(lowest.min(end));
    let mut found: Vec<(u32, Arc<Message>)> = Vec::new();
    let mut counts = vec![0usize; wants.len()];
    let mut resume: Vec<Option<u64>> = vec![None; wants.len()];
    let mut failed = false;
    // Past the last record handed to the visitor: a read that fails midway has served
    // everything below it.
    let mut visited = next;
    let exact_ahead = |at: u64| exact_top.is_some_and(|top| at <= top);
    while next.0 < end && (resume.iter().any(Option::is_none) || exact_ahead(next.0)) {
        let read = wal.read_from(next, REPLAY_READ_BYTES, |record| {
            visited = Offset(record.offset.0 + 1);
            let offset = record.offset.0;
            // Decode only what some want may still take.
            let exact = exact_at(offset);
            if offset >= end || (resume.iter().all(Option::is_some) && !exact) {
                return;
            }
            // A started exchange is completed even if its message expired since.
            let decoded = if exact {
                decode_any_publish_even_expired(&record, shard)
            } else {
                decode_any_publish(&record, shard)
            };
            let Some((recipients, msg)) = decoded else {
                return;
            };
            let msg = Arc::new(msg);
            for (i, want) in wants.iter().enumerate() {
                if exact && want.exact.binary_search(&offset).is_ok() {
                    found.push((i as u32, Arc::clone(&msg)));
                    continue;
                }
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
            Ok(_) => {
                tracing::error!(
                    shard = shard.index(),
                    at = next.0,
                    end,
                    "replay found no record to read"
                );
                failed = true;
                break;
            }
            Err(e) => {
                next = next.max(visited).min(Offset(end));
                tracing::error!(shard = shard.index(), at = next.0, error = %e, "replay could not read the log");
                failed = true;
                break;
            }
        }
    }
    if failed {
        // Not the log's end: what each want has not been given yet is read again later.
        for (r, start) in resume.iter_mut().zip(&starts) {
            r.get_or_insert(next.0.max(*start));
        }
    }
    ReplayScan {
        found,
        end: next.0,
        resume,
        failed,
    }
}

/// Whether a replayed record is for `want`: a `publish_for` names it; a plain publish
/// matches one of its filters at or past the offset where that subscription began.
fn wanted(
    want: &ReplayWant,
    recipients: &Option<Vec<String>>,
    record: &RecordRef<'_>,
    msg: &Message,
) -> bool {
    match recipients {
        Some(names) => names.iter().any(|n| n == want.client_id.as_str()),
        None => want.filters.iter().any(|(filter, since)| {
            record.offset.0 >= *since && filter_matches(filter, msg.topic.as_str())
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
    for (full, sub) in &session.subscriptions {
        let opts = &sub.opts;
        let Some((plain, share)) = split_share(full) else {
            continue;
        };
        if !filter_matches(plain, msg.topic.as_str()) || (own && opts.no_local) {
            continue;
        }
        qos = Some(qos.map_or(opts.qos, |q: QoS| q.max(opts.qos)));
        all_rap &= opts.retain_as_published;
        ids.extend(opts.subscription_id);
        if let Some(g) = share {
            group = Some(Arc::<str>::from(g));
        }
    }
    let Some(qos) = qos else {
        // A QoS 2 exchange the session had started when the broker stopped is completed
        // with it, though it no longer subscribes ([MQTT-3.10.4-3]).
        let started = msg.log.is_some_and(|pos| session.replay.sent_at(pos));
        return started.then(|| Delivery {
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: Vec::new(),
            share_group: None,
            holds_cursor: true,
            msg,
        });
    };
    Some(Delivery {
        qos: qos.min(msg.qos),
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

#[cfg(test)]
pub(super) mod tests {
    use std::path::{Path, PathBuf};

    use bytes::{Bytes, BytesMut};
    use glommio::LocalExecutorBuilder;

    use super::*;
    use crate::broker::durable::{as_publish, encode_publish_body};
    use crate::broker::RECORD_PUBLISH;
    use crate::mqtt::{ByteStr, ClientId, PublishProperties, QoS};
    use crate::session::{LogPos, ReplayCursor};
    use crate::storage::{FsyncPolicy, WalConfig};

    /// A temp dir on a real disk (`SHARDMQ_TEST_DIR` or /var/tmp): O_DIRECT is off on
    /// tmpfs.
    pub(crate) fn disk_tempdir() -> tempfile::TempDir {
        let base = std::env::var_os("SHARDMQ_TEST_DIR")
            .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        tempfile::Builder::new()
            .prefix("shardmq-replay-")
            .tempdir_in(base)
            .expect("temp dir")
    }

    fn config(dir: &Path) -> WalConfig {
        WalConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
            fsync_policy: FsyncPolicy::Always,
            write_buffer_bytes: 64 * 1024,
            retention_ms: None,
            retention_bytes: None,
        }
    }

    fn payload(i: u64) -> String {
        format!("payload-{i:05}")
    }

    /// Appends `n` QoS 1 publishes to topic `t`, record `i` stamped `stamp(i)`.
    async fn append_publishes(wal: &Wal, n: u64, stamp: impl Fn(u64) -> u64) {
        for i in 0..n {
            let msg = Message {
                topic: ByteStr::from_static("t"),
                payload: Bytes::from(payload(i)),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: PublishProperties::default(),
                publisher: ClientId::from("p"),
                expires_at: None,
                log: None,
            };
            let mut body = BytesMut::new();
            encode_publish_body(&msg, &as_publish(&msg), &mut body);
            wal.reserve(body.len()).await.expect("reserve");
            let at = wal
                .append(RECORD_PUBLISH, stamp(i), &[&body])
                .expect("append");
            assert_eq!(at, Offset(i));
        }
        wal.wait_durable(Offset(n - 1)).await.expect("durable");
    }

    fn want(from: u64, since: u64) -> ReplayWant {
        ReplayWant {
            client_id: ClientId::from("s"),
            from,
            filters: vec![("t".to_string(), since)],
            messages_max: usize::MAX,
            exact: Vec::new(),
        }
    }

    fn payloads(scan: &ReplayScan) -> Vec<String> {
        scan.found
            .iter()
            .map(|(_, m)| String::from_utf8(m.payload.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_subscription_wants_records_from_its_log_position_whatever_their_clock() {
        let dir = disk_tempdir();
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                let (wal, _) = Wal::open(config(dir.path()), |_| {}).await.expect("open");
                // The clock stepped back after record 9: later records are stamped older.
                append_publishes(&wal, 20, |i| if i < 10 { 2_000 + i } else { 1_000 + i }).await;
                let scan = scan_for_replay(&wal, ShardId(0), &[want(0, 5)], None).await;
                let expected: Vec<String> = (5..20).map(payload).collect();
                assert_eq!(payloads(&scan), expected, "records 5.. whatever their time");
                assert_eq!((scan.end, scan.resume[0], scan.failed), (20, None, false));
            });
    }

    #[test]
    fn started_exchanges_are_read_past_the_queue_bound_and_whatever_the_filters() {
        let dir = disk_tempdir();
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                let (wal, _) = Wal::open(config(dir.path()), |_| {}).await.expect("open");
                append_publishes(&wal, 30, |i| 1_000 + i).await;
                // A queue's worth of three from 2, and the exchanges at 1 (below where
                // the filters start), 12 and 25 whatever the bound.
                let bounded = ReplayWant {
                    messages_max: 3,
                    exact: vec![1, 12, 25],
                    ..want(0, 2)
                };
                // A session that no longer subscribes: only its exchange at 20.
                let unsubscribed = ReplayWant {
                    filters: Vec::new(),
                    exact: vec![20],
                    ..want(0, 0)
                };
                let scan = scan_for_replay(&wal, ShardId(0), &[bounded, unsubscribed], None).await;
                let got: Vec<(u32, String)> = scan
                    .found
                    .iter()
                    .map(|(i, m)| (*i, String::from_utf8(m.payload.to_vec()).unwrap()))
                    .collect();
                let expected: Vec<(u32, String)> = [(0, 1), (0, 2), (0, 3), (0, 4), (0, 12)]
                    .into_iter()
                    .chain([(1, 20), (0, 25)])
                    .map(|(i, n)| (i, payload(n)))
                    .collect();
                assert_eq!(got, expected);
                assert_eq!(scan.resume, vec![Some(5), None]);
                assert!(!scan.failed);
            });
    }

    #[test]
    fn a_damaged_record_keeps_the_gap_open_where_the_read_stopped() {
        let dir = disk_tempdir();
        let path = dir.path().to_path_buf();
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                let (wal, _) = Wal::open(config(&path), |_| {}).await.expect("open");
                append_publishes(&wal, 100, |i| 1_000 + i).await;
                // The disk breaks under record 50 (found by its payload).
                let segment = std::fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| p.extension().is_some_and(|e| e == "log"))
                    .expect("a segment file");
                let mut bytes = std::fs::read(&segment).unwrap();
                let mark = payload(50);
                let at = bytes
                    .windows(mark.len())
                    .position(|w| w == mark.as_bytes())
                    .expect("record 50 on disk");
                bytes[at] ^= 0xff;
                std::fs::write(&segment, &bytes).unwrap();

                let scan = scan_for_replay(&wal, ShardId(0), &[want(0, 0)], None).await;
                let expected: Vec<String> = (0..50).map(payload).collect();
                assert_eq!(payloads(&scan), expected, "served up to the damage");
                assert!(scan.failed, "the read stopped before the log's end");
                assert_eq!(scan.resume[0], Some(50), "resumes at the damaged record");

                // The session's gap (opened at 0) stays open from there, and the next
                // read asks for 50 on: nothing after the damage is given up.
                let mut cursor = ReplayCursor::default();
                cursor.overflowed(LogPos {
                    shard: ShardId(0),
                    offset: 0,
                    floor: 0,
                });
                let mut ids = 0;
                cursor.take_catch_ups(&mut ids);
                cursor.caught_up(ShardId(0), scan.resume[0], scan.end, None);
                assert!(cursor.has_gaps(), "a failed read does not close the gap");
                assert_eq!(cursor.take_catch_ups(&mut ids)[0].from, 50);
                wal.close().await.expect("close");
            });
    }

    #[test]
    fn a_read_that_cannot_start_resumes_where_it_was_asked_to() {
        let scan = ReplayScan::failed_at(42, 2);
        assert!(scan.failed && scan.found.is_empty());
        assert_eq!(scan.resume, vec![Some(42), Some(42)]);
    }
}
