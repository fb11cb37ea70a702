"""The agent's measurements in the Prometheus text format (the ui server's /metrics), built
with the official client library from one `top` snapshot (agent/measure.py)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Snapshot:
    """A collector over one snapshot (a registry is made per scrape: nothing kept)."""

    def __init__(self, top: dict):
        self.top = top

    def collect(self):
        t = self.top["totals"]
        c = CounterMetricFamily("tailproxy_connections", "connections the proxy routed, by route",
                                labels=["route"])
        for route, n in t["connections"].items():
            c.add_metric([route], n)
        yield c
        f = CounterMetricFamily("tailproxy_connection_failures",
                                "connects that failed, or connections cut, by errno",
                                labels=["errno"])
        for kind, n in t["failures"].items():
            f.add_metric([kind], n)
        yield f
        b = CounterMetricFamily("tailproxy_bytes", "bytes of closed connections",
                                labels=["direction"])
        b.add_metric(["up"], t["bytes_up"])
        b.add_metric(["down"], t["bytes_down"])
        yield b
        lk = CounterMetricFamily("tailproxy_lookups", "name lookups by answer source",
                                 labels=["source"])
        for source, n in self.top["lookups"].items():
            lk.add_metric([source], n)
        yield lk
        yield GaugeMetricFamily("tailproxy_open_connections", "connections open now",
                                value=t["open"])
        lat = t["connect_latency"]
        buckets, total = [], 0
        for bound, n in zip(list(lat["bounds"]) + ["+Inf"], lat["counts"]):
            total += n
            buckets.append((str(bound), total))
        yield HistogramMetricFamily("tailproxy_connect_latency_seconds",
                                    "from the program's connect to the relay's start",
                                    buckets=buckets, sum_value=lat["sum"])
        p = GaugeMetricFamily("tailproxy_peer_online", "1 if the tailnet peer is online",
                              labels=["peer", "path"])
        for peer in self.top["peers"]:
            p.add_metric([peer["name"], peer["path"]], 1 if peer["online"] else 0)
        yield p


def exposition(top: dict) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(top))
    return generate_latest(registry)
