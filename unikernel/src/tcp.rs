//! tcp: blocking TCP sockets in the manner of std::net, on smoltcp's TCP sockets. Each call
//! turns the poll loop until it can proceed.
//!
//! A listener keeps a backlog of listening sockets on its port (a smoltcp socket listens for one
//! connection and then is that connection); `accept` hands out an established one and puts a
//! fresh listening socket in its place. A dropped stream is closed gracefully: its socket stays
//! in the stack until the connection is over (or 10 s have passed, then it is reset).

use crate::net::{self, Error, Stack};
use alloc::{vec, vec::Vec};
use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::IpAddress;

/// Listening sockets per listener: connections that can complete their handshake while the
/// app is busy with another.
const BACKLOG: usize = 4;
const RX_BUFFER: usize = 8 * 1024;
const TX_BUFFER: usize = 16 * 1024;
/// How long a dropped connection may take to close before it is reset.
const LINGER: Duration = Duration::from_secs(10);

/// A new socket with the given buffer sizes, listening on `port`.
pub(crate) fn listen(s: &mut Stack, port: u16, rx: usize, tx: usize) -> Result<SocketHandle, Error> {
    let mut sock = tcp::Socket::new(tcp::SocketBuffer::new(vec![0; rx]), tcp::SocketBuffer::new(vec![0; tx]));
    sock.listen(port).map_err(|_| Error::AddrInUse)?;
    // Small request/response exchanges: Nagle would hold back the last segment.
    sock.set_nagle_enabled(false);
    Ok(s.sockets.add(sock))
}

/// Whether a listening socket now holds a connection the app can take.
pub(crate) fn is_connected(sock: &tcp::Socket) -> bool {
    matches!(sock.state(), State::Established | State::CloseWait)
}

/// Lets go of a socket: closes it and leaves it to `reap`.
pub(crate) fn release(s: &mut Stack, h: SocketHandle) {
    s.sockets.get_mut::<tcp::Socket>(h).close();
    s.closing.push((h, crate::clock::now() + LINGER));
}

/// Removes the released sockets whose connection is over; resets the ones past their linger.
pub(crate) fn reap(s: &mut Stack) {
    if s.closing.is_empty() {
        return;
    }
    let now = crate::clock::now();
    let sockets = &mut s.sockets;
    s.closing.retain_mut(|(h, deadline)| {
        let sock = sockets.get_mut::<tcp::Socket>(*h);
        match sock.state() {
            State::Closed | State::TimeWait => {
                sockets.remove(*h);
                false
            }
            _ if now >= *deadline => {
                sock.abort(); // the reset goes out on the next poll, then the socket is Closed
                *deadline = Duration::MAX;
                true
            }
            _ => true,
        }
    });
}

/// A TCP server socket: `bind`, then `accept` connections.
pub struct TcpListener {
    port: u16,
    pending: Vec<SocketHandle>,
}

impl TcpListener {
    /// Listens on `port` on the interface's address (bringing the network up if needed).
    #[inline(never)]
    pub fn bind(port: u16) -> Result<TcpListener, Error> {
        if port == 0 {
            return Err(Error::AddrInUse);
        }
        let s = net::stack();
        let mut pending = Vec::with_capacity(BACKLOG);
        for _ in 0..BACKLOG {
            pending.push(listen(s, port, RX_BUFFER, TX_BUFFER)?);
        }
        Ok(TcpListener { port, pending })
    }

    /// The port listened on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next connection.
    #[inline(never)]
    pub fn accept(&mut self) -> TcpStream {
        loop {
            if let Some(c) = self.accept_timeout(Duration::from_secs(3600)) {
                return c;
            }
        }
    }

    /// Waits up to `timeout` for the next connection.
    pub fn accept_timeout(&mut self, timeout: Duration) -> Option<TcpStream> {
        let deadline = crate::clock::now() + timeout;
        let mut ready = None;
        let pending = &self.pending;
        net::poll_until(Some(deadline), |s| {
            ready = pending.iter().position(|&h| is_connected(s.sockets.get::<tcp::Socket>(h)));
            ready.is_some()
        });
        let i = ready?;
        let s = net::stack();
        let h = self.pending[i];
        // The port is ours already, so listening again cannot fail for the port's sake.
        self.pending[i] = listen(s, self.port, RX_BUFFER, TX_BUFFER).ok()?;
        Some(TcpStream { handle: h, read_timeout: None })
    }
}

impl Drop for TcpListener {
    fn drop(&mut self) {
        let s = net::stack();
        for &h in &self.pending {
            s.sockets.remove(h);
        }
    }
}

/// A TCP connection.
pub struct TcpStream {
    handle: SocketHandle,
    read_timeout: Option<Duration>,
}

fn sock(s: &mut Stack, h: SocketHandle) -> &mut tcp::Socket<'static> {
    s.sockets.get_mut::<tcp::Socket>(h)
}

impl TcpStream {
    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddrV4> {
        let ep = sock(net::stack(), self.handle).remote_endpoint()?;
        let IpAddress::Ipv4(a) = ep.addr;
        Some(SocketAddrV4::new(Ipv4Addr::from(a), ep.port))
    }

    /// A deadline for each `read` (`None`: wait forever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Reads what has arrived (waiting for something); Ok(0) once the peer has closed its side.
    #[inline(never)]
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let h = self.handle;
        let deadline = self.read_timeout.map(|t| crate::clock::now() + t);
        if !net::poll_until(deadline, |s| {
            let k = sock(s, h);
            k.can_recv() || !k.may_recv()
        }) {
            return Err(Error::TimedOut);
        }
        let k = sock(net::stack(), h);
        if !k.can_recv() {
            // Reset when the socket is gone altogether, end of stream after the peer's FIN.
            return if k.state() == State::Closed { Err(Error::ConnectionReset) } else { Ok(0) };
        }
        k.recv_slice(buf).map_err(|_| Error::ConnectionReset)
    }

    /// Queues some of `buf` for sending (waiting for room); how much was taken.
    #[inline(never)]
    pub fn write(&mut self, buf: &[u8]) -> Result<usize, Error> {
        let h = self.handle;
        net::poll_until(None, |s| {
            let k = sock(s, h);
            k.can_send() || !k.may_send()
        });
        let s = net::stack();
        let k = sock(s, h);
        if !k.may_send() {
            return Err(Error::ConnectionReset);
        }
        let n = k.send_slice(buf).map_err(|_| Error::ConnectionReset)?;
        s.poll(); // out at once: the app may not call again soon
        Ok(n)
    }

    /// Writes all of `buf`.
    pub fn write_all(&mut self, mut buf: &[u8]) -> Result<(), Error> {
        while !buf.is_empty() {
            let n = self.write(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Waits until everything written has been acknowledged by the peer.
    pub fn flush(&mut self) -> Result<(), Error> {
        let h = self.handle;
        net::poll_until(None, |s| {
            let k = sock(s, h);
            k.send_queue() == 0 || !k.may_send()
        });
        if sock(net::stack(), h).send_queue() == 0 { Ok(()) } else { Err(Error::ConnectionReset) }
    }

    /// Closes the connection (what was written still goes out first). Same as dropping it.
    pub fn close(self) {}
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        release(net::stack(), self.handle);
    }
}
