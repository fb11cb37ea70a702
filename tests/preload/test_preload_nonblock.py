"""connect() on non-blocking sockets and the SO_ERROR hook (preload/tests/test_nonblock.c)."""
import pytest

from preload_env import UNREACH4, UNREACH6, V4, V6


@pytest.mark.parametrize("how", ["poll", "epoll"])
@pytest.mark.parametrize("ip", [V4, V6])
def test_einprogress_then_completion(run, ip, how):
    run.run("test_nonblock", "ok", ip, how)


@pytest.mark.parametrize("how", ["poll", "epoll"])
@pytest.mark.parametrize("ip", [V4, V6])
def test_refused_in_so_error(run, ip, how):
    run.run("test_nonblock", "refused", ip, how)


@pytest.mark.parametrize("how", ["poll", "epoll"])
@pytest.mark.parametrize("ip", [UNREACH4, UNREACH6])
def test_real_errno_in_so_error(run, ip, how):
    """The kernel sees ECONNREFUSED (closed loopback port); the hook returns the proxy's errno."""
    run.run("test_nonblock", "unreach", ip, how)


@pytest.mark.parametrize("ip", [V4, V6])
def test_repeated_connect_ealready_then_eisconn(run, ip):
    run.run("test_nonblock", "again", ip)


def test_repeated_connect_after_failure_gives_real_errno(run):
    run.run("test_nonblock", "again-fail", UNREACH4)


@pytest.mark.parametrize("how", ["poll", "epoll"])
@pytest.mark.parametrize("ip", [V4, V6])
def test_hand_over_never_shows(run, ip, how):
    """300 connects checked the moment their first event arrives."""
    run.run("test_nonblock", "stress", ip, how, 300, timeout=180)
