"""A placeholder is held while a connection dialled through it lives (resolver/held.py), both
for a socket the proxy relays and for an upstream the node relays, through RouteDialer."""
import asyncio
import errno
import gc
import socket

import pytest

from test_policy import make
from tailproxy.node import RelayEnd
from tailproxy.proxy.dialer import DialError
from tailproxy.resolver import PlaceholderMap
from tailproxy.resolver.held import held_while_connected


def test_a_socket_holds_its_name_while_it_lives():
    m = PlaceholderMap()
    m.get("far.example", 4)
    sock = held_while_connected(m, "far.example", socket.socket)
    assert m._held == {"far.example": 1}
    sock.close()
    del sock
    gc.collect()
    assert m._held == {}


@pytest.mark.parametrize("how", ["at once", "awaited"])
def test_a_failed_dial_holds_nothing(how):
    m = PlaceholderMap()
    m.get("far.example", 4)

    def fail():
        raise DialError(errno.ECONNREFUSED)

    async def fail_later():
        fail()
    with pytest.raises(DialError):
        started = held_while_connected(m, "far.example", fail if how == "at once" else fail_later)
        asyncio.run(started)
    assert m._held == {}


def test_route_dialer_holds_a_placeholder_until_the_node_relay_ends():
    m = PlaceholderMap()
    ip = m.get("far.example", 4)
    d, node, _, _, _ = make(placeholders=m)
    out = asyncio.run(d.dial(ip, 443, 5))
    assert m._held == {"far.example": 1}
    a, b = socket.socketpair()
    ends = []
    out.join(a, lambda *r: ends.append(r))
    conn = out.inner._conn
    _sock, on_end, _initial = conn.relayed[0]
    on_end(RelayEnd(5, 7, "closed", 0))
    assert ends and m._held == {}
    b.close()


def test_an_abandoned_upstream_releases_its_hold():
    m = PlaceholderMap()
    ip = m.get("far.example", 4)
    d, _, _, _, _ = make(placeholders=m)
    out = asyncio.run(d.dial(ip, 443, 5))
    out.close()
    assert m._held == {} and out.inner._conn.closed


def test_udp_association_through_a_placeholder_holds_it_until_it_ends():
    m = PlaceholderMap()
    ip = m.get("far.example", 4)
    d, node, _, _, _ = make(placeholders=m)
    up = asyncio.run(d.associate_udp(ip, 443, 5))
    assert node.calls == [("udp-assoc", "far.example", 443)]       # dialled by name
    assert m._held == {"far.example": 1}
    ends = []
    up.relay(object(), ends.append)
    _sock, on_end, _initial = up.inner.relayed[0]
    on_end(RelayEnd(1, 1, "", 0))
    assert ends and m._held == {}
    abandoned = asyncio.run(d.associate_udp(ip, 443, 5))
    assert m._held == {"far.example": 1}
    abandoned.close()
    assert m._held == {} and abandoned.inner.closed
