//! Process-level preconditions checked before any shard starts: the data directory
//! lock, free listening ports, locked-memory limits for io_uring, and the open-file
//! limit that caps client connections.

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
/// For an explicit port, an exclusive probe bind (no SO_REUSEPORT) first proves that no
/// other socket — another broker or any program — listens there: with SO_REUSEPORT alone a
/// second broker would silently share the port.
pub fn claim_port(key: &str, addr: SocketAddr) -> Result<PortClaim, String> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("{key} {addr}: address already in use by another process")
            } else {
                format!("{key} {addr}: cannot bind: {e}")
            }
        })?);
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
}
