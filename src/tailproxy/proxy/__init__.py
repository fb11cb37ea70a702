"""The local proxy: channel server for libtailproxy.so, SOCKS5/HTTP proxy, relay.

Layers (each one job):

- :mod:`.dialer`        -- ``Dialer`` protocol, ``DialError``, ``DirectDialer``
- :mod:`.channel_proto` -- pure codec of the preload channel (docs/CHANNEL.md)
- :mod:`.loopback`      -- parking, simultaneous-open connector, relay and
                           closed-port loopback endpoints
- :mod:`.channel`       -- asyncio server of the SOCK_SEQPACKET channel
- :mod:`.relay`         -- the byte relay between two sockets (hot path)
- :mod:`.socks5`        -- SOCKS5 + HTTP proxy on one port (:mod:`.httpproxy`,
                           :mod:`.sockreader` for the handshakes)
- :mod:`.server`        -- ``Proxy`` tying it together
- ``python -m tailproxy.proxy`` -- standalone, direct dialer;
  ``python -m tailproxy.proxy._bench`` -- relay throughput
"""

from .dialer import DialError, Dialer, DirectDialer

__all__ = ["DialError", "Dialer", "DirectDialer"]
