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

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A handle on a connection's socket; clones share the one descriptor, which closes when
/// the last clone drops.
#[derive(Clone)]
pub(super) struct Socket(Rc<RefCell<TcpStream>>);

impl Socket {
    pub(super) fn new(stream: TcpStream) -> Self {
        Socket(Rc::new(RefCell::new(stream)))
    }

    /// The descriptor; valid while any clone of this handle lives.
    pub(super) fn fd(&self) -> RawFd {
        self.0.borrow().as_raw_fd()
    }

    pub(super) fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.0.borrow().set_nodelay(on).map_err(Into::into)
    }

    /// Makes reads fail with `TimedOut` after `limit` without data (`None`: never). Writes
    /// are not affected: the write direction has its own timer.
    pub(super) fn set_read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
        self.0.borrow().set_read_timeout(limit).map_err(Into::into)
    }

    /// Reads once into `buf`: the bytes read, 0 at end of stream.
    pub(super) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)).await
    }

    /// Writes all of `buf`, in as few syscalls as the socket's buffer allows.
    pub(super) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = poll_fn(|cx| Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Ends both directions of the socket: a read parked on it returns end of stream. The
    /// descriptor stays open until the last handle drops.
    pub(super) fn shutdown(&self) {
        // SAFETY: shutdown(2) on the descriptor this handle keeps open; it only ends I/O.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
    }
}
