//! A test-only MQTT 3.1.1 / 5.0 client written from the specification, over a blocking
//! `TcpStream` with read timeouts. It encodes exactly the bytes a test asks for (DUP
//! resends, alias-only publishes, a second CONNECT, unknown protocol levels), which a
//! full client library refuses to produce, and it never hangs: every read is bounded.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The default wait for an expected packet.
pub const WAIT: Duration = Duration::from_secs(10);

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

// Property identifiers (MQTT 5.0 section 2.2.2.2).
pub const P_PAYLOAD_FORMAT: u8 = 0x01;
pub const P_MESSAGE_EXPIRY: u8 = 0x02;
pub const P_CONTENT_TYPE: u8 = 0x03;
pub const P_RESPONSE_TOPIC: u8 = 0x08;
pub const P_CORRELATION_DATA: u8 = 0x09;
pub const P_SUBSCRIPTION_ID: u8 = 0x0B;
pub const P_SESSION_EXPIRY: u8 = 0x11;
pub const P_ASSIGNED_CLIENT_ID: u8 = 0x12;
pub const P_WILL_DELAY: u8 = 0x18;
pub const P_RECEIVE_MAXIMUM: u8 = 0x21;
pub const P_TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const P_TOPIC_ALIAS: u8 = 0x23;
pub const P_USER_PROPERTY: u8 = 0x26;

/// One decoded property value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    Byte(u8),
    U16(u16),
    U32(u32),
    Var(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// A property list, in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, Prop)>);

impl Props {
    pub fn new() -> Props {
        Props(Vec::new())
    }
    pub fn with(mut self, id: u8, value: Prop) -> Props {
        self.0.push((id, value));
        self
    }
    pub fn get(&self, id: u8) -> Option<&Prop> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }
    pub fn all(&self, id: u8) -> Vec<&Prop> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| v)
            .collect()
    }
    pub fn u16(&self, id: u8) -> Option<u16> {
        match self.get(id)? {
            Prop::U16(v) => Some(*v),
            _ => None,
        }
    }
    pub fn u32(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Prop::U32(v) | Prop::Var(v) => Some(*v),
            _ => None,
        }
    }
    pub fn str(&self, id: u8) -> Option<&str> {
        match self.get(id)? {
            Prop::Str(s) => Some(s),
            _ => None,
        }
    }
    /// Every subscription identifier carried, sorted.
    pub fn subscription_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .all(P_SUBSCRIPTION_ID)
            .into_iter()
            .filter_map(|p| match p {
                Prop::Var(v) => Some(*v),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids
    }
    /// User properties as (name, value), in order.
    pub fn user(&self) -> Vec<(String, String)> {
        self.all(P_USER_PROPERTY)
            .into_iter()
            .filter_map(|p| match p {
                Prop::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        for (id, value) in &self.0 {
            body.push(*id);
            match value {
                Prop::Byte(b) => body.push(*b),
                Prop::U16(v) => body.extend_from_slice(&v.to_be_bytes()),
                Prop::U32(v) => body.extend_from_slice(&v.to_be_bytes()),
                Prop::Var(v) => put_var(&mut body, *v),
                Prop::Str(s) => put_str(&mut body, s),
                Prop::Bin(b) => put_bin(&mut body, b),
                Prop::Pair(k, v) => {
                    put_str(&mut body, k);
                    put_str(&mut body, v);
                }
            }
        }
        put_var(out, body.len() as u32);
        out.extend_from_slice(&body);
    }

    fn decode(r: &mut Reader) -> Props {
        let len = r.var() as usize;
        let end = r.pos + len;
        let mut props = Props::new();
        while r.pos < end {
            let id = r.u8();
            let value = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Prop::Byte(r.u8()),
                0x13 | 0x21 | 0x22 | 0x23 => Prop::U16(r.u16()),
                0x02 | 0x11 | 0x18 | 0x27 => Prop::U32(r.u32()),
                0x0B => Prop::Var(r.var()),
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Prop::Str(r.str()),
                0x09 | 0x16 => Prop::Bin(r.bin()),
                0x26 => {
                    let k = r.str();
                    Prop::Pair(k, r.str())
                }
                other => panic!("unknown property id {other:#x}"),
            };
            props.0.push((id, value));
        }
        props
    }
}

pub fn put_var(out: &mut Vec<u8>, mut v: u32) {
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if v == 0 {
            break;
        }
    }
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bin(out, s.as_bytes());
}

pub fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

/// Frames a packet: fixed header byte, remaining length, body.
pub fn frame(kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![(kind << 4) | flags];
    put_var(&mut out, body.len() as u32);
    out.extend_from_slice(body);
    out
}

/// A cursor over a packet body.
pub struct Reader<'a> {
    buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn u8(&mut self) -> u8 {
        let b = self.buf[self.pos];
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        let v = u16::from_be_bytes([self.buf[self.pos], self.buf[self.pos + 1]]);
        self.pos += 2;
        v
    }
    pub fn u32(&mut self) -> u32 {
        let b = &self.buf[self.pos..self.pos + 4];
        self.pos += 4;
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    pub fn var(&mut self) -> u32 {
        let (mut value, mut shift) = (0u32, 0);
        loop {
            let b = self.u8();
            value |= u32::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return value;
            }
            shift += 7;
            assert!(shift < 28, "malformed variable byte integer");
        }
    }
    pub fn bin(&mut self) -> Vec<u8> {
        let len = self.u16() as usize;
        let v = self.buf[self.pos..self.pos + len].to_vec();
        self.pos += len;
        v
    }
    pub fn str(&mut self) -> String {
        String::from_utf8(self.bin()).expect("UTF-8 string")
    }
    pub fn rest(&mut self) -> Vec<u8> {
        let v = self.buf[self.pos..].to_vec();
        self.pos = self.buf.len();
        v
    }
}

/// A raw packet as read off the wire.
#[derive(Debug, Clone)]
pub struct Packet {
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

/// What a bounded read produced.
#[derive(Debug)]
pub enum Recv {
    Packet(Packet),
    Closed,
    Timeout,
}

/// A will message for CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub props: Props,
}

/// CONNECT fields; `level` is 4 (3.1.1) or 5 (5.0).
#[derive(Debug, Clone)]
pub struct Connect {
    pub level: u8,
    pub client_id: String,
    pub clean: bool,
    pub keep_alive_secs: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will: Option<Will>,
    pub props: Props,
}

impl Connect {
    pub fn v4(client_id: &str) -> Connect {
        Connect {
            level: 4,
            client_id: client_id.to_string(),
            clean: true,
            keep_alive_secs: 60,
            username: None,
            password: None,
            will: None,
            props: Props::new(),
        }
    }
    pub fn v5(client_id: &str) -> Connect {
        Connect {
            level: 5,
            ..Connect::v4(client_id)
        }
    }
    pub fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }
    pub fn keep_alive(mut self, secs: u16) -> Connect {
        self.keep_alive_secs = secs;
        self
    }
    pub fn login(mut self, username: &str, password: &str) -> Connect {
        self.username = Some(username.to_string());
        self.password = Some(password.as_bytes().to_vec());
        self
    }
    pub fn will(mut self, will: Will) -> Connect {
        self.will = Some(will);
        self
    }
    pub fn prop(mut self, id: u8, value: Prop) -> Connect {
        self.props.0.push((id, value));
        self
    }
    pub fn session_expiry(self, secs: u32) -> Connect {
        self.prop(P_SESSION_EXPIRY, Prop::U32(secs))
    }

    pub fn encode(&self) -> Vec<u8> {
        let v5 = self.level == 5;
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.push(self.level);
        let mut flags = 0u8;
        if self.clean {
            flags |= 0x02;
        }
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3);
            if will.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend_from_slice(&self.keep_alive_secs.to_be_bytes());
        if v5 {
            self.props.encode(&mut body);
        }
        put_str(&mut body, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                will.props.encode(&mut body);
            }
            put_str(&mut body, &will.topic);
            put_bin(&mut body, &will.payload);
        }
        if let Some(username) = &self.username {
            put_str(&mut body, username);
        }
        if let Some(password) = &self.password {
            put_bin(&mut body, password);
        }
        frame(CONNECT, 0, &body)
    }
}

/// A decoded CONNACK.
#[derive(Debug, Clone)]
pub struct ConnAck {
    pub session_present: bool,
    /// 3.1.1 return code or 5.0 reason code.
    pub code: u8,
    pub props: Props,
}

/// A decoded PUBLISH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: u16,
    pub props: Props,
}

impl Publish {
    pub fn new(topic: &str, payload: &[u8], qos: u8) -> Publish {
        Publish {
            topic: topic.to_string(),
            payload: payload.to_vec(),
            qos,
            retain: false,
            dup: false,
            pid: 0,
            props: Props::new(),
        }
    }
    pub fn retain(mut self, retain: bool) -> Publish {
        self.retain = retain;
        self
    }
    pub fn pid(mut self, pid: u16) -> Publish {
        self.pid = pid;
        self
    }
    pub fn dup(mut self, dup: bool) -> Publish {
        self.dup = dup;
        self
    }
    pub fn prop(mut self, id: u8, value: Prop) -> Publish {
        self.props.0.push((id, value));
        self
    }

    pub fn encode(&self, v5: bool) -> Vec<u8> {
        let mut body = Vec::new();
        put_str(&mut body, &self.topic);
        if self.qos > 0 {
            body.extend_from_slice(&self.pid.to_be_bytes());
        }
        if v5 {
            self.props.encode(&mut body);
        }
        body.extend_from_slice(&self.payload);
        let flags = (u8::from(self.dup) << 3) | (self.qos << 1) | u8::from(self.retain);
        frame(PUBLISH, flags, &body)
    }

    pub fn decode(p: &Packet, v5: bool) -> Publish {
        let mut r = Reader::new(&p.body);
        let qos = (p.flags >> 1) & 3;
        let topic = r.str();
        let pid = if qos > 0 { r.u16() } else { 0 };
        let props = if v5 {
            Props::decode(&mut r)
        } else {
            Props::new()
        };
        Publish {
            topic,
            payload: r.rest(),
            qos,
            retain: p.flags & 1 == 1,
            dup: p.flags & 8 == 8,
            pid,
            props,
        }
    }
}

/// Subscription options byte: max QoS, no-local, retain-as-published, retain handling.
pub fn sub_opts(qos: u8, no_local: bool, rap: bool, retain_handling: u8) -> u8 {
    qos | (u8::from(no_local) << 2) | (u8::from(rap) << 3) | (retain_handling << 4)
}

/// A connection speaking one protocol level.
pub struct Conn {
    pub stream: TcpStream,
    pub v5: bool,
    buf: Vec<u8>,
    /// PUBLISHes read while waiting for something else, kept for the next publish read.
    inbox: VecDeque<Publish>,
    next_pid: u16,
    /// Acknowledge incoming QoS 1/2 PUBLISHes as they are read.
    pub auto_ack: bool,
    /// Answer PUBREC with PUBREL as it is read.
    pub auto_pubrel: bool,
}

impl Conn {
    /// Opens a TCP connection without sending anything.
    pub fn open(addr: SocketAddr, v5: bool) -> Conn {
        let stream = TcpStream::connect(addr).expect("connect to broker");
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            v5,
            buf: Vec::new(),
            inbox: VecDeque::new(),
            next_pid: 0,
            auto_ack: true,
            auto_pubrel: true,
        }
    }

    /// Connects and returns the CONNACK, whatever its code.
    pub fn connect_raw(addr: SocketAddr, connect: &Connect) -> (Conn, ConnAck) {
        let mut conn = Conn::open(addr, connect.level == 5);
        conn.send(&connect.encode());
        let ack = conn.expect_connack();
        (conn, ack)
    }

    /// Connects and asserts success.
    pub fn connect(addr: SocketAddr, connect: &Connect) -> (Conn, ConnAck) {
        let (conn, ack) = Conn::connect_raw(addr, connect);
        assert_eq!(ack.code, 0, "CONNACK for {:?}: {ack:?}", connect.client_id);
        (conn, ack)
    }

    /// A clean 3.1.1 or 5.0 client.
    pub fn client(addr: SocketAddr, v5: bool, client_id: &str) -> Conn {
        let c = if v5 {
            Connect::v5(client_id)
        } else {
            Connect::v4(client_id)
        };
        Conn::connect(addr, &c).0
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    /// Sends bytes, tolerating a connection the broker already closed.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    pub fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid % u16::MAX + 1;
        self.next_pid
    }

    /// Reads one packet within `limit`, handling automatic acks.
    pub fn recv(&mut self, limit: Duration) -> Recv {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(packet) = self.parse_buffered() {
                self.auto_reply(&packet);
                return Recv::Packet(packet);
            }
            let now = Instant::now();
            if now >= deadline {
                return Recv::Timeout;
            }
            self.stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
                .unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Recv::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return Recv::Closed,
            }
        }
    }

    fn parse_buffered(&mut self) -> Option<Packet> {
        if self.buf.len() < 2 {
            return None;
        }
        let (mut len, mut shift, mut i) = (0usize, 0, 1);
        loop {
            let b = *self.buf.get(i)?;
            len |= usize::from(b & 0x7F) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            assert!(shift < 28, "malformed remaining length from broker");
        }
        if self.buf.len() < i + len {
            return None;
        }
        let packet = Packet {
            kind: self.buf[0] >> 4,
            flags: self.buf[0] & 0x0F,
            body: self.buf[i..i + len].to_vec(),
        };
        self.buf.drain(..i + len);
        Some(packet)
    }

    fn auto_reply(&mut self, p: &Packet) {
        match p.kind {
            PUBLISH if self.auto_ack => {
                let publish = Publish::decode(p, self.v5);
                match publish.qos {
                    1 => self.ack(PUBACK, publish.pid),
                    2 => self.ack(PUBREC, publish.pid),
                    _ => {}
                }
            }
            PUBREL if self.auto_ack => {
                let pid = Reader::new(&p.body).u16();
                self.ack(PUBCOMP, pid);
            }
            PUBREC if self.auto_pubrel => {
                let pid = Reader::new(&p.body).u16();
                self.ack(PUBREL, pid);
            }
            _ => {}
        }
    }

    /// Sends PUBACK/PUBREC/PUBREL/PUBCOMP (success) for `pid`.
    pub fn ack(&mut self, kind: u8, pid: u16) {
        let flags = if kind == PUBREL { 2 } else { 0 };
        let _ = self.try_send(&frame(kind, flags, &pid.to_be_bytes()));
    }

    /// The next packet, skipping PINGRESP; panics on timeout or close.
    pub fn expect(&mut self, limit: Duration) -> Packet {
        loop {
            match self.recv(limit) {
                Recv::Packet(p) if p.kind == PINGRESP => continue,
                Recv::Packet(p) => return p,
                other => panic!("expected a packet, got {other:?}"),
            }
        }
    }

    /// The next packet of `kind` (not PUBLISH), skipping acks and keeping PUBLISHes.
    pub fn expect_kind(&mut self, kind: u8) -> Packet {
        assert_ne!(kind, PUBLISH, "use expect_publish");
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Packet(p) if p.kind == kind => return p,
                Recv::Packet(p) => self.keep_or_skip(p),
                other => panic!("expected packet type {kind}, got {other:?}"),
            }
        }
    }

    /// Keeps a PUBLISH for later; skips acks and PINGRESP; anything else is a failure.
    fn keep_or_skip(&mut self, p: Packet) {
        match p.kind {
            PUBLISH => {
                let publish = Publish::decode(&p, self.v5);
                self.inbox.push_back(publish);
            }
            PINGRESP | PUBACK | PUBREC | PUBREL | PUBCOMP => {}
            _ => panic!("unexpected packet {p:?}"),
        }
    }

    pub fn expect_connack(&mut self) -> ConnAck {
        let p = match self.recv(WAIT) {
            Recv::Packet(p) => p,
            other => panic!("expected CONNACK, got {other:?}"),
        };
        assert_eq!(p.kind, CONNACK, "expected CONNACK, got {p:?}");
        decode_connack(&p, self.v5)
    }

    /// The next PUBLISH (acked automatically if `auto_ack`).
    pub fn expect_publish(&mut self) -> Publish {
        self.try_publish(WAIT)
            .expect("expected a PUBLISH within 10 s")
    }

    /// The next PUBLISH within `limit`, or None if none came (other packets skipped).
    pub fn try_publish(&mut self, limit: Duration) -> Option<Publish> {
        if let Some(publish) = self.inbox.pop_front() {
            return Some(publish);
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Packet(p) if p.kind == PUBLISH => return Some(Publish::decode(&p, self.v5)),
                Recv::Packet(_) => {}
                Recv::Timeout | Recv::Closed => return None,
            }
        }
    }

    /// Every PUBLISH that arrives within `limit`.
    pub fn drain_publishes(&mut self, limit: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        while let Some(p) = self.try_publish(deadline.saturating_duration_since(Instant::now())) {
            out.push(p);
        }
        out
    }

    /// Exactly `n` PUBLISHes, each within `WAIT`.
    pub fn expect_publishes(&mut self, n: usize) -> Vec<Publish> {
        (0..n)
            .map(|i| {
                self.try_publish(WAIT)
                    .unwrap_or_else(|| panic!("expected {n} publishes, got {i}"))
            })
            .collect()
    }

    /// Asserts no PUBLISH arrives within `limit`.
    pub fn assert_no_publish(&mut self, limit: Duration) {
        if let Some(p) = self.try_publish(limit) {
            panic!("unexpected PUBLISH {p:?}");
        }
    }

    /// Publishes and, for QoS 1/2, waits for PUBACK/PUBCOMP; returns its reason code.
    pub fn publish(&mut self, mut publish: Publish) -> u8 {
        if publish.qos > 0 && publish.pid == 0 {
            publish.pid = self.pid();
        }
        self.send(&publish.encode(self.v5));
        match publish.qos {
            0 => 0,
            1 => self.expect_ack(PUBACK, publish.pid),
            _ => self.expect_ack(PUBCOMP, publish.pid),
        }
    }

    /// Waits for an ack of `kind` for `pid`; returns its reason code (0 if absent).
    pub fn expect_ack(&mut self, kind: u8, pid: u16) -> u8 {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Packet(p) if p.kind == kind => {
                    let mut r = Reader::new(&p.body);
                    assert_eq!(r.u16(), pid, "ack for the wrong packet id");
                    return if r.remaining() > 0 { r.u8() } else { 0 };
                }
                Recv::Packet(p) => self.keep_or_skip(p),
                other => panic!("expected ack type {kind} for {pid}, got {other:?}"),
            }
        }
    }

    pub fn pub0(&mut self, topic: &str, payload: &[u8]) {
        self.publish(Publish::new(topic, payload, 0));
    }

    /// Subscribes to filters with option bytes; returns the SUBACK codes.
    pub fn subscribe_with(&mut self, filters: &[(&str, u8)], props: Props) -> Vec<u8> {
        let pid = self.pid();
        let mut body = pid.to_be_bytes().to_vec();
        if self.v5 {
            props.encode(&mut body);
        }
        for (filter, opts) in filters {
            put_str(&mut body, filter);
            body.push(*opts);
        }
        self.send(&frame(SUBSCRIBE, 2, &body));
        let p = self.expect_kind(SUBACK);
        let mut r = Reader::new(&p.body);
        assert_eq!(r.u16(), pid, "SUBACK packet id");
        if self.v5 {
            Props::decode(&mut r);
        }
        let codes = r.rest();
        assert_eq!(codes.len(), filters.len(), "one SUBACK code per filter");
        codes
    }

    /// Subscribes to one filter at `qos` and asserts it was granted.
    pub fn sub(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe_with(&[(filter, qos)], Props::new());
        assert_eq!(codes, vec![qos], "SUBACK for {filter}");
    }

    /// Unsubscribes; returns the v5 reason codes (empty for 3.1.1).
    pub fn unsubscribe(&mut self, filters: &[&str]) -> Vec<u8> {
        let pid = self.pid();
        let mut body = pid.to_be_bytes().to_vec();
        if self.v5 {
            Props::new().encode(&mut body);
        }
        for filter in filters {
            put_str(&mut body, filter);
        }
        self.send(&frame(UNSUBSCRIBE, 2, &body));
        let p = self.expect_kind(UNSUBACK);
        let mut r = Reader::new(&p.body);
        assert_eq!(r.u16(), pid, "UNSUBACK packet id");
        if self.v5 {
            Props::decode(&mut r);
        }
        r.rest()
    }

    pub fn ping(&mut self) {
        self.send(&frame(PINGREQ, 0, &[]));
    }

    /// Sends DISCONNECT (v5 with `reason`) and closes the write side.
    pub fn disconnect(mut self, reason: u8) {
        let body = if self.v5 && reason != 0 {
            vec![reason, 0]
        } else {
            vec![]
        };
        let _ = self.try_send(&frame(DISCONNECT, 0, &body));
        let _ = self.stream.shutdown(Shutdown::Write);
        // Wait for the broker to close, so the next step sees the session offline.
        let _ = self.recv(Duration::from_secs(2));
    }

    /// Drops the TCP connection without DISCONNECT (an abnormal close).
    pub fn kill(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// Waits for the broker to close the connection; returns the packets it sent before.
    pub fn expect_closed(&mut self, limit: Duration) -> Vec<Packet> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Recv::Closed => return seen,
                Recv::Packet(p) => seen.push(p),
                Recv::Timeout => panic!("connection still open after {limit:?}; saw {seen:?}"),
            }
        }
    }
}

pub fn decode_connack(p: &Packet, v5: bool) -> ConnAck {
    let mut r = Reader::new(&p.body);
    let session_present = r.u8() & 1 == 1;
    let code = r.u8();
    let props = if v5 && r.remaining() > 0 {
        Props::decode(&mut r)
    } else {
        Props::new()
    };
    ConnAck {
        session_present,
        code,
        props,
    }
}

/// The reason code of a v5 DISCONNECT packet (0 when omitted).
pub fn disconnect_reason(p: &Packet) -> u8 {
    assert_eq!(p.kind, DISCONNECT, "expected DISCONNECT, got {p:?}");
    p.body.first().copied().unwrap_or(0)
}
