//! The baked CMD arguments and ENV (imgbuild writes them; README.md, "config"):
//! u32 LE argc, then per argument u32 LE length + UTF-8 bytes; u32 LE envc, then per entry
//! u32 LE length + `KEY=VALUE` bytes. An empty or truncated config reads as what it holds.

static CONFIG: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/config.bin"));

/// Iterates over one length-prefixed list starting at `pos`.
#[derive(Clone)]
pub(crate) struct Strings {
    pos: usize,
    left: u32,
}

fn u32_at(pos: usize) -> Option<u32> {
    let b = CONFIG.get(pos..pos + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Strings {
    fn at(pos: usize) -> Strings {
        Strings { pos: pos + 4, left: u32_at(pos).unwrap_or(0) }
    }

    /// Where the list after this one starts (its count), walking this one.
    #[allow(dead_code)]
    fn end(mut self) -> usize {
        while self.next().is_some() {}
        self.pos
    }
}

impl Iterator for Strings {
    type Item = &'static str;
    fn next(&mut self) -> Option<&'static str> {
        while self.left > 0 {
            self.left -= 1;
            let len = u32_at(self.pos)? as usize;
            let bytes = CONFIG.get(self.pos + 4..self.pos + 4 + len)?;
            self.pos += 4 + len;
            // Non-UTF-8 entries cannot come from a Dockerfile; skip rather than fail the boot.
            if let Ok(s) = core::str::from_utf8(bytes) {
                return Some(s);
            }
        }
        self.left = 0;
        None
    }
}

/// The baked CMD arguments.
#[allow(dead_code)]
pub(crate) fn args() -> Strings {
    Strings::at(0)
}

/// The baked ENV entries, `KEY=VALUE`.
#[allow(dead_code)]
pub(crate) fn envs() -> Strings {
    Strings::at(Strings::at(0).end())
}
