//! Client connections: the per-shard accept loop and the table of live connections.
//!
//! Each shard accepts on its own SO_REUSEPORT listener (glommio sets the option on every
//! bind), so the kernel spreads new connections across shards and a connection lives its
//! whole life on the shard that accepted it. On shutdown the shard stops accepting but
//! keeps the listener open until its connections have drained: dropping a listener
//! resets the connections still waiting in its backlog.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};

use crate::shard::Shard;

/// Bytes read from a connection per wake-up.
const READ_BUFFER_BYTES: usize = 16 << 10;

/// The live connections of one shard.
#[derive(Default)]
pub struct Connections {
    next_id: Cell<u64>,
    live: RefCell<HashMap<u64, RawFd>>,
}

impl Connections {
    fn register(&self, fd: RawFd) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.live.borrow_mut().insert(id, fd);
        id
    }

    fn unregister(&self, id: u64) {
        self.live.borrow_mut().remove(&id);
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.live.borrow().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.live.borrow().is_empty()
    }

    /// Closes every connection's socket for reading and writing, then waits (at most
    /// `limit`) for their tasks to finish.
    pub async fn drain(&self, limit: Duration) {
        for &fd in self.live.borrow().values() {
            // SAFETY: the fd belongs to a live connection task, which unregisters it
            // before its stream is dropped; shutdown(2) only ends I/O on it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        let started = Instant::now();
        while !self.is_empty() && started.elapsed() < limit {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Accepts connections until the shard starts shutting down.
pub async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    let accept = async {
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let shard = Rc::clone(shard);
                    glommio::spawn_local(async move { serve(shard, stream).await }).detach();
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(shard = shard.id, error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    futures_lite::future::or(accept, shard.shutdown.wait()).await;
}

async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let probe = &shard.probe;
    probe.connections_accepted_total.inc();
    probe.connections_current.add(1);
    let id = shard.connections.register(stream.as_raw_fd());
    let _ = stream.set_nodelay(true);

    // The MQTT protocol is not served yet: hold the connection, consume what the client
    // sends, answer nothing, and close when the client or the shard does.
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 || shard.shutdown.is_stopping() {
            break;
        }
    }

    shard.connections.unregister(id);
    probe.connections_current.add(-1);
    probe.connections_closed_total.inc();
}
