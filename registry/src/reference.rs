//! Image references with Docker's normalisation: `busybox` is
//! `docker.io/library/busybox:latest`, `user/x` is `docker.io/user/x:latest`, a first component
//! with a `.` or `:` (or `localhost`) is a registry host.

use imgbuild_cache::Digest;
use imgbuild_cache::store::valid_component;
use std::fmt;

/// Docker Hub's name in references (its API lives at `registry-1.docker.io`).
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised reference: `registry/repository[:tag][@digest]`. A reference with
/// neither tag nor digest gets the tag `latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path, e.g. `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl Reference {
    /// Parses `name[:tag][@sha256:…]` with Docker's rules.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let bad = |reason: &str| ReferenceError {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("the reference is empty"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("it contains whitespace"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !d.starts_with("sha256:") {
                    return Err(bad(
                        "only sha256 digests are supported (name@sha256:<64 hex>)",
                    ));
                }
                let digest = Digest::parse(d)
                    .map_err(|_| bad("a digest is sha256: and 64 lower-case hex digits"))?;
                (n, Some(digest))
            }
            None => (s, None),
        };
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i + 1..].contains('/') => {
                (&name_tag[..i], Some(name_tag[i + 1..].to_owned()))
            }
            _ => (name_tag, None),
        };
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(bad(
                "a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            ));
        }
        if name.is_empty() {
            return Err(bad("the repository name is empty"));
        }
        // Docker: the first component is a host when it has a `.` or `:`, is `localhost`, or
        // has upper-case letters (which a repository cannot have).
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_host(&registry) {
            return Err(bad("the registry is not host[:port]"));
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_owned()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if repository.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository names must be lower-case"));
        }
        if !repository.split('/').all(valid_component) {
            return Err(bad(
                "each part of a repository name is lower-case letters and digits, separated by \
                 '.', '_', '__' or '-'",
            ));
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad("the name is longer than 255 characters"));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag` (tag `latest` when the reference has only a digest): the
    /// name the local store keeps a pulled image under.
    pub fn tagged_name(&self) -> String {
        format!(
            "{}:{}",
            self.name(),
            self.tag.as_deref().unwrap_or("latest")
        )
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository at a digest (the tag is dropped: the digest is what is fetched).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The host the API is reached at (Docker Hub's differs from its name).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// What a manifest request names: the digest when there is one, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

/// The API host of a registry name (`docker.io` is served at `registry-1.docker.io`).
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// A registry name as a user gives it to `login`/`logout`/`--insecure-registry`: a host with
/// an optional port, or a URL (`https://host/v1/`, Docker's style), normalised to `host[:port]`.
pub fn normalize_registry(s: &str) -> Result<String, ReferenceError> {
    let bad = |reason: &str| ReferenceError {
        reference: s.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err(bad("the registry is empty"));
    }
    if !valid_host(host) {
        return Err(bad("the registry is not host[:port]"));
    }
    Ok(match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        h => h.to_owned(),
    })
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

fn valid_tag(t: &str) -> bool {
    t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// `host[:port]`: DNS labels, or a bracketed IPv6 address.
fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(p) => ("x", Some(p)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && name.split('.').all(label_ok)
}

/// Whether a registry is spoken to over plain http: loopback always, others when listed as
/// insecure (`host` matches any port of that host, `host:port` only that port).
pub fn is_plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_only(registry);
    if matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]") || host.starts_with("127.") {
        return true;
    }
    insecure.iter().any(|i| {
        let i = i
            .strip_prefix("http://")
            .or_else(|| i.strip_prefix("https://"))
            .unwrap_or(i)
            .trim_end_matches('/');
        i == registry || (!has_port(i) && i == host)
    })
}

fn has_port(h: &str) -> bool {
    host_only(h) != h
}

fn host_only(registry: &str) -> &str {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(i) => &registry[..=i],
            None => registry,
        };
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_hub_short_names() {
        assert_eq!(p("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(
            p("busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(p("user/x").to_string(), "docker.io/user/x:latest");
        assert_eq!(
            p("docker.io/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            p("index.docker.io/library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(p("busybox").api_host(), "registry-1.docker.io");
    }

    #[test]
    fn hosts_ports_and_digests() {
        let r = p("localhost:5000/x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "x")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = p("127.0.0.1:41234/a/b:v1");
        assert_eq!(r.registry, "127.0.0.1:41234");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.tagged_name(), "127.0.0.1:41234/a/b:v1");
        let r = p(&format!("busybox@sha256:{HEX}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.unwrap().hex(), HEX);
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        let r = p(&format!("quay.io/org/app:1.0@sha256:{HEX}"));
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert!(r.digest.is_some());
        assert_eq!(r.manifest_ref(), format!("sha256:{HEX}"));
        assert_eq!(p("localhost/x").registry, "localhost");
        assert_eq!(p("[::1]:5000/x").registry, "[::1]:5000");
        assert_eq!(p("a__b/c-d--e/f.g").repository, "a__b/c-d--e/f.g");
    }

    #[test]
    fn malformed_names_are_clear_errors() {
        for (s, want) in [
            ("", "empty"),
            ("Busybox", "lower-case"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("busybox@sha256:abc", "64"),
            ("busybox@md5:abc", "sha256"),
            ("a//b", "repository"),
            ("-a/b", "repository"),
            ("host:port/x", "host[:port]"),
            ("my image", "whitespace"),
            ("a_-b", "repository"),
        ] {
            let e = Reference::parse(s).expect_err(s).to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        let long = format!("x/{}", "a".repeat(260));
        assert!(Reference::parse(&long).is_err());
    }

    #[test]
    fn plain_http_for_loopback_and_insecure() {
        assert!(is_plain_http("127.0.0.1:5000", &[]));
        assert!(is_plain_http("localhost", &[]));
        assert!(is_plain_http("[::1]:5000", &[]));
        assert!(!is_plain_http("example.com:5000", &[]));
        assert!(is_plain_http("example.com:5000", &["example.com".into()]));
        assert!(is_plain_http(
            "example.com:5000",
            &["example.com:5000".into()]
        ));
        assert!(!is_plain_http(
            "example.com:5001",
            &["example.com:5000".into()]
        ));
        assert!(!is_plain_http("docker.io", &[]));
    }

    #[test]
    fn registry_names() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(
            normalize_registry("127.0.0.1:5000").unwrap(),
            "127.0.0.1:5000"
        );
        assert!(normalize_registry("").is_err());
        assert!(normalize_registry("a b").is_err());
    }
}
