#!/usr/bin/env python3
"""Cost of the seccomp front end (issue 11), on its own:
``python -m tailproxy.testnet -- python bench/seccomp_bench.py [--conns N] [--reps R]``.

  (i) added cost per connection: tcpbench connloop (N sequential connect + 1-byte echo + close,
      blocking sockets) to an echo server on the client host's own non-loopback address, the
      median of --reps runs with the modes interleaved and rotated:
        direct          the program alone (static build)
        preload         tailproxy --no-tailnet --proxy-all --intercept preload (dynamic build)
        seccomp         tailproxy --no-tailnet --proxy-all --intercept seccomp (static build:
                        what LD_PRELOAD cannot reach)
        proxychains     proxychains4 + microsocks (dynamic build)
      added = mode - direct. Goal: seccomp's added cost ≤ 1.5x the preload's.
  (i') calls the filter does not trap: a loop of getppid() + 1-byte read() of /dev/zero
      (2 syscalls per iteration), plain and under tailproxy-exec (the filter installed, no
      channel), in the program's own CPU time (CLOCK_PROCESS_CPUTIME_ID: less at the mercy of
      other load than wall time). Goal: within noise.
Prints every command and a table; figures in µs per connection and ns per iteration.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)

from benchlib import (  # noqa: E402
    STARTED, Failed, free_port, proxychains_conf, result_line, rotated, run, say, show,
    start_server, stop_all, tailproxy_cmd, wait_port)

LOOP_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
	long n = atol(argv[1]), i; char c; struct timespec a, b;
	int fd = open("/dev/zero", O_RDONLY);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
	for (i = 0; i < n; i++) { getppid(); if (read(fd, &c, 1) != 1) return 1; }
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
	printf("loop n=%ld ns_per_iter=%.1f\n", n, ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	return 0;
}
"""


def build(tmp: str) -> dict:
    out = {}
    for name, argv in (
            ("tb", ["gcc", "-O2", "-Wall", "-o", "@", os.path.join(BENCH, "tcpbench.c")]),
            ("tb_static", ["gcc", "-O2", "-Wall", "-static", "-o", "@",
                           os.path.join(BENCH, "tcpbench.c")]),
            ("loop", ["gcc", "-O2", "-static", "-o", "@", "-x", "c", "-"])):
        path = os.path.join(tmp, name)
        argv = [a.replace("@", path) for a in argv]
        show(argv)
        subprocess.run(argv, check=True, input=LOOP_C if name == "loop" else None, text=True)
        out[name] = path
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--loop", type=int, default=2_000_000)
    a = p.parse_args()
    with open(os.environ["TESTNET_INFO"]) as f:
        info = json.load(f)
    tmp = tempfile.mkdtemp(prefix="tailproxy-seccomp-bench-")
    tp, tp_env = tailproxy_cmd(None)
    ip = info["client"]["ipv4"]
    try:
        b = build(tmp)
        helper = os.path.join(ROOT, "src", "tailproxy", "_native", "tailproxy-exec")
        ms_port = free_port()
        ms = subprocess.Popen(["microsocks", "-i", "127.0.0.1", "-p", str(ms_port)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        STARTED.append(ms)
        wait_port("127.0.0.1", ms_port, ms)
        pc = proxychains_conf(os.path.join(tmp, "pc.conf"), ms_port)
        proxied = tp + ["--no-tailnet", "--proxy-all"]
        modes = {
            "direct": ([b["tb_static"]], {}),
            "preload": (proxied + ["--intercept", "preload", b["tb"]], tp_env),
            "seccomp": (proxied + ["--intercept", "seccomp", b["tb_static"]], tp_env),
            "proxychains": (["proxychains4", "-q", "-f", pc, b["tb"]], {}),
        }
        ports = {}
        for m in modes:     # one echo server per mode: its own ports for the loop's TIME_WAITs
            _, ports[m] = start_server([b["tb"], "echo-server", "0", ip],
                                       os.path.join(tmp, f"echo-{m}.log"), note=f"for {m}")
        say(f"\n(i) {a.conns} x (connect + 1-byte echo) to {ip}, {a.reps} reps")
        per = {m: [] for m in modes}
        for r in range(a.reps):
            for m in rotated(list(modes), r):
                argv, env = modes[m]
                out = run(argv + ["connloop", ip, str(ports[m]), str(a.conns)], env)
                per[m].append(float(result_line(out, "connloop")["per_conn_us"]))
        med = {m: statistics.median(v) for m, v in per.items()}
        added = {m: med[m] - med["direct"] for m in modes}
        say(f"\n(i') untrapped calls: {a.loop} x (getppid + read 1 byte), {a.reps} reps")
        loops = {"plain": [b["loop"]], "filtered": [helper, b["loop"], "loop"]}
        ns = {m: [] for m in loops}
        for r in range(a.reps):
            for m in rotated(list(loops), r):
                out = run(loops[m] + [str(a.loop)], {})
                ns[m].append(float(result_line(out, "loop")["ns_per_iter"]))
        nsmed = {m: statistics.median(v) for m, v in ns.items()}
    except Failed as e:
        say(f"FAILED: {e}")
        return 1
    finally:
        stop_all()
    say("\n| mode | per connection (µs) | added (µs) | added vs preload |")
    say("|---|---|---|---|")
    for m in modes:
        rel = f"{added[m] / added['preload']:.2f}x" if m != "direct" else ""
        say(f"| {m} | {med[m]:.1f} | {added[m]:.1f} | {rel} |")
    say(f"\nseccomp added cost / preload added cost: {added['seccomp'] / added['preload']:.2f}x "
        f"(goal ≤ 1.5x)")
    say(f"untrapped syscall loop: plain {nsmed['plain']:.1f} ns/iter, under the filter "
        f"{nsmed['filtered']:.1f} ns/iter ({nsmed['filtered'] / nsmed['plain']:.3f}x)")
    say(json.dumps({"per_conn_us": per, "loop_ns": ns}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
