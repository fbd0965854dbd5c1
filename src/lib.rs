//! shardmq: a thread-per-core MQTT broker.
