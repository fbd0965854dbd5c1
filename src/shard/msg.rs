//! Messages between shards. Every variant is owned data (`Send`): it crosses threads.

/// One message from one shard to another; the sender's id travels with the batch.
#[derive(Debug)]
pub enum ShardMsg {
    /// Liveness probe from the metrics shard; the receiver answers with `Pong`.
    Ping {
        /// Probe round, echoed back.
        seq: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The probe round being answered.
        seq: u64,
    },
}
