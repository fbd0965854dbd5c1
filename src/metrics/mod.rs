//! Metrics: per-shard probes (single-writer counters) and the HTTP endpoint that the
//! designated metrics shard serves (`/metrics` in Prometheus text format, `/health`).
//!
//! Owns: the per-shard probe ([`ShardProbe`], counters and gauges each written only by
//! its shard), their Prometheus export, the metrics listener's HTTP server with the admin
//! API (`/admin/...`, served through [`AdminBackend`]) and the SIGUSR1 summary. The WAL
//! counts in its own `storage::WalStats`; this module only reads and exports those.
//!
//! May use: `storage` (to read `WalStats` and its histograms); no other shardmq module.

pub mod admin;
mod export;
mod http;
mod probe;
mod summary;

pub use admin::{AdminAccess, AdminAction, AdminBackend, AdminList, AdminPage};
pub use export::{render, Probes};
pub use http::{serve, Admin, HealthCheck};
pub use probe::{
    AclAction, Counter, Gauge, Limit, ShardProbe, ACL_ACTIONS, LIMITS, RELOAD_RESULTS,
};
pub use summary::log_summary;
