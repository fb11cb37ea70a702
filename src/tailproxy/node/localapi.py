"""The node's LocalAPI (status, prefs, dns-query, whois), served inside the node library.

Requests go in process through tsnet's LocalClient; no socket, no HTTP on the wire. Blocking:
call from a thread (asyncio.to_thread) when an event loop is running.
"""
from __future__ import annotations

import ctypes
import json
import urllib.parse
from typing import Any

from . import library
from .errors import LocalAPIError, NodeError


class LocalAPI:
    def __init__(self, handle: int):
        self._handle = handle

    def request(self, method: str, path: str, body: Any = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        """(HTTP status, body); `timeout` bounds the request (default: the node's 30 s)."""
        data = None if body is None else json.dumps(body).encode()
        status = ctypes.c_int()
        out = ctypes.c_void_p()
        out_len = ctypes.c_int64()
        try:
            library.call("localapi", self._handle, method.encode(), path.encode(), data,
                         len(data or b""), int((timeout or 0) * 1000), ctypes.byref(status),
                         ctypes.byref(out),
                         ctypes.byref(out_len))
        except NodeError as e:
            raise LocalAPIError(f"LocalAPI {path}: {e}") from None
        try:
            payload = ctypes.string_at(out.value, out_len.value) if out.value else b""
        finally:
            if out.value:
                library.library().tp_free(out.value)
        return status.value, payload

    def _json(self, method: str, path: str, body: Any = None, ok=(200,)) -> Any:
        status, data = self.request(method, path, body)
        if status not in ok:
            raise LocalAPIError(f"LocalAPI {path}: {status} {data.decode(errors='replace').strip()}",
                                status=status)
        return json.loads(data) if data.strip() else None

    # -- endpoints --------------------------------------------------------------------------
    def status(self, peers: bool = True) -> dict:
        return self._json("GET", "status" + ("" if peers else "?peers=false"))

    def prefs(self) -> dict:
        return self._json("GET", "prefs")

    def edit_prefs(self, masked: dict) -> dict:
        """PATCH prefs: `masked` holds the new values plus `<Field>Set: true` for each."""
        return self._json("PATCH", "prefs", masked)

    def start(self, options: dict) -> None:
        self._json("POST", "start", options, ok=(200, 204))

    def login_interactive(self) -> None:
        self._json("POST", "login-interactive", ok=(200, 204))

    def dns_query(self, name: str, qtype: str = "A") -> dict:
        q = urllib.parse.urlencode({"name": name, "type": qtype})
        return self._json("GET", "dns-query?" + q)

    def ping(self, ip: str, timeout: float) -> bool:
        """Does the peer at `ip` answer a disco ping (over WireGuard's path) within `timeout`?"""
        try:
            status, data = self.request("POST", "ping?" + urllib.parse.urlencode(
                {"ip": ip, "type": "disco"}), timeout=timeout)
        except LocalAPIError:
            return False
        if status != 200:
            return False
        return not (json.loads(data) or {}).get("Err")

    def whois(self, addr: str) -> dict | None:
        """Who is at `addr` (ip or ip:port); None when it is no node of this tailnet."""
        status, data = self.request("GET", "whois?" + urllib.parse.urlencode({"addr": addr}))
        if status == 404:
            return None
        if status != 200:
            raise LocalAPIError(f"LocalAPI whois: {status} {data.decode(errors='replace').strip()}",
                                status=status)
        return json.loads(data)
