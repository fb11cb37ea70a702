"""Start to the program's exec for `tailproxy CMD` attaching to a running agent (issue 16's
goal: <= 50 ms, median of 20), next to a cold start with saved state (`--agent=false`: a node of
its own) and to Python's own start (the floor). Also the launcher's CPU time per attach, which
the machine's load does not inflate. On the local tailnet:

    python -m tailproxy.testnet -- .venv/bin/python bench/attach_start.py
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

TP = os.environ.get("TAILPROXY") or os.path.join(os.path.dirname(sys.executable), "tailproxy")
RUNS = 20


def to_exec(argv: list[str]) -> tuple[float, float]:
    """(seconds from just before the launch to the program's `date`, CPU seconds of the run)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time_ns()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return (int(out.split()[-1]) - t0) / 1e9, cpu


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms (min {min(samples) * 1000:.1f}, " \
           f"max {max(samples) * 1000:.1f})"


def main() -> None:
    state = tempfile.mkdtemp(prefix="tp-attach-")
    ident = [TP, "--state-dir", state, "--hostname", "attachbench"]
    os.environ["TAILPROXY_AGENT"] = "1"
    subprocess.run(ident + ["--linger", "forever", "up"], check=True)
    try:
        attach = [to_exec(ident + ["date", "+%s%N"]) for _ in range(RUNS)]
    finally:
        subprocess.run(ident + ["down"], check=True)
    cold = [to_exec(ident + ["--agent=false", "date", "+%s%N"]) for _ in range(10)]
    python = [to_exec([sys.executable, "-c", "import time; print(time.time_ns())"])
              for _ in range(RUNS)]
    print(f"attach to a running agent, start to exec: {median_ms([a for a, _ in attach])}; "
          f"launcher CPU {statistics.median([c for _, c in attach]) * 1000:.1f} ms per run")
    print(f"cold start with saved state (--agent=false), start to exec: "
          f"{median_ms([a for a, _ in cold])}")
    print(f"python -c (the floor), start to its first line: {median_ms([a for a, _ in python])}")
    print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
