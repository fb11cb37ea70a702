#!/usr/bin/env python3
"""tailproxy benchmarks, anchors side by side: ``make bench``
(= ``.venv/bin/python -m tailproxy.testnet -- .venv/bin/python bench/run.py``).

Runs inside the local test tailnet (needs TESTNET_INFO). Builds bench/tcpbench.c with gcc -O2 into
a temporary directory, then measures, every figure the median of --reps repetitions with the
modes interleaved (and their order rotated) in each repetition:

  (a) cost per connection: N sequential connect + 1-byte echo to an echo server on the client
      host's own non-loopback address: direct / tailproxy --no-tailnet --proxy-all / proxychains4 +
      microsocks (--proxy-all: the proxied path is what (a) measures; without it the preload
      connects a destination the proxy would only dial directly itself, which is (a″));
      (a') the same modes, connect() alone (no data)
  (a″) (--only h) direct destinations under default tailproxy (on the tailnet, no exit node):
      the (a) loop, connect() alone and the (b) bulk to the client host's own address, which
      is not on the tailnet, so the preload connects it itself by the proxy's routing table;
      plain (no tailproxy) and tailproxy --proxy-all (handed over and relayed, as before the
      table) side by side. Target: ≤ 1.05x plain per connection and for bulk
  (b) bulk throughput to a sink on the same path, same three modes. Bulk rates are *delivered*
      rates: client's first write to the sink's last byte (the sink logs CLOCK_MONOTONIC times),
      and a bulk whose bytes do not all reach the sink is a failure
  (c) through the tailnet to `peer` (servers on the peer's 127.0.0.1, reached through its
      userspace tailscaled): tailproxy --hostname bench-tp (its node is in the tailproxy process:
      Go over tsnet) vs a userspace tailscaled on the client host (SOCKS5) + proxychains4. Per
      run: warm-up, connect+echo loop, connect() latency (median and p90 of the run), then
      --tailnet-bulk-n bulk transfers (median and p90 over every transfer of every run). While
      each tailproxy run goes, its peak RSS (VmHWM of the tailproxy process) is sampled; the
      anchor's is its tailscaled's VmHWM after each run
  (d) memory (VmRSS) of the tailproxy process (Python + Go node), idle and with K open
      connections, next to microsocks (and the anchor tailscaled) holding K connections
  (e) bench/export_bench.py: from peer, bulk and connect+echo to servers exported by tailproxy
      --export-listeners vs the same servers behind a userspace tailscaled's `serve --tcp`
  (f) bench/dns_bench.py: name lookups per second through tailproxy vs plain glibc
  (g) start-up with saved state: from starting `tailproxy ... tcpbench stamp` to the program's
      main (CLOCK_MONOTONIC before the start vs the time tcpbench reads first thing in main),
      next to the same program started directly (fork/exec/ld.so: tailproxy's start-up is the
      difference); and the first connection after start: to the end of one connect + 1-byte
      echo to `peer` made at once by `tailproxy ... tcpbench first`
  (i) bench/agent_bench.py: the agent (issue 16): start to exec attaching to a running agent vs
      a cold start with saved state; 50 x `tailproxy curl` to the peer on the agent vs 50 x
      `curl --socks5-hostname` through the anchor tailscaled
  (j) bench/seccomp_bench.py: added cost per connection of the seccomp front end (static
      program) vs the preload (dynamic) vs proxychains4 + microsocks; untrapped-syscall cost
  (u) bench/udp_bench.py: the loss-free rate of a paced UDP stream to peer from an unmodified
      program under tailproxy vs the same through a userspace tailscaled's SOCKS5 UDP ASSOCIATE

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
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)

from benchlib import (  # noqa: E402  (bench/ is on sys.path: this file is run as a script)
    COMMANDS, GiB, MiB, PROXYCHAINS_CONF, STARTED, Failed, PeakWatch, Series, build_tcpbench, cell,
    comm, delivered, descendants, fr, free_port, hold_rss, proxychains_conf, ratio, result_line,
    rotated, rss_kib, run, say, show, sink_count, start_server, start_socks_tailscaled, status_kib,
    stop, stop_all, table,
    tail, tailproxy_cmd, versions, wait_port)


# ---------------------------------------------------------------- measurements

def bench_local(ctx, a: argparse.Namespace) -> dict:
    """(a) connection cost and (b) bulk throughput, local path."""
    tb, ip = ctx["tb"], ctx["client_ip"]
    modes = {
        "direct": ([], {}),
        "tailproxy": (ctx["tp"] + ["--no-tailnet", "--proxy-all"], ctx["tp_env"]),
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


def bench_direct(ctx, a: argparse.Namespace) -> dict:
    """(a″) a destination not on the tailnet under default tailproxy (node up, no exit
    node) next to plain: connect+echo loop, connect() alone, bulk."""
    tb, ip = ctx["tb"], ctx["client_ip"]
    modes = {
        "plain": ([], {}),
        "tailproxy": (ctx["tp"] + ["--hostname", "bench-direct", "--state-dir", ctx["tp_state"]],
                      ctx["tp_env"]),
        # the same destination handed over and relayed, as every one was before the table
        "proxy-all": (ctx["tp"] + ["--hostname", "bench-direct", "--state-dir", ctx["tp_state"],
                                   "--proxy-all"], ctx["tp_env"]),
    }
    res = {k: {m: Series() for m in modes} for k in ("conn", "lat", "bulk")}
    say(f"\n(a″) direct destination under default tailproxy: {a.conns} x (connect + 1-byte echo), "
        f"{a.conns} x connect(), {a.bulk_bytes / GiB:g} GiB bulk, to {ip}")
    for r in range(a.reps):
        for m in rotated(list(modes), r):
            pre, env = modes[m]

            def loop(pre=pre, env=env, port=ctx["echo_ports"]["a2-" + m]):
                d = result_line(run(pre + [tb, "connloop", ip, str(port), str(a.conns)], env), "connloop")
                return d["per_conn_us"], d
            res["conn"][m].add(loop)

            def lat(pre=pre, env=env, port=ctx["echo_ports"]["a2-" + m + "-lat"]):
                d = result_line(run(pre + [tb, "connlat", ip, str(port), str(a.conns)], env), "connlat")
                return d["median_us"], d
            res["lat"][m].add(lat)

            def bulk(pre=pre, env=env):
                before = sink_count(ctx["sink_log"])
                d = result_line(run(pre + [tb, "bulk", ip, str(ctx["sink_port"]), str(a.bulk_bytes)], env),
                                "bulk")
                return delivered(ctx["sink_log"], before, d, a.bulk_bytes, (None, ctx["sink_port"]))
            res["bulk"][m].add(bulk)
    return res


def summarize_direct(dr: dict) -> tuple[list[list[str]], list[dict], list[str]]:
    """Rows, targets and failures of (a″)."""
    rows, targets, failures = [], [], []
    # each run's median connection too: on a loaded machine a burst of other work moves a run's
    # mean (the (a) figure) far more than the microseconds in question
    dr = dict(dr, conn_median={m: per_run(s, "median_us") for m, s in dr["conn"].items()})
    for key, what, fmt in (("conn", "(a″) connect+echo, direct destination", "{:.0f} µs/conn"),
                           ("conn_median", "(a″) connect+echo, median connection of a run, direct destination",
                            "{:.0f} µs"),
                           ("lat", "(a″) connect() alone (median), direct destination", "{:.0f} µs"),
                           ("bulk", "(a″) bulk, direct destination", "{:.2f} Gbit/s")):
        for m, label in (("plain", "plain (no tailproxy)"), ("tailproxy", "tailproxy (default, on the tailnet)"),
                         ("proxy-all", "tailproxy --proxy-all (handed over, as before the table)")):
            for e in dict.fromkeys(dr[key][m].errors):
                failures.append(f"{what} {m}: {e}")
            extra = "" if m == "plain" else f"{fr(ratio(dr[key][m].median, dr[key]['plain'].median))} plain"
            rows.append([what, label, cell(dr[key][m], fmt), extra])
    for key, label in (("conn", "per connection (connect+echo)"),
                       ("conn_median", "per connection (connect+echo, median connection)"), ("bulk", "bulk")):
        t, p = dr[key]["tailproxy"], dr[key]["plain"]
        r = ratio(p.median, t.median) if key == "bulk" else ratio(t.median, p.median)
        paired = paired_ratios(p, t) if key == "bulk" else paired_ratios(t, p)
        detail = (f"{'plain rate / tailproxy rate' if key == 'bulk' else 'time'}: ratio of the medians "
                  f"{fr(r)}")
        if paired:
            detail += (f"; per repetition (modes run one after the other) {', '.join(f'{x:.2f}' for x in paired)}, "
                       f"median {statistics.median(paired):.2f}x")
        add_target(targets, f"(a″) direct destination under default tailproxy, {label} ≤ 1.05x plain",
                   None if r is None else r <= 1.05, t, p, detail)
    return rows, targets, failures


def per_run(s: Series, field: str) -> Series:
    """Another figure of the same runs (from each run's result line)."""
    out = Series()
    out.values = [extra[field] for extra in s.extra]
    out.errors = list(s.errors)
    return out


def paired_ratios(num: Series, den: Series) -> list[float]:
    """num/den of each repetition, where the modes ran one after the other: on a shared
    machine the load moves between repetitions more than between the runs of one."""
    if num.errors or den.errors or len(num.values) != len(den.values):
        return []
    return [n / d for n, d in zip(num.values, den.values) if d]


def tailnet_script(tb: str, ip: str, echo: int, sink: int, a: argparse.Namespace) -> str:
    steps = [("warm", f"connloop {ip} {echo} {a.warmup}"),
             ("connloop", f"connloop {ip} {echo} {a.tailnet_conns}"),
             ("connlat", f"connlat {ip} {echo} {a.tailnet_conns}")]
    steps += [(f"bulk{i}", f"bulk {ip} {sink} {a.tailnet_bulk_bytes}") for i in range(a.tailnet_bulk_n)]
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
    """(c) through the tailnet: tailproxy vs userspace tailscaled SOCKS5 + proxychains4. One run
    per mode and repetition: warm-up, connect+echo loop, connect() latency, then tailnet_bulk_n
    bulk transfers; tailproxy's peak RSS (VmHWM) is watched while it runs."""
    tb, ip = ctx["tb"], ctx["peer_ip"]
    say(f"\n(c) through the tailnet to peer {ip}: {a.tailnet_bulk_n} x bulk {a.tailnet_bulk_bytes / MiB:g} MiB, "
        f"{a.tailnet_conns} connects, {a.tailnet_conns} connect+echo (after {a.warmup} warm-up)")
    modes = {
        "anchor": (["proxychains4", "-q", "-f", ctx["pc_anchor"]], {}, "peer_echo_anchor"),
        "tailproxy": (ctx["tp"] + ["--hostname", "bench-tp", "--state-dir", ctx["tp_state"]],
                      ctx["tp_env"], "peer_echo_tp"),
    }
    res = {k: {m: Series() for m in modes}
           for k in ("bulk", "connlat", "connlat_p90", "connloop", "warmup", "peak_kib")}
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
            watch = []
            try:
                before = sink_count(ctx["peer_sink_log"])
                out = run(pre + ["sh", "-c", script], env, timeout=a.tailnet_timeout,
                          on_start=(lambda p: watch.append(PeakWatch(p.pid))) if m == "tailproxy" else None)
            except Failed as e:
                say(f"    FAILED: {e}")
                dead[m] = f"{e} (not run again)"
                for k in res:
                    res[k][m].errors.append(str(e))
                continue
            finally:
                peak = watch[0].stop() if watch else None
            if m == "tailproxy":
                if peak:
                    res["peak_kib"][m].add(lambda: (peak, {}))
                else:
                    res["peak_kib"][m].fail("no VmHWM reading of the tailproxy process")
            elif ctx.get("anchor_proc"):   # the anchor's tailscaled lives through all of (c)
                hwm = status_kib(ctx["anchor_proc"].pid, "VmHWM")
                if hwm:
                    res["peak_kib"][m].add(lambda: (hwm, {}))
            sec = split_sections(out)
            stderr = sec.get("stderr", "")
            failed = set(f.split()[0] for f in sec.get("failed", "").splitlines() if f.strip())

            def get(name, word):
                if name in failed:
                    mine = [l for l in stderr.splitlines() if l.startswith(f"tcpbench: {word}")]
                    raise Failed(f"tcpbench {word} failed: {' | '.join(mine) if mine else tail(stderr, 3)}")
                return result_line(sec.get(name, ""), word)

            res["warmup"][m].add(lambda: (get("warm", "connloop")["total_s"], {}))
            for i in range(a.tailnet_bulk_n):   # every transfer is one value (median and p90 over all)
                res["bulk"][m].add(lambda i=i: delivered(
                    ctx["peer_sink_log"], before, get(f"bulk{i}", "bulk"), a.tailnet_bulk_bytes,
                    (ctx["peer_netns"], ctx["peer_sink_port"])))
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
    if ctx.get("anchor_proc") and not ctx.get("anchor_error"):   # before this section's holds
        mem["anchor tailscaled before hold (after (c))"] = {"tailscaled": rss_kib(ctx["anchor_proc"].pid)}

    def tp_targets(p):
        """The tailproxy process (Python and, in it, the Go node). tailproxy runs no tailscaled
        any more; should one appear among its descendants, it is shown too."""
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
    tpl = ctx["tp"] + ["--no-tailnet", "--proxy-all"]   # held through the proxy, as before the table
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
            mem.setdefault("anchor tailscaled before hold (after (c))", {"tailscaled": rss_kib(apid)})
            say(f"    anchor tailscaled idle: {fmt_mem(mem['anchor tailscaled idle (after login)'])}; "
                f"before hold: {fmt_mem(mem['anchor tailscaled before hold (after (c))'])}")
            record(f"anchor tailscaled {k} conns",
                   lambda: hold_rss(["proxychains4", "-q", "-f", ctx["pc_anchor"], tb, "hold", peer_ip,
                                     str(peer_echo), str(k)], {}, lambda p: {"tailscaled": apid},
                                    a.hold_timeout))
    return mem



def bench_startup(ctx, a: argparse.Namespace) -> dict:
    """(g) start-up with saved state: CLOCK_MONOTONIC just before the command is started, against
    the time the program (tcpbench, C) reads first thing in main. `tcpbench stamp` run directly
    gives the cost of starting the program itself (fork/exec, ld.so): tailproxy's start-up is the
    difference. `tcpbench first` makes one connect + 1-byte echo to `peer` at once: start to its
    end is the first connection after start."""
    tb, n = ctx["tb"], a.reps_start
    tpn = ctx["tp"] + ["--hostname", "bench-tp", "--state-dir", ctx["tp_state"]]
    env = ctx["tp_env"]
    peer_ip, echo = ctx["peer_ip"], ctx["peer_echo_first"]
    say(f"\n(g) start-up with saved state ({ctx['tp_state']}): {n} runs each, modes interleaved")
    res = {k: Series() for k in ("direct_exec", "nt_exec", "tp_exec", "tp_exit", "first", "first_conn")}

    def timed(argv, e, word):
        t0 = time.monotonic()
        out = run(argv, e, timeout=90)
        t_end = time.monotonic()
        return t0, result_line(out, word), t_end

    try:   # one run first, not counted: the state is saved, whatever ran before
        run(tpn + [tb, "first", peer_ip, str(echo)], env, timeout=90, note="not counted: saves the node state")
    except Failed as e:
        say(f"    FAILED (not counted): {e}")
    modes = ("direct", "no-tailnet", "stamp", "first")
    for r in range(n):
        for m in rotated(list(modes), r):
            if m == "direct":
                def one():
                    t0, d, _ = timed([tb, "stamp"], {}, "stamp")
                    return d["t_main"] - t0, d
                res["direct_exec"].add(one)
            elif m == "no-tailnet":   # everything but the node: Python, the proxy, the preload
                def one():
                    t0, d, _ = timed(ctx["tp"] + ["--no-tailnet", tb, "stamp"], env, "stamp")
                    return d["t_main"] - t0, d
                res["nt_exec"].add(one)
            elif m == "stamp":
                got = {}

                def one():
                    t0, d, t_end = timed(tpn + [tb, "stamp"], env, "stamp")
                    got["exit"] = t_end - t0
                    return d["t_main"] - t0, d
                res["tp_exec"].add(one)
                if got:
                    res["tp_exit"].add(lambda: (got["exit"], {}))
            else:
                got = {}

                def one():
                    t0, d, _ = timed(tpn + [tb, "first", peer_ip, str(echo)], env, "first")
                    got["conn"] = d["t_done"] - d["t_main"]
                    return d["t_done"] - t0, d
                res["first"].add(one)
                if got:
                    res["first_conn"].add(lambda: (got["conn"], {}))
    return res


def fmt_mem(d: dict) -> str:
    if "error" in d:
        return "FAILED: " + d["error"]
    return ", ".join(f"{n} {v / 1024:.1f} MiB" for n, v in d.items() if n != "held" and v is not None)


# ---------------------------------------------------------------- anchor tailscaled

def start_anchor(ctx, info: dict) -> None:
    port = 0
    try:
        p, port = start_socks_tailscaled(info, os.path.join(ctx["tmp"], "anchor"), "bench-anchor")
        ctx["anchor_proc"] = p
        ctx["anchor_port"] = port
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


def summarize(loc: dict | None, tn: dict | None, mem: dict | None, st: dict | None, a) -> tuple[list[list[str]], list[dict], list[str]]:
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
        for m, label in (("direct", "direct (no proxy)"), ("tailproxy", "tailproxy --no-tailnet --proxy-all"),
                         ("proxychains", "proxychains4 + microsocks")):
            failed("(a)", m, c[m])
            extra = "" if m == "direct" else f"added {fr(added[m], '{:.0f} µs')}; {fr(ratio(c[m].median, d))} direct"
            rows.append(["(a) connect+echo", label, cell(c[m], "{:.0f} µs/conn"), extra])
        lt = loc["lat"]
        for m, label in (("direct", "direct (no proxy)"), ("tailproxy", "tailproxy --no-tailnet --proxy-all"),
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
        for m, label in (("direct", "direct (no proxy)"), ("tailproxy", "tailproxy --no-tailnet --proxy-all"),
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
        nb = f"{a.tailnet_bulk_n * a.reps_tailnet} ({a.tailnet_bulk_n} per run)"
        derived = {   # figure key -> {mode: Series with the one figure}, for cell() and the targets
            "bulk_p90": {m: derive(tn["bulk"][m], tn["bulk"][m].quantile(0.1)) for m in tn["bulk"]},
            "peak": {m: derive(tn["peak_kib"][m], max(tn["peak_kib"][m].values) / 1024
                               if tn["peak_kib"][m].values else None) for m in tn["peak_kib"]},
        }
        series = dict(tn, **derived)
        for key, what, fmt in (
                ("bulk", f"(c) bulk {a.tailnet_bulk_bytes / MiB:g} MiB to peer, median of {nb} transfers",
                 "{:.2f} Gbit/s"),
                ("bulk_p90", f"(c) bulk to peer, p90 (the slowest 10% of {nb} transfers were this slow "
                             "or slower)", "{:.2f} Gbit/s"),
                ("connlat", f"(c) connect latency, median (median of {a.reps_tailnet} runs)", "{:.0f} µs"),
                ("connlat_p90", f"(c) connect latency, p90 (median of {a.reps_tailnet} runs)", "{:.0f} µs"),
                ("connloop", "(c) connect+echo to peer", "{:.0f} µs/conn"),
                ("warmup", f"(c) first {a.warmup} connect+echo (tailproxy's node just started)", "{:.2f} s"),
                ("peak", "(c) peak RSS (VmHWM) during (c), highest of the runs", "{:.1f} MiB")):
            for m in ("anchor", "tailproxy"):
                if key not in derived:
                    failed(what, m, series[key][m])
                extra = "" if m == "anchor" else \
                    f"{fr(ratio(series[key][m].median, series[key]['anchor'].median))} anchor"
                if key == "peak" and m == "anchor":
                    extra = "its one tailscaled, through every run of (c)"
                rows.append([what, lab[m], cell(series[key][m], fmt), extra])
        for key, label, bound in (("bulk", "bulk, median", 1.2), ("bulk_p90", "bulk, p90", 1.2),
                                  ("connlat", "connect latency, median", 0.8),
                                  ("connlat_p90", "connect latency, p90", 0.8)):
            t, an = series[key]["tailproxy"], series[key]["anchor"]
            r = ratio(t.median, an.median)
            ok = None if r is None else (r >= bound if key.startswith("bulk") else r <= bound)
            add_target(targets, f"(c) {label} {'≥' if key.startswith('bulk') else '≤'} {bound}x anchor "
                                f"(tailscaled SOCKS5 + proxychains4)", ok, t, an,
                       f"{cell(t, '{:.2f}' if key.startswith('bulk') else '{:.0f}')} vs "
                       f"{cell(an, '{:.2f}' if key.startswith('bulk') else '{:.0f}')}"
                       f"{' Gbit/s' if key.startswith('bulk') else ' µs'}, ratio {fr(r)}")
        pk = series["peak"]["tailproxy"]
        add_target(targets, "(c) peak RSS of tailproxy (Python + Go) during (c) ≤ 300 MiB",
                   None if pk.median is None else pk.median <= 300, pk, series["peak"]["anchor"],
                   f"{cell(pk, '{:.1f} MiB')} (anchor tailscaled {cell(series['peak']['anchor'], '{:.1f} MiB')})")
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
                if name == "tailproxy (tailnet) idle" and proc == "tailproxy":
                    extra = "the old proxy + tailscaled child: 62 MiB (issue 9)"
                rows.append(["(d) memory", f"{name}: {proc}", f"{kib / 1024:.1f} MiB", extra])
        idle = mem.get("tailproxy (tailnet) idle", {}).get("tailproxy")
        targets.append({"name": "(d) tailproxy (Python + Go) idle on the tailnet ≤ 80 MiB",
                        "met": None if idle is None else idle / 1024 <= 80,
                        "detail": "not measured" if idle is None else
                        f"{idle / 1024:.1f} MiB (old proxy + tailscaled: 62 MiB)"})
    if st:
        n = a.reps_start
        d = st["direct_exec"].median
        for key, what, mode, extra in (
                ("direct_exec", "(g) start to the program's main", "the program alone (no tailproxy)", ""),
                ("nt_exec", "(g) start to the program's main", "tailproxy --no-tailnet (no node)", ""),
                ("tp_exec", "(g) start to the program's main", "tailproxy (saved state)",
                 f"tailproxy's start-up: {fr(None if d is None or st['tp_exec'].median is None else (st['tp_exec'].median - d) * 1000, '{:.0f} ms')}; "
                 "the old tailproxy: 0.37 s (issue 9)"),
                ("tp_exit", "(g) `tailproxy tcpbench stamp`, start to exit", "tailproxy (saved state)", ""),
                ("first", "(g) start to the end of the first connect+echo to peer", "tailproxy (saved state)", ""),
                ("first_conn", "(g) that first connect+echo alone (program's main to its end)",
                 "tailproxy (saved state)", "")):
            failed(what, mode, st[key])
            rows.append([f"{what} (median of {n})", mode, cell(st[key], "{:.3f} s"), extra])
    return rows, targets, failures


def derive(s: Series, value: float | None) -> Series:
    """A Series holding one figure computed from s (a quantile, a maximum), with s's errors."""
    out = Series()
    if value is not None:
        out.values.append(value)
    out.errors = list(s.errors)
    return out


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
          f"(b) {a.bulk_bytes / GiB:g} GiB, (c) {a.tailnet_bulk_n} x {a.tailnet_bulk_bytes / MiB:g} MiB and "
          f"{a.tailnet_conns} connections after {a.warmup} warm-up per run, (d) {a.hold} connections, one run, "
          f"(g) {a.reps_start} runs of each",
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


def udp_section(tmp: str, a) -> dict:
    """(u): bench/udp_bench.py run as it runs alone; its figures (udp.json)."""
    out = os.path.join(tmp, "udp")
    argv = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "udp_bench.py"),
            "--out", out] + (["--quick"] if a.quick else []) + \
        (["--tailproxy", a.tailproxy] if a.tailproxy else [])
    show(argv)
    cp = subprocess.run(argv, text=True, capture_output=True, timeout=1800)
    say(cp.stdout[-4000:])
    if cp.returncode != 0:
        raise RuntimeError(f"udp_bench.py exit {cp.returncode}: {cp.stderr[-2000:]}")
    with open(os.path.join(out, "udp.json")) as f:
        return json.load(f)


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
    p.add_argument("--tailnet-bulk-bytes", type=int, default=256 * MiB,
                   help="(c) bytes per bulk transfer (default 256 MiB)")
    p.add_argument("--tailnet-bulk-n", type=int, default=3, help="(c) bulk transfers per run (default 3)")
    p.add_argument("--reps-start", type=int, default=10, help="(g) runs of each start-up figure (default 10)")
    p.add_argument("--warmup", type=int, default=50, help="(c) warm-up connections per run (default 50)")
    p.add_argument("--hold", type=int, default=1000, help="(d) open connections (default 1000)")
    p.add_argument("--only", default="abcdefghiju",
                   help="sections to run, e.g. 'ab'; h is (a″), i the agent, j seccomp, u UDP "
                        "(default abcdefghiju)")
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
        a.tailnet_bulk_n, a.reps_start = 2, 3
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
    loc = tn = mem = ex = st = dr = ag = None
    dns = sec = udp = None
    try:
        say("\nsetup")
        tb = ctx["tb"] = build_tcpbench(tmp)
        ip = ctx["client_ip"]
        ctx["echo_ports"] = {}
        # one echo server per mode: each gets its own pool of ports for the TIME_WAITs of the loop
        for m in ("direct", "tailproxy", "proxychains", "direct-lat", "tailproxy-lat", "proxychains-lat",
                  "hold", "a2-plain", "a2-tailproxy", "a2-proxy-all", "a2-plain-lat", "a2-tailproxy-lat",
                  "a2-proxy-all-lat"):
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
        if "c" in a.only or "g" in a.only or "i" in a.only or \
                ("d" in a.only and not a.no_tailnet_memory):
            ns = ctx["peer_netns"] = info["peers"]["peer"]["netns"]
            for key in ("peer_echo_anchor", "peer_echo_tp", "peer_echo_hold", "peer_echo_first"):
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
        if "h" in a.only:
            dr = guarded("(a″)", bench_direct, ctx, a)
        if "c" in a.only:
            tn = guarded("(c)", bench_tailnet, ctx, a)
        if "d" in a.only:
            mem = guarded("(d)", bench_memory, ctx, a)
        if "g" in a.only:
            st = guarded("(g)", bench_startup, ctx, a)
        if "f" in a.only:   # (f): bench/dns_bench.py
            import dns_bench
            dns = guarded("(f)", dns_bench.section, info, tp, tp_env, tmp, a.dns_lookups,
                          1 if a.quick else 3)
        if "e" in a.only:   # (e): bench/export_bench.py
            import export_bench
            ex = guarded("(e)", export_bench.section, ctx, info, a)
        if "i" in a.only:   # (i): bench/agent_bench.py
            import agent_bench
            ag = guarded("(i)", agent_bench.section, ctx, info, a)
        if "j" in a.only:   # (j): bench/seccomp_bench.py
            import seccomp_bench
            sec = guarded("(j)", seccomp_bench.section, info, tp, tp_env, tmp,
                          200 if a.quick else 1000, 1 if a.quick else 5)
        if "u" in a.only:   # (u): bench/udp_bench.py, in a process of its own (its own servers)
            udp = guarded("(u)", udp_section, tmp, a)
    except KeyboardInterrupt:
        say("bench: interrupted")
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows, targets, failures = summarize(loc, tn, mem, st, a)
    if dr:
        d_rows, d_targets, d_failures = summarize_direct(dr)
        rows, targets, failures = rows + d_rows, targets + d_targets, failures + d_failures
    if ex:
        import export_bench
        ex_rows, ex_failures = export_bench.rows(ex)
        rows, failures = rows + ex_rows, failures + ex_failures
    if ag:
        import agent_bench
        ag_rows, ag_targets, ag_failures = agent_bench.rows(ag)
        rows, targets, failures = rows + ag_rows, targets + ag_targets, failures + ag_failures
    failures += CRASHES
    if dns:
        say("\n" + dns_bench.table(dns))
        failures += dns["failures"]
    if sec:
        import seccomp_bench
        say("\n" + seccomp_bench.table(sec))
        targets.append({"name": "(j) seccomp added cost per connection ≤ 1.5x the preload's",
                        "met": sec["seccomp_vs_preload"] <= 1.5,
                        "detail": f"{sec['seccomp_vs_preload']:.2f}x"})
    if udp:
        t, anchor = udp["modes"]["tailproxy"], udp["modes"]["anchor"]
        targets.append({"name": "(u) UDP loss-free rate ≥ a userspace tailscaled's SOCKS5 UDP",
                        "met": t["loss_free_mbit"] >= anchor["loss_free_mbit"],
                        "detail": f"{t['loss_free_mbit']} vs {anchor['loss_free_mbit']} Mbit/s"})
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
            "a2_direct": {k: {m: s.to_json() for m, s in v.items()} for k, v in dr.items()} if dr else None,
            "c_tailnet": {k: {m: s.to_json() for m, s in v.items()} for k, v in tn.items()} if tn else None,
            "d_memory_kib": mem,
            "g_startup_s": {k: v.to_json() for k, v in st.items()} if st else None}
    if dns:
        data["f_dns_lookups_per_s"] = dns["rates"]
    if ex:
        data["e_export"] = export_bench.to_json(ex)
    if ag:
        data["i_agent_s"] = {k: (v.to_json() if isinstance(v, Series) else v)
                             for k, v in ag.items()}
    if sec:
        data["j_seccomp"] = sec
    if udp:
        data["u_udp"] = udp
    with open(os.path.join(a.out, "latest.json"), "w") as f:
        json.dump(data, f, indent=2)
    with open(os.path.join(a.out, "latest.md"), "w") as f:
        f.write(markdown(rows, targets, failures, meta, a))
    say(f"wrote {os.path.join(a.out, 'latest.json')} and latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
