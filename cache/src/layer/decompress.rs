//! Finding an archive's compression by its magic bytes, and undoing it as a stream (for `ADD`
//! of a local archive and for importing layers whose media type is not trusted).

use std::io::{self, Cursor, Read};

/// The compression of a stream, as its first bytes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompressionFormat {
    /// None recognised: the stream is taken as it is (a plain tar, or not an archive at all).
    Plain,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

/// Bytes read before deciding: one tar header block, which also holds every magic.
const HEAD_LEN: usize = 512;

/// The format whose magic `head` starts with (`head` may be shorter than 6 bytes).
pub fn detect_compression(head: &[u8]) -> CompressionFormat {
    if head.starts_with(&[0x1f, 0x8b]) {
        CompressionFormat::Gzip
    } else if head.starts_with(b"BZh") {
        CompressionFormat::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        CompressionFormat::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        CompressionFormat::Zstd
    } else {
        CompressionFormat::Plain
    }
}

/// Whether `block` is a tar header block: 512 bytes whose checksum field matches.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < HEAD_LEN {
        return false;
    }
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(declared) = u32::from_str_radix(std::str::from_utf8(&digits).unwrap_or(""), 8) else {
        return false;
    };
    let sum: u32 = block[..HEAD_LEN]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u32::from(b' ')
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == declared
}

/// A reader of `reader`'s decompressed bytes, the format found by [`detect_compression`].
pub fn decompress<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    decompress_detect(reader).map(|(_, r)| r)
}

/// Like [`decompress`], also saying which format was found. Concatenated gzip members, bzip2
/// streams, xz streams and zstd frames are all read; zstd frames with windows up to 2 GiB
/// (`--long=31`) are accepted.
pub fn decompress_detect<'a, R: Read + 'a>(
    mut reader: R,
) -> io::Result<(CompressionFormat, Box<dyn Read + 'a>)> {
    let mut head = [0u8; HEAD_LEN];
    let mut filled = 0;
    while filled < HEAD_LEN {
        match reader.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // A valid tar header first is a plain tar, even if its first name starts like a magic.
    let format = if is_tar_header(&head[..filled]) {
        CompressionFormat::Plain
    } else {
        detect_compression(&head[..filled])
    };
    let whole = Cursor::new(head[..filled].to_vec()).chain(reader);
    let out: Box<dyn Read + 'a> = match format {
        CompressionFormat::Plain => Box::new(whole),
        CompressionFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        CompressionFormat::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(whole)),
        CompressionFormat::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(whole)),
        CompressionFormat::Zstd => {
            let mut d = zstd::stream::read::Decoder::new(whole)?;
            d.window_log_max(31)?;
            Box::new(d)
        }
    };
    Ok((format, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(format: CompressionFormat, compressed: Vec<u8>, plain: &[u8]) {
        let (found, mut r) = decompress_detect(Cursor::new(compressed)).unwrap();
        assert_eq!(found, format);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn layer_decompress_detects_every_format() {
        let plain: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        roundtrip(CompressionFormat::Gzip, gz.finish().unwrap(), &plain);

        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&plain).unwrap();
        roundtrip(CompressionFormat::Bzip2, bz.finish().unwrap(), &plain);

        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&plain).unwrap();
        roundtrip(CompressionFormat::Xz, xz.finish().unwrap(), &plain);

        roundtrip(
            CompressionFormat::Zstd,
            zstd::encode_all(&plain[..], 1).unwrap(),
            &plain,
        );
        roundtrip(CompressionFormat::Plain, plain.clone(), &plain);
        // Streams shorter than the longest magic.
        roundtrip(CompressionFormat::Plain, b"ab".to_vec(), b"ab");
        roundtrip(CompressionFormat::Plain, Vec::new(), b"");
    }

    #[test]
    fn layer_decompress_takes_a_tar_named_like_a_magic_as_plain() {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("BZh9-not-bzip2").unwrap();
        h.set_size(1);
        h.set_cksum();
        tar.append(&h, &b"x"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        assert_eq!(detect_compression(&tar), CompressionFormat::Bzip2);
        roundtrip(CompressionFormat::Plain, tar.clone(), &tar);
    }

    #[test]
    fn layer_decompress_reads_concatenated_gzip_members() {
        let mut all = Vec::new();
        for part in [&b"hello "[..], b"world"] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(part).unwrap();
            all.extend(gz.finish().unwrap());
        }
        roundtrip(CompressionFormat::Gzip, all, b"hello world");
    }
}
