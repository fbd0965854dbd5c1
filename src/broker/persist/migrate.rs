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
//!    acknowledged (one `publish_for` record naming the sessions that want it), then the
//!    sessions (open, subscriptions with their original times, detach with any delayed
//!    will, and cursors pointing at their own `publish_for` records), then the wills of
//!    connections the crash cut (`will`, published at the first start). Every new log is
//!    fdatasync'ed.
//! 3. The marker `done` (with the new count) is written, then `layout`, then
//!    `migrating/` is removed. A crash after `done` only repeats the last two steps.
//!
//! Nothing of the old layout is deleted before the new one is durable. What is not
//! carried over: records no persistent session or retained message still needs (QoS
//! 1/2 publishes every session had acknowledged, or that matched no persistent session).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::BytesMut;
use glommio::{LocalExecutorBuilder, Placement};

use crate::broker::durable::{as_publish, encode_publish_body, publish_body_len, Recovered};
use crate::broker::{ArmedWills, RecoveredSession, ReplayWant, RECORD_PUBLISH};
use crate::router::{owner_of, parse_filter, TopicLimits};
use crate::session::{subscribed_from, Message};
use crate::storage::{RecordKind, Wal, WalConfig};

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
    /// Unacknowledged messages carried over (each once, for all its sessions).
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
}

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
            None => return write_layout(dir, cfg.shards).map(|_| None),
            Some(n) if n == cfg.shards => return Ok(None),
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
    let report = LocalExecutorBuilder::new(Placement::Unbound)
        .name("migrate")
        .io_memory(cfg.io_memory_bytes)
        .spawn(move || async move { rewrite(&job, from).await })
        .map_err(|e| format!("cannot start the migration executor: {e}"))?
        .join()
        .map_err(|e| format!("the migration failed: {e}"))??;
    write_file(&mig.join("done"), &format!("{}\n", cfg.shards))?;
    sync_dir(&mig)?;
    write_layout(dir, cfg.shards)?;
    remove_dir(&mig)?;
    tracing::info!(?report, "logs rewritten for the new shard count");
    Ok(Some(report))
}

/// Step 1: every old `shard-<i>` into `migrating/`, then the `moved` marker; after it,
/// removes partial output of an earlier rewrite.
fn move_old_logs(dir: &Path, mig: &Path, from: usize) -> Result<(), String> {
    if !mig.join("moved").exists() {
        for i in 0..from {
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
    /// Unacknowledged messages by their old position, with the sessions that want them.
    pending: BTreeMap<(u16, u64), (Arc<Message>, Vec<usize>)>,
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
    for j in 0..cfg.shards {
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
        let j = owner_of(topic, cfg.shards).0 as usize;
        append_publish(&wals[j], msg, None).await?;
        retained += 1;
    }
    // first[(client, new owner)]: offset of the first record replayed for it there.
    let mut first: HashMap<(usize, usize), u64> = HashMap::new();
    for (msg, wanting) in old.pending.values() {
        let names: Vec<&str> = wanting.iter().map(|&c| clients[c].as_str()).collect();
        let j = owner_of(msg.topic.as_str(), cfg.shards).0 as usize;
        let offset = append_publish(&wals[j], msg, Some(&names)).await?;
        for &c in wanting {
            first.entry((c, j)).or_insert(offset);
        }
    }
    let ends: Vec<u64> = wals.iter().map(|w| w.next_offset().0).collect();
    for (c, client) in clients.iter().enumerate() {
        let s = &old.sessions[*client];
        let home = &wals[owner_of(client, cfg.shards).0 as usize];
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
        let cursors = (0..cfg.shards)
            .map(|j| (j as u16, first.get(&(c, j)).copied().unwrap_or(ends[j])))
            .collect();
        append_session(home, client, &SessionRecord::Cursor(cursors), now).await?;
    }
    for ((client, conn), will) in &old.wills {
        let home = &wals[owner_of(client, cfg.shards).0 as usize];
        let record = WillRecord::Armed {
            conn: *conn,
            will: Box::new(will.clone()),
        };
        let (kind, body) = records::encode_will(client, &record);
        append(home, kind, unix_ms(), &body).await?;
    }
    for (j, wal) in wals.into_iter().enumerate() {
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

async fn read_old(cfg: &MigrationConfig, mig: &Path, from: usize) -> Result<OldState, String> {
    let mut old = OldState::default();
    let mut logs = Vec::new();
    for i in 0..from {
        let dir = shard_dir(mig, i);
        if !dir.exists() {
            continue;
        }
        let mut rec = Recovered {
            shard: i as u16,
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
                    from: s.cursors.get(&(*i as u16)).copied().unwrap_or(0),
                    filters: s
                        .subscriptions
                        .iter()
                        .filter_map(|(f, (_, from))| {
                            let plain = parse_filter(f, &limits).ok()?.filter.to_string();
                            Some((plain, subscribed_from(from, *i as u16)))
                        })
                        .collect(),
                    // Offline and one-off: carry everything over, not just a queue's worth.
                    messages_max: usize::MAX,
                }
            })
            .collect();
        let scan = scan_for_replay(wal, *i as u16, &wants, None).await;
        if scan.failed {
            return Err(format!(
                "the old log of shard {i} could not be read past offset {}",
                scan.end
            ));
        }
        for (c, msg) in scan.found {
            let offset = msg.log.map_or(0, |p| p.offset);
            old.pending
                .entry((*i as u16, offset))
                .or_insert_with(|| (msg, Vec::new()))
                .1
                .push(c as usize);
        }
    }
    for (i, wal) in logs {
        wal.close()
            .await
            .map_err(|e| format!("closing the old log of shard {i}: {e}"))?;
    }
    Ok(old)
}

async fn append_publish(
    wal: &Wal,
    msg: &Message,
    recipients: Option<&[&str]>,
) -> Result<u64, String> {
    let publish = as_publish(msg);
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

fn wal_config(cfg: &MigrationConfig, parent: &Path, shard: usize) -> WalConfig {
    WalConfig {
        dir: shard_dir(parent, shard),
        ..cfg.wal.clone()
    }
}

fn shard_dir(parent: &Path, shard: usize) -> PathBuf {
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
