//! Live reload: the credentials, ACL and TLS settings in force, and how a shard takes a
//! new set of them without dropping connections.
//!
//! The main thread builds and validates a [`Snapshot`] once (a bad file never gets this
//! far), stores it in the process's [`Live`] and sends each shard a byte on its control
//! socket. Each shard then swaps the snapshot in and goes over its connections: one whose
//! credentials no longer hold is closed (see `Authenticator::still_admits`); every other
//! gets its `ClientAcl` built again from the new rules and its session's subscriptions
//! classified again, so a subscription the new rules forbid stops delivering at once
//! (queued messages included: deliveries are checked where they reach the wire).

use std::sync::{Arc, Mutex};

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::door::mqtt::{Door, Resettled};
use crate::door::tls::ServerTls;

/// The settings a reload replaces.
#[derive(Debug)]
pub struct Snapshot {
    /// Users, API keys and the ACL.
    pub auth: Arc<Authenticator>,
    /// Certificate, key and client CA for `mqtts_listen` (and the metrics listener).
    pub tls: Option<ServerTls>,
}

/// The snapshot in force, shared by the main thread and every shard.
#[derive(Debug)]
pub struct Live(Mutex<Arc<Snapshot>>);

impl Live {
    /// The settings the broker starts with.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(Live(Mutex::new(Arc::new(snapshot))))
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `snapshot` in force for the shards' next look (see [`ShutdownHandle::reload`](crate::runtime::ShutdownHandle::reload)).
    pub fn replace(&self, snapshot: Snapshot) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }
}

/// Swaps `snapshot` in on this shard: the broker's credentials and ACL, the door's TLS
/// acceptor, and every connection settled under the new rules.
pub(super) fn apply(snapshot: &Snapshot, broker: &Broker, door: &Door) -> Resettled {
    let previous = broker.replace_auth(Arc::clone(&snapshot.auth));
    door.set_tls(snapshot.tls.clone());
    door.resettle(&snapshot.auth, &previous)
}
