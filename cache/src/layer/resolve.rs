//! Resolving paths inside a destination directory as if it were the root (chroot semantics):
//! `..` never climbs above it and symlinks, absolute or relative, are followed within it.
//!
//! The kernel does it when it can (`openat2` with `RESOLVE_IN_ROOT`, Linux ≥ 5.6); otherwise a
//! userspace resolver walks one component at a time with `O_NOFOLLOW`, reading each symlink
//! and restarting from the root for absolute targets, keeping a stack of directory descriptors
//! so that `..` pops to the directory it came from instead of opening `..`.
//!
//! Only directories are resolved here. Callers act on the final component with `*at` calls
//! relative to the resolved directory, never following it.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// The most symlinks followed while resolving one path (as Linux's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// How paths are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolver {
    /// `openat2(RESOLVE_IN_ROOT)`, falling back to userspace where the kernel lacks it.
    Kernel,
    /// The userspace walk only (tests exercise it on kernels that have `openat2`).
    #[cfg_attr(not(test), allow(dead_code))]
    Userspace,
}

pub(crate) struct Root {
    fd: OwnedFd,
    kernel: bool,
}

const DIR_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);

impl Root {
    pub(crate) fn open(dest: &Path, resolver: Resolver) -> io::Result<Root> {
        let fd = rustix::fs::open(dest, DIR_FLAGS, Mode::empty())?;
        let mut root = Root {
            fd,
            kernel: resolver == Resolver::Kernel,
        };
        if root.kernel {
            match root.openat2(b".") {
                Ok(_) => {}
                // No openat2 (old kernel), or a seccomp filter that refuses it.
                Err(Errno::NOSYS | Errno::PERM | Errno::INVAL | Errno::ACCESS) => {
                    root.kernel = false
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(root)
    }

    fn openat2(&self, path: &[u8]) -> Result<OwnedFd, Errno> {
        loop {
            match rustix::fs::openat2(
                &self.fd,
                path,
                DIR_FLAGS,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // The kernel asks for a retry when a rename raced with `..` resolution.
                Err(Errno::AGAIN | Errno::INTR) => continue,
                other => return other,
            }
        }
    }

    /// The directory at `components` (clean: no `.`, `..` or empty components), resolved in
    /// the root. Errors as `openat`: `ENOENT`, `ENOTDIR`, `ELOOP`...
    pub(crate) fn dir(&self, components: &[&[u8]]) -> io::Result<OwnedFd> {
        if components.is_empty() {
            return Ok(rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?);
        }
        let path = components.join(&b'/');
        if self.kernel {
            Ok(self.openat2(&path)?)
        } else {
            Ok(self.walk(&path)?)
        }
    }

    /// Like [`Root::dir`], creating missing directories (mode `mode`, subject to the umask) on
    /// the way. Returns the directory and how many components were created.
    pub(crate) fn dir_create(
        &self,
        components: &[&[u8]],
        mode: u32,
    ) -> io::Result<(OwnedFd, usize)> {
        match self.dir(components) {
            Ok(fd) => return Ok((fd, 0)),
            Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
        let mut fd = self.dir(&[])?;
        let mut created = 0;
        for i in 0..components.len() {
            fd = match self.dir(&components[..=i]) {
                Ok(next) => next,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    // `fd` is the resolved parent; mkdirat never follows its final component,
                    // so a dangling symlink there makes this EEXIST rather than a write
                    // through it.
                    match rustix::fs::mkdirat(&fd, components[i], Mode::from_raw_mode(mode)) {
                        Ok(()) => created += 1,
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    self.dir(&components[..=i])?
                }
                Err(e) => return Err(e),
            };
        }
        Ok((fd, created))
    }

    /// The userspace resolver.
    fn walk(&self, path: &[u8]) -> Result<OwnedFd, Errno> {
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut queue: VecDeque<Vec<u8>> = split(path).collect();
        let mut links = 0;
        while let Some(c) = queue.pop_front() {
            if c == b".." {
                stack.pop();
                continue;
            }
            let here = stack.last().map_or(self.fd.as_fd(), |fd| fd.as_fd());
            let fd = rustix::fs::openat(
                here,
                c.as_slice(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            let st = rustix::fs::fstat(&fd)?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => stack.push(fd),
                FileType::Symlink => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::LOOP);
                    }
                    let target = rustix::fs::readlinkat(&fd, c"", Vec::new())?;
                    let target = target.as_bytes();
                    if target.first() == Some(&b'/') {
                        stack.clear();
                    }
                    for part in split(target).collect::<Vec<_>>().into_iter().rev() {
                        queue.push_front(part);
                    }
                }
                _ => return Err(Errno::NOTDIR),
            }
        }
        match stack.pop() {
            Some(fd) => Ok(fd),
            None => rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()),
        }
    }
}

/// The components of a path, without empty and `.` ones.
fn split(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
}

/// Whether `name` in `dir` exists, without following it.
pub(crate) fn lstat_at(dir: &OwnedFd, name: &[u8]) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
