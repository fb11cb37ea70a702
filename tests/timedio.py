"""Reads from a process under test that fail the test instead of hanging CI when the process is
stuck. (tests/ is on sys.path through tests/conftest.py, so every test directory imports this.)"""
from __future__ import annotations

import threading


def readline(stream, timeout: float = 90.0):
    """stream.readline() (text or bytes), failing after `timeout` seconds. select() on the fd
    would miss lines already buffered in the file object, so the read runs in a daemon thread."""
    got: list = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not got:
        raise AssertionError(f"no line within {timeout:g}s")
    return got[0]
