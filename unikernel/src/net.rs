//! net: an IPv4 stack on smoltcp over the virtio-net driver: Ethernet, ARP, IPv4, ICMP echo
//! (answered by the interface itself), DHCPv4, polled (interrupts are off: every blocking call
//! of tcp/udp/dns/http turns the poll loop).
//!
//! Brought up on first use. Configuration: DHCPv4 (qemu's user network answers at once) with a
//! bounded wait, else the static configuration of the command line:
//!   `ip=A.B.C.D/N`  address and prefix   `gw=A.B.C.D`  default route   `dns=A.B.C.D`  resolver
//!   `dhcp=off`      static only (no wait) `dhcp=SECONDS` the DHCP wait (default 5)
//! These words are not the app's: the args module drops them. The outcome is printed
//! (`net: 10.0.2.15/24 via dhcp`); with neither a lease nor a static address the image prints
//! why and exits with code 104.

use alloc::vec;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use core::time::Duration;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Cidr};

use crate::net_virtio::{self, VirtioNet};

/// Exit code when the network cannot be brought up.
pub const EXIT_NO_NETWORK: i32 = 104;
const DEFAULT_DHCP_WAIT: Duration = Duration::from_secs(5);

/// Errors of the network calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The peer reset the connection, or it is closed and no more data may be sent.
    ConnectionReset,
    /// The port is taken or invalid.
    AddrInUse,
    /// A deadline passed.
    TimedOut,
    /// The destination cannot be reached (no route, no address yet).
    Unreachable,
    /// A malformed or unanswered name lookup.
    NotFound,
}

/// The address configuration in use.
#[derive(Clone, Debug)]
pub struct Ipv4Config {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    /// "dhcp" or "static".
    pub source: &'static str,
}

/// The network stack: smoltcp's interface, its sockets and the device.
pub(crate) struct Stack {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    dev: VirtioNet,
    dhcp: Option<SocketHandle>,
    pub config: Ipv4Config,
    /// Sockets the app let go of, removed once their connection is over (or after a grace
    /// period), so a closing TCP connection still flushes and says FIN.
    #[cfg(feature = "tcp")]
    pub closing: Vec<(SocketHandle, Duration)>,
    pub next_port: u16,
}

static mut STACK: Option<Stack> = None;

/// The stack, brought up on first use (exits the image when that fails).
pub(crate) fn stack() -> &'static mut Stack {
    // SAFETY: single-threaded, and no caller keeps the reference across another call here
    // that could re-enter (all uses are short, inside this crate).
    unsafe {
        let s = &mut *&raw mut STACK;
        if s.is_none() {
            *s = Some(up());
        }
        s.as_mut().unwrap()
    }
}

pub(crate) fn now() -> Instant {
    Instant::from_micros(crate::clock::now().as_micros() as i64)
}

/// Whether a command-line word is network configuration (not an app argument).
#[allow(dead_code)] // used by args
pub(crate) fn is_config_word(w: &str) -> bool {
    ["ip=", "gw=", "dns=", "dhcp="].iter().any(|p| w.starts_with(p))
}

fn cmdline_word(key: &str) -> Option<&'static str> {
    let cmdline = crate::boot::start_info().map_or("", |si| si.cmdline());
    cmdline.split_ascii_whitespace().filter_map(|w| w.strip_prefix(key)).last()
}

fn fail(why: core::fmt::Arguments) -> ! {
    crate::println!("net: {why}");
    crate::exit::exit(EXIT_NO_NETWORK)
}

/// The static configuration of the command line, if any (a malformed word is fatal: better
/// than silently running without the address the user asked for).
fn static_config() -> Option<Ipv4Config> {
    let ip = cmdline_word("ip=")?;
    let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "24"));
    let (Ok(addr), Ok(prefix_len)) = (addr.parse::<Ipv4Addr>(), prefix.parse::<u8>()) else {
        fail(format_args!("bad ip={ip} on the command line (want ip=A.B.C.D/N)"))
    };
    if prefix_len > 32 {
        fail(format_args!("bad prefix in ip={ip}"));
    }
    let parse = |key: &str| {
        cmdline_word(key).map(|v| v.parse::<Ipv4Addr>().unwrap_or_else(|_| fail(format_args!("bad {key}{v} on the command line"))))
    };
    Some(Ipv4Config { addr, prefix_len, gateway: parse("gw="), dns_servers: parse("dns=").into_iter().collect(), source: "static" })
}

/// Finds the device, builds the interface, gets an address.
#[inline(never)]
fn up() -> Stack {
    let Some(mut dev) = VirtioNet::init() else {
        fail(format_args!("no virtio-net device (qemu: -netdev user,id=n0 -device virtio-net-device,netdev=n0)"))
    };
    let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(dev.mac)));
    cfg.random_seed = crate::rng::random_u64();
    let iface = Interface::new(cfg, &mut dev, now());
    let mut stack = Stack {
        iface,
        sockets: SocketSet::new(vec![]),
        dev,
        dhcp: None,
        config: Ipv4Config { addr: Ipv4Addr::UNSPECIFIED, prefix_len: 0, gateway: None, dns_servers: Vec::new(), source: "none" },
        #[cfg(feature = "tcp")]
        closing: Vec::new(),
        next_port: 49152 + (crate::rng::random_u64() % 16384) as u16,
    };
    let wait = match cmdline_word("dhcp=") {
        Some("off") | Some("0") => None,
        Some(s) => Some(s.parse::<u64>().map(Duration::from_secs).unwrap_or(DEFAULT_DHCP_WAIT)),
        None => Some(DEFAULT_DHCP_WAIT),
    };
    if let Some(wait) = wait {
        let mut sock = dhcpv4::Socket::new();
        // Retry soon: the default first retry (10 s) is longer than the whole wait.
        let mut retry = dhcpv4::RetryConfig::default();
        retry.discover_timeout = smoltcp::time::Duration::from_millis(500);
        retry.initial_request_timeout = smoltcp::time::Duration::from_millis(500);
        sock.set_retry_config(retry);
        stack.dhcp = Some(stack.sockets.add(sock));
        let deadline = crate::clock::now() + wait;
        while stack.config.source != "dhcp" && crate::clock::now() < deadline {
            stack.poll();
        }
        if stack.config.source != "dhcp" {
            // Stop asking: a late lease must not replace the static address under the app.
            if let Some(h) = stack.dhcp.take() {
                stack.sockets.remove(h);
            }
            match static_config() {
                Some(c) => {
                    crate::println!("net: no DHCP lease within {} s, using the static address", wait.as_secs());
                    stack.apply(c);
                }
                None => fail(format_args!(
                    "no DHCP lease within {} s and no static address (give ip=A.B.C.D/N gw=A.B.C.D on the command line)",
                    wait.as_secs()
                )),
            }
        }
    } else {
        match static_config() {
            Some(c) => stack.apply(c),
            None => fail(format_args!("dhcp=off and no static address (give ip=A.B.C.D/N gw=A.B.C.D on the command line)")),
        }
    }
    let c = &stack.config;
    crate::println!("net: {}/{} via {}", c.addr, c.prefix_len, c.source);
    stack
}

impl Stack {
    /// Sets the interface's address, route and resolvers.
    fn apply(&mut self, c: Ipv4Config) {
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(c.addr, c.prefix_len)));
        });
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(gw) = c.gateway {
            let _ = routes.add_default_ipv4_route(gw);
        }
        self.config = c;
    }

    /// One turn of the stack: frames in and out, timers, DHCP events, closed sockets reaped.
    #[inline(never)]
    pub fn poll(&mut self) {
        let t = now();
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        if let Some(h) = self.dhcp {
            // The event borrows the socket: take what is needed, then apply.
            let event = match self.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
                Some(dhcpv4::Event::Configured(c)) => Some(Some(Ipv4Config {
                    addr: c.address.address(),
                    prefix_len: c.address.prefix_len(),
                    gateway: c.router,
                    dns_servers: c.dns_servers.iter().copied().collect(),
                    source: "dhcp",
                })),
                Some(dhcpv4::Event::Deconfigured) => Some(None),
                None => None,
            };
            match event {
                Some(Some(c)) => self.apply(c),
                Some(None) => {
                    self.iface.update_ip_addrs(|a| a.clear());
                    self.iface.routes_mut().remove_default_ipv4_route();
                }
                None => {}
            }
        }
        #[cfg(feature = "tcp")]
        crate::tcp::reap(self);
    }

    /// An ephemeral port for a client socket.
    #[allow(dead_code)]
    pub fn ephemeral_port(&mut self) -> u16 {
        let p = self.next_port;
        self.next_port = if p == u16::MAX { 49152 } else { p + 1 };
        p
    }
}

/// One turn of the stack (for apps that wait on something else).
pub fn poll() {
    stack().poll();
}

/// Polls until `done` or the deadline (`None`: forever); whether `done` became true.
#[allow(dead_code)] // used by the socket modules
pub(crate) fn poll_until(deadline: Option<Duration>, mut done: impl FnMut(&mut Stack) -> bool) -> bool {
    let s = stack();
    loop {
        s.poll();
        if done(s) {
            return true;
        }
        if deadline.is_some_and(|d| crate::clock::now() >= d) {
            return false;
        }
    }
}

/// What `Runtime::net()` gives: the interface's configuration.
pub struct Net {
    _private: (),
}

impl Net {
    /// The address configuration (DHCP's or the command line's).
    pub fn config(&self) -> &'static Ipv4Config {
        &stack().config
    }

    /// The interface's IPv4 address.
    pub fn addr(&self) -> Ipv4Addr {
        stack().config.addr
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        stack().dev.mac
    }

    /// One turn of the stack.
    pub fn poll(&self) {
        poll()
    }
}

impl crate::Runtime {
    /// The network, brought up (DHCP or static, see the module docs) on the first call.
    pub fn net(&self) -> Net {
        stack();
        Net { _private: () }
    }
}

// smoltcp's device interface over the driver: a receive token lends a filled receive buffer
// (recycled after the stack read it), a transmit token a free transmit buffer.

#[doc(hidden)]
pub struct RxToken<'a> {
    rx: &'a mut net_virtio::Rx,
    id: u16,
    len: usize,
}

#[doc(hidden)]
pub struct TxToken<'a> {
    tx: &'a mut net_virtio::Tx,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.rx.frame(self.id, self.len));
        self.rx.recycle(self.id);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        // The token is only handed out when a buffer is free, so this cannot fail.
        let id = self.tx.alloc().expect("net: transmit buffer");
        let r = f(self.tx.frame(id, len));
        self.tx.send(id, len);
        r
    }
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !self.tx.has_free() {
            return None; // the stack may answer a frame: keep it until it can
        }
        let (id, len) = self.rx.next()?;
        Some((RxToken { rx: &mut self.rx, id, len }, TxToken { tx: &mut self.tx }))
    }

    fn transmit(&mut self, _t: Instant) -> Option<TxToken<'_>> {
        self.tx.has_free().then_some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = net_virtio::MAX_FRAME;
        caps
    }
}
