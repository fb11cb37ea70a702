"""The node library (Go, tsnet, built c-shared from node/) loaded with ctypes.

Two things must hold before Go code runs in this process: the containment variables are set
(the Go runtime copies the environment when it loads), and no call is made from a child forked
without exec (the Go runtime's threads are not in the child, so a call would hang).
"""
from __future__ import annotations

import ctypes
import os
import threading

from ..native import native_path
from .errors import NodeError

LIBRARY_NAME = "libtailproxy-node.so"

# Set before the library loads: no log upload to Tailscale, no port mapping on the LAN router.
CONTAINMENT_ENV = {"TS_NO_LOGS_NO_SUPPORT": "true", "TS_DISABLE_PORTMAPPER": "1"}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def _declare(lib: ctypes.CDLL) -> None:
    i64, c_int, c_char_p, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p
    signatures = {
        "tp_node_start": [c_char_p, c_int, ctypes.POINTER(i64)],
        "tp_node_close": [i64, i64],
        "tp_localapi": [i64, c_char_p, c_char_p, c_char_p, i64, i64, ctypes.POINTER(c_int),
                        ctypes.POINTER(vp), ctypes.POINTER(i64)],
        "tp_dial": [i64, i64, c_char_p, c_char_p, i64],
        "tp_relay": [i64, i64, c_int, c_char_p, i64],
        "tp_relay_bytes": [i64, i64, ctypes.POINTER(i64), ctypes.POINTER(i64),
                           ctypes.POINTER(c_int)],
        "tp_drop": [i64, i64],
        "tp_listen": [i64, i64, c_char_p],
        "tp_unlisten": [i64, i64],
        "tp_parked_serve": [i64, i64, c_int, c_int, c_char_p],
        "tp_parked_drain": [i64, i64, i64, ctypes.POINTER(i64)],
        "tp_parked_peer": [i64, c_char_p, ctypes.POINTER(vp)],
        "tp_parked_snapshot": [i64, i64, ctypes.POINTER(vp)],
    }
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = vp          # NULL or a malloc'd error string
    lib.tp_free.argtypes = [vp]
    lib.tp_free.restype = None


def library() -> ctypes.CDLL:
    """The loaded library (loaded once, on first use)."""
    global _lib
    if _forked:
        raise NodeError("the tailnet node cannot be used in a process forked without exec "
                        "(use subprocess, or multiprocessing with the 'spawn' start method)")
    with _lock:
        if _lib is None:
            os.environ.update(CONTAINMENT_ENV)
            try:
                path = native_path(LIBRARY_NAME)
            except FileNotFoundError as e:
                raise NodeError(f"cannot start the node: {e}") from None
            try:
                lib = ctypes.CDLL(path)
            except OSError as e:
                raise NodeError(f"cannot load the node library {path}: {e}") from None
            _declare(lib)
            _lib = lib
    return _lib


class _Sigaction(ctypes.Structure):
    """glibc's struct sigaction (Linux, 64-bit)."""
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_ulong * 16),
                ("flags", ctypes.c_int), ("restorer", ctypes.c_void_p)]


_SA_ONSTACK = 0x08000000
_SIG_DFL, _SIG_IGN = 0, 1
_libc = ctypes.CDLL(None, use_errno=True)


def protect_go_stacks() -> list[int]:
    """Give every signal handler installed without SA_ONSTACK the signal stack, and return
    the signals changed.

    Go runs goroutines on stacks of a few KiB. A handler that C code installed without
    SA_ONSTACK (libuv's SIGCHLD handler, installed while uvloop runs a child, for one) runs on
    whatever stack the signal interrupted; on a Go thread its frame overruns the goroutine's
    stack into the next one, and the node crashes later with "unexpected return pc". With
    SA_ONSTACK it runs on the thread's signal stack, which every Go thread has (Go's own
    handlers and Python's already ask for it). Call it after anything that may install such
    a handler."""
    changed = []
    for sig in range(1, 65):
        sa = _Sigaction()
        if _libc.sigaction(sig, None, ctypes.byref(sa)) != 0:
            continue            # glibc's reserved signals, or no such signal
        handler = sa.handler or _SIG_DFL
        if handler in (_SIG_DFL, _SIG_IGN) or sa.flags & _SA_ONSTACK:
            continue
        sa.flags |= _SA_ONSTACK
        if _libc.sigaction(sig, ctypes.byref(sa), None) == 0:
            changed.append(sig)
    return changed


def take_string(ptr: int | None) -> str | None:
    """A malloc'd C string from the library, freed."""
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode(errors="replace")
    finally:
        library().tp_free(ptr)


def call(name: str, *args) -> None:
    """Call tp_<name>; an error string from it becomes a NodeError."""
    err = take_string(getattr(library(), "tp_" + name)(*args))
    if err is not None:
        raise NodeError(err)


c_int64 = ctypes.c_int64
byref = ctypes.byref
