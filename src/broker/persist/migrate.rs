//! A change of `shards` between runs: `owner_of` and `home_of` change with the shard
//! count, so before any shard starts the old logs are rewritten into the new layout.
//!
//! `data_dir/layout` says how many shards wrote `data_dir/shard-<i>/` (a data dir from
//! before the file existed is read as one shard per `shard-<i>` directory). When it
//! differs from the configured count:
//!
//! 1. `data_dir/migrating/` is created with `from` (the old count); every `shard-<i>` is
//!    renamed into it; then the marker `moved` is written. A crash before `moved` is
//!    finished on the next start (the remaining renames); after it, any `shard-<i>` left
//!    in `data_dir` is partial output of a crashed rewrite and is removed.
//! 2. The old logs are recovered (CRC-checked, as at any start) and what is still live is
//!    written into fresh logs of the new layout, each record on its new owner or home:
//!    retained messages first, then every message a persistent session has not
//!    acknowledged (one `publish_for` record naming the sessions that want it and the
//!    shared groups those of them that are members take it through), then the
//!    sessions (open, subscriptions with their original times, detach with any delayed
//!    will, cursors pointing at their own `publish_for` records, and their QoS 2
//!    exchanges at the new positions, see below), then the wills of connections the
//!    crash cut (`will`, published at the first start). Every new log is fdatasync'ed.
//! 3. The marker `done` (with the new count) is written, then `layout`, then
//!    `migrating/` is removed. A crash after `done` only repeats the last two steps.
//!
//! # QoS 2 state
//! Its records name messages by `(owner shard, offset)`, which the layout change
//! changes, so each piece is mapped from the old position to the new one as the
//! messages are written:
//! - toward a subscriber, a message whose release was logged with its PUBCOMP (packet id
//!   0) is not carried for that session; one it PUBREC'd (a `qos2_delivered` entry still
//!   awaiting PUBCOMP) is carried for it, and a `qos2_delivered` entry with its packet
//!   id at the new position follows the session's cursor, so the next start resends its
//!   PUBREL, never its PUBLISH; one in flight at a graceful stop gets its `qos2_sent`
//!   entry there, so it is resent with DUP under its old id;
//! - a member of a shared group also gets a completed `qos2_delivered` entry (packet id
//!   0) for every carried message it PUBREC'd and no longer wants itself (completed, or
//!   below its cursor) but another session does: the group can still hand the message
//!   to it (another member's replay that does not fit its queue, what a member leaving
//!   held), and the next start keeps a member's releases below its cursor for that
//!   (`RecoveredSession::released_kept`);
//! - from a publisher, a QoS 2 packet id received and not released (per client and
//!   packet id, held by the topic's owner, see `durable`) marks its message's
//!   `publish_for` on the topic's new owner with the id and DUP, as the owner logs it.
//!   A message no session wants any more is read back from the old log and written
//!   naming nobody, only for its id: the publisher's resend after the restart is then
//!   answered for it and not delivered again.
//!
//! Nothing of the old layout is deleted before the new one is durable. What is not
//! carried over: records no persistent session or retained message still needs (QoS
//! 1/2 publishes every session had acknowledged, or that matched no persistent session,
//! and whose QoS 2 packet id, if any, was released).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};

use crate::broker::durable::{
    as_publish, decode_any_publish_even_expired, encode_publish_body, publish_body_len, ReceivedAt,
    Recovered,
};
use crate::broker::{ArmedWills, RecoveredSession, ReplayWant, RECORD_PUBLISH};
use crate::mqtt::{ClientId, PacketId};
use crate::router::{filter_matches, owner_of, parse_filter, ShardId, TopicLimits};
use crate::session::{subscribed_from, Message};
use crate::storage::{Offset, RecordKind, Wal, WalConfig};

use super::records::{self, SessionRecord, WillRecord, RECORD_PUBLISH_FOR};
use super::{scan_for_replay, unix_ms};

/// The file naming the shard count of `data_dir`'s logs.
pub const LAYOUT_FILE: &str = "layout";
const MIGRATING_DIR: &str = "migrating";

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The old shard count.
    pub from: usize,
    /// The new shard count.
    pub to: usize,
    /// Retained messages carried over.
    pub retained: usize,
    /// Persistent sessions carried over.
    pub sessions: usize,
    /// Messages carried over (each once, for all its sessions and its QoS 2 id).
    pub messages: usize,
}

/// Settings the migration needs.
#[derive(Debug, Clone)]
pub struct MigrationConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The shard count of this run.
    pub shards: usize,
    /// Settings of every log (its `dir` is replaced per shard).
    pub wal: WalConfig,
    /// io_uring registered memory for the migration's executor.
    pub io_memory_bytes: usize,
    /// Whether this run serves Kafka topics: the data dir is then marked as holding
    /// Kafka partitions (see [`KAFKA_MARKER`]).
    pub kafka: bool,
}

/// A file in the data dir that says its logs may hold Kafka partitions. Their records
/// are not carried into another layout yet, so a change of the shard count is refused
/// before anything moves.
pub const KAFKA_MARKER: &str = "kafka-partitions";

/// Brings `data_dir` to the configured layout, rewriting the logs if the shard count
/// changed (see the module docs). Runs before the shards start, on its own executor.
pub fn prepare_layout(cfg: &MigrationConfig) -> Result<Option<MigrationReport>, String> {
    let dir = &cfg.data_dir;
    let mig = dir.join(MIGRATING_DIR);
    if mig.join("done").exists() {
        let to = read_count(&mig.join("done"))?;
        write_layout(dir, to)?;
        remove_dir(&mig)?;
    }
    let from = if mig.exists() {
        read_count(&mig.join("from"))?
    } else {
        match read_layout(dir)? {
            None => {
                write_layout(dir, cfg.shards)?;
                return mark_kafka(cfg).map(|()| None);
            }
            Some(n) if n == cfg.shards => return mark_kafka(cfg).map(|()| None),
            Some(n) if dir.join(KAFKA_MARKER).exists() => {
                return Err(format!(
                    "the data dir was written by {n} shards and holds Kafka partitions ({}): \
                     changing the shard count would move them, which is not supported yet; \
                     run with shards = {n}",
                    dir.join(KAFKA_MARKER).display()
                ));
            }
            Some(n) => {
                std::fs::create_dir_all(&mig).map_err(|e| io_error(&mig, e))?;
                write_file(&mig.join("from"), &format!("{n}\n"))?;
                sync_dir(dir)?;
                n
            }
        }
    };
    tracing::warn!(
        from,
        to = cfg.shards,
        "the shard count changed: rewriting the logs for the new layout"
    );
    move_old_logs(dir, &mig, from)?;
    let job = cfg.clone();
    let builder = LocalExecutorBuilder::new(Placement::Unbound).io_memory(cfg.io_memory_bytes);
    let report = crate::runtime::spawn_executor(builder, "migrate".into(), move || async move {
        rewrite(&job, from).await
    })
    .map_err(|e| format!("cannot start the migration executor: {e}"))?
    .join()
    .map_err(|_| "the migration executor panicked".to_string())???;
    write_file(&mig.join("done"), &format!("{}\n", cfg.shards))?;
    sync_dir(&mig)?;
    write_layout(dir, cfg.shards)?;
    remove_dir(&mig)?;
    tracing::info!(?report, "logs rewritten for the new shard count");
    Ok(Some(report))
}

/// Writes [`KAFKA_MARKER`] (durably) when this run serves Kafka topics.
fn mark_kafka(cfg: &MigrationConfig) -> Result<(), String> {
    if !cfg.kafka {
        return Ok(());
    }
    mark_kafka_data(&cfg.data_dir)
}

/// Writes [`KAFKA_MARKER`] in `data_dir` (durably), unless it is there: before a topic
/// is created while the broker runs.
pub fn mark_kafka_data(data_dir: &Path) -> Result<(), String> {
    let marker = data_dir.join(KAFKA_MARKER);
    if marker.exists() {
        return Ok(());
    }
    write_file(
        &marker,
        "Kafka partitions live in these logs; keep the shard count.\n",
    )?;
    sync_dir(data_dir)
}

/// Step 1: every old `shard-<i>` into `migrating/`, then the `moved` marker; after it,
/// removes partial output of an earlier rewrite.
fn move_old_logs(dir: &Path, mig: &Path, from: usize) -> Result<(), String> {
    if !mig.join("moved").exists() {
        for i in ShardId::all(from) {
            let (old, moved) = (shard_dir(dir, i), shard_dir(mig, i));
            if old.exists() && !moved.exists() {
                std::fs::rename(&old, &moved).map_err(|e| io_error(&old, e))?;
            }
        }
        sync_dir(mig)?;
        sync_dir(dir)?;
        write_file(&mig.join("moved"), "")?;
        sync_dir(mig)?;
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if shard_index(&path).is_some() {
            remove_dir(&path)?;
        }
    }
    sync_dir(dir)
}

/// The live state of the old layout.
#[derive(Default)]
struct OldState {
    retained: HashMap<String, Arc<Message>>,
    sessions: HashMap<String, RecoveredSession>,
    /// Wills of connections the crash cut, published at the first start of the new layout.
    wills: ArmedWills,
    /// Messages to carry over by their old position: each unacknowledged one with the
    /// sessions that want it, and each a publisher's QoS 2 packet id received and not
    /// released names (its id), whether a session still wants it or not.
    pending: BTreeMap<(ShardId, u64), Carried>,
}

/// One message of the old logs written into the new layout.
struct Carried {
    msg: Arc<Message>,
    /// Indexes of the sessions (in client id order) that want it.
    wanting: Vec<usize>,
    /// The publisher's QoS 2 packet id it was received under and not released.
    received: Option<u16>,
}

/// Steps 2: read the old logs, write the new ones.
async fn rewrite(cfg: &MigrationConfig, from: usize) -> Result<MigrationReport, String> {
    let mig = cfg.data_dir.join(MIGRATING_DIR);
    let old = read_old(cfg, &mig, from).await?;
    let clients: Vec<&String> = {
        let mut c: Vec<&String> = old.sessions.keys().collect();
        c.sort();
        c
    };
    let mut wals = Vec::with_capacity(cfg.shards);
    for j in ShardId::all(cfg.shards) {
        let config = wal_config(cfg, &cfg.data_dir, j);
        let (wal, _) = Wal::open(config, |_| {})
            .await
            .map_err(|e| format!("opening the new log of shard {j}: {e}"))?;
        wals.push(wal);
    }
    let mut retained = 0;
    for (topic, msg) in &old.retained {
        if msg.payload.is_empty() || msg.is_expired(std::time::Instant::now()) {
            continue;
        }
        let j = owner_of(topic, cfg.shards);
        append_publish(&wals[j.index()], msg, None, None).await?;
        retained += 1;
    }
    // first[(client, new owner)]: offset of the first record replayed for it there.
    let mut first: HashMap<(usize, ShardId), u64> = HashMap::new();
    // Per session: its QoS 2 exchanges at their new positions.
    let mut qos2: HashMap<usize, Qos2Entries> = HashMap::new();
    // Per old position: the shared groups' members that PUBREC'd the message there.
    let member_releases = member_releases(&old.sessions, &clients);
    let groups = group_recipients(&old.sessions, &clients);
    let mut names: Vec<&str> = Vec::new();
    for at in write_order(&old.pending) {
        let carried = &old.pending[&at];
        let msg = &carried.msg;
        names.clear();
        names.extend(carried.wanting.iter().map(|&c| clients[c].as_str()));
        // The groups the wanting members take it through, each named once.
        for &c in &carried.wanting {
            for (recipient, filter) in &groups[c] {
                if filter_matches(filter, msg.topic.as_str()) && !names.contains(&&**recipient) {
                    names.push(recipient);
                }
            }
        }
        let j = owner_of(msg.topic.as_str(), cfg.shards);
        let offset = append_publish(&wals[j.index()], msg, Some(&names), carried.received).await?;
        for &c in &carried.wanting {
            first.entry((c, j)).or_insert(offset);
            let s = &old.sessions[clients[c]];
            let entries = qos2.entry(c).or_default();
            if let Some(&pid) = s.released.get(&at) {
                entries.released.push((j, offset, pid));
            } else if let Some(&pid) = s.sent.get(&at) {
                entries.sent.push((j, offset, pid));
            }
        }
        // Carried for others: the group can still hand it to a member that completed it.
        for &c in member_releases.get(&at).into_iter().flatten() {
            if !carried.wanting.contains(&c) {
                let entries = qos2.entry(c).or_default();
                entries.released.push((j, offset, 0));
            }
        }
    }
    let ends: Vec<u64> = wals.iter().map(|w| w.next_offset().0).collect();
    for (c, client) in clients.iter().enumerate() {
        let s = &old.sessions[*client];
        let home = &wals[owner_of(client, cfg.shards).index()];
        let now = unix_ms();
        let open = SessionRecord::Open {
            expiry_secs: s.expiry_secs,
            protocol: s.protocol,
        };
        append_session(home, client, &open, now).await?;
        for (filter, (opts, _)) in &s.subscriptions {
            // Offsets of the old logs mean nothing in the new ones, which start afresh:
            // what the session is owed was carried over as `publish_for` records.
            let sub = SessionRecord::Subscribe {
                filter: filter.clone(),
                opts: *opts,
                from: Vec::new(),
            };
            append_session(home, client, &sub, now).await?;
        }
        if let Some(at) = s.detached_at_ms {
            let detach = SessionRecord::Detach {
                expiry_secs: s.expiry_secs,
                will: s.will.clone(),
            };
            append_session(home, client, &detach, at).await?;
        }
        let cursors = ShardId::all(cfg.shards)
            .map(|j| (j, first.get(&(c, j)).copied().unwrap_or(ends[j.index()])))
            .collect();
        append_session(home, client, &SessionRecord::Cursor(cursors), now).await?;
        // Releases first: the restart reads them in this order, as it would have read
        // the old log's (their packet ids are all distinct, as they were there).
        let entries = qos2.remove(&c).unwrap_or_default();
        for chunk in entries.released.chunks(QOS2_ENTRIES_PER_RECORD) {
            let record = SessionRecord::Qos2Delivered(chunk.to_vec());
            append_session(home, client, &record, now).await?;
        }
        for chunk in entries.sent.chunks(QOS2_ENTRIES_PER_RECORD) {
            let record = SessionRecord::Qos2Sent(chunk.to_vec());
            append_session(home, client, &record, now).await?;
        }
    }
    for ((client, conn), will) in &old.wills {
        let home = &wals[owner_of(client, cfg.shards).index()];
        let record = WillRecord::Armed {
            conn: *conn,
            will: Box::new(will.clone()),
        };
        let (kind, body) = records::encode_will(client, &record);
        append(home, kind, unix_ms(), &body).await?;
    }
    for (j, wal) in ShardId::all(cfg.shards).zip(wals) {
        wal.close()
            .await
            .map_err(|e| format!("syncing the new log of shard {j}: {e}"))?;
    }
    Ok(MigrationReport {
        from,
        to: cfg.shards,
        retained,
        sessions: clients.len(),
        messages: old.pending.len(),
    })
}

/// The order in which the carried messages are written: each old log's in its own order
/// (so per topic, and per publisher and topic, as published), the old logs merged by
/// how soon a session wants each message. A restart replays at most a queue's worth of
/// a session's messages per owner and reads the rest back later, so a message a session
/// holds (in flight, or PUBREC'd) on one old log must not land behind everything it
/// wants from another: it is the first it wants from its log, and is written among the
/// first of the new one. The next message is the head (of every old log's rest) that
/// some session wants earliest, counted in that session's own messages of its log.
fn write_order(pending: &BTreeMap<(ShardId, u64), Carried>) -> Vec<(ShardId, u64)> {
    // rank[at]: the fewest messages of its old log a wanting session wants before it.
    let mut seen: HashMap<(usize, ShardId), usize> = HashMap::new();
    // Per old log: its messages' offsets in order, each with its rank.
    let mut logs: BTreeMap<ShardId, VecDeque<(u64, usize)>> = BTreeMap::new();
    for (&at, carried) in pending {
        let mut rank = usize::MAX;
        for &c in &carried.wanting {
            let n = seen.entry((c, at.0)).or_default();
            rank = rank.min(*n);
            *n += 1;
        }
        // Kept for a publisher's packet id alone: nobody waits for it.
        let rank = if carried.wanting.is_empty() { 0 } else { rank };
        logs.entry(at.0).or_default().push_back((at.1, rank));
    }
    let mut order = Vec::with_capacity(pending.len());
    loop {
        let next = logs
            .iter()
            .filter_map(|(shard, q)| q.front().map(|(_, rank)| (*rank, *shard)))
            .min();
        let Some((_, shard)) = next else {
            return order;
        };
        let (offset, _) = logs
            .get_mut(&shard)
            .and_then(|q| q.pop_front())
            .expect("a head");
        order.push((shard, offset));
    }
}

/// Per session (by index in `clients`): for each of its shared subscriptions, the
/// recipient naming the group in a `publish_for` (`records::group_recipient`) and the
/// plain filter. A message carried for a member names its group too: the group may
/// read it back from the new log (a backlog's gap, opened by a member's replay that did
/// not fit its queue or by what a leaving member held), and that read takes the
/// records naming the group, never those naming only sessions (see `shared`).
fn group_recipients(
    sessions: &HashMap<String, RecoveredSession>,
    clients: &[&String],
) -> Vec<Vec<(String, String)>> {
    let limits = TopicLimits {
        topic_bytes_max: usize::MAX,
        topic_levels_max: usize::MAX,
    };
    clients
        .iter()
        .map(|client| {
            sessions[*client]
                .subscriptions
                .keys()
                .filter_map(|f| {
                    let parsed = parse_filter(f, &limits).ok()?;
                    parsed.share_group?;
                    Some((records::group_recipient(f), parsed.filter.to_string()))
                })
                .collect()
        })
        .collect()
}

/// Per old position, the sessions (by index in `clients`) that are members of a shared
/// group and PUBREC'd the message there (see `RecoveredSession::released_kept`).
fn member_releases(
    sessions: &HashMap<String, RecoveredSession>,
    clients: &[&String],
) -> HashMap<(ShardId, u64), Vec<usize>> {
    let mut by_position: HashMap<(ShardId, u64), Vec<usize>> = HashMap::new();
    for (c, client) in clients.iter().enumerate() {
        let s = &sessions[*client];
        if !s.is_shared_member() {
            continue;
        }
        for at in s.released_kept(usize::MAX).into_keys() {
            by_position.entry(at).or_default().push(c);
        }
    }
    by_position
}

/// A session's QoS 2 exchanges in the new layout: `(owner, offset, packet id)`.
#[derive(Default)]
struct Qos2Entries {
    /// PUBREC'd, awaiting PUBCOMP (`qos2_delivered`).
    released: Vec<(ShardId, u64, u16)>,
    /// Sent, not PUBREC'd at the stop (`qos2_sent`).
    sent: Vec<(ShardId, u64, u16)>,
}

/// Entries per `qos2_delivered` / `qos2_sent` record (its count is a u16).
const QOS2_ENTRIES_PER_RECORD: usize = 4096;

async fn read_old(cfg: &MigrationConfig, mig: &Path, from: usize) -> Result<OldState, String> {
    let mut old = OldState::default();
    let mut logs = Vec::new();
    // Per old shard: the QoS 2 ids received there and not released.
    let mut received = Vec::new();
    for i in ShardId::all(from) {
        let dir = shard_dir(mig, i);
        if !dir.exists() {
            continue;
        }
        let mut rec = Recovered {
            shard: i,
            ..Recovered::default()
        };
        let (wal, _) = Wal::open(wal_config(cfg, mig, i), |r| rec.visit(r))
            .await
            .map_err(|e| format!("reading the old log of shard {i}: {e}"))?;
        if rec.damaged > 0 {
            return Err(format!(
                "the old log of shard {i} has {} session records that do not decode",
                rec.damaged
            ));
        }
        old.retained.extend(rec.retained);
        old.sessions.extend(rec.sessions);
        old.wills.extend(rec.wills);
        received.push(rec.received);
        logs.push((i, wal));
    }
    let mut clients: Vec<&String> = old.sessions.keys().collect();
    clients.sort();
    let limits = TopicLimits {
        topic_bytes_max: usize::MAX,
        topic_levels_max: usize::MAX,
    };
    for (i, wal) in &logs {
        let wants: Vec<ReplayWant> = clients
            .iter()
            .map(|client| {
                let s = &old.sessions[*client];
                ReplayWant {
                    client_id: records::client_id(client),
                    from: s.cursors.get(i).copied().unwrap_or(0),
                    filters: s
                        .subscriptions
                        .iter()
                        .filter_map(|(f, (_, from))| {
                            let plain = parse_filter(f, &limits).ok()?.filter.to_string();
                            Some((plain, subscribed_from(from, *i)))
                        })
                        .collect(),
                    // Offline and one-off: carry everything over, not just a queue's worth.
                    messages_max: usize::MAX,
                    exact: s.sent_offsets_on(*i),
                }
            })
            .collect();
        let scan = scan_for_replay(wal, *i, &wants, None).await;
        if scan.failed {
            return Err(format!(
                "the old log of shard {i} could not be read past offset {}",
                scan.end
            ));
        }
        for (c, msg) in scan.found {
            let offset = msg.log.map_or(0, |p| p.offset);
            let s = &old.sessions[clients[c as usize]];
            if s.released.get(&(*i, offset)) == Some(&0) {
                // Its PUBCOMP was logged: the session is done with it.
                continue;
            }
            old.pending
                .entry((*i, offset))
                .or_insert_with(|| Carried {
                    msg,
                    wanting: Vec::new(),
                    received: None,
                })
                .wanting
                .push(c as usize);
        }
    }
    for ((i, wal), ids) in logs.iter().zip(received) {
        carry_received(&mut old.pending, wal, *i, ids).await?;
    }
    for (i, wal) in logs {
        wal.close()
            .await
            .map_err(|e| format!("closing the old log of shard {i}: {e}"))?;
    }
    Ok(old)
}

/// Marks the messages of old shard `shard` that a publisher's QoS 2 packet id was
/// received under and not released (`ids`), reading those no session wants from `wal`:
/// the new owner of their topic must still know the id, or the publisher's resend after
/// the restart would be taken as a new message (see `durable`).
async fn carry_received(
    pending: &mut BTreeMap<(ShardId, u64), Carried>,
    wal: &Wal,
    shard: ShardId,
    ids: HashMap<(ClientId, u16), ReceivedAt>,
) -> Result<(), String> {
    for ((publisher, pid), (offset, _)) in ids {
        if let Some(carried) = pending.get_mut(&(shard, offset)) {
            carried.received = Some(pid);
            continue;
        }
        let mut msg = None;
        let read = wal.read_from(Offset(offset), 1, |record| {
            if record.offset.0 == offset {
                msg = decode_any_publish_even_expired(&record, shard).map(|(_, m)| m);
            }
        });
        if let Err(e) = read.await {
            return Err(format!(
                "the old log of shard {shard} could not be read at offset {offset}: {e}"
            ));
        }
        let Some(msg) = msg.filter(|m| m.publisher.as_str() == publisher.as_str()) else {
            return Err(format!(
                "the old log of shard {shard} holds no QoS 2 publish of {publisher} at \
                 offset {offset}"
            ));
        };
        let carried = Carried {
            msg: Arc::new(msg),
            wanting: Vec::new(),
            received: Some(pid),
        };
        pending.insert((shard, offset), carried);
    }
    Ok(())
}

async fn append_publish(
    wal: &Wal,
    msg: &Message,
    recipients: Option<&[&str]>,
    received: Option<u16>,
) -> Result<u64, String> {
    let mut publish = as_publish(msg);
    // As the owner logs a client's QoS 2 publish (see `ShardLog::log`).
    if let Some(pid) = received.and_then(PacketId::new) {
        publish.dup = true;
        publish.packet_id = Some(pid);
    }
    let mut body = BytesMut::new();
    let kind = match recipients {
        Some(names) => {
            records::encode_recipients(names, &mut body);
            RECORD_PUBLISH_FOR
        }
        None => RECORD_PUBLISH,
    };
    let len = publish_body_len(msg, &publish).map_err(|e| e.to_string())?;
    body.reserve(len);
    encode_publish_body(msg, &publish, &mut body);
    append(wal, kind, unix_ms(), &body).await
}

async fn append_session(
    wal: &Wal,
    client: &str,
    record: &SessionRecord,
    timestamp_ms: u64,
) -> Result<u64, String> {
    let (kind, body) = records::encode(client, record);
    append(wal, kind, timestamp_ms, &body).await
}

async fn append(
    wal: &Wal,
    kind: RecordKind,
    timestamp_ms: u64,
    body: &[u8],
) -> Result<u64, String> {
    wal.reserve(body.len())
        .await
        .and_then(|()| wal.append(kind, timestamp_ms, &[body]))
        .map(|o| o.0)
        .map_err(|e| format!("writing the new layout: {e}"))
}

fn wal_config(cfg: &MigrationConfig, parent: &Path, shard: ShardId) -> WalConfig {
    WalConfig {
        dir: shard_dir(parent, shard),
        ..cfg.wal.clone()
    }
}

fn shard_dir(parent: &Path, shard: ShardId) -> PathBuf {
    parent.join(format!("shard-{shard}"))
}

fn shard_index(path: &Path) -> Option<usize> {
    path.file_name()?
        .to_str()?
        .strip_prefix("shard-")?
        .parse()
        .ok()
}

/// The shard count of `dir`'s logs: the layout file, or one per `shard-<i>` directory
/// for a data dir written before it existed; `None` for a new data dir.
fn read_layout(dir: &Path) -> Result<Option<usize>, String> {
    let file = dir.join(LAYOUT_FILE);
    if file.exists() {
        return read_count(&file).map(Some);
    }
    let mut highest = None;
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if let Some(i) = shard_index(&path).filter(|_| path.is_dir()) {
            highest = highest.max(Some(i));
        }
    }
    Ok(highest.map(|i| i + 1))
}

fn read_count(file: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(file).map_err(|e| io_error(file, e))?;
    let value = text
        .trim()
        .trim_start_matches("shards")
        .trim()
        .trim_start_matches('=');
    value
        .trim()
        .parse()
        .ok()
        .filter(|&n: &usize| n > 0)
        .ok_or_else(|| format!("{}: expected a shard count, found {text:?}", file.display()))
}

fn write_layout(dir: &Path, shards: usize) -> Result<(), String> {
    let tmp = dir.join(format!("{LAYOUT_FILE}.tmp"));
    write_file(&tmp, &format!("shards = {shards}\n"))?;
    let file = dir.join(LAYOUT_FILE);
    std::fs::rename(&tmp, &file).map_err(|e| io_error(&file, e))?;
    sync_dir(dir)
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| io_error(path, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(path, e))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn remove_dir(dir: &Path) -> Result<(), String> {
    std::fs::remove_dir_all(dir).map_err(|e| io_error(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn io_error(path: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", path.display())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use glommio::LocalExecutorBuilder;

    use super::*;
    use crate::mqtt::{ByteStr, Protocol, PublishProperties, QoS};
    use crate::session::SubOptions;
    use crate::storage::{FsyncPolicy, RecordRef};

    use super::super::replay::tests::disk_tempdir;

    fn config(data_dir: &Path, shards: usize) -> MigrationConfig {
        MigrationConfig {
            data_dir: data_dir.to_path_buf(),
            shards,
            wal: WalConfig {
                dir: data_dir.to_path_buf(),
                segment_bytes: 1 << 20,
                fsync_policy: FsyncPolicy::Always,
                write_buffer_bytes: 64 * 1024,
                retention_ms: None,
                retention_bytes: None,
            },
            io_memory_bytes: 1 << 20,
            kafka: false,
        }
    }

    fn message(topic: &'static str, payload: &'static str, publisher: &'static str) -> Message {
        Message {
            topic: ByteStr::from_static(topic),
            payload: Bytes::from_static(payload.as_bytes()),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: PublishProperties::default(),
            publisher: ClientId::from(publisher),
            expires_at: None,
            log: None,
        }
    }

    /// Every publish of a log by payload: its offset and, for a `publish_for`, recipients.
    async fn publishes(wal: &Wal) -> HashMap<String, (u64, Vec<String>)> {
        let mut out = HashMap::new();
        let mut next = Offset(0);
        while next < wal.next_offset() {
            next = wal
                .read_from(next, 1 << 20, |r: RecordRef<'_>| {
                    if let Some((to, m)) = decode_any_publish_even_expired(&r, ShardId(0)) {
                        let payload = String::from_utf8(m.payload.to_vec()).unwrap();
                        out.insert(payload, (r.offset.0, to.unwrap_or_default()));
                    }
                })
                .await
                .expect("read");
        }
        out
    }

    /// A subscriber's QoS 2 exchanges (completed, PUBREC'd, in flight) and a publisher's
    /// received, unreleased ids go from two shards to one at their new positions.
    #[test]
    fn qos2_state_moves_to_the_new_positions() {
        let dir = disk_tempdir();
        let data = dir.path().to_path_buf();
        let old = config(&data, 2);
        let mig = data.clone();
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                let mut wals = Vec::new();
                for i in ShardId::all(2) {
                    let (wal, _) = Wal::open(wal_config(&old, &mig, i), |_| {})
                        .await
                        .expect("open");
                    wals.push(wal);
                }
                let on = |topic: &str| owner_of(topic, 2);
                // (topic, payload, publisher, received packet id)
                let msgs = [
                    ("t/a", "done", "p", None),
                    ("t/b", "released", "p", None),
                    ("t/c", "inflight", "p", None),
                    ("t/d", "new", "p", None),
                    ("t/e", "recv-wanted", "q", Some(43)),
                    ("other/x", "recv-unwanted", "q", Some(42)),
                ];
                let mut at = HashMap::new();
                for (topic, payload, publisher, pid) in msgs {
                    let j = on(topic);
                    let m = message(topic, payload, publisher);
                    let offset = append_publish(&wals[j.index()], &m, None, pid)
                        .await
                        .unwrap();
                    at.insert(payload, (j, offset));
                }
                let home = &wals[owner_of("s", 2).index()];
                let opts = SubOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                    subscription_id: None,
                };
                let records = [
                    SessionRecord::Open {
                        expiry_secs: 3600,
                        protocol: Protocol::V5,
                    },
                    SessionRecord::Subscribe {
                        filter: "t/#".into(),
                        opts,
                        from: Vec::new(),
                    },
                    SessionRecord::Qos2Delivered(vec![
                        (at["done"].0, at["done"].1, 5),
                        (at["released"].0, at["released"].1, 7),
                    ]),
                    SessionRecord::Qos2Delivered(vec![(at["done"].0, at["done"].1, 0)]),
                    SessionRecord::Qos2Sent(vec![(at["inflight"].0, at["inflight"].1, 9)]),
                ];
                for r in &records {
                    append_session(home, "s", r, unix_ms()).await.unwrap();
                }
                for wal in wals {
                    wal.close().await.expect("close");
                }
            });
        write_layout(&data, 2).unwrap();

        let report = prepare_layout(&config(&data, 1))
            .expect("migrated")
            .unwrap();
        assert_eq!((report.from, report.to, report.sessions), (2, 1, 1));

        let new = config(&data, 1);
        LocalExecutorBuilder::default()
            .make()
            .expect("executor")
            .run(async move {
                let mut rec = Recovered::default();
                let (wal, _) = Wal::open(wal_config(&new, &data, ShardId(0)), |r| rec.visit(r))
                    .await
                    .expect("open");
                let found = publishes(&wal).await;
                assert!(
                    !found.contains_key("done"),
                    "a completed message is not carried"
                );
                let s = &rec.sessions["s"];
                let pos = |p: &str| (ShardId(0), found[p].0);
                assert_eq!(
                    s.released,
                    HashMap::from([(pos("released"), 7)]),
                    "awaiting PUBCOMP under its id"
                );
                assert_eq!(s.sent, HashMap::from([(pos("inflight"), 9)]), "in flight");
                for p in ["released", "inflight", "new", "recv-wanted"] {
                    assert_eq!(found[p].1, vec!["s".to_string()], "{p} carried for s");
                }
                assert!(found["recv-unwanted"].1.is_empty(), "kept for its id alone");
                let q = |pid| (ClientId::from("q"), pid);
                assert_eq!(rec.received.len(), 2);
                assert_eq!(rec.received[&q(43)].0, found["recv-wanted"].0);
                assert_eq!(rec.received[&q(42)].0, found["recv-unwanted"].0);
                wal.close().await.expect("close");
            });
    }
}
