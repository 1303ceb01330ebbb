#!/usr/bin/env bash
# End-to-end checks of the network modules (issue 7, runtime side), without imgbuild: builds
# pong, static-site (with a 1 MB file added to a temporary copy of its site) and hello with
# build-example.sh, then boots them under qemu microvm (TCG) and checks: pong answers; the site
# serves index.html, the 1 MB file byte-identical, 404, 400 for garbage and keeps serving,
# survives clients that leave mid-transfer; pruning with nm; no DHCP → clear failure / static
# fallback; sizes and time to first reply.
#
#   unikernel/net-check.sh [TARGET_DIR]      (default /tmp/imgbuild-uknet-target)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
export TARGET_DIR=${1:-/tmp/imgbuild-uknet-target}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
QEMU=(qemu-system-x86_64 -M microvm -nodefaults -no-user-config -nographic -serial stdio
      -device isa-debug-exit,iobase=0xf4,iosize=0x04 -m 16M)

cp -r "$ROOT/examples/unikernel/static-site/site" "$T/site"
head -c 1048576 /dev/urandom >"$T/site/big.bin"
"$ROOT/unikernel/build-example.sh" "$ROOT/examples/unikernel/pong/app" "$T/pong.elf" >/dev/null 2>&1
UK_COPY="$T/site:/www/" "$ROOT/unikernel/build-example.sh" "$ROOT/examples/unikernel/static-site/app" "$T/site.elf" >/dev/null 2>&1
"$ROOT/unikernel/build-example.sh" "$ROOT/examples/unikernel/static-site/app" "$T/site-nofiles.elf" >/dev/null 2>&1
UK_COPY="$ROOT/examples/unikernel/hello/greeting.txt:/greeting.txt" UK_CMD="world from imgbuild" \
    "$ROOT/unikernel/build-example.sh" "$ROOT/examples/unikernel/hello/app" "$T/hello.elf" >/dev/null 2>&1

# Pruning: the modules' symbols are imgbuild_unikernel::MODULE::… and smoltcp::socket::KIND::….
has() { grep -qE "$2" <(nm -C "$1"); }
has "$T/pong.elf" 'imgbuild_unikernel::tcp::' || fail "pong lacks tcp symbols"
! has "$T/pong.elf" 'imgbuild_unikernel::(http|udp|dns)::|smoltcp::socket::udp' || fail "pong has http/udp symbols"
has "$T/site.elf" 'imgbuild_unikernel::http::' || fail "static-site lacks http symbols"
! has "$T/site.elf" 'imgbuild_unikernel::(udp|dns)::|smoltcp::socket::udp' || fail "static-site has udp symbols"
! has "$T/hello.elf" 'imgbuild_unikernel::(net|net_virtio|virtio|pci|tcp|udp|dns|http)::|smoltcp' || fail "hello has net symbols"
echo "ok: pruning (pong: tcp, no http/udp; static-site: http, no udp; hello: no net)"

for f in hello pong site-nofiles site; do
    strip -o "$T/$f.stripped" "$T/$f.elf"
    echo "size: $f $(stat -c %s "$T/$f.stripped") bytes stripped ($(stat -c %s "$T/$f.elf") unstripped)"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# pong
P=$(free_port)
"${QEMU[@]}" -kernel "$T/pong.elf" -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$P-:12345 \
    -device virtio-net-device,netdev=n0 >"$T/pong.log" 2>&1 &
QPID=$!
python3 - "$P" <<'PY' || { kill $QPID; cat "$T/pong.log"; fail "pong"; }
import socket, sys, time
port = int(sys.argv[1]); deadline = time.time() + 10
while True:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            d = s.recv(100)
            if d:
                assert d == b"pong\n", d
                break
    except OSError:
        pass
    assert time.time() < deadline, "no pong"
for _ in range(20):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        assert s.recv(100) == b"pong\n"
print("ok: pong answers pong (21 connections)")
PY
kill $QPID; wait $QPID 2>/dev/null || true
grep -q '^net: 10.0.2.15/24 via dhcp' "$T/pong.log" || fail "pong did not print its address"

# static-site
P=$(free_port)
"${QEMU[@]}" -kernel "$T/site.elf" -netdev user,id=n0,hostfwd=tcp:127.0.0.1:$P-:80 \
    -device virtio-net-device,netdev=n0 >"$T/site.log" 2>&1 &
QPID=$!
python3 - "$P" "$T/site" <<'PY' || { kill $QPID; cat "$T/site.log"; fail "static-site"; }
import socket, struct, sys, time
port, site = int(sys.argv[1]), sys.argv[2]
def conn():
    return socket.create_connection(("127.0.0.1", port), timeout=5)
def ask(req):
    with conn() as s:
        s.sendall(req)
        out = b""
        while (d := s.recv(65536)):
            out += d
    head, _, body = out.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(), head, body
deadline = time.time() + 10
while True:
    try:
        status, head, body = ask(b"GET / HTTP/1.0\r\n\r\n")
        break
    except OSError:
        assert time.time() < deadline, "site not up"
        time.sleep(0.05)
assert status == "HTTP/1.1 200 OK" and body == open(f"{site}/index.html", "rb").read(), status
assert b"Content-Type: text/html" in head
status, _, body = ask(b"GET /big.bin HTTP/1.0\r\n\r\n")
assert status.endswith("200 OK") and body == open(f"{site}/big.bin", "rb").read(), "1 MB file differs"
assert ask(b"GET /missing.html HTTP/1.0\r\n\r\n")[0].endswith("404 Not Found")
assert ask(b"\x00\x01 garbage\r\n\r\n")[0].endswith("400 Bad Request")
assert ask(b"GET / HTTP/1.0\r\n\r\n")[0].endswith("200 OK"), "no longer serving after 400"
status, head, body = ask(b"HEAD /about.html HTTP/1.0\r\n\r\n")
assert status.endswith("200 OK") and body == b"" and b"Content-Length: " in head
with conn() as s:  # keep-alive, pipelined
    s.sendall(b"GET / HTTP/1.1\r\n\r\nGET /about.html HTTP/1.1\r\nConnection: close\r\n\r\n")
    out = b""
    while (d := s.recv(65536)):
        out += d
    assert out.count(b"HTTP/1.1 200 OK") == 2
for linger in (True, False, True):  # clients leaving mid-transfer (reset, then close)
    s = conn(); s.sendall(b"GET /big.bin HTTP/1.1\r\n\r\n"); s.recv(4096)
    if linger:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
status, _, body = ask(b"GET /big.bin HTTP/1.0\r\n\r\n")
assert body == open(f"{site}/big.bin", "rb").read(), "not serving after clients left mid-transfer"
print("ok: static-site: index.html, 1 MB byte-identical, 404, 400 then serving, HEAD, keep-alive, mid-transfer disconnects")
PY
kill $QPID; wait $QPID 2>/dev/null || true

# No DHCP server (a hub with nothing else on it): a clear failure within the bounded wait,
# or the static address of the command line.
start=$(date +%s%N)
set +e
timeout 20 "${QEMU[@]}" -kernel "$T/pong.elf" -netdev hubport,id=n0,hubid=0 -device virtio-net-device,netdev=n0 >"$T/nodhcp.log" 2>/dev/null
status=$?
set -e
ms=$(( ($(date +%s%N) - start) / 1000000 ))
[ $status = 209 ] && grep -q 'net: no DHCP lease within 5 s and no static address' "$T/nodhcp.log" || { cat "$T/nodhcp.log"; fail "no-DHCP failure (status $status)"; }
echo "ok: no DHCP, no static address: exit code 104 (qemu status 209) after $ms ms: $(head -1 "$T/nodhcp.log")"
set +e
timeout 4 "${QEMU[@]}" -kernel "$T/pong.elf" -netdev hubport,id=n0,hubid=0 -device virtio-net-device,netdev=n0 \
    -append "ip=10.0.2.15/24 gw=10.0.2.2 dhcp=1" >"$T/static.log" 2>/dev/null
set -e
grep -q '^net: 10.0.2.15/24 via static' "$T/static.log" || { cat "$T/static.log"; fail "static fallback"; }
echo "ok: no DHCP, ip= given: $(head -2 "$T/static.log" | tr '\n' ' ')"

echo "time to first reply (pong):"
python3 "$ROOT/unikernel/first-reply.py" "$T/pong.elf" 12345 5 | tail -1
echo "time to first reply (static-site, GET /):"
python3 "$ROOT/unikernel/first-reply.py" "$T/site.elf" 80 5 'GET / HTTP/1.0\r\n\r\n' | tail -1
echo "all network checks passed"
