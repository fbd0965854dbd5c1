//! A shard's broker from its log to serving, and from serving to a clean stop.
//!
//! Start: [`Recovery::open`] reads the shard's WAL (retained messages, sessions, the
//! QoS 2 state of publishers, armed wills); once the shard joined the mesh,
//! [`Broker::start`] puts all of it in place, replays what restored sessions missed and
//! waits at the start barrier until every shard has, so a live publish can never overtake
//! a replay. Stop: [`Broker::stop`] logs the final cursors of the sessions and syncs the
//! WAL once the doors have closed their connections.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use glommio::channels::shared_channel::ConnectedReceiver;

use crate::config::Config;
use crate::router::ShardId;
use crate::runtime::{Batch, SHARD_LOG};
use crate::storage::{Wal, WalConfig};

use super::persist::migrate::MigrationConfig;
use super::{ArmedWills, Broker, Recovered, RecoveredSession, ShardLog, ShardMsg};

/// A shard's WAL, opened and read, before the shard joins the mesh.
pub struct Recovery {
    wal: Wal,
    recovered: Recovered,
}

impl Recovery {
    /// Opens (and recovers) shard `id`'s WAL in `data_dir/shard-<id>`.
    pub async fn open(id: ShardId, config: &Config) -> Result<Recovery, String> {
        let (wal, recovered) = open_wal(id, config).await?;
        Ok(Recovery { wal, recovered })
    }

    /// The WAL's counters, for the metrics.
    pub fn wal_stats(&self) -> std::sync::Arc<crate::storage::WalStats> {
        self.wal.stats()
    }
}

/// Before any shard starts: moves the WAL of a data dir written with another shard count
/// into this one's layout (see `persist::migrate`).
pub fn prepare_layout(config: &Config, io_memory_bytes: usize) -> Result<(), String> {
    super::persist::migrate::prepare_layout(&MigrationConfig {
        data_dir: config.data_dir.clone(),
        shards: config.shards,
        wal: wal_config(config, config.data_dir.clone())?,
        io_memory_bytes,
        kafka: config.kafka_listen.is_some() && !config.kafka_topics.is_empty(),
    })?;
    Ok(())
}

impl Broker {
    /// Puts what `recovery` read in place, serves the mesh (`inbound`), restores the
    /// sessions and waits at the start barrier until every shard has done the same;
    /// then starts the periodic work. The doors open after this returns.
    pub async fn start(
        self: &Rc<Self>,
        recovery: Recovery,
        inbound: Vec<(usize, ConnectedReceiver<Batch<ShardMsg>>)>,
    ) {
        let Recovery { wal, mut recovered } = recovery;
        let fresh = self
            .kafka
            .recover(std::mem::take(&mut recovered.kafka), &self.config);
        self.recover_commits(std::mem::take(&mut recovered.kafka_commits), &fresh);
        let bridge_mark = recovered.kafka_bridge_mark;
        let relay_marks = std::mem::take(&mut recovered.kafka_relay_marks);
        // Before any peer's session record can arrive (see `retention`).
        self.shadow_session_records(&recovered.sessions);
        // The WAL is in place before any peer's request (a replay) can arrive.
        let received = std::mem::take(&mut recovered.received);
        let _ = self.log.set(ShardLog::with_received(
            wal,
            received,
            self.config.qos2_ids_per_shard_max,
        ));
        self.spawn_receivers(inbound);
        self.spawn_durability();
        self.spawn_loopback();
        // Before any publish of this start is logged (wills due now included).
        self.spawn_kafka_bridge(bridge_mark);
        self.spawn_kafka_relay(relay_marks);
        let (sessions, armed_wills) = install_recovered(self, recovered);
        let restored = sessions.len();
        let due_wills = self.restore_sessions(sessions, armed_wills).await;
        tracing::debug!(target: SHARD_LOG, shard = self.id.index(), "sessions restored; waiting for every shard");
        // No shard serves before every shard has rebuilt its sessions and replayed their
        // messages: a live publish can then never overtake a replay.
        self.recovered_barrier().await;
        tracing::debug!(target: SHARD_LOG, shard = self.id.index(), "every shard recovered");
        // Every shard serves the same Kafka topics before any door opens.
        self.kafka_share_catalog().await;
        self.kafka_catalog_agreed().await;
        // Batches that retention dropped before the restart are still in the log where
        // their segment holds a batch kept: drop them again before any fetch can see
        // them, so a partition's first offset never moves back over a restart.
        self.kafka_retention(super::persist::unix_ms());
        if restored > 0 {
            tracing::info!(
                target: SHARD_LOG,
                shard = self.id.index(),
                sessions = restored,
                "persistent sessions restored"
            );
        }
        for (client, will) in due_wills {
            self.publish_will(&client, will);
        }
        self.spawn_redelivery();
        self.spawn_cursor_flush();
        self.spawn_sent_log();
        self.spawn_retention();
        self.spawn_group_ticks();
        self.spawn_watermarks();
        self.spawn_sys();
    }

    /// Once the doors closed their connections: logs what they acknowledged (within
    /// `flush`, so it is not sent again after the restart), syncs the WAL and closes
    /// this shard's end of the mesh.
    pub async fn stop(self: &Rc<Self>, flush: Duration) {
        self.flush_cursors_for_stop(flush).await;
        if let Some(durable) = self.log.get() {
            if let Err(e) = durable.wal.sync_all().await {
                tracing::error!(target: SHARD_LOG, shard = self.id.index(), error = %e, "final WAL sync failed");
            }
        }
        self.mesh.close();
    }
}

/// Opens (and recovers) this shard's WAL in `data_dir/shard-<id>`.
async fn open_wal(id: ShardId, config: &Config) -> Result<(Wal, Recovered), String> {
    let dir = config.data_dir.join(format!("shard-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let wal_config = wal_config(config, dir.clone())?;
    let mut recovered = Recovered {
        shard: id,
        ..Recovered::default()
    };
    let (wal, report) = Wal::open(wal_config, |record| recovered.visit(record))
        .await
        .map_err(|e| format!("opening the WAL in {}: {e}", dir.display()))?;
    if recovered.damaged > 0 {
        tracing::error!(
            shard = id.index(),
            records = recovered.damaged,
            "WAL session records with a valid CRC did not decode; they were skipped"
        );
    }
    if report.torn_records > 0 {
        tracing::warn!(shard = id.index(), torn_records = report.torn_records, torn_bytes = report.torn_bytes,
            reason = ?report.torn_reason, "WAL had a torn tail (cut at the last intact record)");
    }
    tracing::info!(
        target: SHARD_LOG,
        shard = id.index(),
        records = report.records,
        segments = report.segments,
        publishes = recovered.publishes,
        retained = recovered.retained.len(),
        sessions = recovered.sessions.len(),
        recovery_ms = report.duration.as_millis() as u64,
        next_offset = report.next_offset.0,
        "WAL recovered"
    );
    Ok((wal, recovered))
}

/// The WAL settings of the shard whose log is in `dir`.
pub fn wal_config(config: &Config, dir: std::path::PathBuf) -> Result<WalConfig, String> {
    let mut wal_config = WalConfig::new(dir);
    wal_config.fsync_policy = config
        .fsync_policy
        .parse()
        .map_err(|e| format!("fsync_policy: {e}"))?;
    wal_config.segment_bytes = config.segment_bytes;
    wal_config.write_buffer_bytes = config.wal_buffer_bytes;
    wal_config.retention_ms = (config.retention_ms > 0).then_some(config.retention_ms);
    wal_config.retention_bytes = (config.retention_bytes > 0).then_some(config.retention_bytes);
    Ok(wal_config)
}

/// Installs the recovered retained messages; returns the persistent sessions to restore
/// and the wills of connections the crash cut.
fn install_recovered(
    shard: &Broker,
    recovered: Recovered,
) -> (HashMap<String, RecoveredSession>, ArmedWills) {
    let mut retained = shard.retained.index.borrow_mut();
    let share = shard.config.retained_messages_per_shard_max();
    let bytes_share = shard.config.retained_bytes_per_shard_max();
    let (mut over_share, mut over_bytes) = (0u64, 0u64);
    for (topic, msg) in recovered.retained {
        if msg.payload.is_empty() || msg.is_expired(std::time::Instant::now()) {
            continue;
        }
        // Only a lowered `retained_messages_max` gets here: the limit held when they
        // were stored.
        if retained.len() >= share {
            over_share += 1;
            continue;
        }
        let bytes = msg.cost_bytes();
        if shard.quota.retained_bytes() + bytes > bytes_share {
            over_bytes += 1;
            continue;
        }
        // A copy's version is not its own offset: remember it for the next copy.
        if let Some(&version) = recovered.retained_versions.get(&topic) {
            if msg.log.is_none_or(|p| p.offset != version) {
                let mut versions = shard.retained.versions.borrow_mut();
                versions.insert(topic.clone(), version);
            }
        }
        retained.insert(&topic, msg);
        shard.quota.retained_bytes_changed(bytes, 0);
    }
    if over_bytes > 0 {
        let limit = crate::metrics::Limit::RetainedBytesMax;
        shard.probe.hits(limit, over_bytes);
        tracing::warn!(
            shard = shard.id.index(),
            dropped = over_bytes,
            bytes_share,
            "more retained bytes in the WAL than retained_bytes_max allows; some not restored"
        );
    }
    if over_share > 0 {
        shard
            .probe
            .hits(crate::metrics::Limit::RetainedMessagesMax, over_share);
        tracing::warn!(
            shard = shard.id.index(),
            dropped = over_share,
            share,
            "more retained topics in the WAL than retained_messages_max allows; some not restored"
        );
    }
    shard
        .probe
        .retained_messages_current
        .set(retained.len() as i64);
    (recovered.sessions, recovered.wills)
}
