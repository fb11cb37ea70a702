"""getpeername() (preload/tests/test_peername.c)."""
import pytest

from preload_env import V4, V6


@pytest.mark.parametrize("mode", ["requested", "truncated", "dup", "stale", "exec"])
@pytest.mark.parametrize("ip", [V4, V6])
def test_getpeername(run, mode, ip):
    run.run("test_peername", mode, ip)


def test_getpeername_loopback_untouched(run):
    run.run("test_peername", "loopback")
