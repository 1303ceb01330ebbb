//! dns: IPv4 name lookup (A records) over the udp module: the resolvers from DHCP or `dns=`,
//! each asked up to 3 times with a 1 s wait. A minimal RFC 1035 client: one question, answers
//! parsed with name compression.

use crate::net::{self, Error};
use crate::udp::UdpSocket;
use alloc::vec::Vec;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

const TRIES: usize = 3;
const WAIT: Duration = Duration::from_secs(1);

/// Resolves `name` to an IPv4 address (a dotted quad is returned as it is).
#[inline(never)]
pub fn resolve(name: &str) -> Result<Ipv4Addr, Error> {
    if let Ok(a) = name.parse::<Ipv4Addr>() {
        return Ok(a);
    }
    let servers = net::stack().config.dns_servers.clone();
    if servers.is_empty() {
        return Err(Error::Unreachable);
    }
    let id = crate::rng::random_u64() as u16;
    let query = build_query(id, name).ok_or(Error::NotFound)?;
    let mut sock = UdpSocket::bind(0)?;
    sock.set_read_timeout(Some(WAIT));
    let mut buf = [0u8; 512];
    for _ in 0..TRIES {
        for &server in &servers {
            let to = SocketAddrV4::new(server, 53);
            sock.send_to(&query, to)?;
            let deadline = crate::clock::now() + WAIT;
            while crate::clock::now() < deadline {
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) if from == to => match parse_answer(id, &buf[..n]) {
                        Some(Ok(a)) => return Ok(a),
                        Some(Err(e)) => return Err(e),
                        None => {} // not our answer
                    },
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    }
    Err(Error::TimedOut)
}

/// A standard query with recursion desired for the A record of `name`.
fn build_query(id: u16, name: &str) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root; QTYPE A; QCLASS IN
    (q.len() <= 512).then_some(q)
}

/// Skips a (possibly compressed) name at `at`; the offset after it.
fn skip_name(m: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *m.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2), // a pointer ends the name
            l => at += 1 + l as usize,
        }
    }
}

/// Our answer's first A record; None when the message is not the answer to `id`,
/// Some(Err) for a negative answer.
fn parse_answer(id: u16, m: &[u8]) -> Option<Result<Ipv4Addr, Error>> {
    let be16 = |at: usize| -> Option<u16> { Some(u16::from_be_bytes([*m.get(at)?, *m.get(at + 1)?])) };
    if be16(0)? != id || m[2] & 0x80 == 0 {
        return None;
    }
    if m[3] & 0x0f != 0 {
        return Some(Err(Error::NotFound)); // NXDOMAIN, SERVFAIL, ...
    }
    let (qd, an) = (be16(4)?, be16(6)?);
    let mut at = 12;
    for _ in 0..qd {
        at = skip_name(m, at)? + 4;
    }
    for _ in 0..an {
        at = skip_name(m, at)?;
        let (kind, class, len) = (be16(at)?, be16(at + 2)?, be16(at + 8)? as usize);
        let data = m.get(at + 10..at + 10 + len)?;
        if kind == 1 && class == 1 && len == 4 {
            return Some(Ok(Ipv4Addr::new(data[0], data[1], data[2], data[3])));
        }
        at += 10 + len;
    }
    Some(Err(Error::NotFound))
}
