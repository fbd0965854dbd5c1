//! `$SYS` topics: the broker's own figures, published every `sys_interval_secs` under the
//! names mosquitto uses, so the dashboards and scripts written for it read shardmq too.
//!
//! The metrics shard reads every shard's probes (the same relaxed loads as a scrape) and
//! publishes each figure that changed since its last round as a retained QoS 0 message
//! from the broker itself, through the ordinary publish path: a subscriber gets the
//! latest values at once, the ACL decides who may read them (`read $SYS/#`), and a
//! wildcard filter that does not begin with `$SYS` never matches them (MQTT-4.7.2-1).
//! Clients may not publish there (see `door::mqtt::acl::check_publish`).
//!
//! | topic | value |
//! |---|---|
//! | `$SYS/broker/version` | `shardmq <version>` |
//! | `$SYS/broker/uptime` | `<n> seconds` |
//! | `$SYS/broker/clients/connected` | connected clients |
//! | `$SYS/broker/clients/disconnected` | persistent sessions without a connection |
//! | `$SYS/broker/clients/total` | sessions, connected or not |
//! | `$SYS/broker/messages/received`, `$SYS/broker/publish/messages/received` | PUBLISH packets received |
//! | `$SYS/broker/messages/sent`, `$SYS/broker/publish/messages/sent` | PUBLISH packets sent |
//! | `$SYS/broker/bytes/received`, `$SYS/broker/bytes/sent` | bytes read from and written to clients |
//! | `$SYS/broker/subscriptions/count` | subscriptions |
//! | `$SYS/broker/retained messages/count` | retained messages |
//!
//! mosquitto's `messages/*` count every MQTT packet; shardmq counts PUBLISH packets there
//! as in `publish/messages/*`.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::broker::Broker;
use crate::metrics::ShardProbe;
use crate::mqtt::{ByteStr, ClientId, PublishProperties, QoS};
use crate::runtime::spawn_every;
use crate::session::Message;

/// Who `$SYS` messages come from (never a client id: clients may not use `$`).
const PUBLISHER: &str = "$SYS";

/// [`PUBLISHER`] as the messages name it, one copy for all of them.
static PUBLISHER_ID: std::sync::OnceLock<ClientId> = std::sync::OnceLock::new();

/// The figures of one round, in the order of [`TOPICS`].
type Figures = [String; TOPICS.len()];

const TOPICS: [&str; 13] = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/clients/disconnected",
    "$SYS/broker/clients/total",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/publish/messages/received",
    "$SYS/broker/publish/messages/sent",
    "$SYS/broker/bytes/received",
    "$SYS/broker/bytes/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
];

/// Whether `topic` is the broker's own (`$SYS` and below): clients may not publish there.
pub fn is_sys_topic(topic: &str) -> bool {
    topic == "$SYS" || topic.starts_with("$SYS/")
}

/// This round's figures, summed over the shards' probes.
fn figures(probes: &[Arc<ShardProbe>], uptime: Duration) -> Figures {
    let sum = |f: &dyn Fn(&ShardProbe) -> i64| probes.iter().map(|p| f(p)).sum::<i64>().max(0);
    let connected = sum(&|p| p.connections_current.get());
    let sessions = sum(&|p| p.sessions_current.get());
    let received = sum(&|p| {
        p.messages_received_by_qos
            .iter()
            .map(|c| c.get() as i64)
            .sum()
    });
    let sent = sum(&|p| {
        p.messages_delivered_by_qos
            .iter()
            .map(|c| c.get() as i64)
            .sum()
    });
    [
        format!("shardmq {}", env!("CARGO_PKG_VERSION")),
        format!("{} seconds", uptime.as_secs()),
        connected.to_string(),
        (sessions - connected).max(0).to_string(),
        sessions.max(connected).to_string(),
        received.to_string(),
        sent.to_string(),
        received.to_string(),
        sent.to_string(),
        sum(&|p| p.bytes_received_total.get() as i64).to_string(),
        sum(&|p| p.bytes_sent_total.get() as i64).to_string(),
        sum(&|p| p.subscriptions_current.get()).to_string(),
        sum(&|p| p.retained_messages_current.get()).to_string(),
    ]
}

impl Broker {
    /// On the metrics shard, with `sys_interval_secs` > 0: publishes the `$SYS` figures
    /// at once and then every interval, each only when it changed.
    pub(crate) fn spawn_sys(self: &Rc<Self>) {
        let interval = Duration::from_secs(self.config.sys_interval_secs);
        if interval.is_zero() || self.id.index() != self.config.metrics_shard {
            return;
        }
        let started = Instant::now();
        let mut last: Figures = Default::default();
        self.publish_changed_sys(started, &mut last);
        spawn_every(interval, self, move |shard| {
            shard.publish_changed_sys(started, &mut last);
            std::future::ready(())
        });
    }

    /// Publishes each `$SYS` figure that changed since `last`.
    fn publish_changed_sys(self: &Rc<Self>, started: Instant, last: &mut Figures) {
        let now = figures(&self.probes, started.elapsed());
        for ((topic, value), before) in TOPICS.iter().zip(now).zip(last.iter_mut()) {
            if value != *before {
                self.publish_sys(topic, &value);
                *before = value;
            }
        }
    }

    fn publish_sys(self: &Rc<Self>, topic: &'static str, value: &str) {
        let msg = Arc::new(Message {
            topic: ByteStr::from_static(topic),
            payload: Bytes::copy_from_slice(value.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            publisher: ClientId::well_known(&PUBLISHER_ID, PUBLISHER),
            expires_at: None,
            log: None,
        });
        let shard = Rc::clone(self);
        glommio::spawn_local(async move { shard.route_publish(msg, None).await }).detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sys_tree_is_the_brokers() {
        assert!(is_sys_topic("$SYS"));
        assert!(is_sys_topic("$SYS/broker/uptime"));
        assert!(!is_sys_topic("$SYSTEM/x"));
        assert!(!is_sys_topic("sys/$SYS"));
        assert!(!is_sys_topic("$share/g/t"));
    }

    #[test]
    fn figures_sum_the_shards() {
        let probes: Vec<Arc<ShardProbe>> =
            (0..2).map(|_| Arc::new(ShardProbe::default())).collect();
        probes[0].connections_current.add(2);
        probes[1].connections_current.add(1);
        probes[0].sessions_current.add(3);
        probes[1].sessions_current.add(2);
        probes[0].messages_received_by_qos[1].add(5);
        probes[1].messages_received_by_qos[0].add(2);
        probes[1].messages_delivered_by_qos[2].add(7);
        probes[0].retained_messages_current.add(4);
        let f = figures(&probes, Duration::from_millis(61_500));
        let by_topic = |t: &str| f[TOPICS.iter().position(|x| *x == t).unwrap()].clone();
        assert_eq!(by_topic("$SYS/broker/uptime"), "61 seconds");
        assert_eq!(by_topic("$SYS/broker/clients/connected"), "3");
        assert_eq!(by_topic("$SYS/broker/clients/disconnected"), "2");
        assert_eq!(by_topic("$SYS/broker/clients/total"), "5");
        assert_eq!(by_topic("$SYS/broker/messages/received"), "7");
        assert_eq!(by_topic("$SYS/broker/publish/messages/sent"), "7");
        assert_eq!(by_topic("$SYS/broker/retained messages/count"), "4");
        assert!(by_topic("$SYS/broker/version").starts_with("shardmq "));
    }
}
