"""python -m tailproxy.testnet [--json-out FILE] [--exit-nodes N] -- CMD [ARGS...]

Builds a local test tailnet (see core.py), runs CMD on its client host, tears it all down and
exits with CMD's status (128+N if CMD was killed by signal N; 125 if the tailnet could not be
built, 128+N if the testnet itself got signal N).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from .core import Testnet
from .procs import PartFailed, log_tail


SETUP_FAILED = 125

EPILOG = """\
CMD runs in the client host's network namespace with TESTNET_INFO (path of the info JSON),
TS_AUTHKEY, TAILPROXY_CONTROL_URL, SSL_CERT_FILE and a fresh XDG_STATE_HOME added to the
environment. Environment knobs: TESTNET_KEEP=1 keeps the run folder (logs) after teardown;
TESTNET_TAILSCALED / TESTNET_TAILSCALE / TESTNET_HEADSCALE use given binaries."""


class _Stop(BaseException):
    def __init__(self, signum: int):
        self.signum = signum


def _raise_stop(signum, _frame):
    raise _Stop(signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tailproxy.testnet",
                                description="Run CMD on the client host of a throwaway local tailnet.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            return SETUP_FAILED
        if a.json_out:
            with open(a.json_out, "w") as f:
                json.dump(info, f, indent=2)
        return _run_cmd(tn, cmd)
    except _Stop as e:
        print(f"testnet: interrupted by signal {e.signum}, tearing down", file=sys.stderr)
        return 128 + e.signum
    finally:
        tn.close()


def _terminal_sent_it_too(signum: int) -> bool:
    """Ctrl-C/Ctrl-\\ at a terminal where we are the foreground group already reached CMD."""
    if signum not in (signal.SIGINT, signal.SIGQUIT):
        return False
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _run_cmd(tn: Testnet, cmd: list[str]) -> int:
    """Run CMD in the client host, in our process group so a terminal's Ctrl-C reaches it too.
    A signal sent to us alone is passed on; CMD then gets 5 seconds before SIGKILL."""
    try:
        proc = subprocess.Popen(tn.client_argv(cmd), env=tn.client_env())
    except OSError as e:
        print(f"testnet: cannot start {cmd[0]}: {e}", file=sys.stderr)
        return 127
    deadline = None
    reported: set[str] = set()
    while True:
        try:
            try:
                rc = proc.wait(1)
                break
            except subprocess.TimeoutExpired:
                pass
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                rc = proc.wait()
                break
            for name, p in tn.procs.procs.items():  # say so when the tailnet breaks under CMD
                if name not in reported and not p.alive():
                    reported.add(name)
                    print(f"testnet: warning: {name} exited (status {p.popen.returncode}) while the "
                          f"command runs; log tail:\n{log_tail(p.log, 10)}", file=sys.stderr)
        except _Stop as e:
            if deadline is None:
                deadline = time.monotonic() + 5
                print(f"testnet: signal {e.signum}, stopping the command", file=sys.stderr)
                if not _terminal_sent_it_too(e.signum):
                    try:
                        proc.send_signal(e.signum)
                    except ProcessLookupError:
                        pass
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main())
