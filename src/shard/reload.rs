//! Live reload, the shard's side: the credentials, ACL and TLS settings in force, and how
//! a shard takes a new set of them without dropping connections.
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
use crate::mqtt::ReasonCode;
use crate::net::tls::ServerTls;

use super::state::Shard;

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

    /// Puts `snapshot` in force for the shards' next look (see [`ShutdownHandle::reload`](super::ShutdownHandle::reload)).
    pub fn replace(&self, snapshot: Snapshot) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }
}

/// What one shard did with a reload.
#[derive(Debug, Default, Clone, Copy)]
pub struct Resettled {
    /// Connections whose ACL was built again.
    pub kept: usize,
    /// Connections closed: their credentials no longer hold.
    pub closed: usize,
}

impl Shard {
    /// Swaps in the snapshot in force and settles every connection under it.
    pub fn reload(&self) -> Resettled {
        let snapshot = self.live.current();
        let previous = std::mem::replace(&mut *self.auth.borrow_mut(), Arc::clone(&snapshot.auth));
        *self.tls.borrow_mut() = snapshot.tls.clone().map(futures_rustls::TlsAcceptor::from);
        let mut done = Resettled::default();
        for conn in self.connections.all() {
            let who = conn.who.borrow().clone();
            let Some((principal, client_id)) = who else {
                continue; // still in CONNECT: it reads the new settings itself
            };
            if !snapshot.auth.still_admits(&principal, &previous) {
                tracing::info!(
                    shard = self.id,
                    client_id = client_id.as_str(),
                    ?principal,
                    "reload: credentials no longer valid, closing the connection"
                );
                conn.close(ReasonCode::NotAuthorized);
                done.closed += 1;
                continue;
            }
            let acl = snapshot
                .auth
                .acl()
                .for_client(principal.identity(), client_id.as_str());
            *conn.acl.borrow_mut() = acl;
            conn.acl_epoch.set(conn.acl_epoch.get().wrapping_add(1));
            if let Some(key) = conn.session.get() {
                crate::net::settle_acl(self, &conn, key);
            }
            done.kept += 1;
        }
        done
    }
}
