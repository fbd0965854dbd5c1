//! Process-level preconditions checked before any shard starts: the data directory
//! lock, free listening ports, locked-memory limits for io_uring, the open-file limit
//! that caps client connections, and 4 KiB pages for the heap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK.
pub const MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// glommio registers the io_memory pool with each of its rings.
const IO_MEMORY_REGISTRATIONS: u64 = 3;
/// Below this, registered buffers are not worth having; glommio falls back to plain ones.
const IO_MEMORY_MIN_BYTES: u64 = 64 << 10;

/// An exclusive `flock` on `data_dir/shardmq.lock`, held for the life of the process.
/// Two brokers on one data dir would corrupt each other's WAL, and (same user +
/// SO_REUSEPORT) would silently split the MQTT port between them.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and takes the lock, or says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create data_dir {}: {e}", data_dir.display()))?;
        let path = data_dir.join("shardmq.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("cannot open lock file {}: {e}", path.display()))?;
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(format!(
                "data_dir {} is in use by another shardmq process (pid {}); \
                 every broker needs its own data_dir",
                data_dir.display(),
                holder.trim()
            ));
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(|e| format!("cannot write lock file {}: {e}", path.display()))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// Where the lock lives.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A listening address claimed for the shards: resolved (port 0 picks a free port) and
/// held by a reservation socket until every shard has bound its own listener.
#[derive(Debug)]
pub struct PortClaim {
    /// The resolved address.
    pub addr: SocketAddr,
    /// Bound with SO_REUSEPORT but never listening: it receives no connections, yet keeps
    /// the kernel from handing the port to anyone else before the shards bind it.
    _reservation: socket2::Socket,
}

/// Claims `addr` for the shards.
///
/// For an explicit port, a probe bind with SO_REUSEADDR but without SO_REUSEPORT first
/// proves that no other socket — another broker or any program — listens there: with
/// SO_REUSEPORT alone a second broker would silently share the port. SO_REUSEADDR makes
/// the probe ignore what a previous run left behind: the server side of its closed
/// connections (TIME_WAIT, FIN_WAIT) stays bound to the port for up to a minute, and
/// because [`bind_listener`] sets SO_REUSEADDR on every listener, those sockets carry it
/// too. Sockets left by a listener bound without it (an older shardmq) still collide with
/// the probe; then `/proc/net/tcp{,6}` tells a live listener (refused) from closing
/// connections only (the port is taken, as a restart must).
pub fn claim_port(key: &str, addr: SocketAddr) -> Result<PortClaim, String> {
    if addr.port() != 0 {
        probe_port(key, addr)?;
    }
    let err = |e: std::io::Error| format!("{key} {addr}: cannot reserve: {e}");
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    let resolved = socket
        .local_addr()
        .map_err(err)?
        .as_socket()
        .ok_or_else(|| format!("{key} {addr}: not an IP address"))?;
    Ok(PortClaim {
        addr: resolved,
        _reservation: socket,
    })
}

/// A shard's listener on a claimed address: SO_REUSEPORT (every shard binds the port, the
/// kernel spreads connections) and SO_REUSEADDR, so that it binds through the closing
/// connections of a previous run and so do the next run's [`claim_port`] probe and
/// listeners through this run's. Must be called on the shard's executor.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<glommio::net::TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    /// The accept backlog glommio's own `TcpListener::bind` uses.
    const BACKLOG: i32 = 1024;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    // SAFETY: a bound, listening TCP socket whose ownership moves into the listener.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Refuses `addr` if another socket listens on it (see [`claim_port`]).
fn probe_port(key: &str, addr: SocketAddr) -> Result<(), String> {
    let probe = || -> std::io::Result<()> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())
    };
    let Err(e) = probe() else { return Ok(()) };
    if e.kind() != std::io::ErrorKind::AddrInUse {
        return Err(format!("{key} {addr}: cannot bind: {e}"));
    }
    let sockets = tcp_sockets_on(addr);
    if sockets.listening {
        return Err(format!(
            "{key} {addr}: address already in use by another process (a program listens on it)"
        ));
    }
    if sockets.closing == 0 {
        return Err(format!(
            "{key} {addr}: address already in use by another process"
        ));
    }
    tracing::info!(
        key,
        %addr,
        sockets = sockets.closing,
        "port still held by closing connections of an earlier run; taking it"
    );
    Ok(())
}

/// What `/proc/net/tcp{,6}` shows bound to a port.
#[derive(Debug, Default, PartialEq, Eq)]
struct PortSockets {
    /// A socket in LISTEN on an address that overlaps ours.
    listening: bool,
    /// Connections on the port that are closing (FIN_WAIT, TIME_WAIT, CLOSING, LAST_ACK).
    closing: usize,
}

/// Reads the kernel's TCP tables for sockets on `addr`'s port. Unreadable tables read as a
/// listener: refusing a free port is safer than sharing a busy one.
fn tcp_sockets_on(addr: SocketAddr) -> PortSockets {
    let mut found = PortSockets::default();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match std::fs::read_to_string(table) {
            Ok(text) => scan_tcp_table(&text, addr, &mut found),
            Err(_) if table.ends_with('6') => {} // no IPv6 in this kernel
            Err(_) => found.listening = true,
        }
    }
    found
}

/// Adds the sockets of one `/proc/net/tcp`-format table that sit on `addr`'s port.
fn scan_tcp_table(text: &str, addr: SocketAddr, found: &mut PortSockets) {
    /// Kernel TCP states (include/net/tcp_states.h) of a connection being closed.
    const CLOSING_STATES: [&str; 5] = ["04", "05", "06", "09", "0B"];
    const LISTEN: &str = "0A";
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) =
            (fields.nth(1), fields.next(), fields.next())
        else {
            continue;
        };
        let Some((ip_hex, port_hex)) = local.split_once(':') else {
            continue;
        };
        if u16::from_str_radix(port_hex, 16).ok() != Some(addr.port()) {
            continue;
        }
        if state == LISTEN {
            // All-zero hex is the wildcard address (0.0.0.0 or ::).
            let wildcard = ip_hex.bytes().all(|b| b == b'0');
            if wildcard || addr.ip().is_unspecified() || hex_ip_is(ip_hex, addr) {
                found.listening = true;
            }
        } else if CLOSING_STATES.contains(&state) {
            found.closing += 1;
        }
    }
}

/// Whether a `/proc/net/tcp` address (the kernel's words in host byte order, as hex) is
/// `addr`'s IP, also as an IPv4-mapped IPv6 address.
fn hex_ip_is(ip_hex: &str, addr: SocketAddr) -> bool {
    let words: Option<Vec<u32>> = (0..ip_hex.len() / 8)
        .map(|i| u32::from_str_radix(&ip_hex[i * 8..i * 8 + 8], 16).ok())
        .collect();
    let Some(words) = words else { return false };
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
        16 => {
            let v6 = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"));
            v6.to_ipv4_mapped().map_or(v6.into(), Into::into)
        }
        _ => return false,
    };
    ip == addr.ip()
}

/// Checks RLIMIT_MEMLOCK (raising the soft limit to the hard one if that helps) and
/// returns the io_memory each shard can register within it.
pub fn io_memory_per_shard(shards: usize, io_memory_bytes: usize) -> Result<usize, String> {
    let Some(limit) = soft_raised_to_hard(libc::RLIMIT_MEMLOCK) else {
        return Ok(io_memory_bytes);
    };
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(io_memory_bytes);
    }
    if limit.rlim_cur < MEMLOCK_MIN_BYTES {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB but each shard's io_uring needs at least {} KiB. Raise it: \
             `ulimit -l unlimited` in the shell (as root), `LimitMEMLOCK=infinity` in a systemd \
             unit, `--ulimit memlock=-1` for a container, or a `memlock` line in \
             /etc/security/limits.conf",
            limit.rlim_cur >> 10,
            MEMLOCK_MIN_BYTES >> 10
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // root has CAP_IPC_LOCK: registration is not charged against the limit.
        return Ok(io_memory_bytes);
    }
    let per_shard = limit.rlim_cur / shards.max(1) as u64 / IO_MEMORY_REGISTRATIONS;
    Ok((io_memory_bytes as u64)
        .min(per_shard)
        .max(IO_MEMORY_MIN_BYTES) as usize)
}

/// Whether locked memory is no constraint for io_uring: root (CAP_IPC_LOCK: nothing is
/// charged) or RLIMIT_MEMLOCK unlimited (after raising the soft limit to the hard one).
pub fn memlock_unconstrained() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root || soft_raised_to_hard(libc::RLIMIT_MEMLOCK)
        .is_some_and(|limit| limit.rlim_cur == libc::RLIM_INFINITY)
}

/// Raises the soft limit of `resource` to its hard limit if it is lower; returns the
/// limit in force, or `None` if it cannot be read.
fn soft_raised_to_hard(resource: libc::__rlimit_resource_t) -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(resource, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(resource, &raised) == 0 {
                limit = raised;
            }
        }
    }
    Some(limit)
}

/// Descriptors a client connection holds: its socket, shared by its reader and writer.
pub const FDS_PER_CONNECTION: u64 = 1;
/// Descriptors kept for everything else: listeners, WAL segments, mesh, logs.
const FDS_RESERVED: u64 = 256;

/// Raises the RLIMIT_NOFILE soft limit to the hard one and returns how many client
/// connections it allows. Past that, accept fails with EMFILE and the shard backs off:
/// a limit below `connections_max` is worth a warning at start.
pub fn raise_nofile_limit() -> u64 {
    let Some(limit) = soft_raised_to_hard(libc::RLIMIT_NOFILE) else {
        return u64::MAX;
    };
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return u64::MAX;
    }
    let connections = limit.rlim_cur.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION;
    if limit.rlim_cur < limit.rlim_max {
        tracing::warn!(
            soft = limit.rlim_cur,
            hard = limit.rlim_max,
            "could not raise the RLIMIT_NOFILE soft limit to the hard one"
        );
    }
    tracing::info!(
        soft = limit.rlim_cur,
        hard = limit.rlim_max,
        connections,
        "open-file limit: room for this many client connections"
    );
    connections
}

/// Turns transparent huge pages off for this process.
///
/// The allocator asks for huge pages on its heap (`madvise(MADV_HUGEPAGE)`), and the
/// kernel's khugepaged then fills any 2 MiB range of it that holds a few live objects
/// into a whole huge page, at a moment of its choosing: the idle broker's resident
/// memory grows by megabytes at random times (9 MB within a minute, measured with
/// 15,000 idle connections) and sits at the span of its heap rather than at what it
/// holds. With 4 KiB pages resident memory follows the objects, which is what an
/// operator sizing a host for many idle devices needs. `PR_SET_THP_DISABLE` holds for
/// every mapping of the process, present and future, whatever the host's setting.
pub fn no_huge_pages() -> std::io::Result<()> {
    /// `PR_SET_THP_DISABLE` from <linux/prctl.h> (Linux 3.15), which the libc crate
    /// does not name for this target.
    const PR_SET_THP_DISABLE: libc::c_int = 41;
    // prctl is variadic and the kernel reads its four arguments as unsigned longs: each
    // is passed as one, so none carries stray upper bits (the third selects a mode on
    // newer kernels; 0 is "off for every mapping").
    let (on, mode, unused): (libc::c_ulong, libc::c_ulong, libc::c_ulong) = (1, 0, 0);
    // SAFETY: this prctl takes plain integers and changes only the process's flags.
    let rc = unsafe { libc::prctl(PR_SET_THP_DISABLE, on, mode, unused, unused) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(err.contains("in use by another shardmq"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn busy_port_is_refused() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        let err = claim_port("mqtt_listen", addr).unwrap_err();
        assert!(err.contains("already in use"), "{err}");
        let free = claim_port("mqtt_listen", "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(free.addr.port(), 0);
        // While claimed, nobody else can take the port exclusively.
        assert!(std::net::TcpListener::bind(free.addr).is_err());
    }

    #[test]
    fn closing_connections_of_a_listener_without_reuseaddr_do_not_block_a_claim() {
        // A listener as glommio's `bind` makes it (SO_REUSEPORT only), as an older shardmq
        // ran: the server side closes first, so its socket stays in TIME_WAIT.
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.set_reuse_port(true).unwrap();
        listener.bind(&addr.into()).unwrap();
        listener.listen(8).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        drop(server);
        let _ = std::io::Read::read(&mut client, &mut [0u8; 1]);
        drop(client);
        drop(listener);
        let claim = claim_port("mqtt_listen", addr).unwrap();
        assert_eq!(claim.addr, addr);
    }

    #[test]
    fn proc_tables_tell_listeners_from_closing_connections() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
   0: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
   1: 0100007F:0F1E 0100007F:9C40 06 00000000:00000000 03:00000DC5 00000000\n\
   2: 0100007F:0F1E 0100007F:9C41 05 00000000:00000000 00:00000000 00000000\n\
   3: 0200007F:0F1F 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n";
        let scan = |addr: &str| {
            let mut found = PortSockets::default();
            scan_tcp_table(table, addr.parse().unwrap(), &mut found);
            found
        };
        let listener = PortSockets {
            listening: true,
            closing: 0,
        };
        assert_eq!(scan("127.0.0.1:1883"), listener);
        assert_eq!(scan("0.0.0.0:1883"), listener);
        assert_eq!(
            scan("127.0.0.1:3870"),
            PortSockets {
                listening: false,
                closing: 2
            }
        );
        // A listener on another address of the same port does not collide.
        assert_eq!(scan("127.0.0.1:3871"), PortSockets::default());
        assert_eq!(scan("127.0.0.2:3871"), listener);
    }
}
