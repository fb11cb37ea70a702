"""connect() on blocking sockets (preload/tests/test_connect.c), by each way the preload can
register a connect with the proxy (docs/CHANNEL.md)."""
import os

import pytest

from conftest import Runner
from preload_env import UNREACH4, UNREACH6, V4, V6


@pytest.fixture(scope="module", params=["datagram", "stream-parked", "full"])
def run(request, build, netns, proxy, rundir):
    """datagram: the fast path as deployed. stream-parked: no .dgram socket next to the
    channel (a symlink to it elsewhere), so the parked CONNECT goes over the stream channel.
    full: no parking ports, the proxy parks and replies."""
    lib, testbin = build
    if request.param == "datagram":
        return Runner(netns, lib, testbin, proxy.channel, proxy.park)
    if request.param == "full":
        return Runner(netns, lib, testbin, proxy.channel, None)
    alt = os.path.join(rundir, "alt")
    os.makedirs(alt, mode=0o700, exist_ok=True)
    link = os.path.join(alt, "channel")
    if not os.path.lexists(link):
        os.symlink(proxy.channel, link)
    return Runner(netns, lib, testbin, link, proxy.park)


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
