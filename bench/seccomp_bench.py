#!/usr/bin/env python3
"""Cost of the seccomp front end (issue 11): section (j) of bench/run.py, or on its own:
``python -m tailproxy.testnet -- python bench/seccomp_bench.py [--conns N] [--reps R]``.

  (j) added cost per connection: tcpbench connloop (N sequential connect + 1-byte echo + close,
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
import shutil
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


def section(info: dict, tp: list[str], tp_env: dict, tmp: str, conns: int = 1000, reps: int = 5,
            loop: int = 2_000_000) -> dict:
    """Runs (j) and (j'); returns the figures (medians, every repetition, the ratios)."""
    b = build(tmp)
    ip = info["client"]["ipv4"]
    helper = os.path.join(ROOT, "src", "tailproxy", "_native", "tailproxy-exec")
    ms_port = free_port()
    ms = subprocess.Popen(["microsocks", "-i", "127.0.0.1", "-p", str(ms_port)],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    STARTED.append(ms)
    wait_port("127.0.0.1", ms_port, ms)
    pc = proxychains_conf(os.path.join(tmp, "pc-seccomp.conf"), ms_port)
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
                                   os.path.join(tmp, f"echo-seccomp-{m}.log"), note=f"for {m}")
    say(f"\n(j) {conns} x (connect + 1-byte echo) to {ip}, {reps} reps")
    per = {m: [] for m in modes}
    for r in range(reps):
        for m in rotated(list(modes), r):
            argv, env = modes[m]
            out = run(argv + ["connloop", ip, str(ports[m]), str(conns)], env)
            per[m].append(float(result_line(out, "connloop")["per_conn_us"]))
    med = {m: statistics.median(v) for m, v in per.items()}
    added = {m: med[m] - med["direct"] for m in modes}
    say(f"\n(i') untrapped calls: {loop} x (getppid + read 1 byte), {reps} reps")
    loops = {"plain": [b["loop"]], "filtered": [helper, b["loop"], "loop"]}
    ns = {m: [] for m in loops}
    for r in range(reps):
        for m in rotated(list(loops), r):
            out = run(loops[m] + [str(loop)], {})
            ns[m].append(float(result_line(out, "loop")["ns_per_iter"]))
    nsmed = {m: statistics.median(v) for m, v in ns.items()}
    return {"per_conn_us": per, "median_us": med, "added_us": added,
            "seccomp_vs_preload": added["seccomp"] / added["preload"],
            "loop_ns": ns, "loop_median_ns": nsmed,
            "loop_ratio": nsmed["filtered"] / nsmed["plain"]}


def table(res: dict) -> str:
    med, added = res["median_us"], res["added_us"]
    lines = ["| (j) mode | per connection (µs) | added (µs) | added vs preload |", "|---|---|---|---|"]
    for m in med:
        rel = f"{added[m] / added['preload']:.2f}x" if m != "direct" else ""
        lines.append(f"| {m} | {med[m]:.1f} | {added[m]:.1f} | {rel} |")
    lines.append(f"\nseccomp added cost / preload added cost: {res['seccomp_vs_preload']:.2f}x "
                 f"(goal ≤ 1.5x)")
    nsm = res["loop_median_ns"]
    lines.append(f"(i') untrapped syscall loop (CPU time): plain {nsm['plain']:.1f} ns/iter, under "
                 f"the filter {nsm['filtered']:.1f} ns/iter ({res['loop_ratio']:.3f}x)")
    return "\n".join(lines)


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
    try:
        res = section(info, tp, tp_env, tmp, a.conns, a.reps, a.loop)
    except Failed as e:
        say(f"FAILED: {e}")
        return 1
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    say("\n" + table(res))
    say(json.dumps({"per_conn_us": res["per_conn_us"], "loop_ns": res["loop_ns"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
