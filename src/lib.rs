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
//! | [`metrics`] | per-shard single-writer probes; `/metrics` and `/health` on the metrics shard |
//! | [`runtime`] | pinned executors, the channel mesh (generic over its message), timers, shutdown, the connection quota, process bootstrap |
//! | [`broker`] | one [`Broker`](broker::Broker) per shard: sessions, subscriptions, retained, shared groups, the log; routing between shards |
//! | [`door`] | the protocol doors over the broker: [`door::mqtt`] (TCP, TLS, WebSocket) |
//! | [`server`] | one process wired: the runtime's shards, on each a broker and its doors, the metrics endpoint |
//!
//! Dependencies point one way, down this table's layers: the ground floor (`mqtt`,
//! `storage`, `router`, `auth`, `session`, `config`, `metrics`) uses nothing above it;
//! `runtime` uses `config` and `metrics` only; `broker` uses the runtime and the ground
//! floor; `door` uses the broker, the runtime and the ground floor; `server` wires them.
//! `tests/architecture.rs` holds the table of allowed imports and fails on any other.
//! The daemon is `src/main.rs`. `fuzzing` (hidden) exposes the decoders' contract checks
//! that the cargo-fuzz targets in `fuzz/` and `tests/fuzz_corpus.rs` run; the checks live
//! in `mqtt::check` and `storage::check`.

#![warn(missing_docs)]

pub mod auth;
pub mod broker;
pub mod config;
pub mod door;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod mqtt;
pub mod router;
pub mod runtime;
pub mod server;
pub mod session;
pub mod storage;
