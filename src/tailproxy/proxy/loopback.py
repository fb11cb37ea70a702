"""Loopback endpoints used to steer the program's own socket (Linux).

- *parking* listener: backlog 0, its accept queue filled by one dummy
  connection that is never accepted, so further SYNs are dropped and a socket
  connected to it stays in SYN_SENT ("connect in progress") indefinitely;
- *relay* listener: where a socket is connected once its dial succeeded;
- *closed* port: a bound, non-listening socket, so a connect to it is
  refused at once (SO_ERROR = ECONNREFUSED, POLLERR) -- used on failure.

One set per family (IPv4 on 127.0.0.1, IPv6 on ::1 when available). An
AF_INET6 socket uses the IPv6 set, or the IPv4 set through a v4-mapped
address (::ffff:127.0.0.1) when its destination is IPv4 or IPv6 is missing.

All operations here are synchronous and quick: connects of non-blocking
sockets return EINPROGRESS, a loopback connect of a blocking socket
completes during the call (the relay listener's backlog is large).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket

from .channel_proto import FAMILY_V4, Address

__all__ = ["LoopbackEndpoints", "disconnect", "clear_error"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.connect.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_libc.connect.restype = ctypes.c_int
_UNSPEC = ctypes.create_string_buffer(28)   # sockaddr with sa_family = AF_UNSPEC (0)

RELAY_BACKLOG = 4096
# Connect errors that mean "this loopback address cannot work for this
# socket, try the next candidate".
_TRY_NEXT = {errno.ENETUNREACH, errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EINVAL,
             errno.EHOSTUNREACH}


def disconnect(sock: socket.socket) -> None:
    """``connect(AF_UNSPEC)``: drop a (pending) connection; the socket keeps
    its fd, options, flags and bind()."""
    if _libc.connect(sock.fileno(), _UNSPEC, 28) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def clear_error(sock: socket.socket) -> int:
    """Read (and so clear) SO_ERROR."""
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


class _FamilySet:
    def __init__(self, af: int, host: str):
        self.af = af
        self.host = host
        self.socks: list[socket.socket] = []
        try:
            self.park = self._listener(0)
            # fill the parking accept queue (backlog 0 holds exactly one)
            self.filler = self._sock()
            self.filler.connect(self.park.getsockname())
            self.relay = self._listener(RELAY_BACKLOG)
            self.closed = self._sock()
            self.closed.bind((host, 0))
        except BaseException:
            self.close()
            raise
        self.park_port = self.park.getsockname()[1]
        self.relay_port = self.relay.getsockname()[1]
        self.closed_port = self.closed.getsockname()[1]

    def _sock(self) -> socket.socket:
        s = socket.socket(self.af, socket.SOCK_STREAM)
        self.socks.append(s)
        if self.af == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return s

    def _listener(self, backlog: int) -> socket.socket:
        s = self._sock()
        s.bind((self.host, 0))
        s.listen(backlog)
        s.setblocking(False)
        return s

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()


class LoopbackEndpoints:
    def __init__(self) -> None:
        self.v4 = _FamilySet(socket.AF_INET, "127.0.0.1")
        try:
            self.v6: _FamilySet | None = _FamilySet(socket.AF_INET6, "::1")
        except OSError:
            self.v6 = None

    @property
    def relay_listeners(self) -> list[socket.socket]:
        return [s.relay for s in (self.v4, self.v6) if s is not None]

    def close(self) -> None:
        self.v4.close()
        if self.v6 is not None:
            self.v6.close()

    # ------------------------------------------------------------------
    def _candidates(self, sock: socket.socket, dst: Address | None, which: str):
        port_of = lambda fs: getattr(fs, which + "_port")   # noqa: E731
        if sock.family == socket.AF_INET:
            return [("127.0.0.1", port_of(self.v4))]
        mapped = ("::ffff:127.0.0.1", port_of(self.v4), 0, 0)
        if self.v6 is None:
            return [mapped]
        native = ("::1", port_of(self.v6), 0, 0)
        if dst is not None and dst.normalized().family == FAMILY_V4:
            return [mapped, native]
        return [native, mapped]

    def _connect(self, sock: socket.socket, dst: Address | None, which: str,
                 ok=(0, errno.EINPROGRESS)) -> int:
        err = errno.EINVAL
        for addr in self._candidates(sock, dst, which):
            err = sock.connect_ex(addr)
            if err in ok:
                return 0
            if err not in _TRY_NEXT:
                return err
            clear_error(sock)
        return err

    def park(self, sock: socket.socket, dst: Address | None = None) -> int:
        """Connect a *non-blocking* socket to the parking listener. Returns 0
        (parked: SYN_SENT) or the errno the program's connect should fail with."""
        return self._connect(sock, dst, "park", ok=(errno.EINPROGRESS,))

    def to_relay(self, sock: socket.socket, dst: Address | None = None) -> Address:
        """Connect an unconnected socket to the relay listener; returns its
        (normalised) local address, the key the relay recognises it by."""
        err = self._connect(sock, dst, "relay")
        if err:
            raise OSError(err, os.strerror(err))
        return Address.from_sockaddr(sock.getsockname())

    def to_closed(self, sock: socket.socket, dst: Address | None = None) -> None:
        """Connect an unconnected socket to the closed port so the kernel marks
        it failed (SO_ERROR = ECONNREFUSED, POLLERR). A blocking socket is made
        non-blocking for the call (else the error would be consumed by our own
        connect), then restored."""
        fd = sock.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            self._connect(sock, dst, "closed", ok=(0, errno.EINPROGRESS, errno.ECONNREFUSED))
        finally:
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
