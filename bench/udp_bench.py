#!/usr/bin/env python3
"""(u) UDP through the tailnet (issue 10): the loss-free rate of a paced UDP stream to `peer`,
from an unmodified program under tailproxy (the preload's association, relayed by the node in
Go) next to the same stream through a userspace tailscaled's SOCKS5 UDP ASSOCIATE (the anchor).

  python -m tailproxy.testnet -- python bench/udp_bench.py [--quick]   (standalone, ~2 min)

Setup, all on the local test tailnet (needs TESTNET_INFO):
  - sink: in the peer's namespace, on 127.0.0.1 (its userspace tailscaled hands tailnet UDP to
    its loopback), counting datagrams per trial (`udp_bench.py sink PORT`);
  - sender: one Python process per mode and repetition, `udp_bench.py send ...`, pacing
    1,200-byte datagrams (one tailnet packet each) at each rate in turn for --seconds, each
    trial with an id of its own, after a warm-up trial that is not counted;
  - tailproxy: ``tailproxy --hostname udp-bench -- python udp_bench.py send plain PEER PORT ...``
    (a plain UDP socket; its datagrams go to the node's loopback endpoint);
  - anchor: a second userspace tailscaled on the client host (``udp-anchor``, SOCKS5 on
    127.0.0.1) and ``udp_bench.py send socks 127.0.0.1:SOCKS PEER PORT ...`` (UDP ASSOCIATE, a
    10-byte SOCKS5 header on each datagram).
The sender is the same Python loop in both modes, so its own ceiling (printed as the achieved
send rate) is the same for both. Figures: per rate, the median loss over --reps repetitions
(modes interleaved, order rotated); the loss-free rate is the highest rate whose median loss is
0 (and every lower rate's too). Goal (issue 10): tailproxy's loss-free rate >= the anchor's.

Standalone, it prints every command and a table and writes bench/results/udp.json and udp.md.

--send-cost (standalone only, ~30 s): the cost of one send() call of a routed datagram, not a
rate: ``tailproxy --intercept preload|seccomp -- python udp_bench.py cost PEER PORT N`` times N
back-to-back sendto() on an unconnected socket (the preload's hook, or under seccomp a trapped
call the supervisor sends, preload/exec/udpsend.c) and N send() on a connected one (untrapped
under seccomp), 1,200 bytes each; the same loop without tailproxy to a loopback sink is the
anchor. Median ns per call over --reps (default 5) repetitions, modes interleaved.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

SIZE = 1200                     # payload bytes: one tailnet packet (see README, UDP)
RATES_MBIT = (10, 20, 30, 40, 50, 60, 80, 120)
QUICK_RATES = (10, 30, 60)
WARMUP_ID = 1
GAP_S = 1.5                     # between trials: the sink reports a trial after 1 s of quiet


# ------------------------------------------------------------------ roles run as subprocesses

def sink(port: int) -> None:
    """Count datagrams per trial id (first 4 bytes); print "trial ID COUNT" after 1 s quiet."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    counts: dict[int, int] = {}
    buf = bytearray(65536)
    while True:
        r, _, _ = select.select([s], [], [], 1.0)
        if not r:
            for tid, n in sorted(counts.items()):
                print(f"trial {tid} {n}", flush=True)
            counts.clear()
            continue
        while True:
            try:
                n = s.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if n >= 4:
                tid = struct.unpack_from("!I", buf)[0]
                counts[tid] = counts.get(tid, 0) + 1


def _socks_udp(proxy: str):
    """(TCP control connection, relay address) of a SOCKS5 UDP ASSOCIATE, no authentication."""
    host, port = proxy.rsplit(":", 1)
    c = socket.create_connection((host, int(port)), timeout=10)
    c.sendall(b"\x05\x01\x00")
    assert c.recv(2) == b"\x05\x00", "SOCKS5: no-auth refused"
    c.sendall(b"\x05\x03\x00\x01" + bytes(6))
    rep = c.recv(10)
    assert rep[:2] == b"\x05\x00" and len(rep) == 10, f"UDP ASSOCIATE refused: {rep!r}"
    relay = (socket.inet_ntoa(rep[4:8]), struct.unpack("!H", rep[8:10])[0])
    if relay[0] == "0.0.0.0":
        relay = (host, relay[1])
    return c, relay


def send(mode: str, args: list[str]) -> None:
    """send plain PEER PORT SECONDS RATE:ID... | send socks PROXY PEER PORT SECONDS RATE:ID..."""
    if mode == "socks":
        proxy, *args = args
        ctl, relay = _socks_udp(proxy)
    peer, port, seconds, *trials = args
    dst = (peer, int(port))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    head = b""
    if mode == "socks":
        head = b"\x00\x00\x00\x01" + socket.inet_aton(peer) + struct.pack("!H", int(port))
        target = relay
    else:
        target = dst
    for trial in trials:
        rate, tid = trial.split(":")
        pps = float(rate) * 1e6 / (8 * SIZE)
        secs = float(seconds) if int(tid) != WARMUP_ID else 0.5
        payload = bytearray(SIZE)
        struct.pack_into("!I", payload, 0, int(tid))
        sent, t0 = 0, time.perf_counter()
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed >= secs:
                break
            due = int(elapsed * pps) + 1
            while sent < due:
                struct.pack_into("!I", payload, 4, sent)
                try:
                    s.sendto(head + payload, target)
                    sent += 1
                except BlockingIOError:
                    break
            time.sleep(0.0005)
        took = time.perf_counter() - t0
        print(f"sent {tid} {sent} {took:.3f}", flush=True)
        time.sleep(GAP_S)


def cost(args: list[str]) -> None:
    """cost HOST PORT N: ns per sendto() (unconnected) and per send() (connected), one line of
    JSON."""
    host, port, n = args[0], int(args[1]), int(args[2])
    payload = bytes(SIZE)
    out = {}
    for kind in ("sendto", "send"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if kind == "send":
            s.connect((host, port))
            call = lambda: s.send(payload)
        else:
            call = lambda: s.sendto(payload, (host, port))
        for _ in range(100):        # the association, and warm caches
            call()
        t0 = time.perf_counter_ns()
        for _ in range(n):
            call()
        out[kind] = (time.perf_counter_ns() - t0) / n
        s.close()
    print(json.dumps(out), flush=True)


def send_cost(a, B) -> int:
    info = json.load(open(os.environ["TESTNET_INFO"]))
    peer = info["peers"]["peer"]
    me, n, reps = os.path.abspath(__file__), 20000, a.reps or 5
    tp, tp_env = B.tailproxy_cmd(a.tailproxy)
    tmp = tempfile.mkdtemp(prefix="udp-cost-")
    sinkp = subprocess.Popen([sys.executable, me, "sink", "5302"], stdout=subprocess.PIPE, text=True)
    B.STARTED.append(sinkp)
    got: dict[str, list[dict]] = {"direct": [], "preload": [], "seccomp": []}
    B.say(f"(u') per-call cost of a {SIZE}-byte routed UDP send, {n} calls, {reps} rep(s)")
    try:
        assert sinkp.stdout.readline().strip() == "ready"
        for rep in range(reps):
            for mode in B.rotated(list(got), rep):
                if mode == "direct":
                    argv, env = [sys.executable, me, "cost", "127.0.0.1", "5302", str(n)], None
                else:
                    argv = tp + ["--state-dir", os.path.join(tmp, "state"), "--hostname",
                                 "udp-cost", "--intercept", mode, "--", sys.executable, me,
                                 "cost", peer["ipv4"], "5301", str(n)]
                    env = dict(os.environ, **tp_env)
                B.show(argv, note=f"{mode}, rep {rep + 1}")
                cp = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
                if cp.returncode != 0:
                    raise B.Failed(f"{mode}: exit {cp.returncode}: {B.tail(cp.stderr)}")
                got[mode].append(json.loads(cp.stdout.strip().splitlines()[-1]))
    finally:
        B.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    med = {m: {k: statistics.median(r[k] for r in got[m]) for k in ("sendto", "send")} for m in got}
    for m in got:
        rows.append([m, f"{med[m]['sendto']:.0f}", f"{med[m]['sendto'] - med['direct']['sendto']:.0f}",
                     f"{med[m]['send']:.0f}", f"{med[m]['send'] - med['direct']['send']:.0f}"])
    B.say("\n" + B.table(rows, ["mode", "sendto ns", "added", "connected send ns", "added"]))
    return 0


# ------------------------------------------------------------------ orchestration

def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        sink(int(sys.argv[2]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "send":
        send(sys.argv[2], sys.argv[3:])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "cost":
        cost(sys.argv[2:])
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import benchlib as B

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--tailproxy", help="command to run tailproxy (default: this venv's)")
    ap.add_argument("--out", default=os.path.join(B.BENCH, "results"))
    ap.add_argument("--send-cost", action="store_true", help="only the per-call send cost (u')")
    a = ap.parse_args()
    if a.send_cost:
        return send_cost(a, B)
    reps = a.reps or (1 if a.quick else 3)
    seconds = a.seconds or (1.0 if a.quick else 2.0)
    rates = QUICK_RATES if a.quick else RATES_MBIT
    info = json.load(open(os.environ["TESTNET_INFO"]))
    peer = info["peers"]["peer"]
    port = 5301
    tmp = tempfile.mkdtemp(prefix="udp-bench-")
    me = os.path.abspath(__file__)
    B.say(f"(u) UDP to peer ({peer['ipv4']}:{port}), {SIZE}-byte datagrams, rates {rates} Mbit/s, "
          f"{seconds:g} s each, {reps} rep(s)")
    sink_argv = ["ip", "netns", "exec", peer["netns"], sys.executable, me, "sink", str(port)]
    B.show(sink_argv, note="the sink, in the peer's namespace")
    sinkp = subprocess.Popen(sink_argv, stdout=subprocess.PIPE, text=True)
    B.STARTED.append(sinkp)
    try:
        assert sinkp.stdout.readline().strip() == "ready"
        anchor, socks_port = B.start_socks_tailscaled(info, os.path.join(tmp, "anchor"), "udp-anchor")
        tp, tp_env = B.tailproxy_cmd(a.tailproxy)
        state = os.path.join(tmp, "tp-state")
        next_id = [WARMUP_ID + 1]
        trial_of: dict[int, tuple[str, int]] = {}     # id -> (mode, rate)
        sent: dict[int, tuple[int, float]] = {}

        def trials_for(mode):
            out = [f"1:{WARMUP_ID}"]
            for r in rates:
                tid = next_id[0]
                next_id[0] += 1
                trial_of[tid] = (mode, r)
                out.append(f"{r}:{tid}")
            return out

        for rep in range(reps):
            for mode in B.rotated(["anchor", "tailproxy"], rep):
                t = trials_for(mode)
                if mode == "tailproxy":
                    argv = tp + ["--state-dir", state, "--hostname", "udp-bench", "--",
                                 sys.executable, me, "send", "plain", peer["ipv4"], str(port),
                                 str(seconds), *t]
                    env = dict(os.environ, **tp_env)
                else:
                    argv = [sys.executable, me, "send", "socks", f"127.0.0.1:{socks_port}",
                            peer["ipv4"], str(port), str(seconds), *t]
                    env = dict(os.environ)
                B.show(argv, note=f"{mode}, rep {rep + 1}")
                cp = subprocess.run(argv, env=env, capture_output=True, text=True,
                                    timeout=60 + len(t) * (seconds + GAP_S + 1))
                if cp.returncode != 0:
                    raise B.Failed(f"{mode}: exit {cp.returncode}: {B.tail(cp.stderr)}")
                for line in cp.stdout.splitlines():
                    _w, tid, n, took = line.split()
                    sent[int(tid)] = (int(n), float(took))
        time.sleep(GAP_S)
        B.stop(sinkp)
        received: dict[int, int] = {}
        for line in sinkp.stdout.read().splitlines():
            if line.startswith("trial "):
                _w, tid, n = line.split()
                received[int(tid)] = received.get(int(tid), 0) + int(n)
        B.stop(anchor)
    finally:
        B.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    rows, res = [], {"rates_mbit": list(rates), "size": SIZE, "seconds": seconds, "reps": reps,
                     "modes": {}}
    for mode in ("anchor", "tailproxy"):
        per_rate = {}
        for r in rates:
            losses, achieved = [], []
            for tid, (m, rr) in trial_of.items():
                if m == mode and rr == r and tid in sent:
                    n, took = sent[tid]
                    losses.append(100.0 * (n - min(received.get(tid, 0), n)) / n if n else 100.0)
                    achieved.append(n * SIZE * 8 / took / 1e6)
            per_rate[r] = {"loss_pct": statistics.median(losses) if losses else None,
                           "sent_mbit": statistics.median(achieved) if achieved else None}
        loss_free = 0
        for r in rates:
            if per_rate[r]["loss_pct"] == 0:
                loss_free = r
            else:
                break
        res["modes"][mode] = {"per_rate": per_rate, "loss_free_mbit": loss_free}
        for r in rates:
            pr = per_rate[r]
            rows.append([mode, f"{r}", f"{pr['sent_mbit']:.1f}" if pr["sent_mbit"] else "-",
                         f"{pr['loss_pct']:.2f}%" if pr["loss_pct"] is not None else "-"])
    lf_a, lf_t = res["modes"]["anchor"]["loss_free_mbit"], res["modes"]["tailproxy"]["loss_free_mbit"]
    table = B.table(rows, ["mode", "rate Mbit/s", "sent Mbit/s", "median loss"])
    summary = (f"loss-free rate: tailproxy {lf_t} Mbit/s, anchor (userspace tailscaled SOCKS5 UDP) "
               f"{lf_a} Mbit/s -> {'goal met' if lf_t >= lf_a else 'goal NOT met'} "
               f"(tailproxy >= anchor)")
    B.say("\n" + table + "\n\n" + summary)
    os.makedirs(a.out, exist_ok=True)
    res["summary"], res["commands"] = summary, B.COMMANDS
    res["when"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    res["versions"] = B.versions(info["bin"]["tailscaled"])
    with open(os.path.join(a.out, "udp.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, "udp.md"), "w") as f:
        f.write(f"# (u) UDP loss-free rate\n\n{table}\n\n{summary}\n\nCommands:\n\n"
                + "\n".join(f"    {c}" for c in B.COMMANDS) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
