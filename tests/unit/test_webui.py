"""The ui server (agent/web.py) on a real loopback socket: the token (URL, cookie, bearer), the
Host check, the exit-node POST's guard, assets only from the package, and the Prometheus text
read back with the official parser."""
import asyncio
import http.client
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tailproxy.agent.measure import Measurements, ProgramInfo
from tailproxy.agent.web import COOKIE, WebUI


class Node:
    finished = False


def snapshot():
    m = Measurements(lambda a, d, v: "exit-node")
    w = m.for_program(ProgramInfo(1, lambda: 7, ["curl"]))
    t0 = m.clock()
    w.closed(w.opened(7, "x:80", "1.2.3.4:80", True, t0 - 0.02, Node()), 5, 70, "ok")
    w.failed(7, "x:81", "1.2.3.4:81", "ECONNREFUSED", t0)
    top = m.snapshot()
    top.update(pid=1, hostname="h", node_name="h.ts.net", state_dir="/s", programs=[],
               peers=[{"name": "exit.ts.net", "online": True, "path": "derp"}],
               exit_node=None, lookups={"hosts": 1, "magicdns": 2, "placeholder": 3,
                                        "system": 0})
    return top


def request(port, method, path, headers=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def test_token_host_guard_assets_and_metrics():
    switched = []

    async def top():
        return snapshot()

    async def exit_node(name):
        switched.append(name)
        return {"ok": True, "exit_node": name}

    async def main():
        ui = WebUI(top, exit_node, lambda line: None)
        await ui.start()
        try:
            return await asyncio.to_thread(checks, ui)
        finally:
            await ui.close()

    def checks(ui):
        port, tok = ui.port, ui.token
        host = {"Host": f"127.0.0.1:{port}"}
        assert request(port, "GET", "/")[0] == 401
        assert request(port, "GET", "/?token=wrong")[0] == 401
        assert request(port, "GET", "/metrics", {"Authorization": "Bearer nope"})[0] == 401
        status, headers, _ = request(port, "GET", f"/?token={tok}")
        assert status == 302 and headers["Location"] == "/"
        assert f"{COOKIE}={tok}" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
        cookie = {"Cookie": f"{COOKIE}={tok}"}
        status, _, page = request(port, "GET", "/", cookie)
        assert status == 200 and b"<title>tailproxy</title>" in page
        # every asset the page names is ours (no CDN), and is served
        for ref in re.findall(rb'(?:src|href)="([^"]+)"', page):
            assert ref.startswith(b"/"), ref
            assert request(port, "GET", ref.decode(), cookie)[0] == 200
        # DNS rebinding: a page of another name that resolves to 127.0.0.1
        assert request(port, "GET", "/", dict(cookie, Host=f"evil.example:{port}"))[0] == 403
        # the exit-node switch: JSON with the page's header only
        body = b'{"name": "exit2"}'
        assert request(port, "POST", "/api/exit-node",
                       dict(cookie, **{"Content-Type": "application/json"}), body)[0] == 403
        assert request(port, "POST", "/api/exit-node",
                       dict(cookie, **{"Content-Type": "text/plain", "X-Tailproxy": "1"}),
                       body)[0] == 403
        status, _, reply = request(port, "POST", "/api/exit-node",
                                   dict(cookie, **{"Content-Type": "application/json",
                                                   "X-Tailproxy": "1"}), body)
        assert status == 200 and switched == ["exit2"]
        assert request(port, "POST", "/api/exit-node",
                       dict(cookie, **{"Content-Type": "application/json", "X-Tailproxy": "1"}),
                       b'{"name": 5}')[0] == 400
        assert request(port, "POST", "/api/exit-node",
                       dict(cookie, **{"Content-Type": "application/json", "X-Tailproxy": "1"}),
                       b"x" * 10000)[0] == 413
        status, headers, text = request(port, "GET", "/metrics",
                                        dict(host, Authorization=f"Bearer {tok}"))
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        return {f.name: f for f in text_string_to_metric_families(text.decode())}

    fams = asyncio.run(main())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples}
    assert samples[("tailproxy_connections_total", (("route", "exit-node"),))] == 1
    assert samples[("tailproxy_connection_failures_total", (("errno", "ECONNREFUSED"),))] == 1
    assert samples[("tailproxy_bytes_total", (("direction", "down"),))] == 70
    assert samples[("tailproxy_lookups_total", (("source", "placeholder"),))] == 3
    assert fams["tailproxy_connect_latency_seconds"].type == "histogram"
    assert samples[("tailproxy_connect_latency_seconds_bucket", (("le", "0.01"),))] == 0
    assert samples[("tailproxy_connect_latency_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("tailproxy_connect_latency_seconds_count", ())] == 1
    assert samples[("tailproxy_connect_latency_seconds_sum", ())] == pytest.approx(0.02, abs=0.01)
