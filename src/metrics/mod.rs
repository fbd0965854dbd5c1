//! Metrics: per-shard probes (single-writer counters) and the HTTP endpoint that the
//! designated metrics shard serves (`/metrics` in Prometheus text format, `/health`).
//!
//! Subsystems count in their own probe structs, each written only by its shard; this
//! module only reads and exports them.

mod export;
mod http;
mod probe;
mod summary;

pub use export::{render, Probes};
pub use http::{serve, HealthCheck};
pub use probe::{AclAction, Counter, Gauge, Limit, ShardProbe, ACL_ACTIONS, LIMITS};
pub use summary::log_summary;
