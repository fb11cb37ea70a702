#!/usr/bin/env python3
"""(i) the agent (issue 16): what a run costs when the identity's agent already runs.

  bench/run.py runs it as section (i) (``--only i`` for this section alone; with the anchor
  tailscaled run.py starts for (c)/(g))

Figures, on the local test tailnet:
  attach   start to the program's exec for ``tailproxy date +%s%N`` attaching to a running agent
           (``tailproxy up --linger forever`` first), median of ATTACH_RUNS; the program prints
           its own start time, so the figure ends at its exec, not at tailproxy's exit;
  cold     the same with ``--agent=false`` (a node of its own, started from saved state), median
           of COLD_RUNS; and ``python -c`` (start to its first line: Python's own floor);
  loop     a shell loop of LOOP_N ``tailproxy curl -s -o /dev/null URL`` runs against the peer's
           HTTP server, on the running agent, next to LOOP_N runs of plain ``curl
           --socks5-hostname`` through the anchor (a userspace tailscaled's SOCKS5): the whole
           loop's wall time, median of LOOP_REPS interleaved repetitions, and the ratio.
"""
from __future__ import annotations

import os
import shlex
import statistics
import subprocess
import sys
import time

import benchlib as B
from benchlib import Failed, Series, say, show

ATTACH_RUNS, COLD_RUNS, LOOP_N, LOOP_REPS = 20, 10, 50, 3


def _to_exec(argv: list[str], env: dict) -> float:
    """Seconds from just before the launch to the program's `date +%s%N`."""
    t0 = time.time_ns()
    p = subprocess.run(argv, env=dict(os.environ, **env), capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        raise Failed(f"{shlex.join(argv)} exited {p.returncode}: {B.tail(p.stderr)}")
    return (int(p.stdout.split()[-1]) - t0) / 1e9


def _attach_round_trip(state: str, command: list[str]) -> float:
    """Seconds from sending an attach request on the agent's control socket to its reply: the
    agent's share of an attach (it makes the program's session: channel, SOCKS5 port, ...)."""
    import json
    import socket
    from tailproxy.agent import identity
    from tailproxy.agent.wire import agent_wide, policy_of
    from tailproxy.config import resolve
    settings = resolve({"state_dir": state, "hostname": "bench-agent"}, dict(os.environ),
                       None, None)
    req = {"cmd": "attach", "pid": os.getpid(), "command": command,
           "settings": agent_wide(settings), "policy": policy_of(settings)}
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.path.join(identity.run_dir(state), identity.CONTROL))
        f = s.makefile("rb")
        t0 = time.perf_counter()
        s.sendall(json.dumps(req).encode() + b"\n")
        reply = json.loads(f.readline())
        took = time.perf_counter() - t0
        if not reply.get("ok"):
            raise Failed(f"attach refused: {reply}")
        s.sendall(b'{"cmd": "detach"}\n')
        f.readline()
    return took


def _loop(argv_one: list[str], env: dict, n: int) -> float:
    """Wall seconds of `n` runs of argv_one in a row from one shell, each one checked."""
    script = f'i=0; while [ $i -lt {n} ]; do {shlex.join(argv_one)} || exit 1; i=$((i+1)); done'
    t0 = time.monotonic()
    p = subprocess.run(["sh", "-c", script], env=dict(os.environ, **env), capture_output=True,
                       text=True, timeout=600)
    took = time.monotonic() - t0
    if p.returncode != 0:
        raise Failed(f"loop of {shlex.join(argv_one)} failed: {B.tail(p.stderr)}")
    return took


def section(ctx: dict, info: dict, a) -> dict:
    quick = getattr(a, "quick", False)
    attach_runs, cold_runs, loop_n, loop_reps = (5, 3, 10, 1) if quick else \
        (ATTACH_RUNS, COLD_RUNS, LOOP_N, LOOP_REPS)
    tp, env = ctx["tp"], dict(ctx["tp_env"], TAILPROXY_AGENT="1")
    state = os.path.join(ctx["tmp"], "agent-bench-state")
    ident = tp + ["--state-dir", state, "--hostname", "bench-agent"]
    peer = info["peers"]["peer"]
    url = f"http://{peer['ipv4']}:{peer['http_port']}/"
    res = {k: Series() for k in ("attach", "agent_share", "cold", "python", "loop_tp",
                                 "loop_anchor")}
    res["params"] = {"attach_runs": attach_runs, "cold_runs": cold_runs, "loop_n": loop_n,
                     "loop_reps": loop_reps, "url": url}
    say(f"\n(i) the agent: attach start-to-exec ({attach_runs} runs), cold start ({cold_runs}), "
        f"{loop_n} x tailproxy curl vs {loop_n} x curl via the anchor's SOCKS5 ({loop_reps} reps)")
    up = ident + ["--linger", "forever", "up"]
    show(up, env)
    subprocess.run(up, env=dict(os.environ, **env), check=True, capture_output=True, timeout=120)
    try:
        for _ in range(attach_runs):
            res["attach"].add(lambda: (_to_exec(ident + ["date", "+%s%N"], env), {}))
            res["agent_share"].add(lambda: (_attach_round_trip(state, ["true"]), {}))
        anchor_port = ctx.get("anchor_port")
        tp_curl = ident + ["curl", "-sS", "-o", "/dev/null", "-m", "20", url]
        anchor_curl = ["curl", "-sS", "-o", "/dev/null", "-m", "20", "--socks5-hostname",
                       f"127.0.0.1:{anchor_port}", url]
        show(tp_curl, env, note=f"x {loop_n} in a shell loop")
        show(anchor_curl, note=f"x {loop_n} in a shell loop")
        for r in range(loop_reps):
            for m in B.rotated(["tp", "anchor"], r):
                if m == "tp":
                    res["loop_tp"].add(lambda: (_loop(tp_curl, env, loop_n), {}))
                elif anchor_port and not ctx.get("anchor_error"):
                    res["loop_anchor"].add(lambda: (_loop(anchor_curl, {}, loop_n), {}))
                else:
                    res["loop_anchor"].fail(ctx.get("anchor_error") or "no anchor tailscaled")
    finally:
        subprocess.run(ident + ["down"], env=dict(os.environ, **env), capture_output=True,
                       timeout=60)
    # cold: its own node each time, from the state the agent saved
    for _ in range(cold_runs):
        res["cold"].add(lambda: (_to_exec(ident + ["--agent=false", "date", "+%s%N"], env), {}))
    py = [sys.executable, "-c", "import time; print(time.time_ns())"]
    for _ in range(attach_runs):
        res["python"].add(lambda: (_to_exec(py, {}), {}))
    res["loadavg"] = os.getloadavg()
    for key in ("attach", "agent_share", "cold", "python", "loop_tp", "loop_anchor"):
        s = res[key]
        say(f"    {key}: median {s.median * 1000:.1f} ms" if s.median is not None
            else f"    {key}: FAILED")
    return res


def _ms(s: Series) -> str:
    return B.cell(s, "{:.1f} ms") if s.median is None else f"{s.median * 1000:.1f} ms"


def rows(res: dict | None) -> tuple[list[list[str]], list[dict], list[str]]:
    """Table rows, targets and failure notes for run.py's report."""
    if not res:
        return [], [], []
    out, failures = [], []
    p = res["params"]
    for key in ("attach", "agent_share", "cold", "python", "loop_tp", "loop_anchor"):
        for e in dict.fromkeys(res[key].errors):
            failures.append(f"(i) {key}: {e}")
    out.append([f"(i) start to exec, attaching to a running agent (median of {p['attach_runs']})",
                "tailproxy", _ms(res["attach"]),
                f"cold start {B.fr(B.ratio(res['cold'].median, res['attach'].median))} this"])
    out.append(["(i) of which the agent's share: attach request to reply (its session made)",
                "agent", _ms(res["agent_share"]), ""])
    out.append([f"(i) start to exec, cold with saved state, --agent=false (median of "
                f"{p['cold_runs']})", "tailproxy", _ms(res["cold"]), ""])
    out.append(["(i) python -c, start to its first line (the floor)", "python",
                _ms(res["python"]), ""])
    tp, an = res["loop_tp"].median, res["loop_anchor"].median
    what = f"(i) {p['loop_n']} x curl {p['url']} in a shell loop (median of {p['loop_reps']})"
    out.append([what, "tailproxy curl (agent)", "-" if tp is None else f"{tp:.2f} s",
                f"{B.fr(B.ratio(tp, an))} anchor"])
    out.append([what, "curl via tailscaled SOCKS5 (anchor)", "-" if an is None else f"{an:.2f} s",
                ""])
    attach = res["attach"].median
    targets = [{"name": "(i) attach start to exec <= 50 ms (median)",
                "met": None if attach is None else attach <= 0.050,
                "detail": "-" if attach is None else f"{attach * 1000:.1f} ms"}]
    return out, targets, failures
