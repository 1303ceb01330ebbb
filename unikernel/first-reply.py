#!/usr/bin/env python3
"""Time from starting qemu to the first TCP reply of a network unikernel (TCG, microvm).

    unikernel/first-reply.py IMAGE.elf GUEST_PORT [RUNS] [REQUEST]

Starts qemu with user networking forwarding a free host port to GUEST_PORT, connects again and
again (slirp accepts at once and drops the connection while the guest is not listening yet),
and stops the clock at the first byte of an answer. REQUEST (default: nothing) is sent first,
e.g. 'GET / HTTP/1.0\\r\\n\\r\\n' for a web server. Prints each run and the median in ms.
"""
import os, socket, subprocess, sys, time

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def run(image, guest_port, request):
    port = free_port()
    cmd = ["qemu-system-x86_64", "-M", "microvm", "-nodefaults", "-no-user-config", "-nographic",
           "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-m", "16M",
           "-kernel", image, "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{guest_port}",
           "-device", "virtio-net-device,netdev=n0"]
    t0 = time.monotonic()
    q = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        while time.monotonic() - t0 < 20:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.03) as s:
                    if request:
                        s.sendall(request)
                    if s.recv(1):
                        return (time.monotonic() - t0) * 1000
            except OSError:
                pass
            time.sleep(0.001)
        raise SystemExit("no reply within 20 s")
    finally:
        q.kill()
        q.wait()

if __name__ == "__main__":
    image, guest_port = sys.argv[1], int(sys.argv[2])
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    request = sys.argv[4].encode().decode("unicode_escape").encode() if len(sys.argv) > 4 else b""
    times = sorted(run(image, guest_port, request) for _ in range(runs))
    for t in times:
        print(f"{t:.1f} ms")
    print(f"median {times[len(times) // 2]:.1f} ms over {runs} runs")
