//! shardmq: an MQTT 5.0 / 3.1.1 broker, thread-per-core on glommio (io_uring).
//!
//! # Layout
//! | module | owns |
//! |---|---|
//! | [`config`] | settings: embedded defaults < TOML file < `SHARDMQ_*` env < CLI flags; validation |
//! | [`mqtt`] | the pure codec: packets of MQTT 3.1.1 and 5.0 to and from bytes, no I/O |
//! | [`router`] | topic ownership, topic/filter rules, the subscription trie, the interest table |
//! | [`session`] | a client's session: subscriptions, queue, in-flight window, will, expiry |
//! | [`auth`] | who may connect (anonymous, API keys, users with hashed passwords) and what they may do (topic ACLs, client-id ownership) |
//! | [`storage`] | the per-shard WAL: DMA segments, group commit, fsync policies, recovery |
//! | [`broker`] | one shard's MQTT logic: publish routing, fan-out, session claims, retained |
//! | [`shard`] | the runtime: pinned executors, the channel mesh, per-shard state, shutdown |
//! | [`net`] | the per-shard SO_REUSEPORT accept loop and the connection tasks |
//! | [`metrics`] | per-shard single-writer probes; `/metrics` and `/health` on the metrics shard |
//!
//! Dependencies point one way: `mqtt`, `router`, `auth`, `config` and `metrics` depend on
//! no other module; `session` uses `mqtt`; `broker`, `shard` and `net` wire everything
//! together. The daemon is `src/main.rs`. `fuzzing` (hidden) exposes the decoders'
//! contract checks that the cargo-fuzz targets in `fuzz/` and `tests/fuzz_corpus.rs` run;
//! the checks live in `mqtt::check` and `storage::check`.

#![warn(missing_docs)]

pub mod auth;
pub mod broker;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod mqtt;
pub mod net;
pub mod router;
pub mod session;
pub mod shard;
pub mod storage;
