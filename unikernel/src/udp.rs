//! udp: blocking UDP sockets in the manner of std::net, on smoltcp's UDP sockets (the only way
//! smoltcp's UDP socket code gets into an image).

use crate::net::{self, Error};
use alloc::vec;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint};

const PACKETS: usize = 8;
const BUFFER: usize = 8 * 1024;

/// A UDP socket bound to a local port.
pub struct UdpSocket {
    handle: SocketHandle,
    port: u16,
    read_timeout: Option<Duration>,
}

impl UdpSocket {
    /// Binds `port` (0: an ephemeral port), bringing the network up if needed.
    #[inline(never)]
    pub fn bind(port: u16) -> Result<UdpSocket, Error> {
        let s = net::stack();
        let port = if port == 0 { s.ephemeral_port() } else { port };
        let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; PACKETS], vec![0; BUFFER]);
        let mut sock = udp::Socket::new(buf(), buf());
        sock.bind(port).map_err(|_| Error::AddrInUse)?;
        Ok(UdpSocket { handle: s.sockets.add(sock), port, read_timeout: None })
    }

    /// The local port.
    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// A deadline for each `recv_from` (`None`: wait forever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Sends one datagram.
    #[inline(never)]
    pub fn send_to(&mut self, buf: &[u8], to: SocketAddrV4) -> Result<usize, Error> {
        let h = self.handle;
        net::poll_until(None, |s| s.sockets.get::<udp::Socket>(h).can_send());
        let s = net::stack();
        let ep = IpEndpoint::new(IpAddress::Ipv4(*to.ip()), to.port());
        s.sockets.get_mut::<udp::Socket>(h).send_slice(buf, ep).map_err(|_| Error::Unreachable)?;
        s.poll();
        Ok(buf.len())
    }

    /// Receives one datagram (waiting up to the read timeout): its length (truncated to `buf`)
    /// and sender.
    #[inline(never)]
    pub fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, SocketAddrV4), Error> {
        let h = self.handle;
        let deadline = self.read_timeout.map(|t| crate::clock::now() + t);
        if !net::poll_until(deadline, |s| s.sockets.get::<udp::Socket>(h).can_recv()) {
            return Err(Error::TimedOut);
        }
        let (n, meta) = net::stack().sockets.get_mut::<udp::Socket>(h).recv_slice(buf).map_err(|_| Error::TimedOut)?;
        let IpAddress::Ipv4(a) = meta.endpoint.addr;
        Ok((n, SocketAddrV4::new(Ipv4Addr::from(a), meta.endpoint.port)))
    }
}

impl Drop for UdpSocket {
    fn drop(&mut self) {
        net::stack().sockets.remove(self.handle);
    }
}
