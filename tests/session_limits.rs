//! Bounds on sessions: `session_expiry_max_secs` caps every expiry a client asks for (at
//! CONNECT, which a v5 CONNACK then states, and at DISCONNECT), and `sessions_max` bounds
//! how many sessions the broker holds, connected or offline.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::raw::*;
use common::*;

/// A v5 DISCONNECT 0x00 that sets the Session Expiry Interval to `secs`.
fn disconnect_with_expiry(mut conn: Conn, secs: u32) {
    let mut body = vec![0x00, 5, P_SESSION_EXPIRY];
    body.extend_from_slice(&secs.to_be_bytes());
    conn.send(&frame(DISCONNECT, 0, &body));
    // The broker closes after a DISCONNECT: then the session is offline.
    conn.expect_closed(WAIT);
}

#[test]
fn connack_states_the_capped_session_expiry() {
    let broker = broker_with_shards(2, &[("SESSION_EXPIRY_MAX_SECS", "60")]);
    let (_c, ack) = Conn::connect(
        broker.mqtt,
        &Connect::v5("cap-ask-more").session_expiry(3600),
    );
    assert_eq!(ack.props.u32(P_SESSION_EXPIRY), Some(60), "{ack:?}");
    // What the client asked for within the cap needs no property (it is what it sent).
    let (_c, ack) = Conn::connect(broker.mqtt, &Connect::v5("cap-ask-less").session_expiry(30));
    assert_eq!(ack.props.u32(P_SESSION_EXPIRY), None, "{ack:?}");
}

#[test]
fn disconnect_cannot_raise_the_expiry_past_the_cap() {
    let broker = broker_with_shards(2, &[("SESSION_EXPIRY_MAX_SECS", "1")]);
    let c = Connect::v5("cap-at-disconnect").session_expiry(1);
    let (conn, _) = Conn::connect(broker.mqtt, &c);
    disconnect_with_expiry(conn, 3600);
    // Capped at 1 s, the session is gone well before 3600 s. (One look: reconnecting
    // itself would set the expiry again.)
    std::thread::sleep(Duration::from_secs(4));
    let (_conn, ack) = Conn::connect(broker.mqtt, &c.clean(false));
    assert!(
        !ack.session_present,
        "session still present: DISCONNECT raised its expiry past the cap"
    );
}

/// Opens a persistent session for `id` and leaves it offline.
fn offline_session(addr: SocketAddr, id: &str) -> u8 {
    let (conn, ack) = Conn::connect_raw(addr, &Connect::v5(id).session_expiry(3600));
    if ack.code == 0 {
        conn.disconnect(0);
    }
    ack.code
}

#[test]
fn sessions_max_refuses_new_sessions_but_resumes_existing_ones() {
    let broker = broker_with_shards(1, &[("SESSIONS_MAX", "3")]);
    for id in names("smax", 3) {
        assert_eq!(
            offline_session(broker.mqtt, &id),
            0,
            "{id} within sessions_max"
        );
    }
    // Offline persistent sessions count: a fourth is refused, v5 and 3.1.1.
    assert_eq!(offline_session(broker.mqtt, "smax-over-5"), 0x97);
    let (_c, ack) = Conn::connect_raw(broker.mqtt, &Connect::v4("smax-over-4").clean(false));
    assert_eq!(ack.code, 3, "3.1.1: server unavailable");
    let (_c, ack) = Conn::connect_raw(broker.mqtt, &Connect::v4("smax-over-clean"));
    assert_eq!(ack.code, 3, "a clean session is a session too");
    assert!(broker.limit_hits("sessions_max") >= 3.0);
    // An existing session is no new one: it resumes.
    let c = Connect::v5("smax-1").session_expiry(3600).clean(false);
    let (conn, ack) = Conn::connect(broker.mqtt, &c);
    assert!(ack.session_present);
    // Ending one makes room for another.
    disconnect_with_expiry(conn, 0);
    assert!(eventually(WAIT, || offline_session(
        broker.mqtt,
        "smax-next"
    ) == 0));
}

#[test]
fn sessions_max_is_shared_among_the_shards() {
    let broker = broker_with_shards(2, &[("SESSIONS_MAX", "4")]);
    let refused = names("smax2", 12)
        .iter()
        .filter(|id| offline_session(broker.mqtt, id) == 0x97)
        .count();
    // Each shard holds at most its share, 2: at most 4 sessions, the rest refused.
    assert!(refused >= 8, "{refused} of 12 refused");
}
