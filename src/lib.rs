//! shardmq: an MQTT 5.0 / 3.1.1 broker, thread-per-core on glommio (io_uring).
//!
//! # Layout
//! | module | owns |
//! |---|---|
//! | [`config`] | settings: embedded defaults < TOML file < `SHARDMQ_*` env < CLI flags; validation |
//! | [`shard`] | the runtime: pinned executors, the channel mesh, per-shard state, shutdown |
//! | [`net`] | the per-shard SO_REUSEPORT accept loop and the connection tasks |
//! | [`metrics`] | per-shard single-writer probes; `/metrics` and `/health` on the metrics shard |
//!
//! Dependencies point one way: `config` and `metrics` depend on no other module; `shard`
//! and `net` wire everything together. The daemon is `src/main.rs`.

#![warn(missing_docs)]

pub mod config;
pub mod metrics;
pub mod net;
pub mod shard;
