//! fs: the read-only file system baked into the image from the stage's COPY/ADD files.
//!
//! Image format (imgbuild writes it; README.md, "fs image"): `IMGBFS1\0`, u32 LE entry count,
//! then per entry u32 LE path length, the path (relative, `/`-separated), u32 LE st_mode,
//! u64 LE data offset from the image start, u64 LE size; entries sorted by path bytes; then the
//! data (a symlink's data is its target). Directories need no entry of their own: a path that
//! prefixes others is a directory.

use alloc::{string::String, vec::Vec};

static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/fs.img"));

const MAGIC: &[u8; 8] = b"IMGBFS1\0";
/// Symlinks followed while resolving one path, as Linux's MAXSYMLINKS.
const MAX_LINKS: u32 = 40;

pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFLNK: u32 = 0o120000;

#[derive(Clone, Copy)]
struct Entry {
    path: &'static str,
    mode: u32,
    data: &'static [u8],
}

/// The baked file system (`Runtime::fs()`).
pub struct Fs {
    entries: Vec<Entry>,
}

/// An open file: its bytes live in the image, reading copies them out.
pub struct File {
    data: &'static [u8],
    pos: usize,
    mode: u32,
}

/// What `metadata` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Unix st_mode, type bits included.
    pub mode: u32,
    pub size: u64,
}

impl Metadata {
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
    /// The permission bits.
    pub fn permissions(&self) -> u32 {
        self.mode & 0o7777
    }
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses the image; a malformed image yields the entries before the damage.
#[inline(never)]
fn parse(img: &'static [u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    if img.get(..8) != Some(&MAGIC[..]) {
        return entries;
    }
    let count = read_u32(img, 8).unwrap_or(0);
    let mut at = 12;
    for _ in 0..count {
        let Some(entry) = (|| {
            let len = read_u32(img, at)? as usize;
            let path = core::str::from_utf8(img.get(at + 4..at + 4 + len)?).ok()?;
            let p = at + 4 + len;
            let mode = read_u32(img, p)?;
            let off = usize::try_from(read_u64(img, p + 4)?).ok()?;
            let size = usize::try_from(read_u64(img, p + 12)?).ok()?;
            let data = img.get(off..off.checked_add(size)?)?;
            at = p + 20;
            Some(Entry { path: path.trim_matches('/'), mode, data })
        })() else {
            break;
        };
        entries.push(entry);
    }
    entries
}

static mut FS: Option<Fs> = None;

/// The file system, parsed on first use.
#[inline(never)]
pub fn get() -> &'static Fs {
    // SAFETY: single-threaded; FS is written once, here, and then only read.
    unsafe {
        let fs = &mut *&raw mut FS;
        fs.get_or_insert_with(|| Fs { entries: parse(IMAGE) })
    }
}

/// What a resolved path names.
enum Node {
    Entry(Entry),
    /// A directory without an entry of its own (the root, or a prefix of other paths).
    Dir,
}

impl Fs {
    fn find(&self, path: &str) -> Option<Entry> {
        self.entries.binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes())).ok().map(|i| self.entries[i])
    }

    /// Whether some entry lies below `dir` (relative, no trailing slash; "" is the root).
    fn has_children(&self, dir: &str) -> bool {
        if dir.is_empty() {
            return true;
        }
        // Paths starting with "dir/" are contiguous in sorted order, beginning at the first
        // path >= "dir/".
        let mut prefix = String::from(dir);
        prefix.push('/');
        let i = self.entries.partition_point(|e| e.path < prefix.as_str());
        self.entries.get(i).is_some_and(|e| e.path.starts_with(prefix.as_str()))
    }

    /// Resolves an absolute path to a relative canonical one, following symlinks (all of them,
    /// or all but a final one).
    #[inline(never)]
    fn resolve(&self, path: &str, follow_last: bool) -> Option<(String, Node)> {
        let mut todo: Vec<&str> = path.split('/').rev().collect();
        let mut cur = String::new();
        let mut node = Node::Dir;
        let mut links = 0;
        if !path.starts_with('/') {
            return None;
        }
        while let Some(c) = todo.pop() {
            match c {
                "" | "." => continue,
                ".." => {
                    cur.truncate(cur.rfind('/').unwrap_or(0));
                    node = Node::Dir;
                    continue;
                }
                _ => {}
            }
            // Only directories have components below them.
            if let Node::Entry(e) = node
                && e.mode & S_IFMT != S_IFDIR
            {
                return None;
            }
            let base = cur.len();
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            node = match self.find(&cur) {
                Some(e) if e.mode & S_IFMT == S_IFLNK && (follow_last || !todo.iter().all(|c| c.is_empty() || *c == ".")) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return None;
                    }
                    let target = core::str::from_utf8(e.data).ok()?;
                    cur.truncate(if target.starts_with('/') { 0 } else { base });
                    todo.extend(target.split('/').rev());
                    Node::Dir
                }
                Some(e) => Node::Entry(e),
                None if self.has_children(&cur) => Node::Dir,
                None => return None,
            };
        }
        Some((cur, node))
    }

    /// Opens a regular file by absolute path (`/greeting.txt`), following symlinks.
    #[inline(never)]
    pub fn open(&self, path: &str) -> Option<File> {
        match self.resolve(path, true)?.1 {
            Node::Entry(e) if e.mode & S_IFMT == S_IFREG => Some(File { data: e.data, pos: 0, mode: e.mode }),
            _ => None,
        }
    }

    /// The contents of a regular file, without copying.
    #[inline(never)]
    pub fn read(&self, path: &str) -> Option<&'static [u8]> {
        self.open(path).map(|f| f.data)
    }

    /// Metadata of a path, following symlinks.
    #[inline(never)]
    pub fn metadata(&self, path: &str) -> Option<Metadata> {
        Some(node_metadata(&self.resolve(path, true)?.1))
    }

    /// Metadata of a path; a final symlink is not followed.
    pub fn symlink_metadata(&self, path: &str) -> Option<Metadata> {
        Some(node_metadata(&self.resolve(path, false)?.1))
    }

    /// The target of a symlink.
    pub fn read_link(&self, path: &str) -> Option<&'static str> {
        match self.resolve(path, false)?.1 {
            Node::Entry(e) if e.mode & S_IFMT == S_IFLNK => core::str::from_utf8(e.data).ok(),
            _ => None,
        }
    }

    /// The names in a directory, sorted, each once; empty when `dir` is not a directory (ask
    /// `metadata` to tell an empty directory from a missing one).
    #[inline(never)]
    pub fn list(&self, dir: &str) -> alloc::vec::IntoIter<&'static str> {
        self.list_names(dir).unwrap_or_default().into_iter()
    }

    fn list_names(&self, dir: &str) -> Option<Vec<&'static str>> {
        let (dir, node) = self.resolve(dir, true)?;
        if let Node::Entry(e) = node
            && e.mode & S_IFMT != S_IFDIR
        {
            return None;
        }
        let mut names: Vec<&'static str> = self
            .entries
            .iter()
            .filter_map(|e| {
                let rest = if dir.is_empty() {
                    e.path
                } else {
                    e.path.strip_prefix(dir.as_str())?.strip_prefix('/')?
                };
                let name = rest.split('/').next()?;
                (!name.is_empty()).then_some(name)
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        Some(names)
    }

    /// Every path in the image (relative), in image order.
    pub fn paths(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|e| e.path)
    }
}

fn node_metadata(node: &Node) -> Metadata {
    match node {
        Node::Entry(e) => Metadata { mode: e.mode, size: e.data.len() as u64 },
        Node::Dir => Metadata { mode: S_IFDIR | 0o755, size: 0 },
    }
}

impl File {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// Unix st_mode of the file.
    pub fn mode(&self) -> u32 {
        self.mode
    }

    /// Copies up to `buf.len()` bytes from the current position; 0 at the end.
    pub fn read(&mut self, buf: &mut [u8]) -> usize {
        let rest = &self.data[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        n
    }

    /// Appends the rest of the file to `buf`; returns how many bytes.
    pub fn read_to_end(&mut self, buf: &mut Vec<u8>) -> usize {
        let rest = &self.data[self.pos..];
        buf.extend_from_slice(rest);
        self.pos = self.data.len();
        rest.len()
    }

    /// Appends the rest of the file to `buf` if it is UTF-8; returns how many bytes.
    pub fn read_to_string(&mut self, buf: &mut String) -> Result<usize, core::str::Utf8Error> {
        let rest = core::str::from_utf8(&self.data[self.pos..])?;
        buf.push_str(rest);
        self.pos = self.data.len();
        Ok(rest.len())
    }

    /// The whole file, borrowed from the image.
    pub fn bytes(&self) -> &'static [u8] {
        self.data
    }
}

impl crate::Runtime {
    /// The baked file system.
    pub fn fs(&self) -> &'static Fs {
        get()
    }
}
