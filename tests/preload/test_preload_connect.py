"""connect() on blocking sockets (preload/tests/test_connect.c)."""
import pytest

from preload_env import UNREACH4, UNREACH6, V4, V6


@pytest.mark.parametrize("ip", [V4, V6])
def test_blocking_success(run, ip):
    run.run("test_connect", "ok", ip)


@pytest.mark.parametrize("ip", [V4, V6])
def test_blocking_refused(run, ip):
    run.run("test_connect", "refused", ip)


@pytest.mark.parametrize("ip", [UNREACH4, UNREACH6])
def test_blocking_unreachable(run, ip):
    run.run("test_connect", "unreach", ip, 80)


def test_v4_mapped_destination(run):
    run.run("test_connect", "mapped", V4)


@pytest.mark.parametrize("ip", [V4, V6])
def test_socket_stays_the_programs(run, ip):
    """fd number, TCP_NODELAY, SO_KEEPALIVE, FD_CLOEXEC, flags, bind() before connect."""
    run.run("test_connect", "opts", ip)


@pytest.mark.parametrize("ip", [V4, V6])
def test_sndtimeo_bounds_the_wait(run, ip):
    run.run("test_connect", "sndtimeo", ip)


@pytest.mark.parametrize("ip", [V4, V6])
def test_eintr_then_background_completion(run, ip):
    run.run("test_connect", "eintr", ip)


@pytest.mark.parametrize("ip", [V4, V6])
def test_eintr_then_poll_and_so_error(run, ip):
    """POSIX's way after EINTR: poll for writability, then SO_ERROR (the proxy parks
    blocking sockets too, so nothing shows until the dial has an outcome)."""
    run.run("test_connect", "eintr-poll", ip)
