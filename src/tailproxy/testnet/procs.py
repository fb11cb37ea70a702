"""Start and stop the testnet's long-running processes; keep one log per process.

Each process gets its own session (so its whole group can be signalled, and a terminal's
Ctrl-C reaches only the user's command) and PR_SET_PDEATHSIG=SIGKILL (so it dies even if the
testnet itself is SIGKILLed). The kill signal survives the exec chain
`ip netns exec` -> `unshare` -> `sh` -> daemon because none of them is setuid.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass

_PR_SET_PDEATHSIG = 1
_libc = None


def _pdeathsig() -> None:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def _preexec() -> None:
    _pdeathsig()


class PartFailed(Exception):
    """A part of the testnet failed to start; str() names it and shows its log's tail."""

    def __init__(self, part: str, message: str, log: str | None = None, output: str | None = None):
        self.part = part
        self.log = log
        tail = output if output is not None else (log_tail(log) if log else "")
        text = f"testnet: {part}: {message}"
        if log:
            text += f"\n  log: {log} (removed at teardown unless TESTNET_KEEP=1)"
        if tail.strip():
            text += "\n  --- last lines ---\n" + "\n".join("  " + ln for ln in tail.rstrip().splitlines())
        super().__init__(text)


def log_tail(path: str, lines: int = 25, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class Procs:
    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: str | None = None) -> Proc:
        log = os.path.join(self.log_dir, f"{name}.log")
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 env=env, cwd=cwd, start_new_session=True, preexec_fn=_preexec)
        proc = Proc(name, p, log)
        self.procs[name] = proc
        return proc

    def check(self, name: str) -> None:
        proc = self.procs[name]
        rc = proc.popen.poll()
        if rc is not None:
            raise PartFailed(name, f"exited with status {rc}", proc.log)

    def check_all(self) -> None:
        for name in list(self.procs):
            self.check(name)

    def stop_all(self, grace: float = 3.0) -> None:
        """SIGTERM every group, then SIGKILL whatever is left after `grace` seconds."""
        live = [p for p in self.procs.values() if p.alive()]
        for p in live:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in live:
            try:
                p.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs.values():
            _killpg(p.pid, signal.SIGKILL)  # also reaps stragglers left in the group
            try:
                p.popen.wait(2)
            except subprocess.TimeoutExpired:
                pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(part: str, argv: list[str], env: dict[str, str] | None = None, timeout: float = 60,
        check: bool = True, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a short command; on failure raise PartFailed with its output."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                           timeout=timeout, cwd=cwd, preexec_fn=_preexec)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")
        out = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
        raise PartFailed(part, f"timed out after {timeout:.0f}s: {' '.join(argv)}", output=out[-3000:])
    except FileNotFoundError as e:
        raise PartFailed(part, f"cannot run {argv[0]}: {e}")
    if check and r.returncode != 0:
        raise PartFailed(part, f"`{' '.join(argv)}` exited with status {r.returncode}",
                         output=(r.stdout + r.stderr)[-3000:])
    return r
