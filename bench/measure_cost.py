#!/usr/bin/env python3
"""What the agent's measurements (agent/measure.py) add per connection, alone: N connections
recorded as the channel server records them (opened at the relay's start, closed at its end,
the live table and the closed window full), against the same loop with no watch; and what a
connection the node's fast path relayed costs the agent once it has ended: its report taken from
a batch as the node sends them (node/parked_reports.go) through the channel server's handler.
`PYTHONPATH=src python bench/measure_cost.py [N]`; compare with (a″) --proxy-all, the agent's
per-connection cost (bench/REPORT.md), which these calls are part of."""
import json
import sys
import time

from tailproxy.agent.measure import Measurements, ProgramInfo
from tailproxy.proxy.channel import ChannelServer


class Joined:
    finished = False


def run(n: int, watch) -> float:
    relay, clock = Joined(), time.monotonic
    t = time.perf_counter()
    for i in range(n):
        t0 = clock()
        if watch is not None:
            h = watch.opened(4242, "host.example:443", "240.0.0.7:443", True, t0, relay)
            watch.closed(h, 100, 2000, "ok")
    return (time.perf_counter() - t) / n


def fast_path_reports(n: int, watch) -> float:
    """Per report: one batch of n (as JSON off the node's event pipe), handled as the channel
    server handles it."""
    one = {"ev": "done", "id": 0, "token": 1 << 40, "src": "127.0.0.1:40000",
           "dst": "100.64.0.2:22", "up": 100, "down": 2000, "ms": 12, "pid": 4242,
           "connect_us": 1500}
    line = json.dumps({"ev": "done_batch", "id": 7, "done": [one] * n})
    server = ChannelServer.__new__(ChannelServer)     # only the handler's two fields
    server.watch, server.on_conn = watch, None
    t = time.perf_counter()
    server._on_handoff_done(json.loads(line))
    return (time.perf_counter() - t) / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    m = Measurements(lambda a, d, v: "exit-node")
    w = m.for_program(ProgramInfo(1, lambda: 4242, ["curl"]))
    for _ in range(1000):      # the window full, as in a long run
        w.closed(w.opened(1, "a:1", "1.1.1.1:1", True, time.monotonic(), Joined()), 1, 1, "ok")
    rounds = [(run(n, w), run(n, None)) for _ in range(5)]
    per = sorted(a - b for a, b in rounds)[2]
    print(f"measure_cost n={n} per_connection_ns={per * 1e9:.0f} (median of 5; opened+closed "
          f"with the window full, minus the bare loop)")
    batch = min(n, 4096)        # the node's backlog bound: the largest batch there is
    fast = sorted(fast_path_reports(batch, w) for _ in range(5))[2]
    print(f"measure_cost fast_path_report_ns={fast * 1e9:.0f} (median of 5 batches of {batch}; "
          f"JSON decode + the channel server's handler + the measurements)")


if __name__ == "__main__":
    main()
