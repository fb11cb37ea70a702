"""``python -m tailproxy.proxy --no-tailnet --channel PATH [--socks5 HOST:PORT]
[--socks5-auth USER:PASS] [--verbose]``

Runs the proxy standalone with the direct dialer (for the preload's tests and
benchmarks) until SIGINT/SIGTERM. Prints ``ready`` on stdout once listening;
the SOCKS5 address, if any, goes to stderr as ``socks5 HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from .dialer import DirectDialer
from .channel_proto import FLAG_LISTEN_UDP, OP_LISTEN
from .server import Proxy
from .. import eventloop


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or "127.0.0.1", int(port))


def parse_userpass(text: str) -> tuple[str, str]:
    user, sep, pw = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASS")
    return (user, pw)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tailproxy.proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--no-tailnet", action="store_true", help="dial directly from this host (required)")
    p.add_argument("--channel", metavar="PATH", help="preload channel socket path")
    p.add_argument("--socks5", metavar="HOST:PORT", type=parse_hostport,
                   help="also serve SOCKS5 + HTTP proxy here")
    p.add_argument("--socks5-auth", metavar="USER:PASS", type=parse_userpass)
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="S")
    p.add_argument("--idle-timeout", type=float, default=None, metavar="S")
    p.add_argument("--verbose", "-v", action="store_true")
    return p


async def _run(args) -> int:
    async def listen_notice(req) -> None:   # standalone: no exporter, just say what came
        kind = "LISTEN" if req.op == OP_LISTEN else "UNLISTEN"
        proto = "udp" if req.op == OP_LISTEN and req.flags & FLAG_LISTEN_UDP else "tcp"
        print(f"tailproxy: {kind} {proto}{req.family} port {req.port} pid {req.pid}",
              file=sys.stderr, flush=True)

    proxy = Proxy(DirectDialer(), channel_path=args.channel, socks_listen=args.socks5,
                  socks_auth=args.socks5_auth, connect_timeout=args.connect_timeout,
                  idle_timeout=args.idle_timeout, verbose=args.verbose,
                  on_listen=listen_notice if args.verbose else None)
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if proxy.socks_address is not None:
            h, port = proxy.socks_address[:2]
            print(f"socks5 {'[' + h + ']' if ':' in h else h}:{port}", file=sys.stderr, flush=True)
        p4, p6 = proxy.park_ports
        print(f"ready park={p4},{p6}", flush=True)
        await stop.wait()
    finally:
        await proxy.close()
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.no_tailnet:
        print("python -m tailproxy.proxy: only --no-tailnet is supported standalone", file=sys.stderr)
        return 2
    if not args.channel and not args.socks5:
        print("python -m tailproxy.proxy: nothing to do (give --channel and/or --socks5)", file=sys.stderr)
        return 2
    return eventloop.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
