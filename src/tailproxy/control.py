"""Runtime control of running tailproxies: `tailproxy ps`, `tailproxy exit-node set|clear|list`.

Each run listens on <runtime dir>/<pid>.sock (0600, dir 0700): one JSON request per line, one JSON
reply per line. A socket nobody answers on is a run that ended; it is removed when seen.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from typing import Awaitable, Callable

from .rundir import open_private_dir, user_runtime_dir

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
