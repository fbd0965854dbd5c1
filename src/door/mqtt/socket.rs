//! One client socket shared by a connection's reader and writer tasks.
//!
//! A connection holds a single descriptor. glommio's stream keeps a separate poll source
//! (and timer) for each direction, so the reader can be parked in a read while the writer
//! is parked in a write on the same stream: each direction wakes only its own task. The
//! stream sits in a `RefCell` that is borrowed only inside one synchronous `poll_read` or
//! `poll_write` call, never across an `.await`, so the two tasks (both on this shard's
//! thread) can never hold it at once.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWrite};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

use super::conn::{READ_CHUNK_BYTES, READ_CHUNK_MIN_BYTES};
use super::ws::WsConn;

/// A handle on a connection's socket; clones share the one descriptor, which closes when
/// the last clone drops.
///
/// Over TLS the rustls session sits beside the stream in the same cell: a read may
/// only read (futures-rustls writes nothing from `poll_read` but a last alert on a
/// fatal error) and a write only writes, so each task still waits on its own direction.
/// Plain TCP pays one branch per read or write for the choice.
///
/// Over WebSocket the framing sits there too, and the same holds: the framing layer
/// keeps a waker per direction, and a pong or close reply the reader queues goes out
/// with the writer's next flush or the reader's next read.
#[derive(Clone)]
pub(super) enum Socket {
    Plain(Rc<RefCell<TcpStream>>),
    Tls(Rc<RefCell<TlsStream<TcpStream>>>),
    Ws(Rc<RefCell<WsConn<TcpStream>>>),
    Wss(Rc<RefCell<WsConn<TlsStream<TcpStream>>>>),
}

impl Socket {
    pub(super) fn plain(stream: TcpStream) -> Self {
        Socket::Plain(Rc::new(RefCell::new(stream)))
    }

    pub(super) fn tls(stream: TlsStream<TcpStream>) -> Self {
        Socket::Tls(Rc::new(RefCell::new(stream)))
    }

    pub(super) fn ws(conn: WsConn<TcpStream>) -> Self {
        Socket::Ws(Rc::new(RefCell::new(conn)))
    }

    pub(super) fn wss(conn: WsConn<TlsStream<TcpStream>>) -> Self {
        Socket::Wss(Rc::new(RefCell::new(conn)))
    }

    /// Whether the connection may be parked without tasks (see `park`): plain TCP only,
    /// where no TLS or WebSocket layer may hold bytes already read from the socket.
    pub(super) fn parkable(&self) -> bool {
        matches!(self, Socket::Plain(_))
    }

    /// The plain TCP stream, if this is its last handle.
    pub(super) fn into_plain(self) -> Result<TcpStream, Socket> {
        match self {
            Socket::Plain(s) => Rc::try_unwrap(s)
                .map(RefCell::into_inner)
                .map_err(Socket::Plain),
            other => Err(other),
        }
    }

    /// Runs `f` on the TCP stream underneath.
    fn with_tcp<R>(&self, f: impl FnOnce(&TcpStream) -> R) -> R {
        match self {
            Socket::Plain(s) => f(&s.borrow()),
            Socket::Tls(s) => f(s.borrow().get_ref().0),
            Socket::Ws(s) => f(s.borrow().get_ref()),
            Socket::Wss(s) => f(s.borrow().get_ref().get_ref().0),
        }
    }

    /// The descriptor; valid while any clone of this handle lives.
    pub(super) fn fd(&self) -> RawFd {
        self.with_tcp(|s| s.as_raw_fd())
    }

    /// Makes reads fail with `TimedOut` after `limit` without data (`None`: never). Writes
    /// are not affected: the write direction has its own timer.
    pub(super) fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.with_tcp(|s| s.set_read_timeout(limit).map_err(Into::into))
    }

    /// Reads once into `buf`: the bytes read, 0 at end of stream. `buf` is used only
    /// while this call runs: glommio waits for readiness with a poll and copies nothing
    /// into a buffer that is held across the wait, so each poll may name another buffer.
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self {
            Socket::Plain(s) => Pin::new(&mut *s.borrow_mut()).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(&mut *s.borrow_mut()).poll_read(cx, buf),
            Socket::Ws(s) => s.borrow_mut().poll_read(cx, buf),
            Socket::Wss(s) => s.borrow_mut().poll_read(cx, buf),
        }
    }

    /// Writes all of `chunk`, in as few syscalls as the socket's buffer allows; over
    /// WebSocket as one binary frame.
    pub(super) async fn write_all(&self, chunk: BytesMut) -> io::Result<()> {
        match self {
            Socket::Plain(s) => write_all(s, &chunk).await,
            Socket::Tls(s) => {
                write_all(s, &chunk).await?;
                // rustls may keep the last records of `buf` until flushed.
                poll_fn(|cx| Pin::new(&mut *s.borrow_mut()).poll_flush(cx)).await
            }
            Socket::Ws(s) => {
                let mut chunk = Some(chunk);
                poll_fn(|cx| s.borrow_mut().poll_send(cx, &mut chunk)).await
            }
            Socket::Wss(s) => {
                let mut chunk = Some(chunk);
                poll_fn(|cx| s.borrow_mut().poll_send(cx, &mut chunk)).await
            }
        }
    }

    /// TLS: tells the peer the stream ends here (close_notify); WebSocket: sends a close
    /// frame (or the reply to the client's); waiting at most `limit` for the socket to
    /// take it, so a client sees a clean end rather than a truncation. Plain TCP: nothing.
    pub(super) async fn close_notify(&self, limit: Duration) {
        let closed = async {
            match self {
                Socket::Plain(_) => {}
                Socket::Tls(s) => close_tls(s).await,
                Socket::Ws(s) => {
                    let _ = poll_fn(|cx| s.borrow_mut().poll_close(cx)).await;
                }
                Socket::Wss(s) => {
                    let _ = poll_fn(|cx| s.borrow_mut().poll_close(cx)).await;
                    close_tls_in(s, |c| c.get_mut()).await;
                }
            }
            Ok(())
        };
        let _ = glommio::timer::timeout(limit, closed).await;
    }

    /// Whether the connection speaks WebSocket, whose close is a handshake: the client
    /// answers the broker's close frame with its own (or sent one first).
    pub(super) fn is_websocket(&self) -> bool {
        matches!(self, Socket::Ws(_) | Socket::Wss(_))
    }

    /// Reads and drops what the client still sends until it closes (a WebSocket close
    /// frame or the end of the stream) or `limit` passes. Only while no other task reads
    /// this socket: the framing layer keeps one waker for reading.
    pub(super) async fn read_until_closed(&self, limit: Duration) {
        let drained = async {
            let mut sink = [0u8; 256];
            while let Ok(n) = poll_fn(|cx| self.poll_read(cx, &mut sink)).await {
                if n == 0 {
                    break;
                }
            }
            Ok(())
        };
        let _ = glommio::timer::timeout(limit, drained).await;
    }

    /// Ends both directions of the socket: a read parked on it returns end of stream. The
    /// descriptor stays open until the last handle drops.
    pub(super) fn shutdown(&self) {
        // SAFETY: shutdown(2) on the descriptor this handle keeps open; it only ends I/O.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
    }
}

async fn close_tls(s: &RefCell<TlsStream<TcpStream>>) {
    close_tls_in(s, |s| s).await
}

/// Sends close_notify on the TLS stream `get` finds in `s` and flushes it.
async fn close_tls_in<T>(s: &RefCell<T>, get: impl Fn(&mut T) -> &mut TlsStream<TcpStream>) {
    get(&mut s.borrow_mut()).get_mut().1.send_close_notify();
    let _ = poll_fn(|cx| Pin::new(get(&mut s.borrow_mut())).poll_flush(cx)).await;
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &RefCell<S>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Where a read lands while its connection holds no buffer: one per shard, borrowed only
/// inside a single poll.
pub(super) struct ReadScratch(RefCell<Box<[u8]>>);

impl ReadScratch {
    pub(super) fn new() -> Self {
        ReadScratch(RefCell::new(vec![0; READ_CHUNK_BYTES].into_boxed_slice()))
    }
}

/// A connection's inbound bytes and how much the next read asks for.
///
/// A connection that waits for its client holds no buffer: when a read finds the socket
/// empty and nothing half-decoded is buffered, the buffer is let go. The wait itself
/// needs none (see [`Socket::poll_read`]); the read that follows lands in the shard's
/// [`ReadScratch`], asking for the connection's learned chunk as a read into its own
/// buffer would, and what it brought is copied into a buffer of just that size. A
/// connection whose socket keeps having bytes (a busy publisher) never waits, keeps its
/// buffer and reads straight into it, in chunks that double up to [`READ_CHUNK_BYTES`].
pub(super) struct ReadBuf {
    /// Bytes read and not yet decoded.
    pub buf: BytesMut,
    chunk_bytes: usize,
}

impl ReadBuf {
    pub(super) fn new() -> Self {
        ReadBuf {
            buf: BytesMut::new(),
            chunk_bytes: READ_CHUNK_MIN_BYTES,
        }
    }

    /// Reads once, into the spare end of the buffer or, without one, through `scratch`.
    pub(super) async fn read_from(
        &mut self,
        socket: &Socket,
        scratch: &ReadScratch,
    ) -> io::Result<usize> {
        poll_fn(|cx| {
            if self.buf.capacity() == 0 {
                // Emptied by decoding, it may still share the allocation its last
                // packets were cut from: let that go too.
                self.buf = BytesMut::new();
                let mut landing = scratch.0.borrow_mut();
                let read = socket.poll_read(cx, &mut landing[..self.chunk_bytes]);
                if let Poll::Ready(Ok(n)) = read {
                    self.buf.extend_from_slice(&landing[..n]);
                    if n == self.chunk_bytes {
                        self.chunk_bytes = (self.chunk_bytes * 2).min(READ_CHUNK_BYTES);
                    }
                }
                return read;
            }
            let filled = self.buf.len();
            self.buf.resize(filled + self.chunk_bytes, 0);
            let read = socket.poll_read(cx, &mut self.buf[filled..]);
            match read {
                Poll::Ready(Ok(n)) => {
                    self.buf.truncate(filled + n);
                    if n == self.chunk_bytes {
                        self.chunk_bytes = (self.chunk_bytes * 2).min(READ_CHUNK_BYTES);
                    }
                }
                // The chunk size learned stays: a busy publisher whose socket ran dry
                // for a moment reads big again at once.
                Poll::Pending if filled == 0 => self.buf = BytesMut::new(),
                _ => self.buf.truncate(filled),
            }
            read
        })
        .await
    }
}
