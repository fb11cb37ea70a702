"""The event loop tailproxy runs on: uvloop when installed (its callbacks cost about half of
asyncio's pure-Python loop, and the proxy's hot path is mostly loop callbacks: bench (a)),
else asyncio's own. ``TAILPROXY_EVENT_LOOP=asyncio`` forces asyncio's (to compare or debug)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine


def kind() -> str:
    if os.environ.get("TAILPROXY_EVENT_LOOP", "") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, Any]) -> Any:
    if kind() == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)
