"""python -m tailproxy.testnet [--json-out FILE] [--exit-nodes N] -- CMD [ARGS...]

Builds a local test tailnet (see core.py), runs CMD on its client host, tears it all down and
exits with CMD's status (128+N if CMD was killed by signal N).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys

from .core import Testnet
from .procs import PartFailed


class _Stop(BaseException):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_stop(signum, _frame):
    raise _Stop(signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tailproxy.testnet",
                                description="Run CMD on the client host of a throwaway local tailnet.")
    p.add_argument("--json-out", metavar="FILE", help="also write the info JSON here")
    p.add_argument("--exit-nodes", type=int, default=1, choices=[1, 2])
    p.add_argument("--timeout", type=float, default=90, help="seconds to wait for the tailnet (default 90)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    a = p.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd:
        p.error("missing CMD (usage: python -m tailproxy.testnet [options] -- CMD [ARGS...])")

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise_stop)

    tn = Testnet(exit_nodes=a.exit_nodes, timeout=a.timeout)
    try:
        try:
            info = tn.start()
        except PartFailed as e:
            print(str(e), file=sys.stderr)
            return 1
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(info, f, indent=2)
        return _run_cmd(tn, cmd)
    except _Stop as e:
        print(f"testnet: interrupted by signal {e.signum}, tearing down", file=sys.stderr)
        return 128 + e.signum
    finally:
        tn.close()


def _run_cmd(tn: Testnet, cmd: list[str]) -> int:
    """Run CMD in the client host, in our process group so a terminal's Ctrl-C reaches it too.
    A signal sent to us alone is passed on; CMD gets a few seconds before SIGKILL."""
    try:
        proc = subprocess.Popen(tn.client_argv(cmd), env=tn.client_env())
    except OSError as e:
        print(f"testnet: cannot start {cmd[0]}: {e}", file=sys.stderr)
        return 127
    stopping = None
    while True:
        try:
            if stopping is None:
                rc = proc.wait()
            else:
                try:
                    rc = proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
            break
        except _Stop as e:
            if stopping is None:
                stopping = e.signum
                print(f"testnet: signal {e.signum}, stopping command", file=sys.stderr)
                try:
                    proc.send_signal(e.signum)
                except ProcessLookupError:
                    pass
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main())
