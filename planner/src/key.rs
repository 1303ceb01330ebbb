//! Step keys: blake3 over a versioned, canonical encoding of an operation and its inputs' keys.
//!
//! The encoding is length-prefixed fields under a domain tag, so no two different inputs can
//! encode to the same bytes. Bump [`KEY_VERSION`] whenever what a step produces for the same
//! encoded inputs changes (a new tar header rule, a new default): old cache entries then miss
//! instead of being reused wrongly.

use serde::{Serialize, Serializer};
use std::fmt;

/// Part of every key: changing it invalidates every cached step.
pub const KEY_VERSION: &str = "imgbuild-step-v1";

/// A step's cache key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 12 hex digits, for display.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.short())
    }
}

impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Builds a key field by field.
pub struct KeyHasher(blake3::Hasher);

impl KeyHasher {
    /// A hasher for one kind of operation (`"copy"`, `"env"`, …).
    pub fn new(kind: &str) -> KeyHasher {
        let mut h = KeyHasher(blake3::Hasher::new());
        h.str(KEY_VERSION);
        h.str(kind);
        h
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn opt(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => {
                self.0.update(&[0]);
                self
            }
            Some(s) => {
                self.0.update(&[1]);
                self.str(s)
            }
        }
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        self.0.update(&[b as u8]);
        self
    }

    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.0.update(&n.to_le_bytes());
        self
    }

    pub fn key(&mut self, k: &Key) -> &mut Self {
        self.0.update(&k.0);
        self
    }

    pub fn list<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) -> &mut Self {
        let items: Vec<&str> = items.into_iter().collect();
        self.u64(items.len() as u64);
        for i in items {
            self.str(i);
        }
        self
    }

    pub fn finish(&self) -> Key {
        Key(*self.0.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_delimited() {
        let a = KeyHasher::new("x").str("ab").str("c").finish();
        let b = KeyHasher::new("x").str("a").str("bc").finish();
        assert_ne!(a, b);
        let c = KeyHasher::new("x").opt(None).finish();
        let d = KeyHasher::new("x").opt(Some("")).finish();
        assert_ne!(c, d);
        assert_eq!(a, KeyHasher::new("x").str("ab").str("c").finish());
        assert_eq!(a.hex().len(), 64);
    }
}
