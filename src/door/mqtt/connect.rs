//! The CONNECT handshake: validation, authentication, the session claim, CONNACK.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use super::Door;
use crate::auth::{AuthDecision, Principal};
use crate::broker::SessionParams;
use crate::config::KeepaliveOverMax;
use crate::metrics::Limit;
use crate::mqtt::{
    self, ByteStr, ClientId, ConnAck, Connect, DecodeError, DecodeLimits, Packet, Protocol,
    ReasonCode,
};
use crate::router::validate_topic_name;
use crate::session::{TopicAliases, Will, EXPIRY_NEVER};

use super::conn::Conn;
use super::socket::{ReadBuf, Socket};

/// What the rest of the connection needs from its CONNECT.
pub(super) struct Accepted {
    /// Keep alive in seconds (0 = none).
    pub keep_alive_secs: u16,
    /// Session expiry from CONNECT (v5 DISCONNECT may not raise it from 0).
    pub expiry_secs: u32,
}

/// A connection's peer address for a log line, looked up only when the line is written.
pub(super) struct Peer<'a>(pub &'a Conn);

impl std::fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.link.peer() {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("unknown"),
        }
    }
}

/// Logs a refused CONNECT, one line at info: refusals are what an operator looks for
/// when a client "cannot connect". Capped per shard (see `logcap`).
fn log_refused(door: &Door, conn: &Conn, client_id: &str, reason: &dyn std::fmt::Debug) {
    let Some(left_out) = door.connections.admit_refusal_line() else {
        return;
    };
    tracing::info!(target: super::CONNECTION_LOG, shard = door.id.index(),
        client_id,
        peer = %Peer(conn),
        protocol = conn.link.protocol.get().version(),
        reason = ?reason,
        left_out,
        "connection refused"
    );
}

/// Reads the first packet, which must be a CONNECT; `None` if the connection must close
/// (a malformed CONNECT is answered first where the protocol allows). The caller puts
/// the whole of this under `connect_timeout_ms`, however slowly the bytes come.
pub(super) async fn read_connect(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    socket: &Socket,
    rbuf: &mut ReadBuf,
    limits: &DecodeLimits,
) -> Option<Connect> {
    loop {
        // Read the level before decoding: a failed decode consumes the packet's bytes.
        let level = connect_level(&rbuf.buf);
        match mqtt::decode(&mut rbuf.buf, None, limits) {
            Ok(Some(Packet::Connect(connect))) => return Some(connect),
            Ok(Some(other)) => {
                tracing::debug!(target: super::CONNECTION_LOG, token = conn.link.token, packet = ?other.packet_type(), "first packet is not CONNECT");
                door.probe.protocol_errors_total.inc();
                return None;
            }
            Ok(None) => match rbuf.read_from(socket, &door.read_scratch).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => door.probe.bytes_received_total.add(n as u64),
            },
            Err(e) => {
                door.probe.protocol_errors_total.inc();
                refuse_malformed(conn, level, &e);
                log_refused(door, conn, "", &format_args!("{e}"));
                return None;
            }
        }
    }
}

/// Answers a CONNECT whose credentials passed [`check_credentials`]: validation, the
/// session claim, CONNACK. `None` if the connection must close. Not under the connect
/// deadline: this is the broker's own work, and abandoning a session claim halfway
/// would leave it dangling.
pub(super) async fn handshake(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    connect: Connect,
    principal: Principal,
) -> Option<Accepted> {
    conn.link.protocol.set(connect.protocol);
    let client_id = connect.client_id.clone();
    match accept(door, conn, connect, &principal).await {
        Ok(accepted) => Some(accepted),
        Err(Some(reason)) => {
            log_refused(door, conn, client_id.as_str(), &reason);
            door.probe.connections_refused_total.inc();
            send_connack(conn, false, reason, None, door);
            None
        }
        Err(None) => None,
    }
}

/// A CONNECT that could not be decoded: answer what the protocol allows, then close.
/// `level` is the CONNECT's level byte, if the bytes reached it.
fn refuse_malformed(conn: &Conn, level: Option<u8>, e: &DecodeError) {
    if let DecodeError::UnsupportedProtocolLevel { .. } = e {
        // Unknown level: answer in 3.1.1 form, return code 1 (unacceptable version).
        conn.link.protocol.set(Protocol::V311);
        conn.link.send(&Packet::ConnAck(ConnAck::new(
            false,
            ReasonCode::UnsupportedProtocolVersion,
        )));
        return;
    }
    if level == Some(5) {
        conn.link.protocol.set(Protocol::V5);
        conn.link
            .send(&Packet::ConnAck(ConnAck::new(false, e.reason_code())));
    }
}

/// The keep-alive the broker holds a client to: its own, or `max_keepalive_secs` when it
/// asks for more or for none (0). `None`: refuse it (3.1.1 with `max_keepalive_v3 =
/// "refuse"`, which cannot be told another value).
fn capped_keep_alive(door: &Door, v5: bool, asked: u16) -> Option<u16> {
    let cap = door.config.max_keepalive_secs;
    if cap == 0 || (asked != 0 && asked <= cap) {
        return Some(asked);
    }
    door.probe.hit(Limit::MaxKeepaliveSecs);
    if !v5 && door.config.max_keepalive_v3 == KeepaliveOverMax::Refuse {
        tracing::debug!(target: super::CONNECTION_LOG, asked,
            cap,
            "3.1.1 keep-alive over max_keepalive_secs refused"
        );
        return None;
    }
    Some(cap)
}

/// The protocol level byte of a CONNECT at the front of `raw`, if visible.
pub(super) fn connect_level(raw: &[u8]) -> Option<u8> {
    if raw.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while raw.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([*raw.get(i + 1)?, *raw.get(i + 2)?]));
    raw.get(i + 3 + name_len).copied()
}

async fn accept(
    door: &Rc<Door>,
    conn: &Rc<Conn>,
    connect: Connect,
    principal: &Principal,
) -> Result<Accepted, Option<ReasonCode>> {
    let v5 = connect.protocol == Protocol::V5;
    let keep_alive_secs = capped_keep_alive(door, v5, connect.keep_alive_secs)
        .ok_or(Some(ReasonCode::ClientIdentifierNotValid))?;
    let (client_id, assigned) = if connect.client_id.is_empty() {
        if !v5 && !connect.clean_start {
            return Err(Some(ReasonCode::ClientIdentifierNotValid));
        }
        (kept(&assigned_client_id(door, conn)), true)
    } else {
        (kept(&connect.client_id), false)
    };
    // Authorization: a client id another user owns is refused; an id the broker
    // assigned is new and nobody's. The rules are resolved for this client once.
    let identity = principal.identity();
    if !assigned && !super::acl::may_use_client_id(door, identity, client_id.as_str()) {
        return Err(Some(ReasonCode::NotAuthorized));
    }
    *conn.link.acl.borrow_mut() = door
        .broker
        .auth()
        .acl()
        .for_client(identity, client_id.as_str())
        .map(Box::new);
    *conn.who.borrow_mut() =
        crate::runtime::lasting(|| Some((principal.clone(), client_id.clone())));
    if let Some(username) = &connect.username {
        let _ = conn.link.username.set(Box::from(username.as_str()));
    }
    conn.link.keep_alive_secs.set(keep_alive_secs);
    let will = match connect.will {
        Some(w) => {
            validate_topic_name(w.topic.as_str(), &door.broker.topic_limits())
                .map_err(|_| Some(ReasonCode::TopicNameInvalid))?;
            let user_bytes = mqtt::user_properties_bytes(&w.properties.user_properties);
            if user_bytes > door.config.user_properties_bytes_max {
                door.probe.hit(Limit::UserPropertiesBytesMax);
                return Err(Some(ReasonCode::QuotaExceeded));
            }
            Some(Will {
                delay_secs: w.properties.will_delay_interval_secs.unwrap_or(0),
                topic: w.topic,
                payload: w.payload,
                qos: w.qos,
                retain: w.retain,
                properties: w.properties.into_publish_properties(),
            })
        }
        None => None,
    };
    let will = super::acl::permitted_will(door, conn, will);
    let asked_secs = if v5 {
        connect.properties.session_expiry_interval_secs.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        EXPIRY_NEVER
    };
    let expiry_secs = asked_secs.min(door.config.session_expiry_max_secs);
    if let Some(max) = connect.properties.maximum_packet_size_bytes {
        conn.link.set_packet_bytes_max(max as usize);
    }
    // The aliases the client allows, up to as many as the broker allows it.
    let aliases = connect
        .properties
        .topic_alias_maximum
        .unwrap_or(0)
        .min(door.config.topic_alias_max);
    if v5 && aliases > 0 {
        conn.link.set_aliases(TopicAliases::new(aliases));
    }
    let outcome = door
        .broker
        .connect_session(
            &conn.link,
            SessionParams {
                client_id: client_id.clone(),
                protocol: connect.protocol,
                clean_start: connect.clean_start,
                expiry_secs,
                receive_max: connect.properties.receive_maximum.unwrap_or(u16::MAX),
                will,
            },
        )
        .await?;
    let mut ack = connack(
        conn,
        outcome.session_present,
        ReasonCode::Success,
        assigned.then(|| client_id.to_byte_str()),
        door,
    );
    if v5 && keep_alive_secs != connect.keep_alive_secs {
        // v5 §3.2.2.3.14: the client uses the Server Keep Alive instead of its own.
        ack.properties.server_keep_alive_secs = Some(keep_alive_secs);
    }
    if v5 && expiry_secs != asked_secs {
        // v5 §3.2.2.3.2: the server states the interval it uses when it differs.
        ack.properties.session_expiry_interval_secs = Some(expiry_secs);
    }
    super::acl::settle(door, conn, outcome.key);
    conn.link.send(&Packet::ConnAck(ack));
    door.broker.resume_delivery(outcome.key);
    tracing::debug!(target: super::CONNECTION_LOG, shard = door.id.index(),
        client_id = client_id.as_str(),
        peer = %Peer(conn),
        protocol = connect.protocol.version(),
        clean_start = connect.clean_start,
        session_present = outcome.session_present,
        keep_alive_secs,
        "client connected"
    );
    Ok(Accepted {
        keep_alive_secs,
        expiry_secs,
    })
}

/// The client id `s` as the session, the client id index and the connection keep it:
/// the strings a CONNECT decodes into are slices of the buffer it was read into, which
/// they would keep alive for as long as the connection lasts. The copy comes from the heap
/// of lasting objects (see `runtime::lasting`).
fn kept(s: &ByteStr) -> ClientId {
    crate::runtime::lasting(|| ClientId::from(s))
}

/// Checks the CONNECT's credentials (or takes `identity`, the user a verified client
/// certificate names): who the client is, or, if they do not pass, answers CONNACK with the reason and returns `None`. The caller keeps this under `connect_timeout_ms`: a
/// password check waits its turn on the hashing thread (see `auth::HashQueue`), and a
/// client is not owed more of the broker's time than the connect deadline.
pub(super) async fn check_credentials(
    door: &Rc<Door>,
    conn: &Conn,
    connect: &Connect,
    identity: Option<String>,
) -> Option<Principal> {
    conn.link.protocol.set(connect.protocol);
    let checked =
        if connect.protocol == Protocol::V5 && connect.properties.authentication_method.is_some() {
            Err(ReasonCode::BadAuthenticationMethod)
        } else if let Some(username) = identity {
            // `use_identity_as_username`: the verified certificate is the credential;
            // the CONNECT's username and password are not looked at (as in mosquitto).
            Ok(Principal::User { username })
        } else {
            authenticate(door, connect).await
        };
    match checked {
        Ok(principal) => Some(principal),
        Err(reason) => {
            log_refused(door, conn, connect.client_id.as_str(), &reason);
            door.probe.connections_refused_total.inc();
            send_connack(conn, false, reason, None, door);
            None
        }
    }
}

async fn authenticate(door: &Door, connect: &Connect) -> Result<Principal, ReasonCode> {
    let username = connect.username.as_ref().map(ByteStr::as_str);
    let password = connect.password.as_deref();
    let auth = door.broker.auth();
    let decision = if auth.needs_slow_hash(username) {
        // Password hashing costs milliseconds: it runs on its own thread, after the
        // checks queued before it; a full queue is a busy server, not a wrong password.
        let Ok(pending) = door.hashing.submit(&auth, username, password) else {
            door.probe.hit(Limit::AuthHashQueueMax);
            return Err(ReasonCode::ServerBusy);
        };
        pending.decided().await
    } else {
        auth.check(username, password)
    };
    match decision {
        // A reload while the hash ran: the credentials must hold under the new settings
        // too (the reload's pass over connections did not see this one yet).
        AuthDecision::Allowed { principal }
            if !Arc::ptr_eq(&auth, &door.broker.auth())
                && !door.broker.auth().still_admits(&principal, &auth) =>
        {
            Err(ReasonCode::BadUserNameOrPassword)
        }
        AuthDecision::Allowed { principal } => Ok(principal),
        AuthDecision::BadCredentials => Err(ReasonCode::BadUserNameOrPassword),
        AuthDecision::NotAuthorized => Err(ReasonCode::NotAuthorized),
    }
}

fn assigned_client_id(door: &Door, conn: &Conn) -> ByteStr {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    ByteStr::from(format!(
        "shardmq-{}-{}-{:x}",
        door.id,
        conn.link.token,
        nanos & 0xffff_ffff
    ))
}

fn send_connack(
    conn: &Conn,
    session_present: bool,
    reason: ReasonCode,
    assigned: Option<ByteStr>,
    door: &Door,
) {
    conn.link.send(&Packet::ConnAck(connack(
        conn,
        session_present,
        reason,
        assigned,
        door,
    )));
}

fn connack(
    conn: &Conn,
    session_present: bool,
    reason: ReasonCode,
    assigned: Option<ByteStr>,
    door: &Door,
) -> ConnAck {
    let mut ack = ConnAck::new(session_present, reason);
    if conn.link.protocol.get() == Protocol::V5 {
        let p = &mut ack.properties;
        p.assigned_client_identifier = assigned;
        p.receive_maximum = Some(door.config.receive_maximum);
        p.maximum_packet_size_bytes = Some(door.config.max_packet_bytes);
        p.topic_alias_maximum = Some(door.config.topic_alias_max);
        p.retain_available = Some(true);
        p.wildcard_subscription_available = Some(true);
        p.subscription_identifiers_available = Some(true);
        p.shared_subscription_available = Some(true);
    }
    ack
}
