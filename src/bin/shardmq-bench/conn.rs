//! Opening a connection: TCP connect, CONNECT/CONNACK and SUBSCRIBE/SUBACK done blocking
//! with a timeout, before the measured phase; the caller then switches the socket to
//! non-blocking and drives it from its poll loop.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardmq::mqtt::{
    self, ByteStr, ConnAck, Connect, ConnectProperties, DecodeError, DecodeLimits, EncodeError,
    Packet, PacketId, Protocol, QoS, Subscribe, SubscribeProperties, SubscriptionOptions,
};

use crate::config::Params;

/// How long connecting and each handshake step may take.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Bytes read per `read` call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a connection failed.
#[derive(Debug)]
pub enum BenchError {
    /// Socket error.
    Io(std::io::Error),
    /// The broker sent bytes that are not MQTT.
    Decode(DecodeError),
    /// A packet could not be encoded (a bad option, e.g. a too long topic).
    Encode(EncodeError),
    /// The broker refused the CONNECT or a SUBSCRIBE, or closed the connection.
    Refused(String),
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "i/o: {e}"),
            Self::Decode(e) => write!(f, "decode: {e:?}"),
            Self::Encode(e) => write!(f, "encode: {e:?}"),
            Self::Refused(why) => write!(f, "broker: {why}"),
        }
    }
}

impl From<std::io::Error> for BenchError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}
impl From<DecodeError> for BenchError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}
impl From<EncodeError> for BenchError {
    fn from(e: EncodeError) -> Self {
        Self::Encode(e)
    }
}

/// A connected, accepted MQTT session.
#[derive(Debug)]
pub struct Session {
    /// The socket, still blocking.
    pub stream: TcpStream,
    /// Bytes read past the last decoded packet.
    pub rbuf: BytesMut,
    /// The broker's CONNACK.
    pub connack: ConnAck,
}

/// Connects `client_id` and waits for a successful CONNACK.
pub fn connect(p: &Params, client_id: &str, keep_alive_secs: u16) -> Result<Session, BenchError> {
    connect_from(p, client_id, keep_alive_secs, None)
}

/// Like [`connect`], from local address `source` (port chosen at connect) if given: a
/// loopback client can spread its connections over 127.0.0.x when one source address
/// runs out of ephemeral ports.
pub fn connect_from(
    p: &Params,
    client_id: &str,
    keep_alive_secs: u16,
    source: Option<IpAddr>,
) -> Result<Session, BenchError> {
    let timeout = Duration::from_millis(HANDSHAKE_TIMEOUT_MS);
    let addr = (p.host.as_str(), p.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| BenchError::Refused(format!("{} does not resolve", p.host)))?;
    let mut stream = match source {
        None => TcpStream::connect_timeout(&addr, timeout)?,
        Some(ip) => tcp_connect_from(ip, addr, timeout)?,
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let connect = Connect {
        protocol: p.protocol,
        clean_start: true,
        keep_alive_secs,
        client_id: ByteStr::from(client_id.to_owned()),
        will: None,
        username: p.username.clone().map(ByteStr::from),
        password: p.password.clone().map(Bytes::from),
        properties: ConnectProperties::default(),
    };
    let mut out = BytesMut::new();
    mqtt::encode(&Packet::Connect(connect), p.protocol, &mut out)?;
    stream.write_all(&out)?;
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    match read_packet(&mut stream, &mut rbuf, p.protocol)? {
        Packet::ConnAck(ack) if !ack.reason.is_error() => Ok(Session {
            stream,
            rbuf,
            connack: ack,
        }),
        Packet::ConnAck(ack) => Err(BenchError::Refused(format!("CONNACK {:?}", ack.reason))),
        other => Err(BenchError::Refused(format!(
            "expected CONNACK, got {:?}",
            other.packet_type()
        ))),
    }
}

fn tcp_connect_from(
    source: IpAddr,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // Leave the port to connect(): the 4-tuple, not the (address, port) pair, must be
    // unique, so one source address serves more connections than its port range.
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

/// Subscribes to `filter` at `qos` and waits for a granting SUBACK.
pub fn subscribe(
    s: &mut Session,
    protocol: Protocol,
    filter: &str,
    qos: QoS,
) -> Result<(), BenchError> {
    let packet_id = PacketId::new(1).expect("1 is a valid packet id");
    let options = SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    let sub = Subscribe {
        packet_id,
        filters: vec![(ByteStr::from(filter.to_owned()), options)],
        properties: SubscribeProperties::default(),
    };
    let mut out = BytesMut::new();
    mqtt::encode(&Packet::Subscribe(sub), protocol, &mut out)?;
    s.stream.write_all(&out)?;
    match read_packet(&mut s.stream, &mut s.rbuf, protocol)? {
        Packet::SubAck(ack) if ack.reason_codes.iter().all(|r| !r.is_error()) => Ok(()),
        Packet::SubAck(ack) => Err(BenchError::Refused(format!(
            "SUBACK {:?} for {filter}",
            ack.reason_codes
        ))),
        other => Err(BenchError::Refused(format!(
            "expected SUBACK, got {:?}",
            other.packet_type()
        ))),
    }
}

/// Reads (blocking) until one whole packet is decoded.
pub fn read_packet(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    protocol: Protocol,
) -> Result<Packet, BenchError> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(packet) = mqtt::decode(rbuf, Some(protocol), &DecodeLimits::default())? {
            return Ok(packet);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(BenchError::Refused("connection closed".into()));
        }
        rbuf.extend_from_slice(&chunk[..n]);
    }
}
