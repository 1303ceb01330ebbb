#!/bin/sh
# build.sh CACHE OUT: compile src/*.c into objects kept in CACHE (a cache mount), link OUT.
# A file is compiled only when its source (with calc.h) differs from what made the cached
# object: CACHE/NAME.sum holds that source's sha256.
set -eu
cache=$1 out=$2
mkdir -p "$cache" "$(dirname "$out")"
compiled=0 total=0 objs=
for c in src/*.c; do
    name=$(basename "$c" .c)
    sum=$(cat src/calc.h "$c" | sha256sum)
    if [ ! -f "$cache/$name.o" ] || [ "$sum" != "$(cat "$cache/$name.sum" 2>/dev/null)" ]; then
        gcc -O2 -c -o "$cache/$name.o" "$c"
        echo "$sum" > "$cache/$name.sum"
        compiled=$((compiled + 1))
    fi
    total=$((total + 1))
    objs="$objs $cache/$name.o"
done
echo "compiled $compiled of $total files"
gcc -static -o "$out" $objs
strip "$out"
