//! shardmq: a thread-per-core MQTT broker.

pub mod auth;
pub mod router;
