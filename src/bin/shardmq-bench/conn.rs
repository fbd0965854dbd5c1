//! Opening a connection: TCP connect, CONNECT/CONNACK and SUBSCRIBE/SUBACK done blocking
//! with a timeout, before the measured phase; the caller then switches the socket to
//! non-blocking and drives it from its poll loop.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardmq::mqtt::{
    self, ByteStr, ConnAck, Connect, ConnectProperties, DecodeError, DecodeLimits, EncodeError,
    Packet, PacketId, Protocol, QoS, Subscribe, SubscribeProperties, SubscriptionOptions,
};

use crate::config::Params;
use futures_rustls::rustls;

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

/// A connection to the broker: plain TCP, or TLS over it (`--tls-ca`).
///
/// Over TLS, `write` hands bytes to rustls and writes what it can of the records;
/// records left over are written by `flush` (and by the next `write`), so a
/// non-blocking caller polls for POLLOUT while [`wants_write`](Self::wants_write).
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::ClientConnection>, TcpStream),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) | Stream::Tls(_, s) => s,
        }
    }

    /// Switches the socket to non-blocking mode (or back).
    pub fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        self.tcp().set_nonblocking(on)
    }

    /// Shuts the socket down.
    pub fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
        self.tcp().shutdown(how)
    }

    /// TLS records are waiting to be written.
    pub fn wants_write(&self) -> bool {
        matches!(self, Stream::Tls(tls, _) if tls.wants_write())
    }

    /// Writes pending TLS records until done or the socket is full.
    fn push(tls: &mut rustls::ClientConnection, tcp: &mut TcpStream) -> std::io::Result<()> {
        while tls.wants_write() {
            tls.write_tls(tcp)?;
        }
        Ok(())
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.tcp().as_raw_fd()
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let (tls, tcp) = match self {
            Stream::Plain(s) => return s.read(buf),
            Stream::Tls(tls, tcp) => (tls, tcp),
        };
        loop {
            match tls.reader().read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                done => return done,
            }
            if tls.read_tls(tcp)? == 0 {
                return Ok(0);
            }
            tls.process_new_packets()
                .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (tls, tcp) = match self {
            Stream::Plain(s) => return s.write(buf),
            Stream::Tls(tls, tcp) => (tls, tcp),
        };
        Stream::push(tls, tcp)?;
        let n = tls.writer().write(buf)?;
        if n == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        match Stream::push(tls, tcp) {
            Err(e) if e.kind() != ErrorKind::WouldBlock => Err(e),
            _ => Ok(n),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(tls, tcp) => Stream::push(tls, tcp),
        }
    }
}

/// A connected, accepted MQTT session.
#[derive(Debug)]
pub struct Session {
    /// The socket, still blocking.
    pub stream: Stream,
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
    let mut tcp = match source {
        None => TcpStream::connect_timeout(&addr, timeout)?,
        Some(ip) => tcp_connect_from(ip, addr, timeout)?,
    };
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut stream = match &p.tls {
        None => Stream::Plain(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(p.host.clone())
                .map_err(|e| BenchError::Refused(format!("TLS server name {}: {e}", p.host)))?;
            let mut tls = rustls::ClientConnection::new(std::sync::Arc::clone(config), name)
                .map_err(|e| BenchError::Refused(format!("TLS: {e}")))?;
            while tls.is_handshaking() {
                tls.complete_io(&mut tcp)?;
            }
            Stream::Tls(Box::new(tls), tcp)
        }
    };
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
    stream.flush()?;
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
    s.stream.flush()?;
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
    stream: &mut Stream,
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
