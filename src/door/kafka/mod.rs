//! The Kafka door: the Kafka wire protocol over the shards' logs (see `broker::kafka`).
//!
//! Each shard accepts on its own SO_REUSEPORT `kafka_listen` socket, like the MQTT door,
//! so a client's connection lands on any shard; a request for a partition another shard
//! owns is forwarded over the mesh by the broker. To clients the whole process is one
//! Kafka broker (node 0) leading every partition.
//!
//! The codec is the `kafka-protocol` crate. Served (client versions from Kafka 2.1 on):
//! ApiVersions 0–3, Metadata 1–12, Produce 3–9 (record batches v2; acks 0, 1 and all),
//! Fetch 4–12 (long poll, many partitions; no fetch sessions: every fetch is full) and
//! ListOffsets 1–7. A connection asking for another API or version, or sending a frame
//! that does not decode, is closed — what a Kafka broker does — and nothing else is
//! affected.
//!
//! Requests on one connection are answered in order. Produce requests are pipelined: a
//! produce's appends start as soon as it is read, and the next request is read while it
//! waits for its batches to be durable (up to [`PIPELINE_MAX`] produces in flight), so
//! a producer's next batch joins the next group commit instead of waiting for the
//! previous answer. Any other request first waits until every earlier answer is
//! written, so it sees what they did, as if served one at a time. The partitions of one
//! produce are appended concurrently too.

#[doc(hidden)]
mod admin;
pub mod check;
pub mod client;
mod groups;
mod handlers;
mod sasl;

pub use handlers::{decode, Decoded};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::channels::local_channel::{LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};

use crate::auth::HashQueue;
use crate::broker::Broker;
use crate::runtime::{ConnectionQuota, ConnectionSlot};

use handlers::Answer;

/// The log target of Kafka connection events.
pub const KAFKA_LOG: &str = "shardmq::kafka";

/// A connection that sends no request for this long is closed (Kafka's
/// `connections.max.idle.ms` default).
const IDLE_MAX: Duration = Duration::from_secs(600);

/// Produce requests one connection may have read and not yet answered (Kafka
/// producers' `max.in.flight.requests.per.connection` default is 5): with the request
/// being read, at most this many plus one request frames per connection in memory.
pub const PIPELINE_MAX: usize = 4;

/// The Kafka door of one shard.
pub struct KafkaDoor {
    broker: Rc<Broker>,
    quota: Rc<ConnectionQuota>,
    /// The address clients are told to connect to (`kafka_listen`, resolved).
    listen: SocketAddr,
    /// Largest request accepted: a bigger frame closes the connection unread.
    request_bytes_max: usize,
    /// The password-hashing thread's queue (one per process), for SASL PLAIN.
    hashing: Arc<HashQueue>,
    /// Live connections: their sockets, cut at the end of a drain.
    live: RefCell<HashMap<u64, RawFd>>,
    next_token: Cell<u64>,
}

impl KafkaDoor {
    /// The Kafka door of `broker`'s shard, listening on `listen`.
    pub fn new(
        broker: Rc<Broker>,
        quota: Rc<ConnectionQuota>,
        hashing: Arc<HashQueue>,
        listen: SocketAddr,
    ) -> Rc<Self> {
        let request_bytes_max = broker.config.max_packet_bytes as usize;
        Rc::new(KafkaDoor {
            broker,
            quota,
            listen,
            request_bytes_max,
            hashing,
            live: RefCell::new(HashMap::new()),
            next_token: Cell::new(0),
        })
    }

    /// Accepts connections until the shard starts shutting down. A connection over the
    /// connection limits is closed at once.
    pub async fn accept_loop(self: &Rc<Self>, listener: &TcpListener) {
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok(stream) => match self.quota.admit() {
                        Ok(slot) => {
                            glommio::spawn_local(serve(Rc::clone(self), stream, slot)).detach();
                        }
                        Err(_) => {
                            tracing::debug!(target: KAFKA_LOG, shard = self.broker.id.index(), "connection over the limits closed at accept");
                        }
                    },
                    Err(e) => {
                        tracing::warn!(target: KAFKA_LOG, shard = self.broker.id.index(), error = %e, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        futures_lite::future::or(accept, self.broker.shutdown.wait()).await;
    }

    /// After shutdown began: waits up to `limit` for the connections to finish the
    /// request they are in, then cuts the rest.
    pub async fn drain(&self, limit: Duration) {
        let started = Instant::now();
        while !self.live.borrow().is_empty() && started.elapsed() < limit {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        for fd in self.live.borrow().values() {
            // SAFETY: shutdown(2) on a socket a live connection task still owns; it only
            // ends I/O, the task closes the descriptor.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        let cut = Instant::now();
        while !self.live.borrow().is_empty() && cut.elapsed() < Duration::from_secs(1) {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Serves one connection until the client closes it, sends something it must be
/// closed for, or the shard stops.
async fn serve(door: Rc<KafkaDoor>, stream: TcpStream, slot: ConnectionSlot) {
    let _slot = slot;
    let token = door.next_token.get() + 1;
    door.next_token.set(token);
    door.live.borrow_mut().insert(token, stream.as_raw_fd());
    let probe = &door.broker.probe;
    probe.connections_accepted_total.inc();
    probe.connections_current.add(1);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_MAX));
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let stream = Rc::new(RefCell::new(stream));
    let (answers, queued) = glommio::channels::local_channel::new_bounded(PIPELINE_MAX);
    let unwritten = Rc::new(Unwritten::default());
    let writer = glommio::spawn_local(write_answers(
        Rc::clone(&stream),
        queued,
        Rc::clone(&unwritten),
    ))
    .detach();
    let mut conn = Connection {
        door: &door,
        stream,
        local,
        peer,
        auth: sasl::ConnAuth::default(),
        answers,
        unwritten,
    };
    let mut ending = conn.run().await;
    // The answers read so far are written (or the socket fails) before it closes.
    drop(conn);
    if let Some(Err(why)) = writer.await {
        ending = why;
    }
    tracing::debug!(target: KAFKA_LOG, shard = door.broker.id.index(), ?peer, ending, "connection closed");
    door.live.borrow_mut().remove(&token);
    probe.connections_current.add(-1);
    probe.connections_closed_total.inc();
}

/// Answers queued and not yet written, and the reader waiting for none.
#[derive(Default)]
struct Unwritten {
    count: Cell<usize>,
    waiter: Cell<Option<std::task::Waker>>,
    failed: Cell<bool>,
}

/// The connection's writer: each answer in the order the requests came, once ready.
async fn write_answers(
    stream: Rc<RefCell<TcpStream>>,
    queued: LocalReceiver<Answer>,
    unwritten: Rc<Unwritten>,
) -> Result<(), &'static str> {
    let mut result = Ok(());
    while let Some(answer) = queued.recv().await {
        let response = match answer {
            Answer::Now(response) => Ok(Some(response)),
            Answer::Later(task) => task.await.unwrap_or(Err("a produce task was lost")),
        };
        let written = match response {
            Ok(Some(response)) => write_all(&stream, &response)
                .await
                .map_err(|_| "write failed"),
            Ok(None) => Ok(()),
            Err(why) => Err(why),
        };
        unwritten.count.set(unwritten.count.get() - 1);
        if let Err(why) = written {
            unwritten.failed.set(true);
            result = Err(why);
        }
        if unwritten.count.get() == 0 || result.is_err() {
            if let Some(waker) = unwritten.waiter.take() {
                waker.wake();
            }
        }
        if result.is_err() {
            break;
        }
    }
    result
}

async fn write_all(stream: &RefCell<TcpStream>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

async fn read_exact(stream: &RefCell<TcpStream>, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_read(cx, buf)).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
    }
    Ok(())
}

struct Connection<'a> {
    door: &'a Rc<KafkaDoor>,
    /// Read here, written by the connection's writer task (each borrow lasts one poll).
    stream: Rc<RefCell<TcpStream>>,
    /// The address the client reached: what Metadata advertises when `kafka_listen`
    /// is a wildcard address.
    local: Option<SocketAddr>,
    /// The client's address (what DescribeGroups shows as its host).
    peer: Option<SocketAddr>,
    /// Who it authenticated as, and its ACL.
    auth: sasl::ConnAuth,
    /// To the writer, in request order.
    answers: LocalSender<Answer>,
    unwritten: Rc<Unwritten>,
}

impl Connection<'_> {
    async fn run(&mut self) -> &'static str {
        let broker = Rc::clone(&self.door.broker);
        loop {
            let next = async { Some(self.read_frame().await) };
            let stop = async {
                broker.shutdown.wait().await;
                None
            };
            let frame = match futures_lite::future::or(next, stop).await {
                None => return "the shard is stopping",
                Some(Ok(frame)) => frame,
                Some(Err(why)) => return why,
            };
            let produce = key_and_version(&frame)
                .is_some_and(|(key, _)| key == kafka_protocol::messages::ApiKey::Produce as i16);
            if !produce || self.auth.raw_token_next() {
                // Served as if alone: after every earlier answer is written.
                self.all_written().await;
            }
            if self.unwritten.failed.get() {
                return "write failed";
            }
            if self.auth.raw_token_next() {
                // After a version 0 handshake: the bare PLAIN token; an empty frame says
                // it was accepted, a closed connection that it was not.
                let (_, accepted) = self.auth.authenticate(self.door, "", &frame).await;
                if !accepted {
                    return "SASL authentication failed";
                }
                if !self
                    .queue(Answer::Now(BytesMut::from(&[0u8, 0, 0, 0][..])))
                    .await
                {
                    return "write failed";
                }
                continue;
            }
            let handled =
                match handlers::handle(self.door, &mut self.auth, self.local, self.peer, frame)
                    .await
                {
                    Ok(handled) => handled,
                    Err(why) => return why,
                };
            if !self.queue(handled.response).await {
                return "write failed";
            }
            if handled.close {
                return "SASL authentication failed";
            }
        }
    }

    /// Hands an answer to the writer (waiting while [`PIPELINE_MAX`] are queued);
    /// false if the writer stopped.
    async fn queue(&self, answer: Answer) -> bool {
        self.unwritten.count.set(self.unwritten.count.get() + 1);
        if self.answers.send(answer).await.is_err() {
            self.unwritten.count.set(self.unwritten.count.get() - 1);
            return false;
        }
        true
    }

    /// Waits until the writer has written every answer queued (or failed).
    async fn all_written(&self) {
        poll_fn(|cx| {
            if self.unwritten.count.get() == 0 || self.unwritten.failed.get() {
                return Poll::Ready(());
            }
            self.unwritten.waiter.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }

    /// The next request frame (without its size).
    async fn read_frame(&mut self) -> Result<Bytes, &'static str> {
        let mut size = [0u8; 4];
        match read_exact(&self.stream, &mut size).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err("closed by the client")
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err("idle"),
            Err(_) => return Err("read failed"),
        }
        let size = i32::from_be_bytes(size);
        let Ok(size) = usize::try_from(size) else {
            return Err("a negative frame size");
        };
        if size > self.door.request_bytes_max {
            self.door.broker.probe.protocol_errors_total.inc();
            return Err("a frame over the request size limit (max_packet_bytes)");
        }
        let mut frame = BytesMut::zeroed(size);
        if read_exact(&self.stream, &mut frame).await.is_err() {
            return Err("the connection ended inside a frame");
        }
        Ok(frame.freeze())
    }
}

/// Frames `encode`'s output: the size, then what it wrote (`None` if it failed).
fn framed(encode: impl FnOnce(&mut BytesMut) -> bool) -> Option<BytesMut> {
    let mut out = BytesMut::with_capacity(256);
    out.put_i32(0);
    if !encode(&mut out) {
        return None;
    }
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// The API key and version at the start of a request frame.
fn key_and_version(frame: &Bytes) -> Option<(i16, i16)> {
    let mut head = frame.get(..4)?;
    Some((head.get_i16(), head.get_i16()))
}
