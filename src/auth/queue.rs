//! The password-hashing thread and its bounded queue.
//!
//! Checking a password against an Argon2 hash costs milliseconds of CPU and memory on
//! purpose. It runs on one thread of its own, shared by every shard, fed by a queue of
//! at most `auth_hash_queue_max` checks: a shard's blocking pool (segment rolls,
//! retention deletes) never waits behind password checks, the checks take at most one
//! core whatever arrives, and a CONNECT that finds the queue full is refused at once
//! (Server busy) instead of adding to an unbounded backlog. A check whose client gave
//! up (its [`Pending`] was dropped, e.g. at the connect deadline) is skipped.
//!
//! The result is handed back through a slot the waiting connection polls: the thread
//! cannot wake a task on a shard's executor, and a check takes milliseconds anyway.

use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use super::{AuthDecision, Authenticator};

/// The queue of password checks; dropping it ends the thread once the queue is empty.
#[derive(Debug)]
pub struct HashQueue {
    jobs: SyncSender<Job>,
}

#[derive(Debug)]
struct Job {
    /// The credentials in force when the check was asked for (a reload may swap them).
    auth: Arc<Authenticator>,
    username: Option<String>,
    password: Option<Vec<u8>>,
    verdict: Arc<OnceLock<AuthDecision>>,
}

/// A queued check; its decision appears once the thread has made it.
#[derive(Debug)]
pub struct Pending(Arc<OnceLock<AuthDecision>>);

/// Longest wait between two looks at a check in progress: a decision is noticed at most
/// this late, and a check costs a few wake-ups.
const POLL_MAX: std::time::Duration = std::time::Duration::from_millis(8);

impl Pending {
    /// The decision, once made.
    pub fn decision(&self) -> Option<AuthDecision> {
        self.0.get().cloned()
    }

    /// Waits (on the calling glommio executor) for the decision: looks after 1 ms, then
    /// at doubling intervals up to 8 ms.
    pub async fn decided(&self) -> AuthDecision {
        let mut poll = std::time::Duration::from_millis(1);
        loop {
            if let Some(decision) = self.decision() {
                return decision;
            }
            glommio::timer::sleep(poll).await;
            poll = (poll * 2).min(POLL_MAX);
        }
    }
}

/// The queue holds `auth_hash_queue_max` checks already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl HashQueue {
    /// Starts the hashing thread with room for `queue_max` waiting checks.
    pub fn start(queue_max: usize) -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(queue_max);
        std::thread::Builder::new()
            .name("shardmq-auth".into())
            .spawn(move || {
                for job in queue {
                    if Arc::strong_count(&job.verdict) == 1 {
                        continue; // nobody waits for it any more
                    }
                    let decision = job
                        .auth
                        .check(job.username.as_deref(), job.password.as_deref());
                    let _ = job.verdict.set(decision);
                }
            })?;
        Ok(HashQueue { jobs })
    }

    /// Queues a check of these credentials against `auth`, or refuses if the queue is full.
    pub fn submit(
        &self,
        auth: &Arc<Authenticator>,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Result<Pending, QueueFull> {
        let verdict = Arc::new(OnceLock::new());
        let job = Job {
            auth: Arc::clone(auth),
            username: username.map(str::to_owned),
            password: password.map(<[u8]>::to_vec),
            verdict: Arc::clone(&verdict),
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(Pending(verdict)),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(QueueFull),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, UserEntry};

    #[test]
    fn checks_in_order_and_refuses_beyond_the_queue() {
        let hash = crate::auth::hash_password("pw").unwrap();
        let auth = Authenticator::new(&AuthConfig {
            allow_anonymous: false,
            api_keys: Vec::new(),
            users: vec![UserEntry {
                username: "u".into(),
                password_hash: hash,
            }],
        })
        .unwrap();
        let auth = Arc::new(auth);
        let queue = HashQueue::start(1).unwrap();
        let mut pending = Vec::new();
        let mut full = 0;
        for i in 0..8 {
            let password: &[u8] = if i == 0 { b"pw" } else { b"wrong" };
            match queue.submit(&auth, Some("u"), Some(password)) {
                Ok(p) => pending.push(p),
                Err(QueueFull) => full += 1,
            }
        }
        assert!(
            full >= 5,
            "one checking, one queued: the rest refused ({full})"
        );
        let first = &pending[0];
        while first.decision().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(matches!(
            first.decision(),
            Some(AuthDecision::Allowed { .. })
        ));
    }
}
