//! Free loopback ports, and the reservation that keeps a test server's port its own.
//!
//! Several test processes start servers at the same time, and a test that kills its server
//! restarts it later on the same port. Between the two, another test picking "a free port"
//! could land on that port and the first test's clients would reconnect to the wrong server.
//! A [`PortReservation`] prevents that: a socket bound to `127.0.0.1:PORT` with `SO_REUSEADDR`
//! that never listens. On Linux such a socket
//!
//! - makes the kernel skip the port when anyone binds port 0 or picks a port for `connect()`,
//! - still lets `redis-server` (which also sets `SO_REUSEADDR`) bind and listen on it,
//! - and, not listening itself, lets connections to a dead server be refused as they should.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A port on 127.0.0.1 that was free a moment ago: bound with port 0, then released.
///
/// Someone else may take it before you use it; servers started by [`super::RedisServer`] use a
/// [`PortReservation`] instead and never have that race.
pub fn free_port() -> u16 {
    // A test helper: failing to bind an ephemeral loopback port means the machine is broken.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of a bound socket")
        .port()
}

/// A socket bound to `127.0.0.1:port` (with `SO_REUSEADDR`) that never listens; closed on drop.
#[derive(Debug)]
pub struct PortReservation {
    /// The bound socket: held, never read, so that the port stays ours until the drop.
    _socket: OwnedFd,
    port: u16,
}

impl PortReservation {
    /// Reserves `port` on 127.0.0.1, or a free port chosen by the kernel when `port` is 0.
    pub fn bind(port: u16) -> io::Result<Self> {
        // SAFETY: plain socket syscalls on a descriptor this function owns; every pointer
        // passed points to a live, correctly sized local.
        unsafe {
            let raw = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(raw);
            let one: libc::c_int = 1;
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            let mut addr: libc::sockaddr_in = mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_port = port.to_be();
            addr.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_in).cast(),
                len,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::getsockname(
                fd.as_raw_fd(),
                (&mut addr as *mut libc::sockaddr_in).cast(),
                &mut len,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(Self {
                _socket: fd,
                port: u16::from_be(addr.sin_port),
            })
        }
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.port
    }
}
