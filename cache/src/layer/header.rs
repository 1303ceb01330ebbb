//! Encoding of tar headers: POSIX ustar blocks, preceded by a PAX extended header (typeflag
//! `x`) when a value does not fit. Every byte of every block is set here; nothing is read from
//! the host. The exact choices are listed in [`super::writer`]'s module doc.

use std::collections::BTreeMap;
use std::io::{self, Write};

pub(crate) const BLOCK: usize = 512;

/// The name of every PAX extended header block (fixed, so it cannot vary between builds).
const PAX_HEADER_NAME: &[u8] = b"././@PaxHeader";

const MAX_OCTAL_7: u64 = 0o7_777_777; // 8-byte fields: 7 digits + NUL
const MAX_OCTAL_11: u64 = 0o77_777_777_777; // 12-byte fields: 11 digits + NUL

/// The fields of one member, as the writer has decided them.
pub(crate) struct Member<'a> {
    pub name: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: u64,
    pub typeflag: u8,
    pub linkname: &'a [u8],
    /// `(major, minor)`: only for character and block devices.
    pub device: Option<(u32, u32)>,
    pub xattrs: &'a BTreeMap<String, Vec<u8>>,
}

/// Writes the member's header block(s): a PAX header and its records when needed, then the
/// ustar block. Returns an error only if a device number does not fit or writing fails.
pub(crate) fn write_member_header(w: &mut impl Write, m: &Member<'_>) -> io::Result<()> {
    let mut records: Vec<(Vec<u8>, &[u8])> = Vec::new();
    let mut binary = false;

    let (prefix, name) = match split_ustar_name(m.name) {
        Some(split) if m.name.is_ascii() => split,
        _ => {
            binary |= std::str::from_utf8(m.name).is_err();
            records.push((b"path".to_vec(), m.name));
            (&b""[..], &m.name[..m.name.len().min(100)])
        }
    };
    let linkname = if m.linkname.len() <= 100 && m.linkname.is_ascii() {
        m.linkname
    } else {
        binary |= std::str::from_utf8(m.linkname).is_err();
        records.push((b"linkpath".to_vec(), m.linkname));
        &m.linkname[..m.linkname.len().min(100)]
    };
    let size_s;
    let size = if m.size > MAX_OCTAL_11 {
        size_s = m.size.to_string();
        records.push((b"size".to_vec(), size_s.as_bytes()));
        0
    } else {
        m.size
    };
    let uid_s;
    let uid = if m.uid > MAX_OCTAL_7 {
        uid_s = m.uid.to_string();
        records.push((b"uid".to_vec(), uid_s.as_bytes()));
        0
    } else {
        m.uid
    };
    let gid_s;
    let gid = if m.gid > MAX_OCTAL_7 {
        gid_s = m.gid.to_string();
        records.push((b"gid".to_vec(), gid_s.as_bytes()));
        0
    } else {
        m.gid
    };
    let mtime_s;
    let mtime = if m.mtime > MAX_OCTAL_11 {
        mtime_s = m.mtime.to_string();
        records.push((b"mtime".to_vec(), mtime_s.as_bytes()));
        0
    } else {
        m.mtime
    };
    for (key, value) in m.xattrs {
        records.push(([b"SCHILY.xattr.", key.as_bytes()].concat(), value));
    }
    if binary {
        // Path values that are not UTF-8 are carried as raw bytes (POSIX hdrcharset).
        records.insert(0, (b"hdrcharset".to_vec(), b"BINARY"));
    }
    if let Some((major, minor)) = m.device
        && (u64::from(major) > MAX_OCTAL_7 || u64::from(minor) > MAX_OCTAL_7)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "device number does not fit in a ustar header",
        ));
    }

    if !records.is_empty() {
        let mut data = Vec::new();
        for (key, value) in &records {
            pax_record(&mut data, key, value);
        }
        let block = ustar_block(&UstarFields {
            prefix: b"",
            name: PAX_HEADER_NAME,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: data.len() as u64,
            mtime: 0,
            typeflag: b'x',
            linkname: b"",
            device: None,
        });
        w.write_all(&block)?;
        w.write_all(&data)?;
        write_padding(w, data.len() as u64)?;
    }
    let block = ustar_block(&UstarFields {
        prefix,
        name,
        mode: m.mode & 0o7777,
        uid,
        gid,
        size,
        mtime,
        typeflag: m.typeflag,
        linkname,
        device: m.device,
    });
    w.write_all(&block)
}

/// Zero bytes up to the next block boundary after `len` bytes of data.
pub(crate) fn write_padding(w: &mut impl Write, len: u64) -> io::Result<()> {
    let rem = (len % BLOCK as u64) as usize;
    if rem != 0 {
        w.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// Splits a name into ustar `prefix` (≤ 155 bytes) and `name` (≤ 100 bytes) at a `/`, taking
/// the longest prefix that works; `None` if the name cannot be stored in ustar fields.
fn split_ustar_name(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((b"", path));
    }
    if path.len() > 256 {
        return None;
    }
    // The separator at index i drops out: prefix = path[..i], name = path[i+1..].
    let last = path.len().saturating_sub(1).min(155);
    (1..=last)
        .rev()
        .filter(|&i| path[i] == b'/')
        .find(|&i| path.len() - i - 1 <= 100 && i + 1 < path.len())
        .map(|i| (&path[..i], &path[i + 1..]))
}

/// Appends one PAX record, `"<len> <key>=<value>\n"`, where `<len>` counts the whole record
/// including its own digits.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1; // " key=value\n"
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

struct UstarFields<'a> {
    prefix: &'a [u8],
    name: &'a [u8],
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &'a [u8],
    device: Option<(u32, u32)>,
}

/// One ustar header block. Numeric fields are zero-padded octal followed by a NUL (the device
/// fields too, zero for non-devices, as Go writes them: some readers refuse empty ones); uname
/// and gname are left all NUL; magic `ustar\0`, version `00`; the checksum is six octal
/// digits, NUL, space.
fn ustar_block(f: &UstarFields<'_>) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..f.name.len()].copy_from_slice(f.name);
    octal(&mut b[100..108], u64::from(f.mode));
    octal(&mut b[108..116], f.uid);
    octal(&mut b[116..124], f.gid);
    octal(&mut b[124..136], f.size);
    octal(&mut b[136..148], f.mtime);
    b[156] = f.typeflag;
    b[157..157 + f.linkname.len()].copy_from_slice(f.linkname);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // uname 265..297 and gname 297..329 stay empty.
    let (major, minor) = f.device.unwrap_or((0, 0));
    octal(&mut b[329..337], u64::from(major));
    octal(&mut b[337..345], u64::from(minor));
    b[345..345 + f.prefix.len()].copy_from_slice(f.prefix);
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    let digits = format!("{sum:06o}");
    b[148..154].copy_from_slice(digits.as_bytes());
    b[154] = 0;
    b[155] = b' ';
    b
}

/// Writes `v` as octal digits filling all but the last byte of `field`, then a NUL. The
/// caller has checked that `v` fits.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    debug_assert_eq!(s.len(), digits, "{v} does not fit in {digits} octal digits");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_pax_record_lengths_count_themselves() {
        for n in [
            0usize, 1, 5, 90, 91, 92, 95, 96, 97, 98, 99, 100, 995, 996, 997, 1000,
        ] {
            let mut out = Vec::new();
            let value = vec![b'v'; n];
            pax_record(&mut out, b"path", &value);
            let space = out.iter().position(|&b| b == b' ').unwrap();
            let declared: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(declared, out.len(), "value length {n}");
        }
    }

    #[test]
    fn layer_ustar_split() {
        let long = [&[b'a'; 150][..], b"/", &[b'b'; 100][..]].concat();
        let (p, n) = split_ustar_name(&long).unwrap();
        assert_eq!((p.len(), n.len()), (150, 100));
        // No usable separator: needs PAX.
        assert!(split_ustar_name(&[b'a'; 101]).is_none());
        let no_fit = [&[b'a'; 156][..], b"/", &[b'b'; 10][..]].concat();
        assert!(split_ustar_name(&no_fit).is_none());
        assert!(split_ustar_name(&[b'x'; 257]).is_none());
        // A directory's trailing slash is never the split point.
        let dir = [&[b'a'; 101][..], b"/"].concat();
        assert!(split_ustar_name(&dir).is_none());
    }
}
