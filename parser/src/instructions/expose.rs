//! EXPOSE: ports, ranges and protocols, checked here (BuildKit checks them when it builds).

use crate::ast::{Span, Word};

use super::Cx;
use super::util::needs_expansion;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Expose {
    pub span: Span,
    pub ports: Vec<ExposePort>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ExposePort {
    /// As written.
    pub raw: Word,
    /// `None` when the word holds a variable: it is parsed after expansion (and may expand
    /// to several ports).
    pub spec: Option<PortSpec>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// `[ip:][hostPort:]port[-end][/proto]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PortSpec {
    pub start: u16,
    pub end: u16,
    pub protocol: Protocol,
    /// The protocol as written (empty when none), for the casing lint.
    pub protocol_written: String,
    /// A host IP or host port: accepted by BuildKit but meaningless for EXPOSE (lint).
    pub host_ip: Option<String>,
    pub host_port: Option<String>,
}

impl PortSpec {
    /// The image-config keys, `port/proto`, one per port of the range.
    pub fn keys(&self) -> Vec<String> {
        (self.start..=self.end)
            .map(|p| format!("{p}/{}", self.protocol.as_str()))
            .collect()
    }
}

fn port_number(s: &str) -> Result<u16, ()> {
    if s.is_empty() {
        return Err(());
    }
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let n: i64 = s.parse().map_err(|_| ())?;
    u16::try_from(n).map_err(|_| ())
}

fn port_range(s: &str) -> Result<(u16, u16), ()> {
    if s.is_empty() {
        return Err(());
    }
    let (start, end) = match s.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let lo = port_number(start)?;
    match end {
        Some(e) if e != start => {
            let hi = port_number(e)?;
            if hi < lo {
                return Err(());
            }
            Ok((lo, hi))
        }
        _ => Ok((lo, lo)),
    }
}

/// Parses one EXPOSE word (BuildKit's parsePort), with its error texts.
pub fn parse_port(raw: &str) -> Result<PortSpec, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let n = parts.len();
    let (ip, host_port, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    if port.is_empty() {
        return Err(format!(
            "invalid port: {}: no port specified",
            crate::golang::quote(raw)
        ));
    }
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "" | "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "sctp" => Protocol::Sctp,
        _ => {
            return Err(format!(
                "invalid port: {}: invalid proto: {proto}",
                crate::golang::quote(raw)
            ));
        }
    };
    if !ip.is_empty() {
        let bare = if ip.starts_with('[') {
            ip.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .ok_or_else(|| format!("invalid IP address {ip}"))?
        } else {
            ip.as_str()
        };
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {bare}"));
        }
    }
    let (start, end) = port_range(port).map_err(|_| format!("invalid containerPort: {port}"))?;
    if !host_port.is_empty() {
        let (hs, he) =
            port_range(host_port).map_err(|_| format!("invalid hostPort: {host_port}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host_port}"
            ));
        }
    }
    Ok(PortSpec {
        start,
        end,
        protocol,
        protocol_written: proto.to_owned(),
        host_ip: (!ip.is_empty()).then_some(ip),
        host_port: (!host_port.is_empty()).then(|| host_port.to_owned()),
    })
}

pub(crate) fn parse_expose(cx: &mut Cx) -> Option<Expose> {
    if !cx.at_least_one() {
        return None;
    }
    cx.no_flags();
    let mut ports = Vec::new();
    for w in &cx.node.args {
        if needs_expansion(&w.value) {
            ports.push(ExposePort {
                raw: w.clone(),
                spec: None,
            });
            continue;
        }
        match parse_port(&w.value) {
            Ok(spec) => ports.push(ExposePort {
                raw: w.clone(),
                spec: Some(spec),
            }),
            Err(e) => cx.error(
                "invalid-port",
                w.span,
                e,
                "write EXPOSE <port>[/<protocol>], e.g. 80, 53/udp or 8000-8010/tcp",
            ),
        }
    }
    Some(Expose {
        span: cx.node.span,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        let p = parse_port("8000-8002/UDP").unwrap();
        assert_eq!((p.start, p.end, p.protocol), (8000, 8002, Protocol::Udp));
        assert_eq!(p.keys(), ["8000/udp", "8001/udp", "8002/udp"]);
        assert_eq!(parse_port("80").unwrap().keys(), ["80/tcp"]);
        let p = parse_port("127.0.0.1:8080:80").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.host_port.as_deref(), Some("8080"));
        assert!(parse_port("[::1]:80:80").is_ok());
        assert_eq!(
            parse_port("80/foo").unwrap_err(),
            "invalid port: \"80/foo\": invalid proto: foo"
        );
        assert_eq!(
            parse_port("http").unwrap_err(),
            "invalid containerPort: http"
        );
        assert_eq!(
            parse_port("70000").unwrap_err(),
            "invalid containerPort: 70000"
        );
        assert_eq!(
            parse_port("90-80").unwrap_err(),
            "invalid containerPort: 90-80"
        );
        assert_eq!(
            parse_port("/tcp").unwrap_err(),
            "invalid port: \"/tcp\": no port specified"
        );
        assert_eq!(
            parse_port("1.2.3:80:80").unwrap_err(),
            "invalid IP address: 1.2.3"
        );
        assert_eq!(
            parse_port("1-3:80-81").unwrap_err(),
            "invalid ranges specified for container and host Ports: 80-81 and 1-3"
        );
    }
}
