//! Metrics: per-shard probes (single-writer counters) and the HTTP endpoint that the
//! designated metrics shard serves (`/metrics` in Prometheus text format, `/health`).
//!
//! Subsystems count in their own probe structs, each written only by its shard; this
//! module only reads and exports them.

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
