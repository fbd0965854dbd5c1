//! Session life: claiming a client id at its home shard, takeover, attach on CONNECT,
//! detach on disconnect, wills and expiry.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::broker::{Broker, ConnRef, ShardMsg};
use crate::mqtt::{ClientId, Protocol, ReasonCode};
use crate::router::{owner_of, ShardId};
use crate::runtime::spawn_every;
use crate::session::{Link, Message, OutboundLimits, Session, Will};

use super::persist::records::{SessionRecord, WillConn, WillRecord};
use super::{Reply, SessionKey, SessionSlot, Superseded};

/// What a CONNECT asks of its session.
pub struct SessionParams {
    /// Client identifier (assigned already if the client sent none).
    pub client_id: ClientId,
    /// Protocol level of this connection.
    pub protocol: Protocol,
    /// Discard any previous session.
    pub clean_start: bool,
    /// Session expiry interval for this connection (0 = ends with it).
    pub expiry_secs: u32,
    /// The client's Receive Maximum.
    pub receive_max: u16,
    /// The will of this connection.
    pub will: Option<Will>,
}

/// The result of attaching a session to a new connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOutcome {
    /// Whether a previous session was resumed (CONNACK Session Present).
    pub session_present: bool,
    /// The session's key on this shard.
    pub key: SessionKey,
}

/// What a claim of a client id at its home shard found (see `claim`).
struct Claimed {
    /// The session handed over from the shard that held it, if any.
    previous: Option<Box<Session>>,
    /// A session a takeover left in place on this shard for this connection.
    parked: Option<SessionKey>,
    /// A newer connection that took the id over while the claim was in flight.
    superseded: Option<Superseded>,
}

impl Broker {
    /// Limits every new session gets.
    pub(crate) fn outbound_limits(&self) -> OutboundLimits {
        OutboundLimits {
            queue_messages_max: self.config.session_queue_messages_max,
            queue_bytes_max: self.config.session_queue_bytes_max,
            inflight_count_max: self.config.inflight_count_max,
        }
    }

    /// Claims `params.client_id` at its home shard (taking over any older connection,
    /// anywhere), and attaches the resumed or a new session to `conn`.
    ///
    /// `Err(Some(reason))`: refused, for CONNACK; `Err(None)`: a newer connection took
    /// the client id over meanwhile (this one is closed already). A new session is
    /// refused when this shard holds its share of `sessions_max` (every session on it,
    /// connected or offline); a resumed one never is, since it adds none to the process.
    pub async fn connect_session(
        self: &Rc<Self>,
        conn: &Rc<Link>,
        params: SessionParams,
    ) -> Result<ConnectOutcome, Option<ReasonCode>> {
        let home = owner_of(params.client_id.as_str(), self.mesh.shards());
        let me = ConnRef {
            shard: self.id,
            token: conn.token,
        };
        let claimed = self.claim(&params, me, home).await;
        let previous = match (claimed.previous, claimed.parked) {
            (None, Some(key)) if claimed.superseded.is_none() => {
                let (client_id, armed) = (params.client_id.clone(), params.will.clone());
                let outcome = self.resume_in_place(conn, key, params);
                // Logged before the CONNACK, as for any connection with a will.
                self.log_armed_will(&client_id, me, armed).await;
                return Ok(outcome);
            }
            (None, Some(key)) => Some(Box::new(self.remove_session(key).session)),
            (previous, _) => previous,
        };
        if let Some(newer) = claimed.superseded {
            // A newer connection with this id won while the claim was in flight: this one
            // never gets its session; the session goes straight on to the newer one.
            conn.close(ReasonCode::SessionTakenOver);
            self.probe.sessions_taken_over_total.inc();
            let session = match previous {
                Some(s) if !newer.clean_start && s.is_persistent() => Some(s),
                Some(mut ended) => {
                    self.let_go(&mut ended, None);
                    None
                }
                None => None,
            };
            self.post(
                newer.to.shard,
                ShardMsg::SessionHandover {
                    id: newer.id,
                    session,
                },
            );
            return Err(None);
        }
        let resumed = previous.is_some() && !params.clean_start;
        if !resumed && self.sessions.slots.borrow().len() >= self.config.sessions_per_shard_max() {
            self.probe.hit(crate::metrics::Limit::SessionsMax);
            // The claim made this connection the id's holder at home: let go of it.
            self.post(
                home,
                ShardMsg::SessionGone {
                    client_id: params.client_id,
                    conn: me,
                },
            );
            return Err(Some(ReasonCode::QuotaExceeded));
        }
        let (client_id, armed) = (params.client_id.clone(), params.will.clone());
        let (session, present) = self.session_for(previous, params);
        let key = self.attach(session, conn, me).await;
        // Logged before the CONNACK, so that a crash cannot lose it.
        self.log_armed_will(&client_id, me, armed).await;
        conn.set_session(Some(key));
        Ok(ConnectOutcome {
            session_present: present,
            key,
        })
    }

    /// Claims the client id at its `home` shard for connection `me` and waits for the
    /// answer: the session handed over (if any), one a takeover left in place on this
    /// shard, and a newer connection that won the id meanwhile.
    async fn claim(&self, params: &SessionParams, me: ConnRef, home: ShardId) -> Claimed {
        let id = self.requests.open(1);
        let claim_key = (params.client_id.clone(), me.token);
        self.sessions
            .claims
            .borrow_mut()
            .insert(claim_key.clone(), None);
        self.post(
            home,
            ShardMsg::Claim {
                client_id: params.client_id.clone(),
                conn: me,
                clean_start: params.clean_start,
                id,
            },
        );
        let previous = match self.requests.replies(id).await.pop() {
            Some(Reply::Handover(session)) => session,
            _ => None,
        };
        let parked = self.sessions.parked.borrow_mut().remove(&params.client_id);
        let superseded = self
            .sessions
            .claims
            .borrow_mut()
            .remove(&claim_key)
            .flatten();
        // Left in place by a takeover on this shard (see `take_over`).
        let parked = parked.filter(|k| self.sessions.slots.borrow().contains_key(k));
        Claimed {
            previous,
            parked,
            superseded,
        }
    }

    /// The session a connection with `params` gets: `previous` resumed (unless clean
    /// start) or a new one, with the connection's settings and will; a persistent one is
    /// logged as open. Returns it and whether it was present.
    fn session_for(
        &self,
        previous: Option<Box<Session>>,
        params: SessionParams,
    ) -> (Session, bool) {
        let (mut session, present) = match previous {
            Some(session) if !params.clean_start => (*session, true),
            _ => (
                Session::new(
                    params.client_id,
                    params.protocol,
                    params.expiry_secs,
                    self.outbound_limits(),
                ),
                false,
            ),
        };
        // Catch-up reads asked for by a shard the session left are answered there, and
        // deliveries on their way to it, or sent while it was out of the trie and the
        // interest table (from `take_over` until it is indexed again in `attach`), found
        // nobody: every owner's log is read from the floor. (A session taken over on its
        // own shard stays in place instead, see `park`, unless a newer claim won.)
        session.replay.forget_requests();
        if present {
            session.replay.moved(self.mesh.shards());
        }
        session.protocol = params.protocol;
        session.expiry_secs = params.expiry_secs;
        session.will = params.will.map(Box::new);
        session.outbound.set_client_receive_max(params.receive_max);
        if session.is_persistent() {
            session.logged = true;
            self.log_session(
                session.client_id.as_str(),
                &SessionRecord::Open {
                    expiry_secs: session.expiry_secs,
                    protocol: session.protocol,
                },
                false,
            );
        }
        (session, present)
    }

    /// Indexes `session` on this shard, attached to `conn`, with its subscriptions in the
    /// trie and the interest table (waiting until the peers have them); returns its key.
    async fn attach(&self, session: Session, conn: &Rc<Link>, me: ConnRef) -> SessionKey {
        let subscriptions: Vec<(String, crate::session::SubOptions)> = session
            .subscriptions
            .iter()
            .map(|(f, sub)| (f.to_string(), sub.opts))
            .collect();
        self.probe
            .inflight_current
            .add(session.outbound.inflight() as i64);
        let client_id = session.client_id.clone();
        // The session and its entries last as long as it does (see `runtime::lasting`).
        let key = crate::runtime::lasting(|| {
            let key = self
                .sessions
                .slots
                .borrow_mut()
                .insert_new(Box::new(SessionSlot::new(
                    session,
                    Some(Rc::clone(conn)),
                    me.token,
                )));
            self.sessions.by_client.borrow_mut().insert(client_id, key);
            key
        });
        self.sessions.watch_key(key);
        self.probe.sessions_current.add(1);
        let mut acks = Vec::new();
        for (filter, opts) in &subscriptions {
            if let Some(ack) = self.index_subscription(key, filter, *opts) {
                acks.push(ack);
            }
        }
        for ack in acks {
            self.requests.replies(ack).await;
        }
        key
    }

    /// Logs the will of connection `me` (if it has one) and waits until it is durable,
    /// so that a crash cannot lose it (see `persist`).
    async fn log_armed_will(&self, client_id: &ClientId, me: ConnRef, will: Option<Will>) {
        let Some(will) = will else {
            return;
        };
        let record = WillRecord::Armed {
            conn: will_conn(me),
            will: Box::new(will),
        };
        if !self.log_will(client_id.as_str(), &record, true).await {
            tracing::warn!(
                shard = self.id.index(),
                client = client_id.as_str(),
                "a will could not be logged: a crash would lose it"
            );
        }
    }

    /// After CONNACK: resend what was in flight, then send what queued while offline.
    pub fn resume_delivery(&self, key: SessionKey) {
        let now = Instant::now();
        let mut sessions = self.sessions.slots.borrow_mut();
        let Some(slot) = sessions.get_mut(&key) else {
            return;
        };
        if let Some(conn) = slot.conn.clone() {
            conn.with_outlet(usize::MAX, |outlet| {
                slot.session.outbound.resend_all(outlet, now)
            });
            self.pump(slot, now);
            conn.wake_writer();
        }
    }

    /// Home shard: record the new holder of `client_id` and get the old session to it.
    pub(crate) fn claim_at_home(
        self: &Rc<Self>,
        client_id: ClientId,
        conn: ConnRef,
        clean_start: bool,
        id: u64,
    ) {
        if clean_start {
            self.end_logged_at_home(&client_id);
        }
        // The entry lasts as long as the holder does (see `runtime::lasting`).
        let previous = crate::runtime::lasting(|| {
            self.sessions
                .by_client
                .borrow_mut()
                .hold(client_id.clone(), conn)
        });
        match previous {
            Some(old) => self.post(
                old.shard,
                ShardMsg::Takeover {
                    client_id,
                    old,
                    to: conn,
                    clean_start,
                    id,
                },
            ),
            None => self.post(conn.shard, ShardMsg::SessionHandover { id, session: None }),
        }
    }

    /// The shard holding `client_id`'s session gives it up to a newer connection:
    /// closes any live connection (v5 reason 0x8E) and moves or discards the session.
    pub(crate) fn take_over(
        self: &Rc<Self>,
        client_id: ClientId,
        old: ConnRef,
        to: ConnRef,
        clean_start: bool,
        id: u64,
    ) {
        if let Some(pending) = self
            .sessions
            .claims
            .borrow_mut()
            .get_mut(&(client_id.clone(), old.token))
        {
            // The old connection's own claim has not been answered yet: it will hand the
            // session on when it is (see `connect_session`).
            if let Some(earlier) = pending.replace(super::Superseded {
                to,
                clean_start,
                id,
            }) {
                self.post(
                    earlier.to.shard,
                    ShardMsg::SessionHandover {
                        id: earlier.id,
                        session: None,
                    },
                );
            }
            return;
        }
        let key = self.sessions.by_client.borrow().get(&client_id);
        let Some(key) = key else {
            self.post(to.shard, ShardMsg::SessionHandover { id, session: None });
            return;
        };
        if to.shard == self.id && !clean_start && self.park(&client_id, key) {
            self.post(to.shard, ShardMsg::SessionHandover { id, session: None });
            return;
        }
        let mut slot = self.remove_session(key);
        let was_live = slot.conn.is_some();
        if was_live && slot.session.will.is_some() {
            // Published or cancelled below; a delayed will of an offline session was
            // marked done when its connection ended.
            self.log_will_done(client_id.as_str(), will_conn(slot.last_conn(self.id)));
        }
        if let Some(conn) = slot.conn.take() {
            conn.close(ReasonCode::SessionTakenOver);
            conn.set_session(None);
            self.probe.sessions_taken_over_total.inc();
        }
        if let Some(will) = slot.session.will.take() {
            // The old connection ended without DISCONNECT. A delayed will (pending, or due
            // now) is cancelled when the session carries on with the new connection; it
            // is published when the session ends here.
            let session_ends = clean_start || !slot.session.is_persistent();
            if session_ends || (was_live && will.delay_secs == 0) {
                self.publish_will(&slot.session.client_id, *will);
            }
        }
        let keep = !clean_start && slot.session.is_persistent();
        if !keep {
            // The session ends here, possibly before its connection's close was read:
            // what it holds for its groups goes to other members, as at a detach.
            self.let_go(&mut slot.session, Some(key));
        }
        let session = keep.then(|| Box::new(slot.session));
        self.post(to.shard, ShardMsg::SessionHandover { id, session });
    }

    /// A takeover by a connection on this same shard: a persistent session stays where
    /// it is, indexed, and only loses its connection (closed, v5 reason 0x8E) until the
    /// new one resumes it (`resume_in_place`). Taking it out of the trie and the interest
    /// table and back would leave a window in which deliveries found nobody. Returns
    /// false (nothing done) for a session that does not carry on.
    fn park(self: &Rc<Self>, client_id: &ClientId, key: SessionKey) -> bool {
        let (old_conn, will) = {
            let mut sessions = self.sessions.slots.borrow_mut();
            let Some(slot) = sessions.get_mut(&key) else {
                return false;
            };
            if !slot.session.is_persistent() {
                return false;
            }
            // Timers of the old connection (expiry, delayed will) no longer apply.
            slot.bump_epoch();
            (
                slot.conn.take().map(|c| (c, slot.last_conn(self.id))),
                slot.session.will.take(),
            )
        };
        let was_live = old_conn.is_some();
        if let Some((_, last)) = old_conn.as_ref().filter(|_| will.is_some()) {
            // Published or cancelled below, as in `take_over`: a crash must not bring
            // the old connection's will back.
            self.log_will_done(client_id.as_str(), will_conn(*last));
        }
        let old_conn = old_conn.map(|(c, _)| c);
        if let Some(conn) = old_conn {
            conn.close(ReasonCode::SessionTakenOver);
            conn.set_session(None);
            self.probe.sessions_taken_over_total.inc();
        }
        // The session carries on: a delayed will is cancelled, an immediate one of a
        // connection that ended without DISCONNECT is due (as in `take_over`).
        if let Some(will) = will.filter(|w| was_live && w.delay_secs == 0) {
            self.publish_will(client_id, *will);
        }
        self.sessions
            .parked
            .borrow_mut()
            .insert(client_id.clone(), key);
        true
    }

    /// Attaches the session a takeover left in place (`park`) to `conn`.
    fn resume_in_place(
        self: &Rc<Self>,
        conn: &Rc<Link>,
        key: SessionKey,
        params: SessionParams,
    ) -> ConnectOutcome {
        let open = {
            let mut sessions = self.sessions.slots.borrow_mut();
            let slot = sessions.get_mut(&key).expect("checked by the caller");
            slot.attach(Rc::clone(conn));
            let s = &mut slot.session;
            s.protocol = params.protocol;
            s.expiry_secs = params.expiry_secs;
            s.will = params.will.map(Box::new);
            s.outbound.set_client_receive_max(params.receive_max);
            s.is_persistent().then(|| {
                s.logged = true;
                self.sessions.watch(key, s);
                (s.client_id.clone(), s.expiry_secs, s.protocol)
            })
        };
        if let Some((client, expiry_secs, protocol)) = open {
            let record = SessionRecord::Open {
                expiry_secs,
                protocol,
            };
            self.log_session(client.as_str(), &record, false);
        }
        conn.set_session(Some(key));
        ConnectOutcome {
            session_present: true,
            key,
        }
    }

    /// Takes a session out of this shard's tables (subscriptions, interest, indexes).
    fn remove_session(&self, key: SessionKey) -> Box<SessionSlot> {
        let mut slot = self
            .sessions
            .slots
            .borrow_mut()
            .remove(&key)
            .expect("session key from by_client");
        {
            let mut by_client = self.sessions.by_client.borrow_mut();
            if by_client.get(&slot.session.client_id) == Some(key) {
                by_client.remove(&slot.session.client_id);
            }
        }
        self.leave_groups(&mut slot);
        for filter in slot.session.subscriptions.keys() {
            self.unindex_subscription(key, filter);
        }
        self.probe.sessions_current.add(-1);
        self.probe
            .inflight_current
            .add(-(slot.session.outbound.inflight() as i64));
        slot
    }

    /// The connection of session `key` ended. `will` says whether its will is due
    /// (abnormal close, or DISCONNECT 0x04); `expiry_secs` may update the interval.
    pub fn detach_session(
        self: &Rc<Self>,
        key: SessionKey,
        publish_will: bool,
        expiry_secs: Option<u32>,
    ) {
        let (due_will, delayed, expiry, epoch, shared, client, armed) = {
            let mut sessions = self.sessions.slots.borrow_mut();
            let Some(slot) = sessions.get_mut(&key) else {
                return;
            };
            // The will this connection logged at CONNECT (see `connect_session`). A
            // connection the stopping broker closed (however its reader saw the close)
            // leaves its will to the next start (kept in the session's `session_detach`,
            // its `will` record left open), which publishes it once, as for a crash:
            // records sent to other shards now may not reach their logs before the exit.
            let stopping = slot.conn.as_ref().and_then(|c| c.closing())
                == Some(ReasonCode::ServerShuttingDown);
            let armed = (slot.conn.take().is_some() && slot.session.will.is_some() && !stopping)
                .then(|| will_conn(slot.last_conn(self.id)));
            if let Some(e) = expiry_secs {
                // A v5 DISCONNECT may change the interval, within the same cap as CONNECT.
                slot.session.expiry_secs = e.min(self.config.session_expiry_max_secs);
            }
            let expiry = slot.session.expiry_secs;
            let mut will = slot.session.will.take();
            if stopping {
                // Neither published nor timed now; a session that outlives the connection
                // holds it in its `session_detach` for the next start.
                slot.session.will = will.take().filter(|_| expiry > 0);
            }
            let mut will = will.filter(|_| publish_will);
            // A will with a delay waits in the session (published by its timer or when
            // the session ends, cancelled if the client comes back first).
            let mut delayed = None;
            if let Some(w) = &will {
                let delay = w.delay_secs.min(expiry);
                if delay > 0 {
                    delayed = Some(delay);
                    slot.session.will = will.take();
                }
            }
            // QoS 1 and what was not sent yet go to other members; a session that outlives
            // the connection keeps its QoS 2 messages in flight (MQTT-4.8.2-4).
            let shared = slot.session.outbound.take_shared(expiry > 0);
            (
                will,
                delayed,
                expiry,
                slot.epoch,
                shared,
                slot.session.client_id.clone(),
                armed,
            )
        };
        if !shared.is_empty() {
            self.redistribute(shared, Some(key));
        }
        if let Some(will) = due_will {
            self.publish_will(&client, *will);
        }
        if let Some(delay) = delayed {
            self.schedule_will_ms(key, epoch, u64::from(delay) * 1000);
        }
        if expiry == 0 {
            self.end_session(key);
        } else {
            // A delayed will goes into this record, before its `will_done`.
            self.log_detach(key, 0);
            if expiry != crate::session::EXPIRY_NEVER {
                self.schedule_expiry_ms(key, epoch, u64::from(expiry) * 1000);
            }
        }
        if let Some(conn) = armed {
            self.log_will_done(client.as_str(), conn);
        }
    }

    /// A session that ends (taken over, superseded, expired, deleted) lets go of what it
    /// held for others: its shared deliveries go back to their groups, its QoS 2 ids
    /// awaiting PUBREL are released. `key` is its key on this shard, if it had one.
    fn let_go(self: &Rc<Self>, session: &mut Session, key: Option<SessionKey>) {
        self.give_back_shared(session, key);
        self.release_all_qos2(session);
    }

    /// Ends a session for good and tells its home shard.
    pub(crate) fn end_session(self: &Rc<Self>, key: SessionKey) {
        if !self.sessions.slots.borrow().contains_key(&key) {
            return;
        }
        let mut slot = self.remove_session(key);
        // An offline member may hold deliveries its groups had no connected member for.
        self.let_go(&mut slot.session, Some(key));
        if let Some(will) = slot.session.will.take() {
            // A delayed will is due when the session ends, whichever comes first.
            self.publish_will(&slot.session.client_id, *will);
        }
        if slot.session.logged {
            self.log_session(slot.session.client_id.as_str(), &SessionRecord::End, false);
        }
        let home = owner_of(slot.session.client_id.as_str(), self.mesh.shards());
        let conn = slot.last_conn(self.id);
        self.post(
            home,
            ShardMsg::SessionGone {
                client_id: slot.session.client_id,
                conn,
            },
        );
    }

    fn still_offline(&self, key: SessionKey, epoch: u32) -> bool {
        self.sessions
            .slots
            .borrow()
            .get(&key)
            .is_some_and(|s| s.conn.is_none() && s.epoch == epoch)
    }

    /// A logged session's connection ended: its expiry (and any delayed will) counts
    /// from now, also across a restart.
    /// `elapsed_ms` is how long ago the connection ended (the record's time is the
    /// start of the expiry).
    fn log_detach(&self, key: SessionKey, elapsed_ms: u64) {
        if let Some((client, record)) = self.detach_record(key, elapsed_ms) {
            self.log_session(client.as_str(), &record, false);
        }
    }

    /// The `session_detach` record of logged session `key` as it stands now, whose
    /// connection ended `elapsed_ms` ago.
    pub(crate) fn detach_record(
        &self,
        key: SessionKey,
        elapsed_ms: u64,
    ) -> Option<(ClientId, SessionRecord)> {
        let sessions = self.sessions.slots.borrow();
        let slot = sessions.get(&key).filter(|s| s.session.logged)?;
        let expiry_secs = match slot.session.expiry_secs {
            crate::session::EXPIRY_NEVER => crate::session::EXPIRY_NEVER,
            e => e.saturating_sub((elapsed_ms / 1000) as u32),
        };
        let record = SessionRecord::Detach {
            expiry_secs,
            will: slot.session.will.as_deref().cloned(),
        };
        Some((slot.session.client_id.clone(), record))
    }

    pub(crate) fn schedule_expiry_ms(self: &Rc<Self>, key: SessionKey, epoch: u32, ms: u64) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(ms)).await;
            if shard.still_offline(key, epoch) {
                shard.probe.sessions_expired_total.inc();
                shard.end_session(key);
            }
        })
        .detach();
    }

    pub(crate) fn schedule_will_ms(self: &Rc<Self>, key: SessionKey, epoch: u32, ms: u64) {
        let shard = Rc::clone(self);
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(ms)).await;
            if !shard.still_offline(key, epoch) {
                return;
            }
            let due = {
                let mut sessions = shard.sessions.slots.borrow_mut();
                sessions.get_mut(&key).and_then(|s| {
                    s.session
                        .will
                        .take()
                        .map(|w| (s.session.client_id.clone(), w))
                })
            };
            if let Some((client, will)) = due {
                shard.publish_will(&client, *will);
                // The will is out: a restart must not publish it again.
                shard.log_detach(key, ms);
            }
        })
        .detach();
    }

    /// Publishes a will as the client would have.
    pub(crate) fn publish_will(self: &Rc<Self>, client_id: &ClientId, will: Will) {
        let expires_at = will
            .properties
            .message_expiry_interval_secs
            .map(|s| Instant::now() + Duration::from_secs(u64::from(s)));
        let msg = Arc::new(Message {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties: will.properties,
            publisher: client_id.clone(),
            expires_at,
            log: None,
        });
        self.probe.wills_published_total.inc();
        let shard = Rc::clone(self);
        glommio::spawn_local(async move { shard.route_publish(msg, None).await }).detach();
    }
}

impl Broker {
    /// 3.1.1 has no flow control for the server's sends, so unacknowledged QoS 1/2
    /// messages are resent while the client stays connected, backing off exponentially
    /// (`retry_backoff_ms`, `max_retries`). v5 forbids resending except on reconnect.
    pub(crate) fn spawn_redelivery(self: &Rc<Self>) {
        let backoff = Duration::from_millis(self.config.retry_backoff_ms);
        let tick = (backoff / 2).max(Duration::from_millis(50));
        spawn_every(tick, self, move |shard| {
            shard.redeliver_due(backoff);
            std::future::ready(())
        });
    }

    fn redeliver_due(&self, backoff: Duration) {
        let now = Instant::now();
        let mut sessions = self.sessions.slots.borrow_mut();
        for slot in sessions.values_mut() {
            let Some(conn) = &slot.conn else { continue };
            if slot.session.protocol == Protocol::V5 || slot.session.outbound.inflight() == 0 {
                continue;
            }
            let resent = conn.with_outlet(usize::MAX, |outlet| {
                slot.session
                    .outbound
                    .resend_due(outlet, now, backoff, self.config.max_retries)
            });
            if resent > 0 {
                self.probe.messages_redelivered_total.add(resent);
                conn.wake_writer();
            }
        }
    }
}

/// The connection a logged will belongs to.
fn will_conn(conn: ConnRef) -> WillConn {
    WillConn {
        shard: conn.shard,
        token: conn.token,
    }
}
