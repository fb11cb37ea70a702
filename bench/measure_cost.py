#!/usr/bin/env python3
"""What the agent's measurements (agent/measure.py) add per connection, alone: N connections
recorded as the channel server records them (opened at the relay's start, closed at its end,
the live table and the closed window full), against the same loop with no watch.
`PYTHONPATH=src python bench/measure_cost.py [N]`; compare with (a″) --proxy-all, the agent's
per-connection cost (bench/REPORT.md), which these calls are part of."""
import sys
import time

from tailproxy.agent.measure import Measurements, ProgramInfo


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


if __name__ == "__main__":
    main()
