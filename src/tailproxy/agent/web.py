"""`tailproxy ui`: the agent's local web page and its Prometheus endpoint (aiohttp, on the
agent's own loop; started on the first `ui` request, stopped with the agent).

Who gets in: the server listens on 127.0.0.1 only, on a random port, so no tailnet peer can
reach it (the node serves peers only the ports a program exported). Every request must come
from a process of the agent's own uid (the kernel's socket tables name the owner of the
connecting socket: peeruid.py) and carry the agent's token, as Jupyter does: in the URL the
`ui` command prints (`?token=`, exchanged at once for a cookie, SameSite=Strict, HttpOnly), in
that cookie, or as `Authorization: Bearer` (for a Prometheus scraper). A Host header other
than the loopback address (DNS rebinding) is refused. Changing the exit node is a POST with a
JSON body and a custom header, which no other site's page can send here.

Every asset is served from the package (agent/webui/); nothing is fetched from elsewhere.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
from importlib import resources
from typing import Awaitable, Callable

from aiohttp import web

from ..peeruid import tcp_peer_uid
from . import metrics

COOKIE = "tailproxy_ui"
ASSETS = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
          "/app.css": ("app.css", "text/css")}
SSE_INTERVAL_S = 1.0
MAX_BODY = 4096
CSRF_HEADER = "X-Tailproxy"


class WebUI:
    def __init__(self, top: Callable[[], Awaitable[dict]],
                 exit_node: Callable[[str | None], Awaitable[dict]], log: Callable[[str], None]):
        self.top, self.exit_node, self.log = top, exit_node, log
        self.token = secrets.token_urlsafe(32)
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._assets = {path: (resources.files(__package__).joinpath("webui", name).read_bytes(),
                               kind) for path, (name, kind) in ASSETS.items()}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/", self._asset)
        app.router.add_get("/app.js", self._asset)
        app.router.add_get("/app.css", self._asset)
        app.router.add_get("/api/top", self._api_top)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/exit-node", self._api_exit_node)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, reuse_address=False)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- who gets in -----------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        given = (request.query.get("token") or request.cookies.get(COOKIE) or
                 request.headers.get("Authorization", "").removeprefix("Bearer ").strip())
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        local = transport.get_extra_info("sockname") if transport else None
        uid = await asyncio.to_thread(tcp_peer_uid, peer, local) if peer and local else None
        if uid != os.getuid():
            self.log(f"ui: refused a connection from uid {uid}")
            raise web.HTTPForbidden(text="not your agent\n")
        if request.host not in (f"127.0.0.1:{self.port}", f"localhost:{self.port}"):
            raise web.HTTPForbidden(text="wrong Host\n")
        if not self._authorized(request):
            raise web.HTTPUnauthorized(text="open the URL `tailproxy ui` prints\n")
        if "token" in request.query and request.method == "GET" and request.path == "/":
            # the token leaves the address bar (and the history) for a cookie
            resp = web.HTTPFound("/")
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict", path="/")
            raise resp
        resp = await handler(request)
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                   "style-src 'self'; frame-ancestors 'none'")
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    # -- pages -------------------------------------------------------------------------------
    async def _asset(self, request: web.Request) -> web.Response:
        body, kind = self._assets[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def _api_top(self, request: web.Request) -> web.Response:
        return web.json_response(await self.top())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        try:
            while True:
                data = json.dumps(await self.top(), separators=(",", ":"))
                await resp.write(f"data: {data}\n\n".encode())
                await asyncio.sleep(SSE_INTERVAL_S)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    async def _api_exit_node(self, request: web.Request) -> web.Response:
        if request.headers.get(CSRF_HEADER) != "1" or request.content_type != "application/json":
            raise web.HTTPForbidden(text="a JSON request from the page only\n")
        try:
            body = await request.json()
            if not isinstance(body, dict) or "name" not in body:
                raise ValueError
            name = body["name"]
            if name is not None and not isinstance(name, str):
                raise ValueError
        except ValueError:
            raise web.HTTPBadRequest(text='expected {"name": "NAME" or null}\n') from None
        reply = await self.exit_node(name)
        return web.json_response(reply, status=200 if reply.get("ok") else 409)

    async def _metrics(self, request: web.Request) -> web.Response:
        text = metrics.exposition(await self.top())
        return web.Response(body=text, headers={"Content-Type": metrics.CONTENT_TYPE})
