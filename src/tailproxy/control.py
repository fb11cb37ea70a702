"""Runtime control of running tailproxies: `tailproxy ps`, `tailproxy exit-node set|clear|list`.

Each run listens on <runtime dir>/<pid>.sock (0600, dir 0700): one JSON request per line, one JSON
reply per line. A socket nobody answers on is a run that ended; it is removed when seen.
`handler()` answers those requests for a run.
"""
from __future__ import annotations

import json
import os
import socket
import stat
from typing import TYPE_CHECKING, Awaitable, Callable

from .rundir import open_private_dir, user_runtime_dir

if TYPE_CHECKING:
    import asyncio

    from .config import Settings

Handler = Callable[[dict], Awaitable[dict]]
_MAX_LINE = 64 * 1024


def runtime_dir(env: dict | None = None) -> str:
    """The per-user runtime directory (see rundir.py); RunDirError when it is not safe."""
    return user_runtime_dir(env)


class ControlServer:
    def __init__(self, handler: Handler, path: str | None = None):
        self.handler = handler
        self.path = path or os.path.join(runtime_dir(), f"{os.getpid()}.sock")
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        import asyncio      # here, not at the top: an attaching `tailproxy CMD` never needs it
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, self.path, limit=_MAX_LINE)
        finally:
            os.umask(old)

    async def close(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import asyncio
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError
            except ValueError:
                reply = {"ok": False, "error": "malformed request: expected one JSON object with 'cmd'"}
            else:
                try:
                    reply = await self.handler(req)
                except Exception as e:  # the message goes back to the asking CLI
                    reply = {"ok": False, "error": str(e)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (asyncio.TimeoutError, OSError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


def ask(path: str, request: dict, timeout: float = 30.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def running(env: dict | None = None) -> list[tuple[str, dict]]:
    """(socket path, info) of every live tailproxy of this user; stale sockets are removed."""
    out = []
    d = runtime_dir(env)
    dir_fd = open_private_dir(d)
    try:
        for name in sorted(os.listdir(dir_fd)):
            if not name.endswith(".sock"):
                continue
            path = os.path.join(d, name)
            try:
                info = ask(path, {"cmd": "info"}, timeout=5)
            except (ConnectionRefusedError, FileNotFoundError):
                _remove_stale_socket(dir_fd, name)
                continue
            except (OSError, ValueError):
                continue
            out.append((path, info))
    finally:
        os.close(dir_fd)
    return out


def _remove_stale_socket(dir_fd: int, name: str) -> None:
    """Unlink `name` in the verified directory only if it is a socket (never a link's target)."""
    try:
        if stat.S_ISSOCK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def accepted_routes(status: dict) -> list[dict]:
    """The subnet routes a node that accepts routes uses: each peer's primary routes, the exit
    routes (0.0.0.0/0, ::/0) aside."""
    from .node.exitnode import peer_label
    return [{"route": r, "via": peer_label(p)}
            for p in (status.get("Peer") or {}).values()
            for r in p.get("PrimaryRoutes") or [] if not r.endswith("/0")]


def exit_node_rows(status: dict) -> list[dict]:
    """The tailnet's exit nodes (`tailproxy exit-node list`), by name."""
    from .node.exitnode import peer_label
    return sorted(({"name": peer_label(p), "ips": p.get("TailscaleIPs") or [],
                    "online": bool(p.get("Online")), "current": bool(p.get("ExitNode")),
                    "id": p.get("ID")}
                   for p in (status.get("Peer") or {}).values() if p.get("ExitNodeOption")),
                  key=lambda r: r["name"])


def handler(settings: Settings, node, exits, command: list[str], dialer, say: Callable[[str], None],
            exporter=None, names=None) -> Handler:
    """The run's answers: `info` (for ps), `exit-node-list`, `exit-node-set`, `exit-node-clear`.
    `exits` (an ExitNodes or None) is made on the first runtime switch when the run had none."""
    from .node.exitnode import peer_label

    async def handle(req: dict) -> dict:
        import asyncio
        nonlocal exits
        cmd = req["cmd"]
        if cmd == "info":
            info = {"ok": True, "pid": os.getpid(), "hostname": settings.hostname,
                    "command": command, "exit_node": None, "node_name": None, "ips": [],
                    "exports": _exported_ports(exporter), "routes": []}
            if node:
                st = await asyncio.to_thread(node.localapi.status)
                info["node_name"] = ((st.get("Self") or {}).get("DNSName") or "").rstrip(".")
                info["ips"] = st.get("TailscaleIPs") or []
                for p in (st.get("Peer") or {}).values():
                    if p.get("ExitNode"):
                        info["exit_node"] = peer_label(p)
                info["routes"] = accepted_routes(st) if settings.accept_routes else []
            return info
        if not node:
            return {"ok": False, "error": "this tailproxy runs with --no-tailnet"}
        if cmd == "exit-node-list":
            st = await asyncio.to_thread(node.localapi.status)
            return {"ok": True, "exit_nodes": exit_node_rows(st)}
        if cmd in ("exit-node-set", "exit-node-clear"):
            if exits is None:
                from .launcher.exitnodes import ExitNodes
                exits = ExitNodes(node, [], settings.exit_node_allow_lan_access, say,
                                  on_change=dialer.exit_node_changed,
                                  on_changing=dialer.exit_node_changing)
            name = req.get("name") if cmd == "exit-node-set" else None
            if cmd == "exit-node-set" and not isinstance(name, str):
                return {"ok": False, "error": "exit-node-set needs a name"}
            peer = await exits.set(name)
            if dialer.view is not None:
                # done when routing follows it: the view (and the preload's table, published on
                # each load) from a status asked after the change, before the command returns
                await dialer.view.refresh(force=True)
            if names:
                await names.refresh()   # placeholders from now on (or not): no stale mode
            say(f"exit node set to {peer_label(peer)}" if peer else "exit node cleared")
            return {"ok": True, "exit_node": peer_label(peer) if peer else None}
        return {"ok": False, "error": f"unknown command {cmd!r}"}
    return handle


def _exported_ports(exporter) -> list:
    """TCP ports as numbers, UDP ports as "PORT/udp" (`tailproxy ps` prints them as they are)."""
    if exporter is None:
        return []
    return sorted(exporter.exports) + [f"{p}/udp" for p in sorted(exporter.udp_exports)]
