#!/usr/bin/env python3
"""Where (c)'s connect latency goes: CPU time per tailnet connection, tailproxy vs the anchor
(a userspace tailscaled's SOCKS5 + proxychains4). CPU time, unlike latency, hardly depends on
what else the machine runs. On the local tailnet:

    python -m tailproxy.testnet -- .venv/bin/python bench/conn_cpu.py [--n 2000]

For each mode, one program run: `tcpbench connlat` to an echo server on `peer` (100 warm-up,
then N connects), then `tcpbench connloop` (N connect + 1-byte echo + close). Between phases the
program waits on a fifo while this script reads /proc: utime+stime of
  - tailproxy's main thread (Python: the event loop, the channel, ctypes calls into the node)
    and of its other threads (the Go node; Python's worker threads, idle here);
  - the anchor's tailscaled (all its threads);
  - the program (sh's children: tcpbench with tailproxy's preload, or with proxychains4's hook).
Prints µs of CPU per connection for each, and the run's median connect() latency.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import benchlib as B

TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(path: str, children: bool = False) -> float:
    """utime+stime (or cutime+cstime) from a /proc stat file, in seconds."""
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    i = 13 if children else 11          # utime is field 14 (index 11 after the comm), cutime 16
    return (int(fields[i]) + int(fields[i + 1])) / TCK


def sample(mode: str, top: int, daemon: int | None) -> dict:
    out = {}
    sh = top if B.comm(top) == "sh" else next((c for c in B.descendants(top) if B.comm(c) == "sh"), None)
    out["program"] = cpu_s(f"/proc/{sh}/stat", children=True)
    if mode == "tailproxy":
        whole = cpu_s(f"/proc/{top}/stat")
        main = cpu_s(f"/proc/{top}/task/{top}/stat")
        out["tailproxy main thread (Python)"] = main
        out["tailproxy other threads (Go node)"] = whole - main
    else:
        out["tailscaled (all threads)"] = cpu_s(f"/proc/{daemon}/stat")
    return out


def one(mode: str, argv: list[str], env: dict, tmp: str, phases: list[tuple[str, str]], daemon) -> dict:
    f1, f2 = os.path.join(tmp, f"{mode}-f1"), os.path.join(tmp, f"{mode}-f2")
    os.mkfifo(f1)
    os.mkfifo(f2)
    script = "; ".join(f"{cmd}; echo {name} > {shlex.quote(f1)}; read x < {shlex.quote(f2)}"
                       for name, cmd in phases)
    full = argv + ["sh", "-c", script]
    B.show(full, env)
    p = subprocess.Popen(full, env=dict(os.environ, **env), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    marks = {}
    try:
        for name, _ in phases:
            with open(f1) as f:
                got = f.read().strip()
            assert got == name, (got, name)
            marks[name] = sample(mode, p.pid, daemon)
            with open(f2, "w") as f:
                f.write("\n")
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            B.kill_group(p)
            p.wait()
    if p.returncode:
        raise SystemExit(f"{mode}: exit status {p.returncode}: {B.tail(err)}")
    lines = [l for l in out.splitlines() if l.startswith(("connlat ", "connloop "))]
    res = {}
    names = [n for n, _ in phases]
    for i in range(1, len(names)):
        a, b = marks[names[i - 1]], marks[names[i]]
        res[names[i]] = {k: b[k] - a[k] for k in a}
        res[names[i]]["result"] = B.parse_kv(lines[i])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    a = ap.parse_args()
    info = json.load(open(os.environ["TESTNET_INFO"]))
    peer = info["peers"]["peer"]
    tmp = tempfile.mkdtemp(prefix="conncpu-")
    try:
        tb = B.build_tcpbench(tmp)
        _, port = B.start_server(["ip", "netns", "exec", peer["netns"], tb, "echo-server", "0", "127.0.0.1"],
                                 os.path.join(tmp, "echo.log"), note="in the peer's namespace")
        sp, sport = B.start_socks_tailscaled(info, os.path.join(tmp, "anchor"), "conncpu-anchor")
        pc = B.proxychains_conf(os.path.join(tmp, "proxychains.conf"), sport)
        tp, tp_env = B.tailproxy_cmd(None)
        ip, q = peer["ipv4"], shlex.quote(tb)
        phases = [("warm", f"{q} connlat {ip} {port} 100"),
                  ("connlat", f"{q} connlat {ip} {port} {a.n}"),
                  ("connloop", f"{q} connloop {ip} {port} {a.n}")]
        modes = {"anchor": (["proxychains4", "-q", "-f", pc], {}, sp.pid),
                 "tailproxy": (tp + ["--hostname", "conncpu-tp", "--state-dir", os.path.join(tmp, "tp")],
                               tp_env, None)}
        res = {m: one(m, argv, env, tmp, phases, d) for m, (argv, env, d) in modes.items()}
    finally:
        B.stop_all()
    print(f"\nCPU time per connection over {a.n} connections to {ip}:{port} on peer (µs); load average "
          f"{os.getloadavg()[0]:.2f}")
    for phase in ("connlat", "connloop"):
        print(f"\n{phase}:")
        for m, r in res.items():
            d = r[phase]
            wall = d["result"].get("median_us")
            parts = "; ".join(f"{k} {v / a.n * 1e6:.0f}" for k, v in d.items() if k != "result")
            total = sum(v for k, v in d.items() if k != "result") / a.n * 1e6
            print(f"  {m:10s} total {total:5.0f}: {parts}; median latency {wall:.0f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
