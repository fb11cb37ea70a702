"""Data through the relay (preload/tests/test_relay.c)."""
import pytest

from preload_env import V4, V6


@pytest.mark.parametrize("mode", ["halfclose", "banner", "bulk"])
@pytest.mark.parametrize("ip", [V4, V6])
def test_relay(run, mode, ip):
    run.run("test_relay", mode, ip)
