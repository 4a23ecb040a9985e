#!/usr/bin/env python3
"""Benchmark a published port: requests to a web server in a workspace through
`--publish` (the host's 127.0.0.1 -> the forwarder, which relays over a socket of the
workspace's network namespace -> the server), against the same server run natively on the
host, in the same run, interleaved.

Rows: a small request on a new connection (latency, median) and a 1 MiB response
(throughput, median). Targets: the small request through the published port takes at most
2x its native time; 1 MiB responses reach at least 50% of native throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchrepo import scratch_home

SMALL_RATIO = 2.0  # published / native latency, at most
BIG_SHARE = 0.5  # published / native throughput, at least
BIG = 1024 * 1024
# The same server on both sides: Python's, serving its directory, without a log line per
# request (on the host it would go nowhere, in the workspace through a service's log).
SERVER = """\
import http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Quiet).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str) -> int:
    """One HTTP/1.0 GET on a new connection; returns the bytes received."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        total = 0
        while chunk := sock.recv(262144):
            total += len(chunk)
    return total


def wait_listening(port: int) -> None:
    for _ in range(500):
        try:
            if get(port, "/small.txt") > 0:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"nothing answered on port {port}")


def timed_pair(native: int, published: int, path: str, runs: int) -> tuple[list[float], ...]:
    """Alternate native and published requests, so load on the machine hits both alike."""
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        for port, samples in (
            ((native, a), (published, b)) if i % 2 else ((published, b), (native, a))
        ):
            start = time.perf_counter()
            got = get(port, path)
            samples.append(time.perf_counter() - start)
            if got < (BIG if path == "/big.bin" else 1):
                raise SystemExit(f"short response from port {port}: {got} bytes")
    return a, b


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="small requests per side")
    parser.add_argument("--big-runs", type=int, default=40, help="1 MiB responses per side")
    parser.add_argument("--quick", action="store_true", help="CI smoke: 20 and 5 runs")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    parser.add_argument("--json", type=Path, help="write the samples here")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.big_runs = 20, 5

    from pyro_loop.workspace.manager import Workspaces
    from pyro_loop.workspace.ports import Mapping
    from pyro_loop.workspace.services import ServiceClient

    with scratch_home("pyro-bench-ports-") as tmp:
        site = tmp / "site"
        site.mkdir()
        (site / "small.txt").write_text("hello\n")
        (site / "big.bin").write_bytes(os.urandom(BIG))
        (site / "server.py").write_text(SERVER)
        ws = Workspaces(home=tmp / "home")
        record = ws.create(seed=site)
        inside, native = free_port(), free_port()
        server = ["python3", "server.py"]
        ServiceClient(ws.client(record.id)).service_start("web", [*server, str(inside)])
        # A session of its own, as the workspace's server has (and as a dev server has from
        # the browser or curl that calls it): with the kernel's autogroup scheduling, a
        # server in its caller's own session would be favoured on a loaded machine.
        host_server = subprocess.Popen(
            [*server, str(native)], cwd=site, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            ws.publish(record.id, [Mapping(inside, inside)])
            wait_listening(native)
            wait_listening(inside)
            timed_pair(native, inside, "/small.txt", 10)  # warm-up
            small_native, small_pub = timed_pair(native, inside, "/small.txt", args.runs)
            big_native, big_pub = timed_pair(native, inside, "/big.bin", args.big_runs)
        finally:
            host_server.kill()
            host_server.wait()
            ws.delete(record.id)

    def ms(samples: list[float]) -> float:
        return statistics.median(samples) * 1000

    def mb_s(samples: list[float]) -> float:
        return BIG / statistics.median(samples) / 1e6

    small_ratio = ms(small_pub) / ms(small_native)
    big_share = mb_s(big_pub) / mb_s(big_native)
    rows = [
        ("published port, small request (new connection)", f"{ms(small_pub):.2f} ms",
         f"{ms(small_native):.2f} ms", f"{small_ratio:.2f}x", f"<= {SMALL_RATIO:.1f}x",
         small_ratio <= SMALL_RATIO),
        ("published port, 1 MiB response", f"{mb_s(big_pub):.0f} MB/s",
         f"{mb_s(big_native):.0f} MB/s", f"{big_share:.0%}", f">= {BIG_SHARE:.0%}",
         big_share >= BIG_SHARE),
    ]  # fmt: skip
    print(f"published-port benchmark: {args.runs} small, {args.big_runs} x 1 MiB requests per "
          f"side, interleaved; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'operation':48} {'published':>11} {'native':>11} {'ratio':>7}  {'target':9} result")
    failed = False
    for name, pub, nat, ratio, target, ok in rows:
        failed |= not ok
        print(f"{name:48} {pub:>11} {nat:>11} {ratio:>7}  {target:9} {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({
            "small_native": small_native, "small_published": small_pub,
            "big_native": big_native, "big_published": big_pub,
        }))  # fmt: skip
    return 1 if failed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
