"""tailproxy.eventloop: uvloop when installed, asyncio's loop on request."""

import asyncio

from test_proxy_harness import cp  # noqa: F401  (sets sys.path)
from tailproxy import eventloop


async def _loop_type():
    return type(asyncio.get_running_loop()).__module__


def test_asyncio_on_request(monkeypatch):
    monkeypatch.setenv("TAILPROXY_EVENT_LOOP", "asyncio")
    assert eventloop.kind() == "asyncio"
    assert eventloop.run(_loop_type()).startswith("asyncio")


def test_uvloop_when_installed(monkeypatch):
    monkeypatch.delenv("TAILPROXY_EVENT_LOOP", raising=False)
    try:
        import uvloop  # noqa: F401
    except ImportError:
        assert eventloop.kind() == "asyncio"
        return
    assert eventloop.kind() == "uvloop"
    assert eventloop.run(_loop_type()).startswith("uvloop")
