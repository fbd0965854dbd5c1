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

    /// Reads once into `buf`: the bytes read, 0 at end of stream.
    pub(super) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Plain(s) => {
                poll_fn(|cx| Pin::new(&mut *s.borrow_mut()).poll_read(cx, buf)).await
            }
            Socket::Tls(s) => poll_fn(|cx| Pin::new(&mut *s.borrow_mut()).poll_read(cx, buf)).await,
            Socket::Ws(s) => poll_fn(|cx| s.borrow_mut().poll_read(cx, buf)).await,
            Socket::Wss(s) => poll_fn(|cx| s.borrow_mut().poll_read(cx, buf)).await,
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

/// A connection's inbound bytes and how much the next read asks for.
pub(super) struct ReadBuf {
    /// Bytes read and not yet decoded.
    pub buf: BytesMut,
    chunk_bytes: usize,
}

impl ReadBuf {
    pub(super) fn new() -> Self {
        ReadBuf {
            buf: BytesMut::with_capacity(READ_CHUNK_MIN_BYTES),
            chunk_bytes: READ_CHUNK_MIN_BYTES,
        }
    }

    /// Reads once into the spare end of the buffer.
    pub(super) async fn read_from(&mut self, socket: &Socket) -> std::io::Result<usize> {
        let filled = self.buf.len();
        self.buf.resize(filled + self.chunk_bytes, 0);
        let result = socket.read(&mut self.buf[filled..]).await;
        let n = *result.as_ref().unwrap_or(&0);
        self.buf.truncate(filled + n);
        if n == self.chunk_bytes {
            self.chunk_bytes = (self.chunk_bytes * 2).min(READ_CHUNK_BYTES);
        }
        result
    }
}
