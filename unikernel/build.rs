//! Copies the baked inputs imgbuild hands over (the fs image and the CMD/ENV config) into
//! OUT_DIR, where the runtime `include_bytes!`s them. An unset variable means an empty input.

use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for (var, name) in [("IMGBUILD_UNIKERNEL_FS", "fs.img"), ("IMGBUILD_UNIKERNEL_CONFIG", "config.bin")] {
        println!("cargo:rerun-if-env-changed={var}");
        let data = match env::var_os(var) {
            Some(path) if !path.is_empty() => {
                println!("cargo:rerun-if-changed={}", path.to_string_lossy());
                fs::read(&path).unwrap_or_else(|e| panic!("{var}={}: {e}", path.to_string_lossy()))
            }
            _ => Vec::new(),
        };
        let dest = out.join(name);
        // Rewrite only on change so an unchanged input does not rebuild the runtime.
        if fs::read(&dest).ok().as_deref() != Some(&data[..]) {
            fs::write(&dest, &data).expect("write OUT_DIR input");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link.ld");
}
