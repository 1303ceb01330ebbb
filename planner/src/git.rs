//! `ADD <git URL>` sources: which sources name a git repository, and the `#REF:SUBDIR`
//! fragment (BuildKit's syntax).

use serde::Serialize;

/// A git repository an `ADD` names: `URL[#REF[:SUBDIR]]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GitRef {
    /// The repository URL, without the fragment.
    pub url: String,
    /// A branch, tag or commit (or a full `refs/…` name); `None` means the remote's HEAD.
    pub reference: Option<String>,
    /// The directory of the tree to take, relative and normalised; `None` is the whole tree.
    pub subdir: Option<String>,
}

impl GitRef {
    /// Parses a source [`is_git_source`] accepts. A bad fragment is an error saying why.
    pub fn parse(source: &str) -> Result<GitRef, String> {
        let (url, fragment) = match source.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (source, None),
        };
        if url.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("invalid git URL {source:?}"));
        }
        let (reference, subdir) = match fragment {
            None => (None, None),
            Some(f) => match f.split_once(':') {
                Some((r, s)) => (Some(r), Some(s)),
                None => (Some(f), None),
            },
        };
        let reference = match reference {
            None | Some("") => None,
            Some(r) => {
                // What reaches `git` as an argument must not read as an option or a range.
                let bad = r.starts_with('-')
                    || r.contains("..")
                    || r.ends_with('/')
                    || r.chars()
                        .any(|c| c.is_whitespace() || c.is_control() || "~^?*[\\".contains(c));
                if bad {
                    return Err(format!("invalid git ref {r:?} in {source:?}"));
                }
                Some(r.to_owned())
            }
        };
        let subdir = match subdir {
            None => None,
            Some(s) => {
                let mut parts = Vec::new();
                for p in s.split('/') {
                    match p {
                        "" | "." => {}
                        ".." => {
                            return Err(format!(
                                "invalid subdirectory {s:?} in {source:?}: `..` leaves the \
                                 repository"
                            ));
                        }
                        p => parts.push(p),
                    }
                }
                (!parts.is_empty()).then(|| parts.join("/"))
            }
        };
        Ok(GitRef {
            url: url.to_owned(),
            reference,
            subdir,
        })
    }

    /// `URL` or `URL#REF`: what a ref resolves for (the subdirectory does not change the
    /// commit), the name of its entry in a lockfile.
    pub fn repo_ref(&self) -> String {
        match &self.reference {
            Some(r) => format!("{}#{r}", self.url),
            None => self.url.clone(),
        }
    }
}

/// A git repository as BuildKit recognises one: `git@host:…`, `git://`, `ssh://`, or an
/// http(s) URL whose path ends in `.git` (a `#ref` may follow).
pub fn is_git_source(s: &str) -> bool {
    if s.starts_with("git@") || s.starts_with("git://") || s.starts_with("ssh://") {
        return true;
    }
    let Some(rest) = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
    else {
        return false;
    };
    let path = rest.split(['#', '?']).next().unwrap_or("");
    path.contains('/') && path.ends_with(".git")
}

/// Whether a ref names a commit by its full hash (sha1 or sha256 object names), which needs no
/// lookup.
pub fn is_commit_hash(r: &str) -> bool {
    (r.len() == 40 || r.len() == 64)
        && r.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (String, Option<String>, Option<String>) {
        let g = GitRef::parse(s).unwrap();
        (g.url, g.reference, g.subdir)
    }

    #[test]
    fn which_sources_are_git() {
        for s in [
            "https://github.com/moby/buildkit.git",
            "https://github.com/moby/buildkit.git#v0.12:docs",
            "http://127.0.0.1:8080/repo.git",
            "git://127.0.0.1:9418/repo",
            "git://host/path.git#main",
            "git@github.com:moby/buildkit.git",
            "git@github.com:moby/buildkit#main",
            "ssh://git@host/srv/repo",
        ] {
            assert!(is_git_source(s), "{s}");
        }
        for s in [
            "https://example.com/file.tar.gz",
            "https://example.com/x.git.tar.gz",
            "https://example.com.git",
            "http://example.com/a?x=.git",
            "./repo.git",
            "repo.git",
            "ftp://host/repo.git",
        ] {
            assert!(!is_git_source(s), "{s}");
        }
    }

    #[test]
    fn fragments() {
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(
            parsed("https://h/r.git"),
            ("https://h/r.git".into(), None, None)
        );
        assert_eq!(
            parsed("https://h/r.git#main"),
            ("https://h/r.git".into(), s("main"), None)
        );
        assert_eq!(
            parsed("git://h/r#v1.0:docs/api"),
            ("git://h/r".into(), s("v1.0"), s("docs/api"))
        );
        assert_eq!(
            parsed("git@github.com:o/r.git#feature/x:/sub/./dir/"),
            (
                "git@github.com:o/r.git".into(),
                s("feature/x"),
                s("sub/dir")
            )
        );
        // An empty ref is the remote's HEAD; an empty subdir is the whole tree.
        assert_eq!(
            parsed("git://h/r#:sub"),
            ("git://h/r".into(), None, s("sub"))
        );
        assert_eq!(
            parsed("git://h/r#main:"),
            ("git://h/r".into(), s("main"), None)
        );
        assert_eq!(parsed("git://h/r#"), ("git://h/r".into(), None, None));
        let c = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parsed(&format!("ssh://git@h/r#{c}")),
            ("ssh://git@h/r".into(), s(c), None)
        );
        assert!(is_commit_hash(c));
        assert!(!is_commit_hash("0123456"));
        assert!(!is_commit_hash(&c.to_uppercase()));
    }

    #[test]
    fn repo_ref_leaves_out_the_subdir() {
        let g = GitRef::parse("git://h/r#main:sub").unwrap();
        assert_eq!(g.repo_ref(), "git://h/r#main");
        assert_eq!(
            GitRef::parse("git://h/r#:sub").unwrap().repo_ref(),
            "git://h/r"
        );
    }

    #[test]
    fn bad_fragments() {
        for s in [
            "git://h/r#--upload-pack=x",
            "git://h/r#a..b",
            "git://h/r#a b",
            "git://h/r#main~1",
            "git://h/r#main:../up",
            "git://h/r#main:a/../../up",
            "git://h/ r",
        ] {
            assert!(GitRef::parse(s).is_err(), "{s}");
        }
    }
}
