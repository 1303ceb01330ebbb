//! `--chown` and USER: names resolved through the image's own /etc/passwd and /etc/group.

use crate::rootfs::RootFs;

/// A resolved owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `user[:group]` (names or numbers). A user without a group gets the same number as
/// its group (Docker's rule for `--chown`); `primary_group` instead gives a named user its
/// passwd group (the rule for USER).
pub fn resolve(spec: &str, fs: &RootFs, primary_group: bool) -> Result<Owner, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(format!("invalid user {spec:?}: the user part is empty"));
    }
    let (uid, passwd_gid) = match user.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => {
            let passwd = read(fs, "/etc/passwd")?;
            let entry = lookup(&passwd, user).ok_or_else(|| {
                format!(
                    "unable to find user {user}: no matching entries in the image's /etc/passwd"
                )
            })?;
            (entry.0, Some(entry.1))
        }
    };
    let gid = match group {
        None if primary_group => passwd_gid.unwrap_or(uid),
        None => uid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                let groups = read(fs, "/etc/group")?;
                lookup(&groups, g)
                    .ok_or_else(|| {
                        format!(
                            "unable to find group {g}: no matching entries in the image's /etc/group"
                        )
                    })?
                    .0
            }
        },
    };
    Ok(Owner { uid, gid })
}

fn read(fs: &RootFs, path: &str) -> Result<String, String> {
    match fs.read(path) {
        Ok(Some(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Ok(None) => Err(format!("the image has no {path} to look names up in")),
        Err(e) => Err(format!("cannot read {path}: {e}")),
    }
}

/// Finds `name` in passwd- or group-format text: (field 3, field 4) as numbers.
fn lookup(text: &str, name: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            let id = f[2].parse().ok()?;
            let second = f.get(3).and_then(|g| g.parse().ok()).unwrap_or(id);
            Some((id, second))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        let fs = RootFs::new(vec![dir.path().to_path_buf()]);
        assert_eq!(resolve("1:2", &fs, false), Ok(Owner { uid: 1, gid: 2 }));
        assert_eq!(resolve("7", &fs, false), Ok(Owner { uid: 7, gid: 7 }));
        assert_eq!(
            resolve("app", &fs, false),
            Ok(Owner {
                uid: 1000,
                gid: 1000
            })
        );
        assert_eq!(
            resolve("app", &fs, true),
            Ok(Owner {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(
            resolve("app:staff", &fs, false),
            Ok(Owner { uid: 1000, gid: 50 })
        );
        assert!(
            resolve("nobody", &fs, false)
                .unwrap_err()
                .contains("unable to find user nobody")
        );
        assert!(
            resolve("app:wheel", &fs, false)
                .unwrap_err()
                .contains("group wheel")
        );
        let empty = RootFs::new(vec![]);
        assert!(
            resolve("app", &empty, false)
                .unwrap_err()
                .contains("no /etc/passwd")
        );
        assert_eq!(resolve("0:0", &empty, false), Ok(Owner { uid: 0, gid: 0 }));
    }
}
