//! The state summary SIGUSR1 writes to the log: per shard and in total, how many
//! connections, sessions, subscriptions, retained messages and unacknowledged deliveries
//! the broker holds. Read from the probes (the same relaxed loads as a scrape), so it
//! costs the shards nothing and works when the metrics listener is unreachable.

use super::export::Probes;

/// Writes one `shard state` line per shard, then one `state summary` line with the totals.
pub fn log_summary(probes: &Probes) {
    let mut total = [0i64; 5];
    for (shard, probe) in probes.iter().enumerate() {
        let counts = [
            probe.connections_current.get(),
            probe.sessions_current.get(),
            probe.subscriptions_current.get(),
            probe.retained_messages_current.get(),
            probe.inflight_current.get(),
        ];
        for (sum, n) in total.iter_mut().zip(counts) {
            *sum += n;
        }
        let [connections, sessions, subscriptions, retained, inflight] = counts;
        tracing::info!(
            shard,
            connections,
            sessions,
            subscriptions,
            retained,
            inflight,
            "shard state"
        );
    }
    let [connections, sessions, subscriptions, retained, inflight] = total;
    tracing::info!(
        shards = probes.len(),
        connections,
        sessions,
        subscriptions,
        retained,
        inflight,
        "state summary"
    );
}
