//! `-o/--output` specs in docker buildx syntax: `type=oci,dest=out.tar`, `type=local,dest=dir`…

use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Zstd,
    Gzip,
    Uncompressed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// An OCI image: an archive (`tar=true`, the default) or a layout directory.
    Oci {
        dest: PathBuf,
        tar: bool,
        compression: Compression,
    },
    /// A `docker save` archive for `docker load` / `podman load`.
    Docker { dest: PathBuf },
    /// The root filesystem as a directory.
    Local { dest: PathBuf },
    /// The root filesystem as a tar file.
    Tar { dest: PathBuf },
    /// A unikernel stage's bootable ELF.
    Unikernel { dest: PathBuf },
}

/// Parses one `--output` value. A bare path means `type=local,dest=PATH`, like buildx.
pub fn parse(spec: &str) -> Result<Output, String> {
    if !spec.contains('=') {
        return Ok(Output::Local {
            dest: PathBuf::from(spec),
        });
    }
    let mut kind = None;
    let mut dest = None;
    let mut tar = true;
    let mut compression = None;
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .ok_or_else(|| format!("invalid output field {field:?}: expected key=value"))?;
        match k.trim() {
            "type" => kind = Some(v.to_owned()),
            "dest" => dest = Some(PathBuf::from(v)),
            "tar" => {
                tar = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("invalid tar={v}: use true or false")),
                }
            }
            "compression" => {
                compression = Some(match v {
                    "zstd" => Compression::Zstd,
                    "gzip" => Compression::Gzip,
                    "uncompressed" => Compression::Uncompressed,
                    _ => {
                        return Err(format!(
                            "invalid compression={v}: use zstd, gzip or uncompressed"
                        ));
                    }
                })
            }
            // Accepted for buildx compatibility; our outputs are always reproducible.
            "name" | "rewrite-timestamp" | "oci-mediatypes" | "force-compression" => {}
            other => return Err(format!("unknown output option {other:?}")),
        }
    }
    let kind = kind.ok_or("the output needs a type=… (oci, docker, local, tar or unikernel)")?;
    let dest = dest.ok_or_else(|| format!("type={kind} needs a dest=…"))?;
    Ok(match kind.as_str() {
        "oci" => Output::Oci {
            dest,
            tar,
            compression: compression.unwrap_or(Compression::Zstd),
        },
        "docker" => Output::Docker { dest },
        "local" => Output::Local { dest },
        "tar" => Output::Tar { dest },
        "unikernel" => Output::Unikernel { dest },
        "registry" | "image" => {
            return Err(format!(
                "type={kind} is not supported yet: use -t NAME to keep the image in the local store"
            ));
        }
        other => {
            return Err(format!(
                "unknown output type {other:?}: use oci, docker, local, tar or unikernel"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse("type=oci,dest=a.tar").unwrap(),
            Output::Oci {
                dest: "a.tar".into(),
                tar: true,
                compression: Compression::Zstd
            }
        );
        assert_eq!(
            parse("type=oci,dest=d,tar=false,compression=gzip").unwrap(),
            Output::Oci {
                dest: "d".into(),
                tar: false,
                compression: Compression::Gzip
            }
        );
        assert_eq!(parse("out").unwrap(), Output::Local { dest: "out".into() });
        assert_eq!(
            parse("type=unikernel,dest=k.elf").unwrap(),
            Output::Unikernel {
                dest: "k.elf".into()
            }
        );
        assert!(parse("type=oci").unwrap_err().contains("dest"));
        assert!(
            parse("type=zip,dest=x")
                .unwrap_err()
                .contains("unknown output type")
        );
        assert!(parse("dest=x").unwrap_err().contains("type"));
        assert!(parse("type=oci,dest=x,tar=maybe").is_err());
    }
}
