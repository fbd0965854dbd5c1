//! shardmq: a thread-per-core MQTT broker.
/// MQTT packet codec (levels 3, 4 and 5): bytes to packets and back, no I/O.
pub mod mqtt;
