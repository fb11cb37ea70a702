#!/usr/bin/env python3
"""Name lookups per second: through tailproxy vs plain glibc (section (f) of bench/run.py, or on
its own: ``python -m tailproxy.testnet -- python bench/dns_bench.py [--lookups N] [--reps R]``).

A small C loop (getaddrinfo + freeaddrinfo, AF_UNSPEC, SOCK_STREAM, one thread) resolves one name
N times:
  /etc/hosts name ("ip6-localhost"): plain glibc vs tailproxy (the name service's hosts file);
  tailnet name (the peer's short name and FQDN): tailproxy vs plain glibc reading the same name
      from a bind-mounted /etc/hosts (glibc alone cannot resolve MagicDNS names: there is no
      system Tailscale), the closest anchor;
  a name behind the exit node (tailproxy --exit-node: a placeholder, no DNS query at all).
Through tailproxy, names the name service knows (hosts file, MagicDNS names of known peers) are
answered in the program from the name table it publishes (issue 15); each also runs with the
table hidden from the program ("round trip": TAILPROXY_NAMES unset, each lookup one request on
the private channel, as before the table). So does a placeholder once the name has one (the
first lookup is a round trip; the loop's warm-up makes it). Target (issue
15): tailproxy's rate for hosts names, short names and FQDNs >= 0.5x glibc's /etc/hosts rate
(the ip6-localhost glibc row, same run).
Prints each command, a table, and returns the figures (median of --reps runs).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

LOOP_C = r"""
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(int argc, char **argv) {
	struct addrinfo h, *r; struct timespec a, b; long n = atol(argv[2]), i, bad = 0;
	memset(&h, 0, sizeof(h)); h.ai_socktype = SOCK_STREAM;
	for (i = 0; i < 100 && i < n; i++) if (getaddrinfo(argv[1], NULL, &h, &r) == 0) freeaddrinfo(r);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (i = 0; i < n; i++) { if (getaddrinfo(argv[1], NULL, &h, &r) == 0) freeaddrinfo(r); else bad++; }
	clock_gettime(CLOCK_MONOTONIC, &b);
	double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
	printf("result lookups=%ld failed=%ld seconds=%.4f rate=%.0f us=%.2f\n", n, bad, s, n / s, s / n * 1e6);
	return bad ? 1 : 0;
}
"""


HOSTS_ROW = "/etc/hosts name (ip6-localhost)"
EXIT_ROW = "name behind the exit node (internet.test)"
TARGET = 0.5        # issue 15: tailproxy >= 0.5x glibc's /etc/hosts rate


def say(msg=""):
    print(msg, flush=True)


def build(tmp: str) -> str:
    src, exe = os.path.join(tmp, "lookloop.c"), os.path.join(tmp, "lookloop")
    with open(src, "w") as f:
        f.write(LOOP_C)
    subprocess.run(["gcc", "-O2", "-o", exe, src], check=True)
    return exe


def measure(argv: list[str], env: dict | None = None) -> dict:
    say("  $ " + shlex.join(argv))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, **(env or {})))
    for line in p.stdout.splitlines():
        if line.startswith("result "):
            d = {k: float(v) for k, v in (t.split("=") for t in line.split()[1:])}
            if d["failed"]:
                raise RuntimeError(f"{d['failed']:.0f} lookups failed: {p.stderr.strip()[-300:]}")
            return d
    raise RuntimeError(f"exit {p.returncode}: {p.stderr.strip()[-400:]}")


def section(info: dict, tp: list[str], tp_env: dict, tmp: str, lookups: int = 20000,
            reps: int = 3) -> dict:
    """Runs every measure; returns {row: {mode: median rate}} plus the commands' failures."""
    loop = build(tmp)
    peer = info["peers"]["peer"]
    state = tempfile.mkdtemp(prefix="dnsbench-tp-", dir=tmp)
    hosts = os.path.join(tmp, "hosts-with-peer")
    with open("/etc/hosts") as f, open(hosts, "w") as g:
        g.write(f.read() + f"\n{peer['ipv4']} {peer['fqdn']} peer\n{peer['ipv6']} {peer['fqdn']} peer\n")
    tpx = tp + ["--state-dir", state, "--hostname", "dnsbench"]
    exit_name = info["exit_node"]["name"]
    mounted = ["unshare", "-m", "sh", "-c", f'mount --bind "$0" /etc/hosts && exec "$@"', hosts]
    no_table = ["env", "-u", "TAILPROXY_NAMES"]
    fqdn = f"tailnet FQDN ({peer['fqdn']})"
    rows = {
        (HOSTS_ROW, "glibc"): [loop, "ip6-localhost", str(lookups)],
        (HOSTS_ROW, "tailproxy"): tpx + [loop, "ip6-localhost", str(lookups)],
        (HOSTS_ROW, "tailproxy, round trip"): tpx + no_table + [loop, "ip6-localhost", str(lookups)],
        ("tailnet name (peer)", "glibc, name in /etc/hosts"): mounted + [loop, "peer", str(lookups)],
        ("tailnet name (peer)", "tailproxy"): tpx + [loop, "peer", str(lookups)],
        ("tailnet name (peer)", "tailproxy, round trip"): tpx + no_table + [loop, "peer", str(lookups)],
        (fqdn, "glibc, name in /etc/hosts"): mounted + [loop, peer["fqdn"], str(lookups)],
        (fqdn, "tailproxy"): tpx + [loop, peer["fqdn"], str(lookups)],
        (fqdn, "tailproxy, round trip"): tpx + no_table + [loop, peer["fqdn"], str(lookups)],
        (EXIT_ROW, "tailproxy --exit-node"):
            tpx + ["--exit-node", exit_name, loop, "internet.test", str(lookups)],
        (EXIT_ROW, "tailproxy --exit-node, round trip"):
            tpx + ["--exit-node", exit_name] + no_table + [loop, "internet.test", str(lookups)],
    }
    out, failures = {}, []
    for rep in range(reps):
        say(f"  rep {rep + 1}/{reps}")
        for (row, mode), argv in rows.items():
            if not shutil.which(argv[0]) and not os.path.exists(argv[0]):
                continue
            try:
                d = measure(argv, tp_env if "tailproxy" in mode else None)
                out.setdefault(row, {}).setdefault(mode, []).append(d["rate"])
            except Exception as e:            # a failing mode must not lose the others
                failures.append(f"(f) {row} {mode}: {e}")
    med = {row: {m: statistics.median(v) for m, v in modes.items()} for row, modes in out.items()}
    return {"lookups": lookups, "reps": reps, "rates": med, "failures": failures}


def targets(res: dict) -> list[str]:
    """Issue 15's target per name kind: tailproxy's rate / glibc's /etc/hosts rate."""
    glibc = res["rates"].get(HOSTS_ROW, {}).get("glibc")
    out = []
    for row, modes in res["rates"].items():
        rate = modes.get("tailproxy")
        if rate is None:
            continue
        if not glibc:
            out.append(f"target {row}: no glibc /etc/hosts rate to compare with")
            continue
        r = rate / glibc
        out.append(f"target {row}: tailproxy {rate:.0f}/s = {r:.2f}x glibc's /etc/hosts rate "
                   f"({glibc:.0f}/s), goal >= {TARGET}x: {'met' if r >= TARGET else 'NOT met'}")
    return out


def table(res: dict) -> str:
    lines = [f"{'name lookups (getaddrinfo, 1 thread)':44} {'mode':28} {'lookups/s':>10} {'µs/lookup':>10}"]
    for row, modes in res["rates"].items():
        for m, rate in modes.items():
            lines.append(f"{row:44} {m:28} {rate:10.0f} {1e6 / rate:10.1f}")
    return "\n".join(lines + targets(res))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lookups", type=int, default=20000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--tailproxy", default=f"{sys.executable} -m tailproxy")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    path = os.environ.get("TESTNET_INFO")
    if not path:
        say("dns_bench: needs the local test tailnet (python -m tailproxy.testnet -- ...)")
        return 2
    with open(path) as f:
        info = json.load(f)
    tmp = tempfile.mkdtemp(prefix="tailproxy-dnsbench-")
    try:
        env = {"TS_AUTHKEY": info["authkey"], "TAILPROXY_CONTROL_URL": info["control_url"],
               "PYTHONPATH": os.path.join(ROOT, "src")}
        res = section(info, shlex.split(a.tailproxy), env, tmp, a.lookups, a.reps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say("\n" + table(res))
    for f in res["failures"]:
        say("failure: " + f)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"lookups": res["lookups"], "reps": res["reps"], "failures": res["failures"],
                       "rates": {r: m for r, m in res["rates"].items()}}, f, indent=2)
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
