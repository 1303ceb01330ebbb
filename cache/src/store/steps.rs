//! Step records: `<root>/steps/<hex of the 32-byte step key>.json`.
//!
//! The record format belongs to the planner and executor; the store only keeps JSON under a
//! key. A record that cannot be read or parsed is a cache miss, reported as
//! [`Lookup::Unusable`] so the caller can warn, and is replaced when the step runs again.

use super::{Store, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs;
use std::io;
use std::path::PathBuf;

/// The outcome of a step-record lookup.
#[derive(Debug)]
pub enum Lookup<T> {
    Hit(T),
    Miss,
    /// A record is there but cannot be used (I/O error, bad JSON, wrong shape): a miss, with
    /// the reason to show as a warning.
    Unusable(StoreError),
}

impl<T> Lookup<T> {
    /// The record, if it was a hit.
    pub fn hit(self) -> Option<T> {
        match self {
            Lookup::Hit(record) => Some(record),
            _ => None,
        }
    }

    pub fn is_hit(&self) -> bool {
        matches!(self, Lookup::Hit(_))
    }

    /// Why a record that exists could not be used.
    pub fn warning(&self) -> Option<&StoreError> {
        match self {
            Lookup::Unusable(error) => Some(error),
            _ => None,
        }
    }
}

const SUFFIX: &str = ".json";

/// The key a step record file name stands for, if it is one.
pub(super) fn key_of(name: &str) -> Option<[u8; 32]> {
    let hex_part = name.strip_suffix(SUFFIX)?;
    let mut key = [0u8; 32];
    if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    hex::decode_to_slice(hex_part, &mut key).ok()?;
    Some(key)
}

impl Store {
    /// Where the record for `key` lives, present or not.
    pub fn step_path(&self, key: &[u8; 32]) -> PathBuf {
        self.root()
            .join("steps")
            .join(format!("{}{SUFFIX}", hex::encode(key)))
    }

    /// Stores `record` under `key` atomically, replacing any record there.
    pub fn put_step(&self, key: &[u8; 32], record: &impl Serialize) -> Result<(), StoreError> {
        let path = self.step_path(key);
        let mut json = serde_json::to_vec(record).map_err(|e| {
            StoreError::io("serialise the step record for", path.clone())(io::Error::other(e))
        })?;
        json.push(b'\n');
        self.write_atomic(&path, &json)
    }

    /// The record under `key`. Never fails: an unreadable record is [`Lookup::Unusable`].
    pub fn get_step<T: DeserializeOwned>(&self, key: &[u8; 32]) -> Lookup<T> {
        let path = self.step_path(key);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Unusable(StoreError::io("read", path)(e)),
        };
        match serde_json::from_slice(&bytes) {
            Ok(record) => Lookup::Hit(record),
            Err(e) => Lookup::Unusable(StoreError::BadRecord {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// The keys of all step records, sorted.
    pub fn step_keys(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        let dir = self.root().join("steps");
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io("read directory", dir.clone()))? {
            let entry = entry.map_err(StoreError::io("read directory", dir.clone()))?;
            if let Some(key) = entry.file_name().to_str().and_then(key_of) {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        Ok(keys)
    }

    /// Removes the record under `key`; returns whether there was one.
    pub fn remove_step(&self, key: &[u8; 32]) -> Result<bool, StoreError> {
        let path = self.step_path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io("remove", path)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Record {
        layer: String,
        size: u64,
    }

    #[test]
    fn round_trip_and_misses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k1 = [1u8; 32];
        let k2 = [0xabu8; 32];
        assert!(matches!(store.get_step::<Record>(&k1), Lookup::Miss));
        assert_eq!(store.step_keys().unwrap(), Vec::<[u8; 32]>::new());

        let r = Record {
            layer: "sha256:x".into(),
            size: 3,
        };
        store.put_step(&k2, &r).unwrap();
        store.put_step(&k1, &r).unwrap();
        assert_eq!(store.get_step::<Record>(&k1).hit(), Some(r));
        assert_eq!(store.step_keys().unwrap(), vec![k1, k2]);
        assert!(
            store
                .step_path(&k2)
                .ends_with(format!("steps/{}.json", "ab".repeat(32)))
        );

        // Replacing a record.
        let r2 = Record {
            layer: "sha256:y".into(),
            size: 4,
        };
        store.put_step(&k1, &r2).unwrap();
        assert_eq!(store.get_step::<Record>(&k1).hit(), Some(r2));

        // Garbage and wrong shapes are misses with a warning, not panics.
        fs::write(store.step_path(&k2), b"{\"layer\": tru").unwrap();
        let lookup = store.get_step::<Record>(&k2);
        assert!(!lookup.is_hit());
        let warning = lookup.warning().unwrap().to_string();
        assert!(
            warning.contains("cache miss") && warning.contains(".json"),
            "{warning}"
        );
        store
            .put_step(&k2, &serde_json::json!({"other": 1}))
            .unwrap();
        assert!(matches!(
            store.get_step::<Record>(&k2),
            Lookup::Unusable(StoreError::BadRecord { .. })
        ));
        assert!(store.get_step::<serde_json::Value>(&k2).is_hit());

        // Files that are not records are not keys.
        fs::write(store.root().join("steps/README"), b"").unwrap();
        fs::write(
            store
                .root()
                .join("steps")
                .join(format!("{}.json", "AB".repeat(32))),
            b"",
        )
        .unwrap();
        assert_eq!(store.step_keys().unwrap(), vec![k1, k2]);

        assert!(store.remove_step(&k1).unwrap());
        assert!(!store.remove_step(&k1).unwrap());
        assert_eq!(store.step_keys().unwrap(), vec![k2]);
        assert!(fs::read_dir(store.tmp_dir()).unwrap().next().is_none());
    }
}
