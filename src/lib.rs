//! shardmq: a thread-per-core MQTT broker.
pub mod storage;
