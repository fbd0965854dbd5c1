//! A client connection as the MQTT door holds it: the socket and who authenticated on
//! it, around the [`Link`] the broker sees.
//!
//! A connection runs as two tasks sharing its one socket descriptor (see `socket`): the
//! reader decodes and handles packets, the writer flushes what the broker and the reader
//! encoded into the link's output buffer. A quiet plain-TCP connection is parked without
//! either (see `park`).

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;

use crate::auth::Principal;
use crate::mqtt::ClientId;
use crate::session::Link;

/// One client connection on this shard.
pub struct Conn {
    /// What the broker sees of it: output, acks, topic aliases, ACL.
    /// Its `fd` is the socket's, shared by both tasks and open while the connection is
    /// registered; `shutdown(2)` on it ends both tasks (or, parked, unparks the
    /// connection, which then ends). A park moves the socket to another descriptor
    /// number (see `park`).
    pub link: Rc<Link>,
    /// Who the client authenticated as and its client id, set at CONNECT: a reload
    /// checks the credentials again and rebuilds the link's ACL from them.
    pub who: RefCell<Option<(Principal, ClientId)>>,
    /// How many reloads rebuilt the ACL (wrapping): a SUBSCRIBE that waited on its WAL
    /// write while one did classifies its filters again under the new rules. 16 bits
    /// leave room for `reading` beside the descriptor; 65,536 reloads during one
    /// SUBSCRIBE's write would be needed to miss one.
    pub acl_epoch: Cell<u16>,
    /// Whether the reader task still reads the socket: once it stopped, the writer may
    /// read the client's last bytes itself (a WebSocket close reply).
    pub reading: Cell<bool>,
    /// What the connection keeps while it is parked (see `park`): here rather than in a
    /// table of the shard's parked connections, which cost each of them a slot of its own.
    pub(super) parked: RefCell<Option<super::park::Parked>>,
}

impl Conn {
    /// A handle for a freshly accepted socket `fd`.
    pub fn new(token: u64, fd: RawFd) -> Self {
        Conn {
            link: Rc::new(Link::new(token, fd)),
            who: RefCell::new(None),
            acl_epoch: Cell::new(0),
            reading: Cell::new(true),
            parked: RefCell::new(None),
        }
    }
}

impl crate::runtime::Tokened for Conn {
    fn token(&self) -> u64 {
        self.link.token
    }
}

/// How a connection ended, for the will and the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// DISCONNECT 0x00 (or 3.1.1 DISCONNECT): no will.
    Normal { expiry_secs: Option<u32> },
    /// DISCONNECT with any reason but 0x00 (0x04, or an error): publish the will.
    WithWill { expiry_secs: Option<u32> },
    /// Network error, keep-alive timeout, protocol error: publish the will.
    Abnormal,
    /// The server closed it (shutdown or takeover): no will from here.
    ByServer,
}

/// Bytes read from the socket per wake-up at most.
pub(super) const READ_CHUNK_BYTES: usize = 16 << 10;
/// Bytes a connection's first read into its own buffer asks for. A read that fills its
/// chunk doubles the next one up to [`READ_CHUNK_BYTES`], so a busy publisher soon reads
/// in big batches; an idle connection holds no buffer at all (see `socket::ReadBuf`).
pub(super) const READ_CHUNK_MIN_BYTES: usize = 1 << 10;

// Every connection keeps one, parked or not: with the `Rc`'s two counts it fits the
// allocator's 128-byte size class.
const _: () = assert!(std::mem::size_of::<Conn>() + 2 * std::mem::size_of::<usize>() <= 128);
