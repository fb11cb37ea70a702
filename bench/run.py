#!/usr/bin/env python3
"""tailproxy benchmarks, anchors side by side: ``make bench``
(= ``.venv/bin/python -m tailproxy.testnet -- .venv/bin/python bench/run.py``).

Runs inside the local test tailnet (needs TESTNET_INFO). Builds bench/tcpbench.c with gcc -O2 into
a temporary directory, then measures, every figure the median of --reps repetitions with the
modes interleaved (and their order rotated) in each repetition:

  (a) cost per connection: N sequential connect + 1-byte echo to an echo server on the client
      host's own non-loopback address: direct / tailproxy --no-tailnet / proxychains4 + microsocks;
      (a') the same modes, connect() alone (no data)
  (b) bulk throughput to a sink on the same path, same three modes. Bulk rates are *delivered*
      rates: client's first write to the sink's last byte (the sink logs CLOCK_MONOTONIC times),
      and a bulk whose bytes do not all reach the sink is a failure
  (c) through the tailnet to `peer` (servers on the peer's 127.0.0.1, reached through its
      userspace tailscaled): tailproxy --hostname bench-tp vs a second userspace tailscaled on the
      client host (SOCKS5) + proxychains4: bulk throughput, connect latency, connect+echo loop
  (d) memory (VmRSS) of the tailproxy process and of its tailscaled child, idle and with K open
      connections, next to microsocks (and the anchor tailscaled) holding K connections
  (e) bench/export_bench.py: from peer, bulk and connect+echo to servers exported by tailproxy
      --export-listeners vs the same servers behind a userspace tailscaled's `serve --tcp`
  (f) bench/dns_bench.py: name lookups per second through tailproxy vs plain glibc

Prints every exact command, a table, and writes bench/results/latest.json + latest.md
(--out DIR to change). A tailproxy mode that fails is reported as FAILED with its error; the
other rows still run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

from benchlib import (  # noqa: E402  (bench/ is on sys.path: this file is run as a script)
    COMMANDS, GiB, MiB, PROXYCHAINS_CONF, STARTED, Failed, PeakWatch, Series, build_tcpbench, cell,
    comm, delivered, descendants, fr, free_port, hold_rss, pct, proxychains_conf, ratio, result_line,
    rotated, rss_kib, run, say, show, sink_count, start_server, status_kib, stop, stop_all, table,
    tail, tailproxy_cmd, versions, wait_port)


# ---------------------------------------------------------------- measurements

def bench_local(ctx, a: argparse.Namespace) -> dict:
    """(a) connection cost and (b) bulk throughput, local path."""
    tb, ip = ctx["tb"], ctx["client_ip"]
    modes = {
        "direct": ([], {}),
        "tailproxy": (ctx["tp"] + ["--no-tailnet"], ctx["tp_env"]),
        "proxychains": (["proxychains4", "-q", "-f", ctx["pc_local"]], {}),
    }
    say(f"\n(a) cost per connection: {a.conns} x (connect + 1-byte echo) to {ip}")
    conn = {m: Series() for m in modes}
    for r in range(a.reps):
        for m in rotated(list(modes), r):
            pre, env = modes[m]
            port = ctx["echo_ports"][m]

            def one(pre=pre, env=env, port=port):
                d = result_line(run(pre + [tb, "connloop", ip, str(port), str(a.conns)], env), "connloop")
                return d["per_conn_us"], d
            conn[m].add(one)

    say(f"\n(a') connect latency: {a.conns} x connect() alone to {ip}")
    lat = {m: Series() for m in modes}
    for r in range(a.reps):
        for m in rotated(list(modes), r):
            pre, env = modes[m]
            port = ctx["echo_ports"][m + "-lat"]

            def one(pre=pre, env=env, port=port):
                d = result_line(run(pre + [tb, "connlat", ip, str(port), str(a.conns)], env), "connlat")
                return d["median_us"], d
            lat[m].add(one)

    say(f"\n(b) bulk throughput: {a.bulk_bytes / GiB:g} GiB to a sink on {ip}")
    bulk = {m: Series() for m in modes}
    for r in range(a.reps):
        for m in rotated(list(modes), r):
            pre, env = modes[m]

            def one(pre=pre, env=env):
                before = sink_count(ctx["sink_log"])
                d = result_line(run(pre + [tb, "bulk", ip, str(ctx["sink_port"]), str(a.bulk_bytes)], env),
                                "bulk")
                return delivered(ctx["sink_log"], before, d, a.bulk_bytes, (None, ctx["sink_port"]))
            bulk[m].add(one)
    return {"conn": conn, "lat": lat, "bulk": bulk}


def tailnet_script(tb: str, ip: str, echo: int, sink: int, a: argparse.Namespace) -> str:
    steps = [("warm", f"connloop {ip} {echo} {a.warmup}"),
             ("connloop", f"connloop {ip} {echo} {a.tailnet_conns}"),
             ("connlat", f"connlat {ip} {echo} {a.tailnet_conns}"),
             ("bulk", f"bulk {ip} {sink} {a.tailnet_bulk_bytes}")]
    q = shlex.quote(tb)
    return "; ".join(f"echo @@{name}; {q} {args} || echo @@failed-{name} $?" for name, args in steps)


def split_sections(stdout: str) -> dict:
    sec, cur = {}, None
    for line in stdout.splitlines():
        if line.startswith("@@stderr"):
            cur = "stderr"
            sec[cur] = []
        elif line.startswith("@@failed-"):
            sec.setdefault("failed", []).append(line[9:])
        elif line.startswith("@@"):
            cur = line[2:]
            sec[cur] = []
        elif cur:
            sec[cur].append(line)
    return {k: "\n".join(v) for k, v in sec.items()}


def bench_tailnet(ctx, a: argparse.Namespace) -> dict:
    """(c) through the tailnet: tailproxy vs userspace tailscaled SOCKS5 + proxychains4."""
    tb, ip = ctx["tb"], ctx["peer_ip"]
    say(f"\n(c) through the tailnet to peer {ip}: bulk {a.tailnet_bulk_bytes / MiB:g} MiB, "
        f"{a.tailnet_conns} connects, {a.tailnet_conns} connect+echo (after {a.warmup} warm-up)")
    modes = {
        "anchor": (["proxychains4", "-q", "-f", ctx["pc_anchor"]], {}, "peer_echo_anchor"),
        "tailproxy": (ctx["tp"] + ["--hostname", "bench-tp", "--state-dir", ctx["tp_state"]],
                      ctx["tp_env"], "peer_echo_tp"),
    }
    res = {k: {m: Series() for m in modes} for k in ("bulk", "connlat", "connlat_p90", "connloop", "warmup")}
    dead = {}   # mode -> error of a whole run that failed: not run again (e.g. cannot join)
    if ctx.get("anchor_error"):
        dead["anchor"] = ctx["anchor_error"]
    for r in range(a.reps_tailnet):
        for m in rotated(list(modes), r):
            pre, env, echo_key = modes[m]
            if m in dead:
                for k in res:
                    res[k][m].errors.append(dead[m])
                continue
            script = tailnet_script(tb, ip, ctx[echo_key], ctx["peer_sink_port"], a)
            try:
                before = sink_count(ctx["peer_sink_log"])
                out = run(pre + ["sh", "-c", script], env, timeout=a.tailnet_timeout)
            except Failed as e:
                say(f"    FAILED: {e}")
                dead[m] = f"{e} (not run again)"
                for k in res:
                    res[k][m].errors.append(str(e))
                continue
            sec = split_sections(out)
            stderr = sec.get("stderr", "")
            failed = set(f.split()[0] for f in sec.get("failed", "").splitlines() if f.strip())

            def get(name, word):
                if name in failed:
                    mine = [l for l in stderr.splitlines() if l.startswith(f"tcpbench: {word}")]
                    raise Failed(f"tcpbench {word} failed: {' | '.join(mine) if mine else tail(stderr, 3)}")
                return result_line(sec.get(name, ""), word)

            res["warmup"][m].add(lambda: (get("warm", "connloop")["total_s"], {}))

            def one_bulk():
                return delivered(ctx["peer_sink_log"], before, get("bulk", "bulk"), a.tailnet_bulk_bytes,
                                 (ctx["peer_netns"], ctx["peer_sink_port"]))
            res["bulk"][m].add(one_bulk)
            lat = {}

            def one_lat():
                lat.update(get("connlat", "connlat"))
                return lat["median_us"], lat
            res["connlat"][m].add(one_lat)
            if lat:
                res["connlat_p90"][m].add(lambda: (lat["p90_us"], {}))
            else:
                res["connlat_p90"][m].errors.append(res["connlat"][m].errors[-1])

            def one_loop():
                d = get("connloop", "connloop")
                return d["per_conn_us"], d
            res["connloop"][m].add(one_loop)
    return res


def bench_memory(ctx, a: argparse.Namespace) -> dict:
    """(d) RSS idle and with K open connections."""
    tb, k = ctx["tb"], a.hold
    say(f"\n(d) memory (VmRSS): idle and with {k} open connections (each: connect + 1-byte echo)")
    mem: dict[str, dict] = {}

    def tp_targets(p):
        t = {"tailproxy": p.pid}
        for c in descendants(p.pid):
            if comm(c) == "tailscaled":
                t["tailscaled"] = c
        return t

    def record(name, fn):
        try:
            mem[name] = fn()
            say(f"    {name}: {fmt_mem(mem[name])}")
        except Failed as e:
            mem[name] = {"error": str(e)}
            say(f"    FAILED: {e}")

    local_ip, local_echo = ctx["client_ip"], ctx["echo_ports"]["hold"]
    tpl = ctx["tp"] + ["--no-tailnet"]
    record("tailproxy --no-tailnet idle",
           lambda: hold_rss(tpl + [tb, "hold", local_ip, str(local_echo), "0"], ctx["tp_env"], tp_targets, 60))
    record(f"tailproxy --no-tailnet {k} conns",
           lambda: hold_rss(tpl + [tb, "hold", local_ip, str(local_echo), str(k)], ctx["tp_env"], tp_targets,
                            a.hold_timeout))

    # microsocks: a fresh instance, idle then holding k connections through proxychains
    port = free_port()
    argv = ["microsocks", "-i", "127.0.0.1", "-p", str(port)]
    show(argv, note="fresh instance for (d); its per-connection log goes to /dev/null")
    ms = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(ms)
    try:
        wait_port("127.0.0.1", port, ms)
        time.sleep(0.3)
        mem["microsocks idle"] = {"microsocks": rss_kib(ms.pid)}
        say(f"    microsocks idle: {fmt_mem(mem['microsocks idle'])}")
        conf = proxychains_conf(os.path.join(ctx["tmp"], "proxychains-mem.conf"), port)
        record(f"microsocks {k} conns",
               lambda: hold_rss(["proxychains4", "-q", "-f", conf, tb, "hold", local_ip, str(local_echo), str(k)],
                                {}, lambda p: {"microsocks": ms.pid}, a.hold_timeout))
    except Failed as e:
        mem[f"microsocks {k} conns"] = {"error": f"microsocks: {e}"}
    finally:
        stop(ms)

    if not a.no_tailnet_memory:
        peer_ip, peer_echo = ctx["peer_ip"], ctx["peer_echo_hold"]
        tpn = ctx["tp"] + ["--hostname", "bench-tp", "--state-dir", ctx["tp_state"]]
        record("tailproxy (tailnet) idle",
               lambda: hold_rss(tpn + [tb, "hold", peer_ip, str(peer_echo), "0"], ctx["tp_env"], tp_targets, 90))
        record(f"tailproxy (tailnet) {k} conns",
               lambda: hold_rss(tpn + [tb, "hold", peer_ip, str(peer_echo), str(k)], ctx["tp_env"], tp_targets,
                                a.hold_timeout))
        if ctx.get("anchor_proc") and not ctx.get("anchor_error"):
            apid = ctx["anchor_proc"].pid
            mem["anchor tailscaled idle (after login)"] = {"tailscaled": ctx.get("anchor_idle_kib")}
            mem["anchor tailscaled before hold (after (c))"] = {"tailscaled": rss_kib(apid)}
            say(f"    anchor tailscaled idle: {fmt_mem(mem['anchor tailscaled idle (after login)'])}; "
                f"before hold: {fmt_mem(mem['anchor tailscaled before hold (after (c))'])}")
            record(f"anchor tailscaled {k} conns",
                   lambda: hold_rss(["proxychains4", "-q", "-f", ctx["pc_anchor"], tb, "hold", peer_ip,
                                     str(peer_echo), str(k)], {}, lambda p: {"tailscaled": apid},
                                    a.hold_timeout))
    return mem


def fmt_mem(d: dict) -> str:
    if "error" in d:
        return "FAILED: " + d["error"]
    return ", ".join(f"{n} {v / 1024:.1f} MiB" for n, v in d.items() if n != "held" and v is not None)


# ---------------------------------------------------------------- anchor tailscaled

def start_anchor(ctx, info: dict) -> None:
    tsd, ts = info["bin"]["tailscaled"], info["bin"]["tailscale"]
    d = tempfile.mkdtemp(prefix="anchor-", dir=ctx["tmp"])
    sock = os.path.join(d, "s")
    port = free_port()
    env = {"TS_NO_LOGS_NO_SUPPORT": "true", "TS_DISABLE_PORTMAPPER": "1"}
    if os.environ.get("SSL_CERT_FILE"):
        env["SSL_CERT_FILE"] = os.environ["SSL_CERT_FILE"]
    argv = [tsd, "--tun=userspace-networking", f"--socks5-server=127.0.0.1:{port}", f"--statedir={d}",
            f"--socket={sock}", "--port=0"]
    show(argv, env, note="anchor node, log in " + os.path.join(d, "log"))
    log = open(os.path.join(d, "log"), "w")
    p = subprocess.Popen(argv, env=dict(os.environ, **env), stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT)
    log.close()
    STARTED.append(p)
    ctx["anchor_proc"] = p
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if p.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"anchor tailscaled did not start: {tail(open(os.path.join(d, 'log')).read())}")
            time.sleep(0.1)
        control = os.environ.get("TAILPROXY_CONTROL_URL") or info["control_url"]
        authkey = os.environ.get("TS_AUTHKEY") or info["authkey"]
        up = [ts, f"--socket={sock}", "up", f"--login-server={control}", f"--auth-key={authkey}",
              "--hostname=bench-anchor"]
        run(up, timeout=90, secret=authkey)
        wait_port("127.0.0.1", port, p)
        time.sleep(1)
        ctx["anchor_idle_kib"] = rss_kib(p.pid)
    except Failed as e:
        ctx["anchor_error"] = f"anchor tailscaled: {e}"
        say(f"    FAILED: {ctx['anchor_error']}")
    ctx["pc_anchor"] = proxychains_conf(os.path.join(ctx["tmp"], "proxychains-anchor.conf"), port)


def add_target(targets: list, name: str, met, tp: Series, anchor: Series, detail: str) -> None:
    """A target is met only if every tailproxy repetition worked; anchor failures are noted."""
    if tp.errors and met is not None:
        n = len(tp.values) + len(tp.errors)
        detail += f" on the reps that worked, but {len(tp.errors)}/{n} tailproxy reps FAILED"
        met = False
    if anchor.errors:
        n = len(anchor.values) + len(anchor.errors)
        detail += f" ({len(anchor.errors)}/{n} anchor reps failed)"
    targets.append({"name": name, "met": met, "detail": detail})


def summarize(loc: dict | None, tn: dict | None, mem: dict | None, a) -> tuple[list[list[str]], list[dict], list[str]]:
    """Rows of the table, the targets, and the failure notes."""
    rows, targets, failures = [], [], []

    def failed(section, mode, s: Series):
        for e in dict.fromkeys(s.errors):
            k = s.errors.count(e)
            failures.append(f"{section} {mode}: {e}" + (f" ({k} reps)" if k > 1 else ""))

    if loc:
        c = loc["conn"]
        d = c["direct"].median
        added = {m: (c[m].median - d) if c[m].median is not None and d is not None else None
                 for m in ("tailproxy", "proxychains")}
        for m, label in (("direct", "direct (no proxy)"), ("tailproxy", "tailproxy --no-tailnet"),
                         ("proxychains", "proxychains4 + microsocks")):
            failed("(a)", m, c[m])
            extra = "" if m == "direct" else f"added {fr(added[m], '{:.0f} µs')}; {fr(ratio(c[m].median, d))} direct"
            rows.append(["(a) connect+echo", label, cell(c[m], "{:.0f} µs/conn"), extra])
        lt = loc["lat"]
        for m, label in (("direct", "direct (no proxy)"), ("tailproxy", "tailproxy --no-tailnet"),
                         ("proxychains", "proxychains4 + microsocks")):
            failed("(a')", m, lt[m])
            extra = "" if m == "direct" else f"{fr(ratio(lt[m].median, lt['direct'].median))} direct"
            rows.append(["(a') connect() alone (median)", label, cell(lt[m], "{:.0f} µs"), extra])
        ok = None if None in added.values() else added["tailproxy"] <= added["proxychains"]
        add_target(targets, "(a) tailproxy added cost per connection ≤ proxychains-ng's",
                   ok, c["tailproxy"], c["proxychains"], detail= f"{fr(added['tailproxy'], '{:.0f}')} µs vs "
                                              f"{fr(added['proxychains'], '{:.0f}')} µs "
                                              f"(ratio {fr(ratio(added['tailproxy'], added['proxychains']))})")
        b = loc["bulk"]
        for m, label in (("direct", "direct (no proxy)"), ("tailproxy", "tailproxy --no-tailnet"),
                         ("proxychains", "proxychains4 + microsocks")):
            failed("(b)", m, b[m])
            extra = "" if m == "direct" else f"{fr(ratio(b[m].median, b['direct'].median))} direct"
            if m == "tailproxy":
                extra += f"; {fr(ratio(b[m].median, b['proxychains'].median))} proxychains"
            rows.append(["(b) bulk", label, cell(b[m], "{:.2f} Gbit/s"), extra])
        r = ratio(b["tailproxy"].median, b["proxychains"].median)
        add_target(targets, "(b) tailproxy throughput ≥ 2× proxychains4 + microsocks",
                   None if r is None else r >= 2, b["tailproxy"], b["proxychains"], f"ratio {fr(r)}")
    if tn:
        lab = {"anchor": "tailscaled SOCKS5 + proxychains4", "tailproxy": "tailproxy (tailnet)"}
        for key, what, fmt, better in (("bulk", "(c) bulk to peer", "{:.2f} Gbit/s", "higher"),
                                       ("connlat", "(c) connect latency (median)", "{:.0f} µs", "lower"),
                                       ("connlat_p90", "(c) connect latency (p90)", "{:.0f} µs", "lower"),
                                       ("connloop", "(c) connect+echo to peer", "{:.0f} µs/conn", "lower"),
                                       ("warmup", f"(c) first {a.warmup} connect+echo (tailproxy's node just started)", "{:.2f} s",
                                        "lower")):
            for m in ("anchor", "tailproxy"):
                failed(what, m, tn[key][m])
                extra = "" if m == "anchor" else f"{fr(ratio(tn[key][m].median, tn[key]['anchor'].median))} anchor"
                rows.append([what, lab[m], cell(tn[key][m], fmt), extra])
        r = ratio(tn["bulk"]["tailproxy"].median, tn["bulk"]["anchor"].median)
        add_target(targets, "(c) tailproxy throughput ≥ anchor (tailscaled SOCKS5 + proxychains4)",
                   None if r is None else r >= 1, tn["bulk"]["tailproxy"], tn["bulk"]["anchor"], f"ratio {fr(r)}")
        r = ratio(tn["connlat"]["tailproxy"].median, tn["connlat"]["anchor"].median)
        add_target(targets, "(c) tailproxy connect latency (median) < anchor's",
                   None if r is None else r < 1, tn["connlat"]["tailproxy"], tn["connlat"]["anchor"],
                   f"ratio {fr(r)}")
    if mem:
        k = a.hold
        for name, d in mem.items():
            if "error" in d:
                failures.append(f"(d) {name}: {d['error']}")
                rows.append(["(d) memory", name, "FAILED", ""])
                continue
            for proc, kib in d.items():
                if proc == "held" or kib is None:
                    continue
                extra = ""
                idle_key = {"tailproxy --no-tailnet": "tailproxy --no-tailnet idle",
                            "tailproxy (tailnet)": "tailproxy (tailnet) idle",
                            "microsocks": "microsocks idle",
                            "anchor tailscaled": "anchor tailscaled before hold (after (c))"}
                for prefix, ik in idle_key.items():
                    if (name.startswith(prefix) and name.endswith(f"{k} conns") and ik in mem
                            and mem[ik].get(proc)):
                        extra = (f"+{(kib - mem[ik][proc]) / k:.1f} KiB/conn over "
                                 f"{'before hold' if 'before' in ik else 'idle'}")
                ms = mem.get(f"microsocks {k} conns", {}).get("microsocks")
                if proc == "tailproxy" and name.endswith(f"{k} conns") and ms:
                    extra += f"; {kib / ms:.1f}x microsocks"
                rows.append(["(d) memory", f"{name}: {proc}", f"{kib / 1024:.1f} MiB", extra])
    return rows, targets, failures


def markdown(rows, targets, failures, meta, a) -> str:
    md = ["# tailproxy benchmarks", "",
          f"- when: {meta['when']}",
          f"- command: `{meta['command']}` (`make bench` runs this without options)",
          f"- machine: {meta['versions']['cpus']} CPUs ({meta['versions']['cpu']}), Linux "
          f"{meta['versions']['kernel']}, Python {meta['versions']['python']}; load average "
          f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end "
          f"(other work on the machine shows here); run took {meta['seconds']} s",
          f"- tailproxy {meta['versions']['git']}; anchors: proxychains4 {meta['versions']['proxychains4']}, "
          f"microsocks {meta['versions']['microsocks']}, tailscaled {meta['versions']['tailscaled']}",
          f"- each figure: median of {a.reps} ((a), (b)) or {a.reps_tailnet} ((c)) repetitions, modes "
          f"interleaved and rotated; (a) {a.conns} connections, "
          f"(b) {a.bulk_bytes / GiB:g} GiB, (c) {a.tailnet_bulk_bytes / MiB:g} MiB and {a.tailnet_conns} "
          f"connections after {a.warmup} warm-up, (d) {a.hold} connections, one run",
          "", "| benchmark | mode | median | vs anchor |", "|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows]
    md += ["", "## Targets", ""]
    md += [f"- **{'met' if t['met'] else 'NOT met' if t['met'] is False else 'not measured'}** — "
           f"{t['name']}: {t['detail']}" for t in targets]
    if failures:
        md += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    md += ["", "## Commands (exact, in order)", "", "```"] + COMMANDS + ["```", ""]
    md += ["proxychains4 configuration (the same for every proxychains4 run, PORT = that SOCKS5 "
           "server's port):", "", "```", PROXYCHAINS_CONF.format(port="PORT").rstrip(), "```", ""]
    return "\n".join(md)


# ---------------------------------------------------------------- main

CRASHES: list[str] = []


def guarded(name, fn, *args):
    """A bug in one section of this script must not lose the others' figures."""
    try:
        return fn(*args)
    except Exception:
        import traceback
        tb = traceback.format_exc()
        say(tb)
        CRASHES.append(f"{name}: bench/run.py crashed: {tb.strip().splitlines()[-1]}")
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, small counts")
    p.add_argument("--reps", type=int, default=5, help="repetitions of (a) and (b) (default 5)")
    p.add_argument("--reps-tailnet", type=int, default=3, help="repetitions of (c) (default 3)")
    p.add_argument("--conns", type=int, default=2000, help="(a) sequential connections (default 2000)")
    p.add_argument("--bulk-bytes", type=int, default=2 * GiB, help="(b) bytes per bulk run (default 2 GiB)")
    p.add_argument("--tailnet-conns", type=int, default=1000, help="(c) connections per run (default 1000)")
    p.add_argument("--tailnet-bulk-bytes", type=int, default=512 * MiB, help="(c) bytes (default 512 MiB)")
    p.add_argument("--warmup", type=int, default=50, help="(c) warm-up connections per run (default 50)")
    p.add_argument("--hold", type=int, default=1000, help="(d) open connections (default 1000)")
    p.add_argument("--only", default="abcdef", help="sections to run, e.g. 'ab' (default abcdef)")
    p.add_argument("--dns-lookups", type=int, default=20000, help="(f) lookups per run (default 20000)")
    p.add_argument("--no-tailnet-memory", action="store_true", help="(d) skip the tailnet hold")
    p.add_argument("--tailproxy", help="command that runs tailproxy (default: the venv's tailproxy)")
    p.add_argument("--out", default=os.path.join(BENCH, "results"), help="results folder")
    p.add_argument("--tailnet-timeout", type=float, default=240)
    p.add_argument("--hold-timeout", type=float, default=180)
    a = p.parse_args()
    if a.quick:
        a.reps, a.reps_tailnet, a.conns, a.bulk_bytes = 1, 1, 200, 256 * MiB
        a.tailnet_conns, a.tailnet_bulk_bytes, a.warmup, a.hold = 100, 64 * MiB, 10, 100
    info_path = os.environ.get("TESTNET_INFO")
    if not info_path:
        print("bench: needs the local test tailnet; run `make bench` (or python -m tailproxy.testnet -- "
              "python bench/run.py)", file=sys.stderr)
        return 2
    with open(info_path) as f:
        info = json.load(f)
    for tool in ("gcc", "proxychains4", "microsocks", "ip"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (make deps installs it)", file=sys.stderr)
            return 2

    # Holding 1,000 connections takes ~3,000 fds in a proxy: lift the soft limit to the hard one
    # (inherited by everything started below).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    t_start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="tailproxy-bench-")
    tp, tp_env = tailproxy_cmd(a.tailproxy)
    ctx = {"tmp": tmp, "tp": tp, "tp_env": tp_env, "client_ip": info["client"]["ipv4"],
           "peer_ip": info["peers"]["peer"]["ipv4"], "tp_state": tempfile.mkdtemp(prefix="bench-tp-", dir=tmp)}
    meta = {"when": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "tailproxy.testnet", "--", sys.executable,
                                   os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:]),
            "versions": versions(info["bin"]["tailscaled"]), "nofile": hard,
            "loadavg_start": os.getloadavg(),
            "args": vars(a), "testnet": {"client": info["client"], "peer": info["peers"]["peer"]}}
    say(f"tailproxy benchmarks ({meta['versions']['git']}), in {tmp}")
    say(f"  (ulimit -n {hard} for everything below)")
    loc = tn = mem = ex = None
    dns = None
    try:
        say("\nsetup")
        tb = ctx["tb"] = build_tcpbench(tmp)
        ip = ctx["client_ip"]
        ctx["echo_ports"] = {}
        # one echo server per mode: each gets its own pool of ports for the TIME_WAITs of the loop
        for m in ("direct", "tailproxy", "proxychains", "direct-lat", "tailproxy-lat", "proxychains-lat",
                  "hold"):
            _, ctx["echo_ports"][m] = start_server([tb, "echo-server", "0", ip], os.path.join(tmp, f"echo-{m}.log"),
                                                   note=f"echo server for {m}")
        ctx["sink_log"] = os.path.join(tmp, "sink.log")
        _, ctx["sink_port"] = start_server([tb, "sink-server", "0", ip], ctx["sink_log"],
                                           env={"TCPBENCH_SINK_LOG": "1",
                                                "TCPBENCH_SINK_EXPECT": str(a.bulk_bytes)})
        ms_port = free_port()
        argv = ["microsocks", "-i", "127.0.0.1", "-p", str(ms_port)]
        show(argv, note="its per-connection log goes to /dev/null")
        ms = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        STARTED.append(ms)
        wait_port("127.0.0.1", ms_port, ms)
        ctx["pc_local"] = proxychains_conf(os.path.join(tmp, "proxychains-local.conf"), ms_port)
        say(f"  proxychains4 conf {ctx['pc_local']}: " + open(ctx["pc_local"]).read().replace("\n", "; "))
        if "c" in a.only or ("d" in a.only and not a.no_tailnet_memory):
            ns = ctx["peer_netns"] = info["peers"]["peer"]["netns"]
            for key in ("peer_echo_anchor", "peer_echo_tp", "peer_echo_hold"):
                _, ctx[key] = start_server(["ip", "netns", "exec", ns, tb, "echo-server", "0", "127.0.0.1"],
                                           os.path.join(tmp, key + ".log"), note="in the peer's namespace")
            ctx["peer_sink_log"] = os.path.join(tmp, "peer-sink.log")
            _, ctx["peer_sink_port"] = start_server(["ip", "netns", "exec", ns, tb, "sink-server", "0", "127.0.0.1"],
                                                    ctx["peer_sink_log"],
                                                    env={"TCPBENCH_SINK_LOG": "1",
                                                         "TCPBENCH_SINK_EXPECT": str(a.tailnet_bulk_bytes)},
                                                    note="in the peer's namespace")
            start_anchor(ctx, info)

        if "a" in a.only or "b" in a.only:
            loc = guarded("(a)/(b)", bench_local, ctx, a)
        if "c" in a.only:
            tn = guarded("(c)", bench_tailnet, ctx, a)
        if "d" in a.only:
            mem = guarded("(d)", bench_memory, ctx, a)
        if "f" in a.only:   # (f): bench/dns_bench.py
            import dns_bench
            dns = guarded("(f)", dns_bench.section, info, tp, tp_env, tmp, a.dns_lookups,
                          1 if a.quick else 3)
        if "e" in a.only:   # (e): bench/export_bench.py
            import export_bench
            ex = guarded("(e)", export_bench.section, ctx, info, a)
    except KeyboardInterrupt:
        say("bench: interrupted")
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows, targets, failures = summarize(loc, tn, mem, a)
    if ex:
        import export_bench
        ex_rows, ex_failures = export_bench.rows(ex)
        rows, failures = rows + ex_rows, failures + ex_failures
    failures += CRASHES
    if dns:
        say("\n" + dns_bench.table(dns))
        failures += dns["failures"]
    meta["seconds"] = round(time.monotonic() - t_start, 1)
    meta["loadavg_end"] = os.getloadavg()
    say("\n" + table(rows, ["benchmark", "mode", "median", "vs anchor"]))
    say("\ntargets:")
    for t in targets:
        say(f"  [{'met' if t['met'] else 'NOT met' if t['met'] is False else 'n/a'}] {t['name']}: {t['detail']}")
    if failures:
        say("\nfailures:")
        for f in failures:
            say(f"  {f}")
    say(f"\n({meta['seconds']} s)")

    os.makedirs(a.out, exist_ok=True)
    data = {"meta": meta, "targets": targets, "failures": failures, "commands": COMMANDS,
            "a_conn": {m: s.to_json() for m, s in loc["conn"].items()} if loc else None,
            "a_connlat": {m: s.to_json() for m, s in loc["lat"].items()} if loc else None,
            "b_bulk": {m: s.to_json() for m, s in loc["bulk"].items()} if loc else None,
            "c_tailnet": {k: {m: s.to_json() for m, s in v.items()} for k, v in tn.items()} if tn else None,
            "d_memory_kib": mem}
    if dns:
        data["f_dns_lookups_per_s"] = dns["rates"]
    if ex:
        data["e_export"] = export_bench.to_json(ex)
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write(markdown(rows, targets, failures, meta, a))
    say(f"wrote {os.path.join(a.out, 'latest.json')} and latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
