#!/usr/bin/env python3
"""Where (a)'s time goes: the proxied path (tailproxy --no-tailnet --proxy-all: preload ->
channel -> the Python proxy -> its direct dial -> relay) against proxychains4 + microsocks, on
the local tailnet's client host (issue 15, benchmark (a)):

    python -m tailproxy.testnet -- .venv/bin/python bench/proxied_profile.py [--n 3000]

Three measurements of `tcpbench connloop` (N x connect + 1-byte echo + close) to an echo server
on the client host's own address:
  1. perf stat, CPU time (task-clock) per connection of each side: tailproxy's process tree
     (the proxy and the program under the preload) vs the program under proxychains4 plus
     microsocks; user and system time per process from /proc;
  2. perf record of both (all their processes, kernel included), report by process and
     shared object, then the top symbols: where the CPU goes;
  3. cProfile of the proxy's own Python (its main thread: the event loop), top functions by
     own time and by cumulative time.
Prints the exact commands and the summaries (for bench/REPORT.md).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pstats
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import benchlib as B

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(argv, env=None, **kw):
    B.say("  $ " + shlex.join(argv))
    return subprocess.run(argv, env=dict(os.environ, **(env or {})), capture_output=True,
                          text=True, timeout=600, **kw)


def perf_report(data: str, sort: str, limit: int) -> str:
    r = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                        "--sort", sort, "--percent-limit", "1"], capture_output=True, text=True)
    lines = [l for l in r.stdout.splitlines() if l.strip() and not l.startswith("#")]
    return "\n".join(lines[:limit])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3000, help="connections per run")
    a = p.parse_args()
    with open(os.environ["TESTNET_INFO"]) as f:
        info = json.load(f)
    ip = info["client"]["ipv4"]
    tmp = tempfile.mkdtemp(prefix="tailproxy-proxied-")
    env = {"PYTHONPATH": os.path.join(ROOT, "src")}
    tp = [sys.executable, "-m", "tailproxy", "--no-tailnet", "--proxy-all"]
    try:
        tb = B.build_tcpbench(tmp)
        _echo, port = B.start_server([tb, "echo-server", "0", ip], os.path.join(tmp, "echo.log"))
        ms_port = B.free_port()
        conf = B.proxychains_conf(os.path.join(tmp, "pc.conf"), ms_port)
        loop = [tb, "connloop", ip, str(port), str(a.n)]

        B.say(f"\n1. CPU per connection ({a.n} x connect + 1-byte echo + close to {ip})")
        ms_data = os.path.join(tmp, "ms.data")
        ms = subprocess.Popen(["perf", "record", "-F", "4999", "-g", "-o", ms_data, "--",
                               "microsocks", "-i", "127.0.0.1", "-p", str(ms_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        B.wait_port("127.0.0.1", ms_port, ms)
        figures = {}

        def task_ms(argv):
            r = sh(["perf", "stat", "-x", ",", "-e", "task-clock", "--"] + argv, env)
            return (next(float(l.split(",")[0]) for l in r.stderr.splitlines()
                         if "task-clock" in l), B.result_line(r.stdout, "connloop"))
        # the run's CPU for N connections less that of a run of 1 (start-up, exit)
        for name, pre in (("tailproxy", tp),
                          ("proxychains4 (program side)", ["proxychains4", "-q", "-f", conf])):
            base, _ = task_ms(pre + loop[:-1] + ["1"])
            full, res = task_ms(pre + loop)
            figures[name] = ((full - base) * 1000 / (a.n - 1), res["per_conn_us"])
        # microsocks' CPU: its /proc times over the proxychains run above and this one
        ms_pid = int(subprocess.run(["pgrep", "-P", str(ms.pid)], capture_output=True,
                                    text=True).stdout.split()[0])

        def cpu(pid):
            with open(f"/proc/{pid}/stat") as f:
                fs = f.read().rsplit(")", 1)[1].split()
            return (int(fs[11]) + int(fs[12])) / os.sysconf("SC_CLK_TCK")
        c0 = cpu(ms_pid)
        r = sh(["proxychains4", "-q", "-f", conf] + loop)
        ms_us = (cpu(ms_pid) - c0) * 1e6 / a.n
        ms.send_signal(signal.SIGINT)
        ms.wait(30)
        for name, (cpu_us, wall_us) in figures.items():
            B.say(f"  {name:30} CPU {cpu_us:7.1f} µs/conn (whole tree), wall {wall_us:7.1f} µs/conn")
        B.say(f"  {'microsocks':30} CPU {ms_us:7.1f} µs/conn")

        B.say("\n2. perf record: where the CPU goes")
        tp_data = os.path.join(tmp, "tp.data")
        sh(["perf", "record", "-F", "4999", "-g", "-o", tp_data, "--"] + tp + loop, env)
        for title, data in (("tailproxy (proxy + program)", tp_data),
                            ("microsocks (its whole life: two runs)", ms_data)):
            B.say(f"\n  {title}, by process and object:")
            B.say(perf_report(data, "comm,dso", 14))
            B.say(f"\n  {title}, top symbols:")
            B.say(perf_report(data, "comm,dso,sym", 25))

        B.say("\n3. cProfile of the proxy's Python (the event loop's thread)")
        prof = os.path.join(tmp, "proxy.prof")
        r = sh([sys.executable, "-m", "cProfile", "-o", prof, "-m", "tailproxy", "--no-tailnet",
                "--proxy-all"] + loop, env)
        B.say("  " + (r.stdout.strip().splitlines() or ["(no output)"])[-1])
        for key in ("tottime", "cumulative"):
            B.say(f"\n  by {key}:")
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats(key).print_stats(22)
            B.say("\n".join(l for l in out.getvalue().splitlines()[6:] if l.strip()))
    finally:
        B.stop_all()
        time.sleep(0.1)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
