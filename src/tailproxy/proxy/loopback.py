"""Loopback endpoints used to steer the program's own socket (Linux).

- *parking* listener: backlog 0, its accept queue filled by one dummy
  connection that is never accepted, so further SYNs are dropped and a socket
  connected to it stays in SYN_SENT ("connect in progress") indefinitely;
- success: a *connector* socket bound to the parking address (SO_REUSEPORT)
  connects to the parked socket's address -- a TCP simultaneous open, the
  parked socket goes SYN_SENT -> SYN_RECV -> ESTABLISHED with nothing else
  visible (:meth:`LoopbackEndpoints.open_connector`); the connector is the
  proxy's end of the relay;
- fallback on success (connector impossible, e.g. EADDRNOTAVAIL): disconnect
  (connect(AF_UNSPEC)), clear SO_ERROR, connect to the *relay* listener. This
  makes the socket pass through CLOSE (POLLHUP, briefly POLLERR) for a few
  microseconds, which programs that poll at that moment (curl) take as a
  failure -- hence only a fallback;
- failure: disconnect and connect to the *closed* port, a bound,
  non-listening socket, so the connect is refused at once (SO_ERROR =
  ECONNREFUSED, POLLERR).

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
import struct

from .channel_proto import FAMILY_V4, Address

__all__ = ["LoopbackEndpoints", "disconnect", "clear_error"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.connect.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_libc.connect.restype = ctypes.c_int
_UNSPEC = ctypes.create_string_buffer(28)   # sockaddr with sa_family = AF_UNSPEC (0)

# The hand-over of a parked socket (disconnect, clear SO_ERROR, connect to
# the relay or the closed port) is visible to the program: between the first
# and the last call its socket is in CLOSE (poll: POLLHUP, briefly POLLERR),
# and the disconnect wakes its poll(). Programs that look at revents (curl)
# fail if they poll inside that window, so it must be as short as possible:
# three libc calls back to back, sockaddrs prebuilt, and through PyDLL, which
# keeps the GIL, so no other Python thread (resolver executor) runs between.
_pylibc = ctypes.PyDLL(None, use_errno=True)
_fast_connect = _pylibc.connect
_fast_connect.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_fast_connect.restype = ctypes.c_int
_fast_getsockopt = _pylibc.getsockopt
_fast_getsockopt.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_void_p)
_fast_getsockopt.restype = ctypes.c_int
_SOERR = ctypes.c_int(0)
_SOERR_LEN = ctypes.c_uint32(4)
_SOERR_P = ctypes.addressof(_SOERR)
_SOERR_LEN_P = ctypes.addressof(_SOERR_LEN)


def _sockaddr(addr: tuple) -> ctypes.Array:
    """Prebuilt struct sockaddr_in / sockaddr_in6 for a numeric address."""
    host, port = addr[0], addr[1]
    if ":" in host:
        raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
               + socket.inet_pton(socket.AF_INET6, host) + struct.pack("=I", 0))
    else:
        raw = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", port)
               + socket.inet_aton(host) + bytes(8))
    return ctypes.create_string_buffer(raw, len(raw))


def handover(sock: socket.socket, target: ctypes.Array) -> int:
    """Parked (non-blocking, SYN_SENT) socket -> connect(AF_UNSPEC), clear
    SO_ERROR, connect to ``target``. Returns 0 (connecting/connected) or the
    errno of the last connect."""
    fd = sock.fileno()
    _fast_connect(fd, _UNSPEC, 28)
    _SOERR_LEN.value = 4
    _fast_getsockopt(fd, socket.SOL_SOCKET, socket.SO_ERROR, _SOERR_P, _SOERR_LEN_P)
    if _fast_connect(fd, target, len(target)) == 0:
        return 0
    err = ctypes.get_errno()
    return 0 if err == errno.EINPROGRESS else err

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
            self.park = self._listener(0, reuseport=True)
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

    def _listener(self, backlog: int, reuseport: bool = False) -> socket.socket:
        s = self._sock()
        if reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
        self._sa_cache: dict[tuple, ctypes.Array] = {}
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
    def handover_targets(self, sock: socket.socket, dst: Address | None, which: str):
        """Prebuilt sockaddrs of the candidates for :func:`handover`."""
        out = []
        for addr in self._candidates(sock, dst, which):
            key = (addr[0], addr[1])
            sa = self._sa_cache.get(key)
            if sa is None:
                sa = self._sa_cache[key] = _sockaddr(key)
            out.append(sa)
        return out

    def unpark_to(self, sock: socket.socket, dst: Address | None, which: str,
                  bound: tuple | None = None) -> int:
        """Move a parked socket to the relay (``which="relay"``) or the closed
        port (``"closed"``) with the shortest possible visible window.
        Returns 0 or an errno."""
        targets = self.handover_targets(sock, dst, which)
        if bound is not None and bound[1] != 0:
            # A port from bind(port 0) is released by the disconnect; put it back
            # (slow path, rare: only for programs that bind before connect).
            disconnect(sock)
            clear_error(sock)
            try:
                sock.bind(bound)
            except OSError:
                pass
            err = errno.EINVAL
            for sa in targets:
                err = _libc.connect(sock.fileno(), sa, len(sa))
                err = 0 if err == 0 else ctypes.get_errno()
                if err in (0, errno.EINPROGRESS) or (which == "closed" and err == errno.ECONNREFUSED):
                    return 0
                if err not in _TRY_NEXT:
                    return err
                clear_error(sock)
            return err
        err = handover(sock, targets[0])
        if which == "closed" and err == errno.ECONNREFUSED:
            err = 0
        if err in _TRY_NEXT and len(targets) > 1:
            clear_error(sock)
            for sa in targets[1:]:
                err = 0 if _libc.connect(sock.fileno(), sa, len(sa)) == 0 else ctypes.get_errno()
                if err in (0, errno.EINPROGRESS):
                    return 0
                if err not in _TRY_NEXT:
                    break
                clear_error(sock)
        return err

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
        return self._connect_to(sock, dst, which, ok)[0]

    def _connect_to(self, sock, dst, which, ok) -> tuple[int, tuple | None]:
        """Try the candidates; returns (0, address used) or (errno, None)."""
        err = errno.EINVAL
        for addr in self._candidates(sock, dst, which):
            err = sock.connect_ex(addr)
            if err in ok:
                return 0, addr
            if err not in _TRY_NEXT:
                return err, None
            clear_error(sock)
        return err, None

    def park(self, sock: socket.socket, dst: Address | None = None) -> tuple[int, Address | None]:
        """Connect the socket to the parking listener: it stays in SYN_SENT.
        A blocking socket is made non-blocking for the call (else we would
        wait for a SYN-ACK that never comes), then restored. Returns (0,
        parking address) or (errno the program's connect should fail with,
        None). (getpeername() of a SYN_SENT socket is ENOTCONN: keep the
        address for :meth:`open_connector`.)"""
        fd = sock.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            err, addr = self._connect_to(sock, dst, "park", ok=(errno.EINPROGRESS,))
            return err, (Address.from_sockaddr(addr) if addr is not None else None)
        finally:
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    def open_connector(self, sock: socket.socket, park: Address) -> tuple[socket.socket, Address]:
        """Complete a parked socket's connect by a TCP *simultaneous open*.

        The parked socket is in SYN_SENT towards the parking address P. A new
        socket bound to P (SO_REUSEPORT, like the listener) connects to the
        parked socket's own address L: the parked socket receives a SYN from
        exactly its peer, goes SYN_SENT -> SYN_RECV -> ESTABLISHED and the new
        socket ("connector") is our end of its connection. The program sees
        nothing but the connect completing (no error, no HUP, its bind()
        untouched). On loopback this completes inside connect().

        ``park`` is the (normalised) address from :meth:`park`. Returns
        (connector, L normalised); raises OSError (the parked socket is then
        unchanged)."""
        local = Address.from_sockaddr(sock.getsockname())
        if park.family != local.family:     # cannot happen for loopback parking
            raise OSError(errno.EAFNOSUPPORT, "parking and local address families differ")
        c = socket.socket(park.af, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if park.af == socket.AF_INET6:
                c.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            c.bind(park.sockaddr())
            err = c.connect_ex(local.sockaddr())
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, os.strerror(err))
        except BaseException:
            c.close()
            raise
        return c, local

    @staticmethod
    def mark_connected(sock: socket.socket) -> int:
        """A connect completed behind the socket's back (simultaneous open, or
        our non-blocking relay connect) leaves its ``struct socket`` in
        SS_CONNECTING: the kernel would answer the next connect() with 0,
        not EISCONN. One connect() to its own peer settles that (as the first
        connect() after a non-blocking connect completes does). For blocking
        sockets whose connect the preload reports done. Returns 0 or errno."""
        try:
            peer = sock.getpeername()
        except OSError as exc:
            return exc.errno or errno.ENOTCONN
        fd = sock.fileno()
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            err = sock.connect_ex(peer)
        finally:
            if not flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)
        return 0 if err in (0, errno.EISCONN) else err

    def unpark(self, sock: socket.socket, bound: tuple | None = None) -> None:
        """Back to unconnected (after a failed blocking connect, so the program
        can connect again): disconnect, clear SO_ERROR, restore bind()."""
        try:
            disconnect(sock)
        except OSError:
            pass
        try:
            clear_error(sock)
        except OSError:
            pass
        if bound is not None and bound[1] != 0:
            try:
                sock.bind(bound)
            except OSError:
                pass

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
