//! systemd's readiness protocol (`sd_notify(3)`): one datagram per state change to the
//! Unix socket named in `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//!
//! * `READY=1` once every shard has recovered, bound its listeners and serves
//!   ([`Runtime::start`](super::Runtime::start) has returned): a `Type=notify` unit is
//!   "active" only when clients can connect.
//! * `STOPPING=1` when a signal starts the drain.
//! * `WATCHDOG=1` every half `$WATCHDOG_USEC` from the metrics shard, and only after a
//!   ping has gone round every other shard over the mesh and come back (the check behind
//!   `/health`): a shard stuck in a loop, or a mesh link that no longer moves, stops the
//!   pings and systemd restarts the broker. Nothing on the message path is involved.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every call does nothing. A failed send is
//! logged and otherwise ignored: systemd's bookkeeping must never stop the broker.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Set once READY=1 has gone out: the watchdog pings only after it, as systemd expects.
static READY: AtomicBool = AtomicBool::new(false);

/// Where notifications go, from `$NOTIFY_SOCKET`; `None` when not run by systemd.
fn socket_addr() -> Option<SocketAddr> {
    let name = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str());
    match bytes.first()? {
        b'@' => SocketAddr::from_abstract_name(&bytes[1..]).ok(),
        b'/' => SocketAddr::from_pathname(std::path::Path::new(&name)).ok(),
        // Anything else (e.g. vsock:) is not a Unix socket this broker knows.
        _ => None,
    }
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(addr) = socket_addr() else { return };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        // One small datagram to a local socket: no wait in practice, and never block a
        // shard on systemd.
        sock.set_nonblocking(true)?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, state, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Tells systemd the broker serves (`status` is the free-form line `systemctl status`
/// shows) and lets the watchdog start pinging.
pub fn ready(status: &str) {
    notify(&format!("READY=1\nSTATUS={status}"));
    READY.store(true, Ordering::Release);
}

/// Tells systemd the broker is draining (`status` says why).
pub fn stopping(status: &str) {
    notify(&format!("STOPPING=1\nSTATUS={status}"));
}

/// Pings systemd's watchdog, once [`ready`] has been sent.
pub fn watchdog() {
    if READY.load(Ordering::Acquire) {
        notify("WATCHDOG=1");
    }
}

/// How often to ping systemd's watchdog: half of `$WATCHDOG_USEC`, if it is set and
/// `$WATCHDOG_PID` (when set) names this process.
pub fn watchdog_interval() -> Option<Duration> {
    socket_addr()?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
