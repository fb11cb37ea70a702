#!/usr/bin/env python3
"""The preload's own cost on a destination its routing table sends direct, with nothing else
running: ``sudo .venv/bin/python bench/direct_hook.py [--n 2000] [--reps 11]``.

In a private network namespace (unshare --net, an address on lo that is not loopback), tcpbench
connlat and connloop run alternately plain and under LD_PRELOAD=libtailproxy.so with a published
table that lets the destination go direct. TAILPROXY_SOCKET names a channel that does not exist,
so a connection handed over would fail (ENETDOWN): every one of them went through the real
connect(). Prints, per mode, the median over the repetitions of each run's median connection, and the
per-repetition ratios (the two modes back to back)."""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, os.path.join(ROOT, "src"))
from tailproxy.policy import table as T  # noqa: E402

ADDR = "198.18.0.1"
SCRIPT = """
set -e
ip link set lo up
ip addr add {addr}/32 dev lo
# this namespace only: reuse TIME_WAIT ports, or tens of thousands of connections to one port
# make connect() itself slow (both modes alike)
sysctl -q -w net.ipv4.tcp_tw_reuse=1
{tb} echo-server 0 {addr} > {tmp}/echo.out 2>&1 &
server=$!
while ! grep -q listening {tmp}/echo.out; do sleep 0.05; done
port=$(awk '{{print $3}}' {tmp}/echo.out)
for r in $(seq {reps}); do
  for mode in plain preload; do
    if [ $mode = preload ]; then pre="env LD_PRELOAD={lib} TAILPROXY_SOCKET={tmp}/none/channel TAILPROXY_TABLE={table}"; else pre=""; fi
    echo "$mode $($pre {tb} connlat {addr} $port {n})"
    echo "$mode $($pre {tb} connloop {addr} $port {n})"
  done
done
kill $server
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="connections per run (default 2000)")
    p.add_argument("--reps", type=int, default=11, help="repetitions (default 11)")
    p.add_argument("--lib", default=os.path.join(ROOT, "src", "tailproxy", "_native", "libtailproxy.so"))
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tp-hook-") as tmp:
        os.chmod(tmp, 0o700)
        tb = os.path.join(tmp, "tcpbench")
        subprocess.run(["gcc", "-O2", "-o", tb, os.path.join(BENCH, "tcpbench.c")], check=True)
        table = T.RouteTableFile(os.path.join(tmp, "routes"))
        table.publish(0, [("100.64.0.0/10", T.PROXY), ("fd7a:115c:a1e0::/48", T.PROXY),
                          ("198.51.100.0/24", T.PROXY), ("fd00:51::/64", T.PROXY)])
        script = SCRIPT.format(addr=ADDR, tb=tb, tmp=tmp, reps=a.reps, lib=a.lib, table=table.path,
                               n=a.n)
        print(f"$ unshare --net sh -c '<{a.reps} x (connlat, connloop) x (plain, preload), "
              f"{a.n} connections each, to {ADDR}>'", flush=True)
        out = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True,
                             text=True, check=True).stdout
    runs: dict = {}
    for line in out.splitlines():
        mode, kind, *fields = line.split()
        kv = dict(f.split("=", 1) for f in fields)
        runs.setdefault((kind, mode), []).append(float(kv["median_us"]))
    # medians of each run's connections: on a shared machine a burst of other work moves a
    # run's mean far more than the few microseconds measured here
    for kind, what in (("connlat", "connect() alone, median µs"),
                       ("connloop", "connect+echo+close, median µs")):
        plain, pre = runs[(kind, "plain")], runs[(kind, "preload")]
        ratios = [b / x for x, b in zip(plain, pre)]
        print(f"{what}: plain {statistics.median(plain):.1f}, preload (direct by the table) "
              f"{statistics.median(pre):.1f}; ratio per repetition median {statistics.median(ratios):.3f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
