"""A tailnet node for this process: the Python face of tsnet.Server.

The node is the upstream tailscaled, pinned (tools/node-bin), run as a private child in
userspace-networking mode: no root, no TUN, its LocalAPI on a Unix socket inside the 0700 state
dir. (Upstream libtailscale is not served by the Go module proxy here; see docs/ARCHITECTURE.md.)

Blocking calls (up, status, ...) are plain methods; dial/listen are async.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable

from .. import proxyproto
from ..native import native_path
from .errors import (DialFailed, LocalAPIError, LoginRequired, NodeError, NodeStateError,
                     UpTimeout, errno_for_dial_message)
from .exitnode import ExitNodeError, check_usable, find_peer, peer_label, pick_auto
from .localapi import LocalAPI

DEFAULT_CONTROL_URL = "https://controlplane.tailscale.com"
_META = "tailproxy-node.json"
_SECRET_ENV = ("TS_AUTHKEY", "TS_AUTH_KEY", "TAILPROXY_AUTHKEY")


STUCK_STARTING_S = 15.0     # see Node.up


class _StuckStarting(Exception):
    pass


@dataclasses.dataclass
class NodeConfig:
    state_dir: str
    hostname: str = "tailproxy"
    authkey: str | None = dataclasses.field(default=None, repr=False)
    control_url: str | None = None
    ephemeral: bool = False
    log_path: str | None = None          # tailscaled's log; default <state_dir>/tailscaled.log
    tailscaled: str | None = None        # binary; default the packaged one

    def __post_init__(self):
        if not self.state_dir:
            raise ValueError("state_dir is required")
        if not self.hostname or len(self.hostname) > 63 or any(c.isspace() for c in self.hostname):
            raise ValueError(f"invalid hostname {self.hostname!r}")
        if self.control_url is not None and not self.control_url.startswith(("http://", "https://")):
            raise ValueError(f"control URL must start with http:// or https://: {self.control_url!r}")


def _norm_url(url: str | None) -> str:
    return (url or DEFAULT_CONTROL_URL).rstrip("/")


class Node:
    def __init__(self, config: NodeConfig, on_login_url: Callable[[str], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.config = config
        self._on_login_url = on_login_url or (lambda url: print(
            f"tailproxy: to join the tailnet, open this URL in a browser:\n\n    {url}\n",
            file=sys.stderr, flush=True))
        self._log = log or (lambda msg: None)
        self._proc: subprocess.Popen | None = None
        self._sock_dir: str | None = None
        self._api: LocalAPI | None = None
        self._running = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def localapi(self) -> LocalAPI:
        if self._api is None:
            raise NodeStateError("the node is not started; call up() first")
        return self._api

    def up(self, timeout: float = 60.0) -> None:
        """Start the node and wait until it is Running on the tailnet (or raise)."""
        if self._closed:
            raise NodeStateError("the node is closed")
        if self._running:
            return
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        deadline = time.monotonic() + timeout
        self._prepare_state_dir()
        self._start_daemon()
        try:
            self._wait_api(deadline)
            try:
                # Rarely a node stays Starting (logged in, but no DERP connection and no live
                # peer) well past the usual second; a fresh start clears it. Once, and only
                # if the timeout leaves room for it.
                restart_at = time.monotonic() + STUCK_STARTING_S \
                    if timeout >= 2 * STUCK_STARTING_S else None
                self._login(deadline, restart_at)
            except _StuckStarting:
                self._log(f"the node stayed Starting for {STUCK_STARTING_S:g}s (no DERP "
                          f"connection, no live peer); restarting it once")
                self._stop_daemon()
                self._start_daemon()
                self._wait_api(deadline)
                self._login(deadline)
        except BaseException:
            self.close()
            raise
        self._running = True

    def close(self) -> None:
        self._closed = True
        self._running = False
        self._stop_daemon()
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None

    def _stop_daemon(self) -> None:
        proc, self._proc = self._proc, None
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- state dir and daemon ---------------------------------------------------------------
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

    def _socket_path(self) -> str:
        path = os.path.join(self.config.state_dir, "tailscaled.sock")
        if len(path.encode()) < 100:
            return path
        self._sock_dir = tempfile.mkdtemp(prefix="tailproxy-node-")  # 0700
        return os.path.join(self._sock_dir, "tailscaled.sock")

    def _start_daemon(self) -> None:
        try:
            binary = self.config.tailscaled or native_path("tailscaled")
        except FileNotFoundError as e:
            raise NodeError(f"cannot start the node: {e}") from None
        if not os.access(binary, os.X_OK):
            raise NodeError(f"cannot start the node: {binary} is missing or not executable")
        sock = self._socket_path()
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
        argv = [binary, "--tun=userspace-networking", f"--socket={sock}",
                f"--statedir={self.config.state_dir}", "--port=0"]
        if self.config.ephemeral:
            argv.append("--state=mem:")
        env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
        if env.get("TS_NO_LOGS_NO_SUPPORT", "").lower() in ("1", "true"):
            argv.append("--no-logs-no-support")
        setpriv = shutil.which("setpriv")
        if setpriv:  # take the node down with us even if we are SIGKILLed
            argv = [setpriv, "--pdeathsig", "KILL", "--"] + argv
        log_path = self.config.log_path or os.path.join(self.config.state_dir, "tailscaled.log")
        self._log_path = log_path
        try:        # keep the previous run's log for a diagnosis
            if os.path.getsize(log_path) > 0:
                os.replace(log_path, log_path + ".1")
        except OSError:
            pass
        logf = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                          env=env, close_fds=True, start_new_session=True)
        except OSError as e:
            raise NodeError(f"cannot start the node ({binary}): {e.strerror or e}") from e
        finally:
            logf.close()
        self._api = LocalAPI(sock)

    def _log_tail(self, lines: int = 8) -> str:
        try:
            with open(self._log_path, errors="replace") as f:
                tail = f.readlines()[-lines:]
        except OSError:
            return ""
        return "".join("    " + line for line in tail)

    def _check_alive(self) -> None:
        if self._proc and self._proc.poll() is not None:
            raise NodeError(f"the node (tailscaled) exited with status {self._proc.returncode}; "
                            f"last lines of {self._log_path}:\n{self._log_tail()}")

    def _wait_api(self, deadline: float) -> None:
        while True:
            self._check_alive()
            try:
                self.localapi.status(peers=False)
                return
            except LocalAPIError:
                pass
            if time.monotonic() > deadline:
                raise UpTimeout("the node did not start its LocalAPI in time; last lines of "
                                f"{self._log_path}:\n{self._log_tail()}")
            time.sleep(0.02)

    def _prefs(self) -> dict:
        return {"ControlURL": _norm_url(self.config.control_url), "WantRunning": True,
                "Hostname": self.config.hostname, "CorpDNS": True, "RouteAll": False,
                "LoggedOut": False}

    def _login(self, deadline: float, restart_at: float | None = None) -> None:
        api = self.localapi
        key = self.config.authkey
        st = api.status(peers=False)
        asked_interactive = False
        if st.get("BackendState") != "Running":
            # As `tailscale up` does: Start, then a login when there is no node key yet (with an
            # auth key that login needs no browser).
            api.start({"AuthKey": key or "", "UpdatePrefs": self._prefs()})
            if not api.status(peers=False).get("HaveNodeKey"):
                api.login_interactive()
                asked_interactive = True
        elif (st.get("Self") or {}).get("HostName") != self.config.hostname:
            api.edit_prefs({"Hostname": self.config.hostname, "HostnameSet": True})
        shown_url = None
        rekeyed = asked_interactive or not key
        while True:
            self._check_alive()
            st = api.status(peers=False)
            state = st.get("BackendState")
            if state == "Running" and st.get("TailscaleIPs"):
                return
            if state == "NeedsLogin":
                url = st.get("AuthURL")
                if key and not rekeyed:
                    # saved state the control server no longer accepts: log in again with the key
                    api.start({"AuthKey": key, "UpdatePrefs": self._prefs()})
                    api.login_interactive()
                    rekeyed = True
                elif not key and url and url != shown_url:
                    self._on_login_url(url)
                    shown_url = url
                elif not key and not asked_interactive:
                    api.login_interactive()
                    asked_interactive = True
            if restart_at is not None and state == "Starting" and time.monotonic() > restart_at:
                raise _StuckStarting()
            if time.monotonic() > deadline:
                health = "; ".join(st.get("Health") or []) or "none"
                where = _norm_url(self.config.control_url)
                if state == "NeedsLogin" and not key:
                    raise LoginRequired(f"not logged in to {where} (no auth key given and the "
                                        f"login URL was not completed in time)")
                raise UpTimeout(f"the node did not come up within the timeout: state {state}, "
                                f"control server {where}; health: {health}")
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
                      timeout: float = 20.0) -> dict:
        """Route non-tailnet traffic through the peer `name` ("auto": any online exit node).

        Checks the peer exists, is online and is an approved exit node, sets the pref and waits
        until the node reports the exit node online. Returns the peer's status entry.
        """
        self._require_running()
        api = self.localapi
        st = api.status()
        peer = pick_auto(st) if name == "auto" else find_peer(st, name)
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

    # -- serve config ------------------------------------------------------------------------
    def serve_tcp(self, port: int, handler: dict | None) -> None:
        """Set (or with None remove) the serve-config TCP handler of `port`, e.g.
        {"TCPForward": "127.0.0.1:8000", "ProxyProtocol": 2}."""
        self._require_running()
        api = self.localapi
        for _ in range(10):  # optimistic concurrency on the serve config (ETag)
            cfg, etag = api.serve_config()
            tcp = dict(cfg.get("TCP") or {})
            if handler is None:
                if str(port) not in tcp:
                    return
                tcp.pop(str(port))
            else:
                tcp[str(port)] = handler
            cfg["TCP"] = tcp or None
            try:
                api.set_serve_config(cfg, etag)
                return
            except LocalAPIError as e:
                if e.status != 412:
                    raise
        raise NodeError(f"could not update the serve config for port {port}")

    # -- dial and listen --------------------------------------------------------------------
    async def dial(self, host: str, port: int, timeout: float = 30.0) -> socket.socket:
        """A TCP connection to host:port through the tailnet (a connected, non-blocking socket)."""
        self._require_running()
        if not host or not 0 < int(port) < 65536:
            raise ValueError(f"invalid destination {host!r}:{port!r}")
        try:
            async with asyncio.timeout(timeout):    # no task of its own, unlike wait_for
                return await self.localapi.dial(host, int(port))
        except TimeoutError:
            raise DialFailed(f"dial {host}:{port}: timed out after {timeout:g}s",
                             errno_for_dial_message("timed out")) from None
        except LocalAPIError as e:
            msg = str(e).removeprefix("dial failure: ")
            raise DialFailed(f"dial {host}:{port}: {msg}", errno_for_dial_message(msg)) from None

    async def listen(self, port: int) -> "Listener":
        """Accept TCP connections made to this node's tailnet addresses on `port`."""
        self._require_running()
        if not 0 < int(port) < 65536:
            raise ValueError(f"invalid port {port!r}")
        listener = Listener(self, int(port))
        await listener._start()
        return listener


class Listener:
    """Connections to <node>:port on the tailnet, delivered to an asyncio accept().

    The node forwards each connection to a private loopback socket with a PROXY v2 header in
    front, which tells us the tailnet address of the peer.
    """

    def __init__(self, node: Node, port: int):
        self.node, self.port = node, port
        self._sock: socket.socket | None = None

    async def _start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        local = "127.0.0.1:%d" % sock.getsockname()[1]
        await asyncio.to_thread(self._update_serve, {"TCPForward": local, "ProxyProtocol": 2})

    def _update_serve(self, handler: dict | None) -> None:
        self.node.serve_tcp(self.port, handler)

    async def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        """Next connection and the peer's tailnet (ip, port)."""
        if self._sock is None:
            raise NodeStateError("the listener is closed")
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            conn.setblocking(False)
            try:
                src = await asyncio.wait_for(_read_proxy_header(loop, conn), 10)
            except (proxyproto.ProxyProtocolError, asyncio.TimeoutError, OSError):
                conn.close()  # not from the node: a local process knocking on our port
                continue
            if src is None:
                conn.close()
                continue
            return conn, src

    async def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        try:
            await asyncio.to_thread(self._update_serve, None)
        except NodeError:
            pass


async def _read_proxy_header(loop, conn: socket.socket) -> tuple[str, int] | None:
    buf = bytearray()
    need = 16
    while len(buf) < need:
        chunk = await loop.sock_recv(conn, need - len(buf))
        if not chunk:
            raise proxyproto.ProxyProtocolError("closed before the PROXY header")
        buf += chunk
        if need == 16:
            n = proxyproto.header_length(bytes(buf))
            if n is not None:
                need = n
    addrs = proxyproto.decode(bytes(buf))
    return None if addrs is None else addrs[0]
