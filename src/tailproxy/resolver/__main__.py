"""``python -m tailproxy.resolver --channel PATH [options]``: the proxy with the name service and
its DNS responder, standalone, dialling directly (no tailnet) -- for the preload's resolver tests
and the DNS benchmark. Prints ``ready`` on stdout once listening.

  --mode auto|tailnet        tailnet: placeholders for names that are not tailnet names
  --exit-node                pretend an exit node is in use (auto then behaves as tailnet)
  --name NAME=IP[,IP]        a stand-in tailnet peer NAME.<suffix> (repeatable)
  --suffix SUFFIX            MagicDNS suffix of the stand-in tailnet (default ts.test)
  --self NAME=IP[,IP]        the stand-in node's own name
  --hosts FILE               hosts file instead of /etc/hosts
  --upstream NAME=IP         what the far side resolves NAME to when a placeholder is dialled
  --placeholder-v4 CIDR, --placeholder-v6 CIDR
  --server-file PATH         write the responder's addresses (TAILPROXY_DNS_SERVER) there
  --names-table PATH         publish the name table there (TAILPROXY_NAMES; a 0700 directory)
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from ..proxy.dialer import DirectDialer
from ..proxy.server import Proxy
from ..policy import RouteDialer
from .hosts import HostsFile
from .namepublisher import NameTablePublisher
from .nametable import NameTableFile
from .placeholders import DEFAULT_V4, DEFAULT_V6, PlaceholderMap
from .responder import DNSResponder
from .service import NameService


class MapDialer:
    """Dial names of `mapping` at their address (a stand-in for the far side's resolver)."""

    def __init__(self, inner, mapping: dict[str, str]):
        self.inner, self.mapping = inner, mapping

    async def dial(self, host, port, timeout):
        return await self.inner.dial(self.mapping.get(host.rstrip(".").lower(), host), port,
                                     timeout)

    def start_dial(self, host, port, timeout):
        return self.dial(host, port, timeout)


def _pairs(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for it in items:
        name, _, ips = it.partition("=")
        out[name.strip().lower()] = [i.strip() for i in ips.split(",") if i.strip()]
    return out


def fake_status(names: dict, suffix: str, self_name: dict, exit_node: bool) -> dict:
    st = {"CurrentTailnet": {"MagicDNSSuffix": suffix}, "Peer": {},
          "ExitNodeStatus": {"ID": "stand-in-exit"} if exit_node else None}
    for n, ips in self_name.items():
        st["Self"] = {"DNSName": f"{n}.{suffix}.", "TailscaleIPs": ips}
    for i, (n, ips) in enumerate(names.items()):
        st["Peer"][f"k{i}"] = {"DNSName": f"{n}.{suffix}.", "TailscaleIPs": ips}
    return st


async def _run(a) -> int:
    st = fake_status(_pairs(a.name), a.suffix, _pairs(a.self), a.exit_node)
    names = NameService(status=lambda: st, mode=a.mode,
                        hosts=HostsFile(a.hosts) if a.hosts else None,
                        placeholders=PlaceholderMap(a.placeholder_v4, a.placeholder_v6))
    upstream = {k: v[0] for k, v in _pairs(a.upstream).items() if v}
    dialer = RouteDialer(node=None, direct=MapDialer(DirectDialer(), upstream), view=None,
                         placeholders=names.placeholders)
    proxy = Proxy(dialer, channel_path=a.channel, verbose=a.verbose, on_names=names.handle)
    responder = DNSResponder(names.query)
    await names.refresh()
    await responder.start()
    await proxy.start()
    if a.server_file:
        with open(a.server_file, "w") as f:
            f.write(responder.env_value())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as parts:
        if a.names_table:
            publisher = NameTablePublisher(NameTableFile(a.names_table, names.hosts.path), names)
            await publisher.start()
            parts.push_async_callback(publisher.stop)
        try:
            print("ready", flush=True)
            await stop.wait()
        finally:
            await proxy.close()
            await responder.close()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tailproxy.resolver",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--channel", required=True)
    p.add_argument("--mode", choices=("auto", "tailnet"), default="auto")
    p.add_argument("--exit-node", action="store_true")
    p.add_argument("--name", action="append", default=[])
    p.add_argument("--self", action="append", default=[])
    p.add_argument("--suffix", default="ts.test")
    p.add_argument("--hosts")
    p.add_argument("--upstream", action="append", default=[])
    p.add_argument("--placeholder-v4", default=DEFAULT_V4)
    p.add_argument("--placeholder-v6", default=DEFAULT_V6)
    p.add_argument("--server-file")
    p.add_argument("--names-table")
    p.add_argument("--verbose", "-v", action="store_true")
    return asyncio.run(_run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
