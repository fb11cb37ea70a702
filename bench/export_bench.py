#!/usr/bin/env python3
"""(e) exported listeners (issue 5): from `peer`, throughput and connection rate to servers on the
client host exported by ``tailproxy --export-listeners``, next to the same servers exposed by a
userspace tailscaled with ``tailscale serve --tcp`` (the anchor).

  python -m tailproxy.testnet -- python bench/export_bench.py [--quick]   (standalone, ~35 s)
  bench/run.py runs it as section (e) (``--only e`` for this section alone)

Setup, all on the local test tailnet (needs TESTNET_INFO):
  - tailproxy side: ``tailproxy --hostname exp-bench --export-listeners sh -c 'tcpbench echo-server
    P2 & exec tcpbench sink-server P1'`` (the servers bind 0.0.0.0; tailproxy holds them to
    loopback), ready once tailproxy has printed ``exported port P1`` and ``exported port P2``;
  - anchor: a second userspace tailscaled on the client host (``exp-anchor``) with
    ``tailscale serve --bg --tcp P tcp://127.0.0.1:P`` in front of the same two tcpbench servers
    on 127.0.0.1;
  - clients: in the peer's network namespace, through the peer's tailscaled SOCKS5 server under
    proxychains4 (``ip netns exec PEERNS proxychains4 -q -f CONF tcpbench ...``): the identical
    client path for both targets.

Figures, each the median of --reps repetitions with the two targets interleaved (order rotated):
  bulk   BYTES from peer to the sink; the *delivered* rate (client's first write to the sink's
         last byte, as in run.py: tailscaled's SOCKS5 closes at the first EOF, so the client
         may see the close before the sink has everything). A bulk whose bytes do not all reach
         the sink is a failure.
  conn   N sequential connect + 1-byte echo + close from peer to the echo server: µs per
         connection and connections per second.
The anchor's export is tailscaled's serve-config TCP forward; tailproxy's is its own node's
forward in Go (tsnet Listen, then a copy to the program's loopback port).

Standalone, it prints every command and a table and writes bench/results/export.json and
export.md (--out DIR to change).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import benchlib as B   # noqa: E402  (bench/ is on sys.path: run.py and this file are scripts there)

BENCH = B.BENCH
MiB = B.MiB

DEFAULTS = {"reps": 11, "bytes": 256 * MiB, "conns": 500}
QUICK = {"reps": 1, "bytes": 64 * MiB, "conns": 100}
MODES = ("anchor", "tailproxy")
LABEL = {"anchor": "tailscale serve --tcp (anchor)", "tailproxy": "tailproxy --export-listeners"}


def params(quick: bool, reps: int | None = None, nbytes: int | None = None, conns: int | None = None) -> dict:
    p = dict(QUICK if quick else DEFAULTS)
    for k, v in (("reps", reps), ("bytes", nbytes), ("conns", conns)):
        if v is not None:
            p[k] = v
    return p


# ---------------------------------------------------------------- processes

def _spawn(argv: list[str], logpath: str, env: dict | None = None, note: str = "",
           stdout_path: str | None = None) -> subprocess.Popen:
    """A long-running process of this section, in its own session; stderr to logpath, stdout to
    stdout_path (default: logpath too)."""
    B.show(argv, env, note)
    err = open(logpath, "w")
    out = open(stdout_path, "w") if stdout_path else err
    try:
        return subprocess.Popen(argv, env=dict(os.environ, **(env or {})), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, start_new_session=True)
    finally:
        err.close()
        if out is not err:
            out.close()


def _wait_file(path: str, pattern: str, proc: subprocess.Popen, timeout: float, what: str) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                m = re.search(pattern, f.read(), re.M)
        except OSError:
            m = None
        if m:
            return m
        if proc.poll() is not None:
            raise B.Failed(f"{what} exited with status {proc.returncode}: {_tail_file(path)}")
        if time.monotonic() > deadline:
            raise B.Failed(f"{what}: no '{pattern}' after {timeout:.0f}s: {_tail_file(path)}")
        time.sleep(0.05)


def _tail_file(path: str, n: int = 5) -> str:
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


def _stop_tree(proc: subprocess.Popen, extra: list[int]) -> None:
    """SIGTERM proc (tailproxy or a server), wait; then SIGKILL what is left of the tcpbench
    processes it started (extra: their pids, recorded while it ran; checked by name)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    for pid in extra:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "tcpbench":
                    continue
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


# ---------------------------------------------------------------- the section

def section(ctx: dict, info: dict, a: argparse.Namespace) -> dict:
    """bench/run.py's hook: section (e) with the default (or, with run.py --quick, the quick) sizes."""
    return bench(ctx, info, params(a.quick))


def bench(ctx: dict, info: dict, p: dict) -> dict:
    """Run section (e). ctx: tb (tcpbench binary), tp + tp_env (how to run tailproxy), tmp.
    p: params(). Commands are logged in benchlib.COMMANDS (run.py's report prints them).
    Returns {"bulk"|"conn": {mode: Series}, "paired": {"bulk"|"conn": [ratios]}, "setup", "params"}."""
    tb, tmp = ctx["tb"], ctx["tmp"]
    peer = info["peers"]["peer"]
    pns = peer["netns"]
    socks_host, socks_port = peer["socks5"].rsplit(":", 1)
    res = {"bulk": {m: B.Series() for m in MODES}, "conn": {m: B.Series() for m in MODES},
           "paired": {"bulk": [], "conn": []}, "setup": {}, "params": p}
    B.say(f"\n(e) exported listeners, from peer ({pns}) through its tailscaled SOCKS5 "
          f"{peer['socks5']} + proxychains4: bulk {p['bytes'] / MiB:g} MiB to a sink, "
          f"{p['conns']} connect+echo; tailproxy --export-listeners vs tailscale serve --tcp")
    procs: list[tuple[subprocess.Popen, list[int]]] = []
    dead: dict[str, str] = {}
    target: dict[str, dict] = {}
    env_sink = {"TCPBENCH_SINK_LOG": "1", "TCPBENCH_SINK_EXPECT": str(p["bytes"])}
    t0 = time.monotonic()
    try:
        # -- anchor: the servers on loopback, a userspace tailscaled, serve --tcp -------------
        try:
            target["anchor"] = _start_anchor(ctx, info, env_sink, procs)
        except B.Failed as e:
            dead["anchor"] = f"anchor setup: {e}"
            B.say(f"    FAILED: {dead['anchor']}")
        # -- tailproxy --export-listeners over the same two servers ----------------------------
        try:
            target["tailproxy"] = _start_tailproxy(ctx, env_sink, procs)
        except B.Failed as e:
            dead["tailproxy"] = f"tailproxy setup: {e}"
            B.say(f"    FAILED: {dead['tailproxy']}")
        res["setup"]["seconds"] = round(time.monotonic() - t0, 2)

        pc = B.proxychains_conf(os.path.join(tmp, "proxychains-exp-peer.conf"), int(socks_port))
        if socks_host != "127.0.0.1":
            with open(pc, "w") as f:
                f.write(B.PROXYCHAINS_CONF.format(port=socks_port).replace("127.0.0.1", socks_host))
        pre = ["ip", "netns", "exec", pns, "proxychains4", "-q", "-f", pc]
        B.say(f"  peer's proxychains4 conf {pc}: " + open(pc).read().replace("\n", "; "))

        # -- first contact: the peer must know the new nodes and reach them ------------------------
        for m in MODES:
            if m in dead:
                continue
            t = target[m]
            try:
                res["setup"][f"{m}_first_contact_s"] = _first_contact(pre, tb, t["ip"], t["echo"])
            except B.Failed as e:
                dead[m] = f"not reachable from peer: {e}"
                B.say(f"    FAILED: {dead[m]}")

        def one_bulk(t):
            before = B.sink_count(t["sink_log"])
            d = B.result_line(B.run(pre + [tb, "bulk", t["ip"], str(t["sink"]), str(p["bytes"])],
                                    timeout=120), "bulk")
            return B.delivered(t["sink_log"], before, d, p["bytes"], (None, t["sink"]))

        def one_conn(t):
            d = B.result_line(B.run(pre + [tb, "connloop", t["ip"], str(t["echo"]), str(p["conns"])],
                                    timeout=120), "connloop")
            return d["per_conn_us"], dict(d, conn_per_s=1e6 / d["per_conn_us"])

        # Each repetition: the two bulks back to back, then the two connect loops (order rotated),
        # so that each pair sees nearly the same load on the machine (paired ratios below).
        for r in range(p["reps"]):
            for key, fn in (("bulk", one_bulk), ("conn", one_conn)):
                got = {}
                for m in B.rotated(list(MODES), r):
                    if m in dead:
                        res[key][m].errors.append(dead[m])
                        continue
                    s = res[key][m]
                    n = len(s.values)
                    s.add(lambda t=target[m]: fn(t))
                    if len(s.values) > n:
                        got[m] = s.values[-1]
                if len(got) == 2:   # tailproxy vs anchor, > 1 = tailproxy better
                    a_, t_ = got["anchor"], got["tailproxy"]
                    res["paired"][key].append(t_ / a_ if key == "bulk" else a_ / t_)
    finally:
        for proc, extra in reversed(procs):
            _stop_tree(proc, extra)
    res["setup"]["targets"] = {m: {k: v for k, v in t.items() if k != "sink_log"} for m, t in target.items()}
    res["seconds"] = round(time.monotonic() - t0, 1)
    return res


def _start_anchor(ctx: dict, info: dict, env_sink: dict, procs: list) -> dict:
    tb, tmp = ctx["tb"], ctx["tmp"]
    d = tempfile.mkdtemp(prefix="exp-anchor-", dir=tmp)
    sink_log = os.path.join(d, "sink.log")
    sink = _server([tb, "sink-server", "0", "127.0.0.1"], sink_log, env_sink, procs,
                   "sink for the anchor")
    echo = _server([tb, "echo-server", "0", "127.0.0.1"], os.path.join(d, "echo.log"), {}, procs,
                   "echo server for the anchor")
    tsd, ts = info["bin"]["tailscaled"], info["bin"]["tailscale"]
    sock = os.path.join(d, "s")
    env = {"TS_NO_LOGS_NO_SUPPORT": "true", "TS_DISABLE_PORTMAPPER": "1"}
    if os.environ.get("SSL_CERT_FILE"):
        env["SSL_CERT_FILE"] = os.environ["SSL_CERT_FILE"]
    log = os.path.join(d, "log")
    p = _spawn([tsd, "--tun=userspace-networking", f"--statedir={d}", f"--socket={sock}", "--port=0"],
               log, env, note=f"anchor node, log in {log}")
    procs.append((p, []))
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if p.poll() is not None or time.monotonic() > deadline:
            raise B.Failed(f"anchor tailscaled did not start: {_tail_file(log)}")
        time.sleep(0.05)
    control = os.environ.get("TAILPROXY_CONTROL_URL") or info["control_url"]
    authkey = os.environ.get("TS_AUTHKEY") or info["authkey"]
    B.run([ts, f"--socket={sock}", "up", f"--login-server={control}", f"--auth-key={authkey}",
           "--hostname=exp-anchor"], timeout=90, secret=authkey)
    for port in (sink, echo):
        B.run([ts, f"--socket={sock}", "serve", "--bg", "--tcp", str(port), f"tcp://127.0.0.1:{port}"],
              timeout=30)
    ip = B.run([ts, f"--socket={sock}", "ip", "-4"], timeout=30).split()[0]
    return {"ip": ip, "sink": sink, "echo": echo, "sink_log": sink_log}


def _server(argv: list[str], log: str, env: dict, procs: list, note: str) -> int:
    out = log + ".out"
    p = _spawn(argv, log, env, note, stdout_path=out)
    procs.append((p, []))
    m = _wait_file(out, r"^listening \S+ (\d+)$", p, 10, "tcpbench server")
    return int(m.group(1))


def _start_tailproxy(ctx: dict, env_sink: dict, procs: list) -> dict:
    tb, tmp = ctx["tb"], ctx["tmp"]
    d = tempfile.mkdtemp(prefix="exp-tp-", dir=tmp)
    sink_log = os.path.join(d, "sink.log")
    # The ports are chosen here (free on the client host's loopback now) so that both are known
    # before tailproxy says it exported them; the servers bind 0.0.0.0 and are held to loopback.
    sink, echo = B.free_port(), B.free_port()
    while echo == sink:
        echo = B.free_port()
    q = shlex.quote
    script = f"{q(tb)} echo-server {echo} & exec {q(tb)} sink-server {sink} 2>{q(sink_log)}"
    log = os.path.join(d, "tailproxy.log")
    argv = ctx["tp"] + ["--hostname", "exp-bench", "--state-dir", os.path.join(d, "state"),
                        "--export-listeners", "sh", "-c", script]
    p = _spawn(argv, log, dict(ctx["tp_env"], **env_sink),
               note=f"tailproxy's stderr in {log}", stdout_path=os.path.join(d, "stdout"))
    kids: list[int] = []
    procs.append((p, kids))
    got = {}
    for port in (sink, echo):
        m = _wait_file(log, rf"exported port {port}: (.*)$", p, 90, "tailproxy")
        got[port] = m.group(1)
    # the tcpbench servers, to be sure none outlives tailproxy (the echo server is sh's child)
    kids += [c for c in B.descendants(p.pid) if B.comm(c) == "tcpbench"]
    ips = [a.rsplit(":", 1)[0] for a in got[sink].split() if re.match(r"^\d+\.\d+\.\d+\.\d+:\d+$", a)]
    if not ips:
        raise B.Failed(f"no IPv4 address in tailproxy's 'exported port {sink}: {got[sink]}'")
    B.say(f"    tailproxy: exported port {sink}: {got[sink]}")
    B.say(f"    tailproxy: exported port {echo}: {got[echo]}")
    return {"ip": ips[0], "sink": sink, "echo": echo, "sink_log": sink_log}


def _first_contact(pre: list[str], tb: str, ip: str, port: int, timeout: float = 45) -> float:
    """One connect+echo from peer, retried until it works (the peer learns of a new node through
    control, then WireGuard sets up): seconds it took. Not a figure of the comparison."""
    t0 = time.monotonic()
    argv = pre + [tb, "connloop", ip, str(port), "1"]
    B.show(argv, note="first contact, retried until it works")
    last = ""
    while time.monotonic() - t0 < timeout:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        if p.returncode == 0 and p.stdout.startswith("connloop "):
            return round(time.monotonic() - t0, 2)
        last = (p.stderr or p.stdout).strip()
        time.sleep(0.2)
    raise B.Failed(f"{timeout:.0f}s of retries: {last}")


# ---------------------------------------------------------------- report

def rows(res: dict | None) -> tuple[list[list[str]], list[str]]:
    """Table rows (benchmark, mode, median, vs anchor) and failure notes for run.py's report."""
    if not res:
        return [], []
    out, failures = [], []
    p = res["params"]
    n = f"median of {p['reps']}"
    for key, what in (("bulk", f"(e) exported: bulk {p['bytes'] / MiB:g} MiB from peer, delivered ({n})"),
                      ("conn", f"(e) exported: {p['conns']} connect+echo from peer ({n})")):
        s = res[key]
        for m in MODES:
            for e in dict.fromkeys(s[m].errors):
                k = s[m].errors.count(e)
                failures.append(f"(e) {key} {m}: {e}" + (f" ({k} reps)" if k > 1 else ""))
            if key == "bulk":
                cell = B.cell(s[m], "{:.2f} Gbit/s")
                extra = "" if m == "anchor" else f"{B.fr(B.ratio(s[m].median, s['anchor'].median))} anchor"
            else:
                med = s[m].median
                cell = B.cell(s[m], "{:.0f} µs/conn") + (f" = {1e6 / med:.0f} conn/s" if med else "")
                a = s["anchor"].median
                # connection *rate* ratio: > 1 means tailproxy accepts connections faster
                extra = "" if m == "anchor" else (f"rate {B.fr(B.ratio(a, med))} anchor" if med and a else "-")
            pr = res["paired"][key]
            if m != "anchor" and len(pr) > 1:
                extra += (f"; per-rep pairs: median {statistics.median(pr):.2f}x, "
                          f"{min(pr):.2f}–{max(pr):.2f}x over {len(pr)}")
            out.append([what, LABEL[m], cell, extra])
    return out, failures


def to_json(res: dict | None) -> dict | None:
    if not res:
        return None
    return {"params": res["params"], "setup": res["setup"], "seconds": res.get("seconds"),
            "bulk": {m: s.to_json() for m, s in res["bulk"].items()},
            "conn": {m: s.to_json() for m, s in res["conn"].items()},
            "paired_tailproxy_vs_anchor": res["paired"]}


# ---------------------------------------------------------------- standalone

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    ap.add_argument("--reps", type=int, help=f"repetitions (default {DEFAULTS['reps']})")
    ap.add_argument("--bytes", type=int, help=f"bytes per bulk (default {DEFAULTS['bytes']})")
    ap.add_argument("--conns", type=int, help=f"connections per connect+echo loop (default {DEFAULTS['conns']})")
    ap.add_argument("--tailproxy", help="command that runs tailproxy (default: the venv's tailproxy)")
    ap.add_argument("--out", default=os.path.join(BENCH, "results"), help="results folder")
    a = ap.parse_args()
    info_path = os.environ.get("TESTNET_INFO")
    if not info_path:
        print("export_bench: needs the local test tailnet: python -m tailproxy.testnet -- "
              "python bench/export_bench.py", file=sys.stderr)
        return 2
    with open(info_path) as f:
        info = json.load(f)
    import shutil
    for tool in ("gcc", "proxychains4", "ip"):
        if not shutil.which(tool):
            print(f"export_bench: {tool} is missing (make deps installs it)", file=sys.stderr)
            return 2
    p = params(a.quick, a.reps, a.bytes, a.conns)
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="tailproxy-exp-bench-")
    tp, tp_env = B.tailproxy_cmd(a.tailproxy)
    ctx = {"tmp": tmp, "tp": tp, "tp_env": tp_env}
    meta = {"when": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join(["python", "-m", "tailproxy.testnet", "--", sys.executable,
                                   os.path.relpath(os.path.abspath(sys.argv[0]), os.path.dirname(BENCH))]
                                  + sys.argv[1:]),
            "loadavg_start": os.getloadavg()}
    res = None
    try:
        B.say(f"tailproxy export benchmark, in {tmp}\n\nsetup")
        ctx["tb"] = B.build_tcpbench(tmp)
        res = bench(ctx, info, p)
    except KeyboardInterrupt:
        B.say("export_bench: interrupted")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table, failures = rows(res)
    meta["seconds"] = round(time.monotonic() - t0, 1)
    meta["loadavg_end"] = os.getloadavg()
    meta["versions"] = B.versions(info["bin"]["tailscaled"])
    header = ["benchmark", "mode", "median", "vs anchor"]
    B.say("\n" + B.table(table, header) if table else "\n(no figures)")
    if failures:
        B.say("\nfailures:\n" + "\n".join(f"  {f}" for f in failures))
    B.say(f"\n({meta['seconds']} s)")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "export.json"), "w") as f:
        json.dump({"meta": meta, "results": to_json(res), "failures": failures, "commands": B.COMMANDS}, f,
                  indent=2)
    md = ["# tailproxy export benchmark (section (e))", "",
          f"- when: {meta['when']}; command: `{meta['command']}`",
          f"- tailproxy {meta['versions']['git']}, tailscaled {meta['versions']['tailscaled']}, "
          f"proxychains4 {meta['versions']['proxychains4']}; {meta['versions']['cpus']} CPUs; load average "
          f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end; "
          f"took {meta['seconds']} s",
          f"- each figure: median of {p['reps']} repetitions, targets interleaved and rotated", "",
          "| " + " | ".join(header) + " |", "|---|---|---|---|"]
    md += [f"| {' | '.join(r)} |" for r in table]
    if res:
        md += ["", "first contact from peer (not compared: the nodes start one after the other): "
                   + ", ".join(f"{m} {res['setup'].get(f'{m}_first_contact_s', '-')} s" for m in MODES)]
    if failures:
        md += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    md += ["", "## Commands (exact, in order)", "", "```"] + B.COMMANDS + ["```", ""]
    with open(os.path.join(a.out, "export.md"), "w") as f:
        f.write("\n".join(md))
    B.say(f"wrote {os.path.join(a.out, 'export.json')} and export.md")
    return 0 if res and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
