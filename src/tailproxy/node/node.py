"""A tailnet node in this process: the Python face of our node library (tsnet, node/).

Usable on its own as a library:

    node = Node(NodeConfig(state_dir="/tmp/st", hostname="bot", authkey=KEY))
    node.up()
    sock = await node.dial("db-host", 5432)        # a real socket, joined to the tailnet in Go

Blocking calls (up, status, exit node) are plain methods; dial, connect and listen are async.
The tailnet data path stays in Go: `connect()` gives a TailnetConn that `relay()` joins to a
local socket, so no byte of a relayed connection is copied by Python.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import socket
import sys
import time
from typing import Callable

from . import library
from .errors import DialFailed, LoginRequired, NodeError, NodeStateError, UpTimeout
from .events import EventRouter
from .exitnode import ExitNodeError, check_usable, find_peer, peer_label, pick_auto
from .localapi import LocalAPI

DEFAULT_CONTROL_URL = "https://controlplane.tailscale.com"
_META = "tailproxy-node.json"
_CLOSE_TIMEOUT_MS = 5000
_LOGOUT_TIMEOUT_S = 3.0
STUCK_STARTING_S = 15.0     # see Node._login


class _StuckStarting(Exception):
    pass


@dataclasses.dataclass
class NodeConfig:
    state_dir: str
    hostname: str = "tailproxy"
    authkey: str | None = dataclasses.field(default=None, repr=False)
    control_url: str | None = None
    ephemeral: bool = False
    accept_routes: bool = False          # the pref RouteAll: use peers' subnet routes
    log_path: str | None = None          # the node's log; default <state_dir>/node.log

    def __post_init__(self):
        if not self.state_dir:
            raise ValueError("state_dir is required")
        if not self.hostname or len(self.hostname) > 63 or any(c.isspace() for c in self.hostname):
            raise ValueError(f"invalid hostname {self.hostname!r}")
        if self.control_url is not None and not self.control_url.startswith(("http://", "https://")):
            raise ValueError(f"control URL must start with http:// or https://: {self.control_url!r}")


def _norm_url(url: str | None) -> str:
    return (url or DEFAULT_CONTROL_URL).rstrip("/")


@dataclasses.dataclass(frozen=True)
class RelayEnd:
    """How a relay ended: bytes program→tailnet (up) and back (down); reason is empty for a
    clean end, else why it was cut (and errno what the cut side was told: a reset)."""
    up: int
    down: int
    reason: str = ""
    errno: int = 0


class Node:
    def __init__(self, config: NodeConfig, on_login_url: Callable[[str], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config
        self._on_login_url = on_login_url or (lambda url: print(
            f"tailproxy: to join the tailnet, open this URL in a browser:\n\n    {url}\n",
            file=sys.stderr, flush=True))
        self._log = log or (lambda msg: None)
        self._handle: int | None = None
        self._api: LocalAPI | None = None
        self._events: EventRouter | None = None
        self._ids = itertools.count(1)
        self._running = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between a successful up() and close()."""
        return self._running

    @property
    def localapi(self) -> LocalAPI:
        if self._api is None:
            raise NodeStateError("the node is not started; call up() first")
        return self._api

    @property
    def log_path(self) -> str:
        return self.config.log_path or os.path.join(self.config.state_dir, "node.log")

    def up(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it is Running on the tailnet (or raise)."""
        if self._closed:
            raise NodeStateError("the node is closed")
        if self._running:
            return
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        deadline = time.monotonic() + timeout
        try:
            self._prepare_state_dir()
            self._start()
            try:
                self._login(deadline, restart_after=STUCK_STARTING_S
                            if timeout >= 2 * STUCK_STARTING_S else None)
            except _StuckStarting:
                self._log(f"the node stayed Starting for {STUCK_STARTING_S:g}s (logged in, but "
                          f"no DERP connection and no live peer); starting it again")
                self._stop_library_node()
                self._start()
                self._login(deadline)
            # tsnet accepts subnet routes by default; Linux's tailscale does not, and a route
            # accepted silently would send this host's LAN traffic into the tailnet: only on
            # request (--accept-routes).
            self.localapi.edit_prefs({"RouteAll": bool(self.config.accept_routes),
                                      "RouteAllSet": True})
        except BaseException:
            self.close()
            raise
        self._running = True

    def close(self) -> None:
        """Stop the node. Connections it still relays are cut (reset), not ended cleanly."""
        self._closed = True
        self._running = False
        self._stop_library_node()

    def _stop_library_node(self) -> None:
        if self._handle is not None and self.config.ephemeral and self._api is not None:
            # An ephemeral node leaves the tailnet with us: the control server would otherwise
            # keep it listed until its inactivity timeout (headscale's default: 30 minutes).
            try:
                self._api.request("POST", "logout", timeout=_LOGOUT_TIMEOUT_S)
            except NodeError as e:
                self._log(f"logging the ephemeral node out: {e}")
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                library.call("node_close", handle, _CLOSE_TIMEOUT_MS)
            except NodeError as e:
                self._log(f"stopping the node: {e}")
        if self._events is not None:
            self._events.close()
            self._events = None
        self._api = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- start and login --------------------------------------------------------------------
    def _prepare_state_dir(self) -> None:
        d = self.config.state_dir
        os.makedirs(d, mode=0o700, exist_ok=True)
        os.chmod(d, 0o700)
        meta_path = os.path.join(d, _META)
        want = _norm_url(self.config.control_url)
        try:
            with open(meta_path) as f:
                saved = json.load(f).get("control_url")
        except (OSError, ValueError):
            saved = None
        state_file = os.path.join(d, "tailscaled.state")
        if saved and saved != want and os.path.exists(state_file):
            if not self.config.authkey:
                raise NodeError(
                    f"the state in {d} belongs to the control server {saved}, not {want}; "
                    f"give an auth key to log in again, or use another --state-dir")
            self._log(f"state in {d} belongs to {saved}; logging in to {want} again with the auth key")
            os.replace(state_file, state_file + ".old")
        tmp = meta_path + ".tmp"
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            json.dump({"control_url": want}, f)
        os.replace(tmp, meta_path)

    def _start(self) -> None:
        self._keep_previous_log()
        events = EventRouter()
        cfg = json.dumps({"dir": self.config.state_dir, "hostname": self.config.hostname,
                          "authkey": self.config.authkey or "",
                          "control_url": _norm_url(self.config.control_url),
                          "ephemeral": self.config.ephemeral, "log_path": self.log_path})
        handle = library.c_int64()
        try:
            library.call("node_start", cfg.encode(), events.write_fd, library.byref(handle))
        except BaseException:
            os.close(events.write_fd)
            events.close()
            raise
        self._handle, self._events = handle.value, events
        self._api = LocalAPI(handle.value)

    def _keep_previous_log(self) -> None:
        try:
            if os.path.getsize(self.log_path) > 0:
                os.replace(self.log_path, self.log_path + ".1")
        except OSError:
            pass

    def _log_tail(self, lines: int = 8) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError:
            return ""
        return "".join("    " + line for line in tail)

    def _login(self, deadline: float, restart_after: float | None = None) -> None:
        """Wait for Running. The library started the backend with the auth key (or asked for
        an interactive login); here we show a login URL, or log in again with the key when the
        control server no longer accepts the saved state. Rarely a node stays Starting (logged
        in, but no DERP connection and no live peer) well past the usual fraction of a second;
        with restart_after, that raises _StuckStarting so that up() can start it once more."""
        api = self.localapi
        key = self.config.authkey
        shown_url = None
        rekeyed = False
        starting_since = None
        while True:
            st = api.status(peers=False)
            state = st.get("BackendState")
            if state == "Running" and st.get("TailscaleIPs"):
                return
            if state == "Starting":
                starting_since = starting_since or time.monotonic()
                if restart_after is not None and time.monotonic() - starting_since > restart_after:
                    raise _StuckStarting()
            else:
                starting_since = None
            if state == "NeedsLogin":
                url = st.get("AuthURL")
                if key and not rekeyed and st.get("HaveNodeKey"):
                    api.start({"AuthKey": key, "UpdatePrefs": {
                        "ControlURL": _norm_url(self.config.control_url), "WantRunning": True,
                        "Hostname": self.config.hostname}})
                    api.login_interactive()
                    rekeyed = True
                elif not key and url and url != shown_url:
                    self._on_login_url(url)
                    shown_url = url
            if time.monotonic() > deadline:
                health = "; ".join(st.get("Health") or []) or "none"
                where = _norm_url(self.config.control_url)
                if state == "NeedsLogin" and not key:
                    raise LoginRequired(f"not logged in to {where} (no auth key given and the "
                                        f"login URL was not completed in time)")
                raise UpTimeout(f"the node did not come up within the timeout: state {state}, "
                                f"control server {where}; health: {health}; last lines of "
                                f"{self.log_path}:\n{self._log_tail()}")
            time.sleep(0.05)

    # -- addresses and peers ----------------------------------------------------------------
    def ips(self) -> list[str]:
        """The node's tailnet addresses, IPv4 first."""
        self._require_running()
        ips = self.localapi.status(peers=False).get("TailscaleIPs") or []
        return sorted(ips, key=lambda a: ":" in a)

    def _require_running(self) -> None:
        if self._closed:
            raise NodeStateError("the node is closed")
        if not self._running:
            raise NodeStateError("the node is not up; call up() first")

    # -- exit node --------------------------------------------------------------------------
    def set_exit_node(self, name: str, allow_lan_access: bool = False,
                      timeout: float = 20.0, avoid: frozenset = frozenset()) -> dict:
        """Route non-tailnet traffic through the peer `name` ("auto": any online exit node).

        Checks the peer exists, is online and is an approved exit node, sets the pref and waits
        until the node reports the exit node online. Returns the peer's status entry. Peers
        whose ID is in `avoid` (found not answering) are refused, or passed over by "auto".
        """
        self._require_running()
        api = self.localapi
        st = api.status()
        peer = pick_auto(st, avoid) if name == "auto" else find_peer(st, name)
        if peer.get("ID") in avoid:
            raise ExitNodeError(f"exit node {peer_label(peer)!r} does not answer")
        whois = None
        if not peer.get("ExitNodeOption") and peer.get("TailscaleIPs"):
            whois = api.whois(peer["TailscaleIPs"][0])
        check_usable(peer, whois)
        api.edit_prefs({"ExitNodeID": peer["ID"], "ExitNodeIDSet": True,
                        "ExitNodeIP": "", "ExitNodeIPSet": True,
                        "ExitNodeAllowLANAccess": bool(allow_lan_access),
                        "ExitNodeAllowLANAccessSet": True})
        deadline = time.monotonic() + timeout
        while True:
            st = api.status()
            ens = st.get("ExitNodeStatus") or {}
            if ens.get("ID") == peer["ID"] and ens.get("Online"):
                return peer
            if time.monotonic() > deadline:
                raise ExitNodeError(f"timed out after {timeout:g}s waiting for the route through "
                                    f"exit node {peer_label(peer)!r}")
            time.sleep(0.05)

    def clear_exit_node(self) -> None:
        self._require_running()
        self.localapi.edit_prefs({"ExitNodeID": "", "ExitNodeIDSet": True,
                                  "ExitNodeIP": "", "ExitNodeIPSet": True})

    def exit_node(self) -> dict | None:
        """The peer entry of the exit node in use, or None."""
        self._require_running()
        for p in (self.localapi.status().get("Peer") or {}).values():
            if p.get("ExitNode"):
                return p
        return None

    # -- dial -------------------------------------------------------------------------------
    async def connect(self, host: str, port: int, timeout: float = 30.0) -> "TailnetConn":
        """A TCP connection to host:port through the tailnet, held in the node until
        TailnetConn.relay() joins it to a local socket. Names are resolved by the node
        (MagicDNS; with an exit node, on the exit node's side). Raises DialFailed."""
        return await self._connect(b"tcp", host, port, timeout)

    async def _connect(self, network: bytes, host: str, port: int, timeout: float) -> "TailnetConn":
        self._require_running()
        if not host or not 0 < int(port) < 65536:
            raise ValueError(f"invalid destination {host!r}:{port!r}")
        events = self._attach_events()
        ident = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        events.register(ident, lambda ev: fut.done() or fut.set_result(ev))
        addr = f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"
        try:
            library.call("dial", self._handle, ident, network, addr.encode(), int(timeout * 1000))
            ev = await fut
        except BaseException:
            events.unregister(ident)
            self._drop(ident)
            raise
        events.unregister(ident)
        if ev["ev"] != "dialed" or ev.get("errno"):
            raise DialFailed(f"dial {host}:{port}: {ev.get('err') or 'failed'}", ev.get("errno"))
        return TailnetConn(self, ident, _split_hostport(ev["src"]) if ev.get("src") else None)

    async def dial(self, host: str, port: int, timeout: float = 30.0) -> socket.socket:
        """A connected, non-blocking socket to host:port through the tailnet (one end of a
        socket pair whose other end the node relays)."""
        return _relayed_to_a_socket(await self.connect(host, port, timeout), socket.SOCK_STREAM)

    async def dial_udp(self, host: str, port: int, timeout: float = 30.0) -> socket.socket:
        """A UDP association with host:port through the tailnet: a non-blocking SOCK_SEQPACKET
        socket on which each send() is one datagram to host:port and each recv() one datagram
        from it (a zero-length datagram cannot be told from the end). Datagrams must fit the
        tailnet MTU (1280 bytes with IP and UDP headers: 1232 bytes of payload over IPv6, 1252
        over IPv4); larger ones would need IP fragments, which the userspace netstacks do not
        carry. It ends when the socket is closed, or after two minutes without a datagram
        either way (recv() then returns b""). Raises DialFailed."""
        conn = await self._connect(b"udp", host, port, timeout)
        return _relayed_to_a_socket(conn, socket.SOCK_SEQPACKET)

    async def connect_udp(self, host: str, port: int, timeout: float = 30.0) -> "TailnetConn":
        """A UDP association with host:port held in the node until TailnetConn.relay() joins
        it to a SOCK_SEQPACKET socket (as dial_udp does) or to a UDP socket connected to the
        program's own (the preload's associations): datagrams then cross between the kernel's
        loopback and the netstack in Go. With a UDP socket, a datagram too large for the
        tailnet is dropped, and idleness ends the association only once the program's
        address is free. Raises DialFailed."""
        return await self._connect(b"udp", host, port, timeout)

    def _attach_events(self) -> EventRouter:
        if self._events is None:
            raise NodeStateError("the node is closed")
        self._events.attach(asyncio.get_running_loop())
        return self._events

    def _drop(self, ident: int) -> None:
        if self._handle is not None:
            try:
                library.call("drop", self._handle, ident)
            except NodeError:
                pass

    # -- listen and export ------------------------------------------------------------------
    async def listen(self, port: int, backlog: int = 128) -> "Listener":
        """Accept TCP connections made to this node's tailnet addresses on `port`."""
        self._require_running()
        listener = Listener(self, self._port(port), backlog)
        listener._start(self._attach_events())
        return listener

    async def export(self, port: int, target: tuple[str, int], proxy_protocol: bool = False,
                     on_inbound: Callable[[dict], None] | None = None,
                     udp: bool = False, idle_timeout: float | None = None,
                     on_idle: Callable[[], None] | None = None) -> "Export":
        """Serve tailnet connections to `port` by connecting each, in the node, to `target`
        (the program's loopback listener). `on_inbound` gets one event per connection with the
        peer's node and user, bytes and outcome. With `udp`, the tailnet UDP port `port` is
        served by the program's loopback UDP socket `target`, one flow per peer address (at
        most 256, each ended after two minutes without a datagram; no PROXY header). With
        `idle_timeout` (seconds; TCP exports) the node withdraws the export once no connection
        has been open or begun for that long, and then calls `on_idle`."""
        self._require_running()
        export = Export(self, self._port(port), target, proxy_protocol, on_inbound, udp,
                        idle_timeout, on_idle)
        export._start(self._attach_events())
        return export

    @staticmethod
    def _port(port: int) -> int:
        if not 0 < int(port) < 65536:
            raise ValueError(f"invalid port {port!r}")
        return int(port)

    # -- the preload's parked connects --------------------------------------------------------
    def parked_snapshot(self, limit: int) -> list[dict]:
        """The connections the fast path relays now (every program's), oldest first, at most
        `limit`: {"server", "pid", "src", "dst", "connect_ms", "age_ms"} each (blocking call)."""
        if self._handle is None:
            return []
        out = library.ctypes.c_void_p()
        library.call("parked_snapshot", self._handle, int(limit), library.byref(out))
        return json.loads(library.take_string(out.value) or "[]")

    def serve_parked(self, datagrams: socket.socket, forward: socket.socket,
                     park_ports: tuple[int, int], default_timeout: float, max_timeout: float,
                     on_event: Callable[[dict], None] | None = None,
                     report_each: bool = False) -> "ParkedConnects":
        """Take the preload's parked CONNECTs to online peers from `datagrams` (the channel's
        datagram socket) and complete, dial and relay them in the node; pass everything else,
        and each dial that failed, on to `forward` (node/parked.go has the format).
        `on_event`, if given, gets the reports of connections taken as they end, in
        "done_batch" events (node/parked_reports.go): batched, or each at once with
        `report_each`. Both sockets are lent: the node works on duplicates."""
        self._require_running()
        parked = ParkedConnects(self, next(self._ids))
        events = self._attach_events()
        if on_event is not None:
            events.register(parked._ident, on_event)
        spec = {"park4": park_ports[0], "park6": park_ports[1],
                "default_timeout_ms": int(default_timeout * 1000),
                "max_timeout_ms": int(max_timeout * 1000), "report": on_event is not None,
                "report_each": report_each}
        try:
            library.call("parked_serve", self._handle, parked._ident, datagrams.fileno(),
                         forward.fileno(), json.dumps(spec).encode())
        except BaseException:
            events.unregister(parked._ident)
            raise
        return parked

    def _listen(self, ident: int, spec: dict) -> None:
        library.call("listen", self._handle, ident, json.dumps(spec).encode())

    def _unlisten(self, ident: int) -> None:
        if self._handle is not None:
            library.call("unlisten", self._handle, ident)


class TailnetConn:
    """A connection dialled through the node and not yet relayed."""

    def __init__(self, node: Node, ident: int, local_address: tuple[str, int] | None):
        self._node, self._ident = node, ident
        self.local_address = local_address      # this node's (ip, port) of the connection
        self._used = False

    def relay(self, sock: socket.socket, done: Callable[[RelayEnd], None] | None = None,
              initial: bytes = b"") -> None:
        """Join the connection to `sock`: the node sends `initial` to the tailnet first, then
        copies both ways, passes half-closes on, and turns an abnormal end on one side into a
        reset on the other. The node works on its own duplicate of the fd, so the caller may
        close `sock` at once. `done` is called on the event loop when both directions ended."""
        if self._used:
            raise NodeStateError("this connection was already relayed or closed")
        self._used = True
        events = self._node._events
        if done is not None and events is not None:
            events.register(self._ident, lambda ev: _relay_done(events, ev, done))
        try:
            library.call("relay", self._node._handle, self._ident, sock.fileno(), initial or None,
                         len(initial))
        except BaseException:
            if events is not None:
                events.unregister(self._ident)
            raise

    def bytes_so_far(self) -> tuple[int, int] | None:
        """What the node's relay of this connection delivered so far (to the tailnet, to the
        local side); None before it starts and once it has ended (its end has the totals)."""
        node = self._node
        if node._handle is None or not self._used:
            return None
        up, down, running = library.c_int64(), library.c_int64(), library.ctypes.c_int()
        library.call("relay_bytes", node._handle, self._ident, library.byref(up),
                     library.byref(down), library.byref(running))
        return (up.value, down.value) if running.value else None

    def close(self) -> None:
        """Abandon the connection (it was never relayed)."""
        if not self._used:
            self._used = True
            self._node._drop(self._ident)


def _relay_done(events: EventRouter, ev: dict, done: Callable[[RelayEnd], None]) -> None:
    events.unregister(ev["id"])
    if ev["ev"] == "stopped":
        done(RelayEnd(0, 0, ev.get("err", "the node stopped"), ev.get("errno", 0)))
    else:
        done(RelayEnd(ev.get("up", 0), ev.get("down", 0), ev.get("reason", ""), ev.get("errno", 0)))


class Listener:
    """Connections to <node>:port on the tailnet, each delivered as a local socket."""

    def __init__(self, node: Node, port: int, backlog: int):
        self.node, self.port = node, port
        self._ident = next(node._ids)
        self._queue: asyncio.Queue = asyncio.Queue(backlog)
        self._events: EventRouter | None = None
        self._stopped = False

    def _start(self, events: EventRouter) -> None:
        self._events = events
        events.register(self._ident, self._on_event)
        try:
            self.node._listen(self._ident, {"Port": self.port})
        except BaseException:
            events.unregister(self._ident)
            raise

    def _on_event(self, ev: dict) -> None:
        if ev["ev"] == "stopped":
            self._stopped = True
            if self._queue.empty():
                self._queue.put_nowait(None)
            return
        sock = socket.socket(fileno=ev["fd"])
        sock.setblocking(False)
        try:
            self._queue.put_nowait((sock, _split_hostport(ev["src"])))
        except asyncio.QueueFull:
            sock.close()        # backlog full: the peer sees its connection end

    async def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        """Next connection and the peer's tailnet (ip, port)."""
        if self._events is None:
            raise NodeStateError("the listener is closed")
        if self._stopped and self._queue.empty():
            raise NodeStateError("the node stopped")
        item = await self._queue.get()
        if item is None:
            raise NodeStateError("the node stopped")
        return item

    async def close(self) -> None:
        events, self._events = self._events, None
        if events is None:
            return
        events.unregister(self._ident)
        self.node._unlisten(self._ident)
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item:
                item[0].close()


class Export:
    """A tailnet port served, in the node, by a loopback listener of the program."""

    def __init__(self, node: Node, port: int, target: tuple[str, int], proxy_protocol: bool,
                 on_inbound: Callable[[dict], None] | None, udp: bool = False,
                 idle_timeout: float | None = None, on_idle: Callable[[], None] | None = None):
        self.node, self.port, self.target, self.udp = node, port, target, udp
        self._proxy_protocol, self._on_inbound = proxy_protocol, on_inbound
        self._idle_timeout, self._on_idle = idle_timeout, on_idle
        self._ident = next(node._ids)
        self._events: EventRouter | None = None

    def _start(self, events: EventRouter) -> None:
        host, port = self.target
        spec = {"Port": self.port, "Target": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "ProxyProtocol": self._proxy_protocol and not self.udp,
                "Report": self._on_inbound is not None, "Network": "udp" if self.udp else "tcp",
                "IdleTimeoutMS": int(self._idle_timeout * 1000)
                if self._idle_timeout and not self.udp else 0}
        if self._on_inbound is not None or self._on_idle is not None:
            events.register(self._ident, self._on_event)
        self._events = events
        try:
            self.node._listen(self._ident, spec)
        except BaseException:
            events.unregister(self._ident)
            raise

    def _on_event(self, ev: dict) -> None:
        if ev["ev"] == "inbound" and self._on_inbound is not None:
            self._on_inbound(ev)
        elif ev["ev"] == "idle" and self._on_idle is not None:
            self._on_idle()

    def close(self) -> None:
        """Stop accepting; connections already served run to their end (and are still
        reported to on_inbound: its handler stays until the node stops)."""
        events, self._events = self._events, None
        if events is None:
            return
        try:
            self.node._unlisten(self._ident)
        except NodeError:
            pass


class ParkedConnects:
    """The node's side of the channel's fast path (Node.serve_parked)."""

    def __init__(self, node: Node, ident: int):
        self.node, self._ident = node, ident

    @property
    def server_id(self) -> int:
        """This server's number in Node.parked_snapshot()."""
        return self._ident

    def drain(self, timeout: float) -> int:
        """Wait (blocking) until no connection taken is still delivering what its program
        sent, or `timeout`; returns how many still were."""
        if self.node._handle is None:
            return 0
        left = library.c_int64(0)
        library.call("parked_drain", self.node._handle, self._ident, int(timeout * 1000),
                     library.byref(left))
        return left.value

    def peer_of(self, program_address: str) -> str | None:
        """The destination ("ip:port") of the connection relayed for the program's socket at
        `program_address` ("ip:port", "[ip]:port"), or None."""
        if self.node._handle is None:
            return None
        out = library.ctypes.c_void_p()
        library.call("parked_peer", self.node._handle, program_address.encode(), library.byref(out))
        return library.take_string(out.value)

    def close(self) -> None:
        """Stop taking datagrams; connections taken run to their end (and are still
        reported) until the node stops."""
        try:
            self.node._unlisten(self._ident)
        except NodeError:
            pass


def _relayed_to_a_socket(conn: "TailnetConn", kind: int) -> socket.socket:
    """Our end, non-blocking, of a socket pair of `kind` whose other end the node relays."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        conn.relay(theirs)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return ours


def _split_hostport(hp: str) -> tuple[str, int]:
    host, _, port = hp.rpartition(":")
    return host.strip("[]"), int(port)
