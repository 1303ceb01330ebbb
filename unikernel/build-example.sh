#!/usr/bin/env bash
# Builds an app against this runtime the way imgbuild does (executable documentation of the
# contract in README.md), for testing the runtime without imgbuild.
#
#   unikernel/build-example.sh APP_DIR OUT.elf [MODULE...]
#
# MODULEs default to the app's `[package.metadata.imgbuild] modules`; boot and console are
# always added (cargo's feature graph adds the rest of the closure). Baked inputs, optional:
#   UK_COPY="SRC:/DEST ..."  regular files for the fs image (imgbuild: the stage's COPY/ADD);
#                             a directory SRC brings the regular files below it, under DEST
#   UK_CMD="ARG ..."          the CMD arguments           UK_ENV="K=V ..."  the ENV
#   TARGET_DIR=DIR            cargo's target dir (default: inside the temporary work dir)
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 APP_DIR OUT.elf [MODULE...]" >&2; exit 2; }
RUNTIME_SRC=$(cd "$(dirname "$0")" && pwd)
APP=$(cd "$1" && pwd)
OUT=$2
shift 2

modules=("$@")
if [ ${#modules[@]} -eq 0 ]; then
    # The app's declared modules: modules = ["a", "b"] under [package.metadata.imgbuild].
    line=$(sed -n '/^\[package\.metadata\.imgbuild\]/,/^\[/{/^modules[[:space:]]*=/p}' "$APP/Cargo.toml")
    read -r -a modules <<<"$(printf '%s' "${line#*=}" | tr -d '[],"')"
fi
modules=(boot console "${modules[@]}")
features=$(printf '"%s", ' "${modules[@]}")
features="[${features%, }]"

W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
T=${TARGET_DIR:-$W/target}

# The work dir: a virtual workspace with the app and a copy of the runtime.
cp -r "$RUNTIME_SRC" "$W/imgbuild-unikernel"
mkdir "$W/app"
(cd "$APP" && tar --exclude=./target -cf - .) | (cd "$W/app" && tar -xf -)
sed -i "s|^imgbuild-unikernel[[:space:]]*=.*|imgbuild-unikernel = { path = \"../imgbuild-unikernel\", default-features = false, features = $features }|" "$W/app/Cargo.toml"
# The runtime's pinned dependency versions (smoltcp and its dependencies, for the net modules);
# cargo adds the app's own entries.
cp "$RUNTIME_SRC/Cargo.lock" "$W/Cargo.lock"
printf '[workspace]\nmembers = ["app"]\nresolver = "3"\n[profile.release]\npanic = "abort"\nopt-level = "s"\nlto = true\ncodegen-units = 1\ndebug = false\nincremental = false\n' >"$W/Cargo.toml"

u32() { printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)))"; }
u64() { u32 $(($1 & 0xffffffff)); u32 $(($1 >> 32)); }

# The fs image (README.md, "fs image"): header, entries sorted by path bytes, then the data.
if [ -n "${UK_COPY:-}" ]; then
    fsimg=$W/fs.img
    mapfile -t pairs < <(for p in $UK_COPY; do
        src=${p%%:*}; dest=${p#*:/}
        if [ -d "$src" ]; then
            # Paths are relative in the image; "dest" without its trailing slash.
            (cd "$src" && find . -type f | sed 's|^\./||') | while read -r f; do
                printf '%s\t%s\n' "${dest%/}${dest:+/}$f" "$src/$f"
            done | sed 's|^/||'
        else
            printf '%s\t%s\n' "$dest" "$src"
        fi
    done | LC_ALL=C sort)
    off=12
    for p in "${pairs[@]}"; do path=${p%%$'\t'*}; off=$((off + 4 + ${#path} + 20)); done
    {
        printf 'IMGBFS1\0'
        u32 ${#pairs[@]}
        for p in "${pairs[@]}"; do
            path=${p%%$'\t'*}; src=${p#*$'\t'}; size=$(stat -c %s "$src")
            u32 ${#path}; printf '%s' "$path"; u32 $((0100000 | 0644)); u64 $off; u64 "$size"
            off=$((off + size))
        done
        for p in "${pairs[@]}"; do cat "${p#*$'\t'}"; done
    } >"$fsimg"
    export IMGBUILD_UNIKERNEL_FS=$fsimg
fi

# The config (README.md, "config"): CMD arguments, then ENV entries.
if [ -n "${UK_CMD:-}${UK_ENV:-}" ]; then
    read -r -a cmd <<<"${UK_CMD:-}"
    read -r -a envs <<<"${UK_ENV:-}"
    {
        u32 ${#cmd[@]}; for a in "${cmd[@]}"; do u32 ${#a}; printf '%s' "$a"; done
        u32 ${#envs[@]}; for e in "${envs[@]}"; do u32 ${#e}; printf '%s' "$e"; done
    } >"$W/config.bin"
    export IMGBUILD_UNIKERNEL_CONFIG=$W/config.bin
fi

flags=$(sed "s|{RUNTIME}|$W/imgbuild-unikernel|g" "$RUNTIME_SRC/rustflags.txt" | tr '\n' ' ')
# imgbuild's remaps: the work dir and the target dir must not leak into the image.
# And cargo's registry sources (smoltcp's panic locations), which name the home directory.
registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
export RUSTFLAGS="$flags--remap-path-prefix=$W=/imgbuild --remap-path-prefix=$T=/imgbuild-target --remap-path-prefix=$registry=/cargo-registry"
cargo build --release --manifest-path "$W/Cargo.toml" --target-dir "$T" --target x86_64-unknown-linux-gnu ${CARGO_FLAGS:-}

bin=$(sed -n '/^\[\[bin\]\]/,/^\[/{s/^name[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p}' "$W/app/Cargo.toml" | head -n1)
[ -n "$bin" ] || bin=$(sed -n '/^\[package\]/,/^\[/{s/^name[[:space:]]*=[[:space:]]*"\(.*\)"/\1/p}' "$W/app/Cargo.toml" | head -n1)
cp "$T/x86_64-unknown-linux-gnu/release/$bin" "$OUT"
