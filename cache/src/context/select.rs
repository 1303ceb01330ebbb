//! COPY/ADD source selection over a snapshot, and the selection digest.

use super::glob;
use super::{ContentHash, ContextSnapshot, Entry, EntryKind, clean_rel};
use imgbuild_parser::ignore::clean_path;

/// How [`ContextSnapshot::select_with`] treats a wildcard that matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectOptions {
    /// `true` (the default, BuildKit's behaviour): a wildcard source that matches nothing is
    /// an empty selection, as long as its directory part exists. `false`: it is
    /// [`SelectError::NoSourceFiles`], as with Docker's legacy builder.
    pub allow_empty_wildcard: bool,
}

impl Default for SelectOptions {
    fn default() -> SelectOptions {
        SelectOptions {
            allow_empty_wildcard: true,
        }
    }
}

/// What [`ContextSnapshot::digest_of`] covers beyond paths, kinds, sizes, content hashes,
/// symlink targets and device numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestOptions {
    /// Include permission bits (default). Leave them out for `COPY --chmod`, which replaces
    /// them.
    pub include_mode: bool,
}

impl Default for DigestOptions {
    fn default() -> DigestOptions {
        DigestOptions { include_mode: true }
    }
}

/// What a COPY/ADD source selects.
///
/// The rules (BuildKit's, with its context checksum as the reference):
/// * The source is cleaned as if rooted at the context: `/x` is `x`, `../x` is `x` (`..`
///   cannot leave the context), `a/./b/` is `a/b`, `.` or `/` is the whole context.
/// * A source with an unescaped `*`, `?` or `[` is a wildcard, matched with Go's `path.Match`
///   against entry paths (`*` does not cross `/`). Its components before the first wildcard
///   component are a literal directory that must exist (BuildKit fails on it too); below it,
///   every entry whose path matches is an item, and a matched directory brings its whole
///   subtree (its descendants are not matched separately).
/// * A source without wildcards names one path; `\` escapes are removed (`a\*b` is the file
///   `a*b`). It must exist.
/// * Symlinks on the way are followed inside the context (an absolute target is taken from
///   the context root, `..` stops there), and so is a symlink that is itself the source or a
///   wildcard match, as BuildKit's COPY does (its target must be in the context). Symlinks
///   inside a selected directory are not followed: they are copied as links.
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    source: String,
    wildcard: bool,
    items: Vec<SelectedItem<'a>>,
}

/// One thing a source named or a wildcard matched.
#[derive(Debug, Clone)]
pub struct SelectedItem<'a> {
    /// The path as the source names it, relative to the context root ("" for the root). It
    /// may be a symlink that was followed, or go through symlinked directories; the executor
    /// names the copy after its last component.
    pub path: String,
    /// What `path` resolves to once symlinks are followed; `None` for the context root.
    pub resolved: Option<&'a Entry>,
    /// `resolved` and, when it is a directory, everything below it, in order (for the root:
    /// every entry).
    pub entries: &'a [Entry],
}

impl<'a> Selection<'a> {
    /// The source text as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    pub fn items(&self) -> &[SelectedItem<'a>] {
        &self.items
    }

    /// True when a wildcard matched nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Every selected entry, item by item, in order (an entry selected through two items, e.g.
    /// two symlinks to one directory, comes twice).
    pub fn entries(&self) -> impl Iterator<Item = &'a Entry> + '_ {
        self.items.iter().flat_map(|item| item.entries.iter())
    }
}

/// Why a source selects nothing usable. `src` is the source text as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// A literal source, the directory part of a wildcard source, or a symlink's target is
    /// not in the context. `path` is the cleaned, rooted path that is missing (BuildKit's
    /// `failed to compute cache key: "/x": not found`); `hint` says why, in a sentence.
    #[error("failed to compute cache key: \"{path}\": not found: {hint}")]
    NotFound {
        src: String,
        path: String,
        hint: String,
    },
    /// A wildcard matched nothing and [`SelectOptions::allow_empty_wildcard`] is off.
    #[error(
        "no source files were specified: the wildcard \"{src}\" matches nothing in the build context"
    )]
    NoSourceFiles { src: String },
    #[error(
        "the source \"{src}\" is not a valid wildcard pattern (syntax error in pattern); write a literal '*', '?' or '[' as '\\*', '\\?' or '\\['"
    )]
    BadPattern { src: String },
    #[error("too many levels of symbolic links resolving \"/{path}\" in the build context")]
    TooManySymlinks { src: String, path: String },
}

/// Where a path leads.
#[derive(Clone, Copy)]
enum Target {
    Root,
    Entry(usize),
}

/// Why a path does not lead anywhere.
enum Fail {
    Missing {
        /// The first path that is not there (relative).
        path: String,
        /// The last symlink followed on the way: (its path, its target).
        via: Option<(String, String)>,
        /// The path exists but is not a directory and something follows it.
        not_dir: bool,
    },
    Loop {
        path: String,
    },
}

pub(super) fn select<'a>(
    snap: &'a ContextSnapshot,
    source: &str,
    options: &SelectOptions,
) -> Result<Selection<'a>, SelectError> {
    let rel = clean_rel(source);
    if !glob::has_wildcards(&rel) {
        let literal = if rel.contains('\\') {
            glob::unescape(&rel)
        } else {
            rel
        };
        let target = resolve(snap, &literal)
            .map_err(|fail| fail_error(snap, source, &literal, fail, false))?;
        return Ok(Selection {
            source: source.to_owned(),
            wildcard: false,
            items: vec![item(snap, literal, target)],
        });
    }
    if glob::validate(&rel).is_err() {
        return Err(SelectError::BadPattern {
            src: source.to_owned(),
        });
    }

    let components: Vec<&str> = rel.split('/').collect();
    let first_wild = components
        .iter()
        .position(|c| glob::has_wildcards(c))
        .unwrap_or(components.len() - 1);
    let prefix = glob::unescape(&components[..first_wild].join("/"));
    let pattern = components[first_wild..].join("/");

    let base =
        resolve(snap, &prefix).map_err(|fail| fail_error(snap, source, &prefix, fail, true))?;
    let (base_path, range) = match base {
        Target::Root => ("", 0..snap.entries.len()),
        Target::Entry(i) if snap.entries[i].kind == EntryKind::Dir => {
            let sub = snap.subtree(i);
            (snap.entries[i].path.as_str(), sub.start + 1..sub.end)
        }
        Target::Entry(_) => {
            let fail = Fail::Missing {
                path: format!("{prefix}/{pattern}"),
                via: None,
                not_dir: true,
            };
            return Err(fail_error(snap, source, &prefix, fail, true));
        }
    };

    // `*` and `?` never match '/', so only entries exactly as deep as the pattern can match,
    // and nothing below that depth needs a look. A class could match '/' (Go allows it), so
    // with a class every entry is tried.
    let depth = pattern.split('/').count();
    let prune = !pattern.contains('[');
    let mut items = Vec::new();
    let mut i = range.start;
    while i < range.end {
        let entry = &snap.entries[i];
        let sub = if base_path.is_empty() {
            entry.path.as_str()
        } else {
            &entry.path[base_path.len() + 1..]
        };
        let entry_depth = sub.bytes().filter(|&b| b == b'/').count() + 1;
        let matched = (!prune || entry_depth == depth)
            && glob::match_validated(pattern.as_bytes(), sub.as_bytes());
        if matched {
            let named = if prefix.is_empty() {
                sub.to_owned()
            } else {
                format!("{prefix}/{sub}")
            };
            let target = if entry.kind == EntryKind::Symlink {
                resolve(snap, &entry.path)
                    .map_err(|fail| fail_error(snap, source, &entry.path, fail, false))?
            } else {
                Target::Entry(i)
            };
            items.push(item(snap, named, target));
        }
        let skip_below =
            entry.kind == EntryKind::Dir && (matched || (prune && entry_depth >= depth));
        i = if skip_below {
            snap.subtree(i).end
        } else {
            i + 1
        };
    }
    if items.is_empty() && !options.allow_empty_wildcard {
        return Err(SelectError::NoSourceFiles {
            src: source.to_owned(),
        });
    }
    Ok(Selection {
        source: source.to_owned(),
        wildcard: true,
        items,
    })
}

fn item(snap: &ContextSnapshot, path: String, target: Target) -> SelectedItem<'_> {
    match target {
        Target::Root => SelectedItem {
            path,
            resolved: None,
            entries: &snap.entries,
        },
        Target::Entry(i) => {
            let entry = &snap.entries[i];
            let range = if entry.kind == EntryKind::Dir {
                snap.subtree(i)
            } else {
                i..i + 1
            };
            SelectedItem {
                path,
                resolved: Some(entry),
                entries: &snap.entries[range],
            }
        }
    }
}

/// Follows `rel` (relative, cleaned) through the snapshot, resolving every symlink on the way
/// and at the end, inside the context (like BuildKit's scoped resolution).
fn resolve(snap: &ContextSnapshot, rel: &str) -> Result<Target, Fail> {
    const MAX_LINKS: usize = 255;
    let mut pending: Vec<String> = rel.split('/').rev().map(str::to_owned).collect();
    let mut cur = String::new();
    let mut target = Target::Root;
    let mut links = 0;
    let mut via: Option<(String, String)> = None;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "" | "." => continue,
            ".." => {
                match cur.rfind('/') {
                    Some(i) => cur.truncate(i),
                    None => cur.clear(),
                }
                target = if cur.is_empty() {
                    Target::Root
                } else {
                    // The parents of a kept entry are always kept.
                    match snap.find(&cur) {
                        Some(i) => Target::Entry(i),
                        None => {
                            return Err(Fail::Missing {
                                path: cur,
                                via,
                                not_dir: false,
                            });
                        }
                    }
                };
                continue;
            }
            _ => {}
        }
        let next = if cur.is_empty() {
            component
        } else {
            format!("{cur}/{component}")
        };
        let Some(i) = snap.find(&next) else {
            return Err(Fail::Missing {
                path: next,
                via,
                not_dir: false,
            });
        };
        let entry = &snap.entries[i];
        if entry.kind == EntryKind::Symlink {
            links += 1;
            if links > MAX_LINKS {
                return Err(Fail::Loop { path: next });
            }
            let link = entry.link_target.clone().unwrap_or_default();
            if link.is_empty() {
                return Err(Fail::Missing {
                    path: next,
                    via: Some((entry.path.clone(), link)),
                    not_dir: false,
                });
            }
            if link.starts_with('/') {
                cur.clear();
                target = Target::Root;
            }
            pending.extend(link.split('/').rev().map(str::to_owned));
            via = Some((entry.path.clone(), link));
            continue;
        }
        let more = pending.iter().any(|c| !c.is_empty() && c != ".");
        if more && entry.kind != EntryKind::Dir {
            return Err(Fail::Missing {
                path: next,
                via,
                not_dir: true,
            });
        }
        cur = next;
        target = Target::Entry(i);
    }
    Ok(target)
}

/// The error for a path that did not resolve. `wildcard_dir`: it was the directory part of a
/// wildcard source.
fn fail_error(
    snap: &ContextSnapshot,
    source: &str,
    wanted: &str,
    fail: Fail,
    wildcard_dir: bool,
) -> SelectError {
    let (missing, via, not_dir) = match fail {
        Fail::Loop { path } => {
            return SelectError::TooManySymlinks {
                src: source.to_owned(),
                path,
            };
        }
        Fail::Missing { path, via, not_dir } => (path, via, not_dir),
    };
    let mut hint = if not_dir {
        format!("\"/{missing}\" is not a directory")
    } else if snap.is_excluded(&missing) {
        format!("\"/{missing}\" is excluded by .dockerignore")
    } else if let Some((link, target)) = &via {
        format!(
            "\"/{link}\" is a symbolic link to \"{target}\", which does not lead to anything in the \
             build context (links are resolved inside the context; an absolute target starts at \
             the context root, not at the host's)"
        )
    } else if missing != wanted {
        format!("\"/{missing}\" does not exist in the build context")
    } else {
        "no such file or directory in the build context".to_owned()
    };
    if wildcard_dir {
        hint.push_str(&format!(
            "; the wildcard source \"{source}\" needs its directory part to exist"
        ));
    }
    let raw = clean_path(source.trim_start_matches('/'));
    if raw == ".." || raw.starts_with("../") {
        hint.push_str(&format!(
            "; sources cannot leave the build context, so \"{source}\" was read as \"/{wanted}\""
        ));
    }
    hint.push_str(&format!(
        " (source paths are relative to the context root {})",
        snap.root.display()
    ));
    SelectError::NotFound {
        src: source.to_owned(),
        path: format!("/{wanted}"),
        hint,
    }
}

pub(super) fn digest(selection: &Selection<'_>, options: DigestOptions) -> ContentHash {
    let mut h = blake3::Hasher::new_derive_key("imgbuild context selection digest v1");
    h.update(&[u8::from(options.include_mode)]);
    put_u64(&mut h, selection.items.len() as u64);
    for item in &selection.items {
        put_str(&mut h, &item.path);
        put_str(&mut h, item.resolved.map_or("", |e| e.path.as_str()));
        put_u64(&mut h, item.entries.len() as u64);
        for entry in item.entries {
            put_str(&mut h, &entry.path);
            h.update(&[entry.kind.code()]);
            if options.include_mode {
                h.update(&entry.mode.to_le_bytes());
            }
            put_u64(&mut h, entry.size);
            match entry.kind {
                EntryKind::File => {
                    h.update(entry.hash.as_ref().map_or(&[0u8; 32], |x| x.as_bytes()));
                }
                EntryKind::Symlink => put_str(&mut h, entry.link_target.as_deref().unwrap_or("")),
                EntryKind::CharDevice | EntryKind::BlockDevice => put_u64(&mut h, entry.rdev),
                EntryKind::Dir | EntryKind::Fifo | EntryKind::Socket => {}
            }
        }
    }
    h.finalize()
}

fn put_u64(h: &mut blake3::Hasher, v: u64) {
    h.update(&v.to_le_bytes());
}

fn put_str(h: &mut blake3::Hasher, s: &str) {
    put_u64(h, s.len() as u64);
    h.update(s.as_bytes());
}
