"""Run the program as tailproxy's direct child: exit status, signals and Ctrl-C as a shell would.

Two drivers share one policy (SignalForwarder, exit_status): `run_child` on an asyncio loop (a
run with a node of its own), and `run_program` with no event loop at all (a run
attached to an agent: importing asyncio alone costs more than the 50 ms an attach may take).
Kept free of heavy imports for that reason.
"""
from __future__ import annotations

import _signal as signal     # not `signal`: its enums (enum.py) cost an attaching run ~5 ms
import os
import sys

from ..fdlimit import programs_own_limit
from ..printable import printable

# Names for annotations only (never evaluated: `from __future__ import annotations`). No
# `typing`, `collections.abc` or `dataclasses` here: this module is on an attaching run's way
# to its program's exec (issue 16: <= 50 ms), and those imports alone cost ~half of it.
Callable = object

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
# What subprocess resets in a child (Python ignores SIGPIPE and SIGXFSZ for itself).
_RESTORED = tuple(getattr(signal, n) for n in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, n))


def _say(msg: str) -> None:
    print(f"tailproxy: {printable(msg)}", file=sys.stderr, flush=True)


def in_terminal_foreground() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


class SignalForwarder:
    """What a signal to tailproxy does to the running program: passed on, except a terminal's
    Ctrl-C / Ctrl-\\ (the program got it already, being in the foreground group); a second
    Ctrl-C kills the program."""

    def __init__(self, send: Callable[[int], None], kill: Callable[[], None],
                 running: Callable[[], bool]):
        self.send, self.kill, self.running = send, kill, running
        self.interrupts = 0

    def __call__(self, sig: int) -> None:
        if not self.running():
            return
        if sig == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts >= 2:
                _say("second interrupt: stopping the program")
                self.kill()
                return
        # A terminal's Ctrl-C / Ctrl-\ already reached the program (same process group).
        if sig in (signal.SIGINT, signal.SIGQUIT) and in_terminal_foreground():
            return
        try:
            self.send(sig)
        except ProcessLookupError:
            pass


def exit_status(returncode: int, command: list[str]) -> int:
    """The shell's status for a child's return code (negative: killed by that signal)."""
    if returncode < 0:
        sig = -returncode
        import signal as signals     # names only now: the program has ended
        name = signals.Signals(sig).name if sig in signals.Signals._value2member_map_ else sig
        _say(f"{command[0]} was killed by {name}")
        return 128 + sig
    return returncode


def _cannot_run(command: list[str], e: OSError) -> int:
    if isinstance(e, FileNotFoundError):
        _say(f"{command[0]}: command not found")
        return 127
    if isinstance(e, PermissionError):
        _say(f"{command[0]}: permission denied")
        return 126
    _say(f"{command[0]}: cannot run: {e.strerror}")
    return 126


async def run_child(program: str, command: list[str], env: dict) -> int:
    """The program's exit status (128+N when killed by signal N)."""
    import asyncio
    loop = asyncio.get_running_loop()
    try:
        with programs_own_limit():
            proc = await asyncio.create_subprocess_exec(program, *command[1:], env=env,
                                                        executable=program)
    except OSError as e:
        return _cannot_run(command, e)
    # uvloop's SIGCHLD handler, installed for this child, must not run on a goroutine stack
    from ..node.library import protect_go_stacks
    protect_go_stacks()
    forward = SignalForwarder(proc.send_signal, proc.kill, lambda: proc.returncode is None)
    for sig in FORWARDED:
        loop.add_signal_handler(sig, forward, sig)
    try:
        status = await proc.wait()
    finally:
        for sig in FORWARDED:
            loop.remove_signal_handler(sig)
    return exit_status(status, command)


def run_program(program: str, command: list[str], env: dict,
                on_start: Callable[[int], None] | None = None) -> int:
    """`run_child` without an event loop: the program's exit status. The forwarded signals are
    blocked from before the spawn until their handlers are in place, so one that arrives in
    between is passed on, not fatal to tailproxy; the program starts with tailproxy's own mask."""
    pid = 0
    done = False

    def send(sig: int) -> None:
        os.kill(pid, sig)

    forward = SignalForwarder(send, lambda: send(signal.SIGKILL), lambda: not done)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    old = {}
    try:
        try:
            with programs_own_limit():
                pid = os.posix_spawn(program, [command[0], *command[1:]], env,
                                     setsigdef=_RESTORED, setsigmask=mask)
        except OSError as e:
            return _cannot_run(command, e)
        old = {sig: signal.signal(sig, lambda s, _f: forward(s)) for sig in FORWARDED}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        if on_start:
            on_start(pid)
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                return 0
        done = True
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return exit_status(-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                       else os.WEXITSTATUS(status), command)
