//! The doors: the protocols clients speak to the broker, each over the same broker API.
//!
//! A door accepts connections on a shard, turns requests into [`Broker`](crate::broker::Broker)
//! calls and what the broker delivers into responses: [`mqtt`] (MQTT 3.1.1 and 5.0
//! over TCP, TLS, WebSocket) and [`kafka`] (the Kafka protocol over the same logs). A new door sits beside it, uses the broker, the runtime
//! and the ground floor, and is wired per shard in `server`.

pub mod kafka;
pub mod mqtt;
pub mod tls;
