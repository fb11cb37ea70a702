"""Dialers: how the proxy opens the outbound side of a connection.

A dialer returns an :data:`Outbound`: either a *connected, non-blocking* stream
socket of any family (AF_INET, AF_INET6, even AF_UNIX), which the proxy relays
itself, or an :class:`Upstream`, which relays itself once joined to the
program's side (the tailnet node does, in Go). It raises :class:`DialError`
carrying the errno the proxied program should see.

Blocking/cancellation: ``dial`` never blocks the event loop; it is
cancellation-safe (a cancelled dial closes any socket it created).
"""

from __future__ import annotations

import asyncio
import errno as _errno
import ipaddress
import os
import socket
from collections.abc import Awaitable
from typing import Callable, Protocol, Union, runtime_checkable

__all__ = ["DialError", "Dialer", "DirectDialer", "Upstream", "Joined", "Outbound", "errno_name"]


def errno_name(code: int) -> str:
    return _errno.errorcode.get(code, str(code))


class DialError(Exception):
    """A dial failed; ``errno`` is what the program should see.

    Typical values: ECONNREFUSED, EHOSTUNREACH (unknown/offline peer, name does
    not resolve), ENETUNREACH, ETIMEDOUT, ECONNRESET, EACCES (policy).
    """

    def __init__(self, errno: int, message: str | None = None):
        self.errno = int(errno)
        self.message = message or os.strerror(self.errno)
        super().__init__(self.errno, self.message)

    def __str__(self) -> str:
        return self.message

    @property
    def name(self) -> str:
        return errno_name(self.errno)


class Joined(Protocol):
    """A running relay between the program's side and an outbound connection."""
    finished: bool

    def delivering(self) -> bool:
        """Is what the program sent still on its way (it ended its side; we have not)?"""

    def abort(self) -> None:
        """End now (the proxy is stopping)."""

    def bytes_so_far(self) -> tuple[int, int] | None:
        """Bytes delivered so far (to the far side, to the program), while it runs; None if
        they cannot be known until it ends."""


class Upstream(Protocol):
    """An outbound connection that does its own relaying once joined."""
    local_address: tuple | None     # its local (ip, port), for a SOCKS5 reply

    def join(self, local: socket.socket, done: Callable[[int, int, int, str], None],
             initial: bytes = b"") -> Joined:
        """Relay between `local` and this connection, `initial` (bytes a handshake read past)
        sent first. `done(up, down, errno, reason)` runs on the loop once both ended; errno
        is 0 for a clean end. `local` may be closed by the caller afterwards."""

    def close(self) -> None:
        """Abandon it (it was never joined)."""


Outbound = Union[socket.socket, Upstream]


class DatagramUpstream(Protocol):
    """A UDP association held in the node (node.TailnetConn), not yet relayed."""

    def relay(self, sock: socket.socket, done: Callable | None = None,
              initial: bytes = b"") -> None:
        """Carry datagrams between `sock` (SOCK_SEQPACKET, or a connected UDP socket) and
        the far side; `done(RelayEnd)` runs on the loop when the association ends."""

    def close(self) -> None:
        """Abandon it (it was never relayed)."""


@runtime_checkable
class Dialer(Protocol):
    async def dial(self, host: str, port: int, timeout: float) -> Outbound:
        """Connect to host:port within ``timeout`` seconds; raises DialError."""
        ...

    def start_dial(self, host: str, port: int, timeout: float) -> Outbound | Awaitable[Outbound]:
        """The hot path: the outbound connection if it could be had at once (a local
        destination often can), else an awaitable giving it; raises DialError."""
        ...

    async def dial_udp(self, host: str, port: int, timeout: float) -> socket.socket:
        """A non-blocking socket that carries datagrams to and from host:port, one send()
        or recv() each: a connected UDP socket, or a SOCK_SEQPACKET socket the node relays.
        Raises DialError."""
        ...

    async def associate_udp(self, host: str, port: int, timeout: float) -> DatagramUpstream | None:
        """The preload's UDP association with host:port: one the node carries, or None when
        the program should send to host:port itself. Raises DialError."""
        ...


def as_dial_error(exc: BaseException, host: str, port: int,
                  log: Callable[[str], None]) -> DialError:
    """Any failure of a dial as the DialError the program will see."""
    if isinstance(exc, DialError):
        return exc
    if isinstance(exc, TimeoutError):
        return DialError(_errno.ETIMEDOUT, f"{host}:{port}: connection timed out")
    if isinstance(exc, OSError):
        return DialError(exc.errno or _errno.ECONNRESET, f"{host}:{port}: {exc}")
    log(f"dialer error for {host}:{port}: {exc!r}")   # a broken dialer must not take the proxy down
    return DialError(_errno.ECONNRESET, f"{host}:{port}: internal error: {exc}")


async def guarded_dial(dialer: "Dialer", host: str, port: int, timeout: float,
                       log: Callable[[str], None], started=None) -> Outbound:
    """The dial every proxy front end uses (``started``: an awaitable from start_dial):
    anything but cancellation leaves as DialError."""
    try:
        return await (started if started is not None else dialer.dial(host, port, timeout))
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise as_dial_error(exc, host, port, log) from None


# errnos passed through unchanged; anything else with an errno also passes,
# OSErrors without one become EHOSTUNREACH.
_PASS = {
    _errno.ECONNREFUSED, _errno.EHOSTUNREACH, _errno.ENETUNREACH,
    _errno.ETIMEDOUT, _errno.ECONNRESET, _errno.EACCES, _errno.EPERM,
    _errno.EADDRNOTAVAIL, _errno.ENETDOWN, _errno.EHOSTDOWN,
}


def _map_oserror(exc: OSError, host: str, port: int) -> DialError:
    code = exc.errno
    if isinstance(exc, socket.gaierror):
        return DialError(_errno.EHOSTUNREACH, f"{host}: name does not resolve ({exc.strerror})")
    if isinstance(exc, TimeoutError) or code == _errno.ETIMEDOUT:
        return DialError(_errno.ETIMEDOUT, f"{host}:{port}: connection timed out")
    if code is None or code == 0:
        return DialError(_errno.EHOSTUNREACH, f"{host}:{port}: {exc}")
    if code == _errno.EHOSTDOWN:
        code = _errno.EHOSTUNREACH
    return DialError(code, f"{host}:{port}: {os.strerror(code)}")


async def _wait_writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    fd = sock.fileno()
    loop.add_writer(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_writer(fd)


def _numeric(host: str, port: int, family: int) -> list | None:
    """getaddrinfo's answer for a numeric address, without the executor round trip."""
    try:
        socket.inet_pton(socket.AF_INET, host)      # the common case, without ipaddress
    except OSError:
        pass
    else:
        if family in (0, socket.AF_INET):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    if family not in (0, fam):
        return None
    addr = (str(ip), port) if fam == socket.AF_INET else (str(ip), port, 0, 0)
    return [(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)]


class DirectDialer:
    """Dial straight from this host (``--no-tailnet``).

    Names are resolved with ``loop.getaddrinfo``; the addresses are tried in
    order within one overall deadline; the first error that is not a refusal
    is reported in preference (a refusal from one address of a multi-address
    name is reported only if every address refused).
    """

    def __init__(self, *, family: int = socket.AF_UNSPEC):
        self.family = family

    async def dial(self, host: str, port: int, timeout: float) -> socket.socket:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                try:
                    infos = _numeric(host, port, self.family) or await loop.getaddrinfo(
                        host, port, family=self.family, type=socket.SOCK_STREAM,
                        proto=socket.IPPROTO_TCP)
                except socket.gaierror as exc:
                    raise _map_oserror(exc, host, port) from None
                if not infos:
                    raise DialError(_errno.EHOSTUNREACH, f"{host}: no address")
                first_err: DialError | None = None
                for fam, typ, proto, _canon, addr in infos:
                    try:
                        return await self._connect_one(loop, fam, typ, proto, addr)
                    except OSError as exc:
                        err = _map_oserror(exc, host, port)
                        if first_err is None or (first_err.errno == _errno.ECONNREFUSED
                                                 and err.errno != _errno.ECONNREFUSED):
                            first_err = err
                assert first_err is not None
                raise first_err
        except TimeoutError:
            raise DialError(_errno.ETIMEDOUT, f"{host}:{port}: connection timed out") from None

    async def dial_udp(self, host: str, port: int, timeout: float) -> socket.socket:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                infos = _numeric(host, port, self.family) or await loop.getaddrinfo(
                    host, port, family=self.family, type=socket.SOCK_DGRAM)
        except TimeoutError:
            raise DialError(_errno.ETIMEDOUT, f"{host}:{port}: name lookup timed out") from None
        except socket.gaierror as exc:
            raise _map_oserror(exc, host, port) from None
        if not infos:
            raise DialError(_errno.EHOSTUNREACH, f"{host}: no address")
        fam, _typ, _proto, _canon, addr = infos[0]
        sock = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sock.connect(addr)      # UDP: no packet, only the route and the peer are set
        except OSError as exc:
            sock.close()
            raise _map_oserror(exc, host, port) from None
        return sock

    async def associate_udp(self, host: str, port: int, timeout: float) -> None:
        return None             # the program's own socket reaches it directly

    def start_dial(self, host: str, port: int, timeout: float):
        """The hot path: for a numeric address, the connect is started here and a local
        destination is usually connected at once. Returns a connected socket, or an
        awaitable giving one; raises DialError."""
        infos = _numeric(host, port, self.family)
        if not infos:
            return self.dial(host, port, timeout)
        fam, typ, proto, _canon, addr = infos[0]
        try:
            sock, done = _start_connect(fam, typ, proto, addr)
        except OSError as exc:
            raise _map_oserror(exc, host, port) from None
        return sock if done else self._finish_connect(sock, host, port, timeout)

    @staticmethod
    async def _finish_connect(sock: socket.socket, host: str, port: int,
                              timeout: float) -> socket.socket:
        try:
            try:
                async with asyncio.timeout(timeout):
                    await _wait_writable(asyncio.get_running_loop(), sock)
            except TimeoutError:
                raise DialError(_errno.ETIMEDOUT, f"{host}:{port}: connection timed out") from None
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise _map_oserror(OSError(err, os.strerror(err)), host, port)
            return sock
        except BaseException:
            sock.close()
            raise

    @staticmethod
    async def _connect_one(loop, fam, typ, proto, addr) -> socket.socket:
        sock, done = _start_connect(fam, typ, proto, addr)
        if done:
            return sock
        try:
            await _wait_writable(loop, sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            return sock
        except BaseException:
            sock.close()
            raise


def _start_connect(fam, typ, proto, addr) -> tuple[socket.socket, bool]:
    """A non-blocking socket with its connect started: (sock, True) when already connected
    (a local handshake is usually over when connect() returns), (sock, False) while in
    flight. Raises OSError (the socket closed) when it failed."""
    sock = socket.socket(fam, typ | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, proto)
    try:
        if fam in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(addr)
        if err in (_errno.EINPROGRESS, _errno.EAGAIN):
            # connecting again says how it went in one call: 0 (or EISCONN) once connected,
            # the error once failed, EALREADY while in flight
            err = sock.connect_ex(addr)
            if err in (_errno.EALREADY, _errno.EINPROGRESS):
                return sock, False
            if err == _errno.EISCONN:
                err = 0
        if err:
            raise OSError(err, os.strerror(err))
        return sock, True
    except BaseException:
        sock.close()
        raise
