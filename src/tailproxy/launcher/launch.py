"""Run a program on the tailnet: node up → proxy up → program with the preload → status out."""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import sys

from .. import control as control_mod
from ..config import ConfigError, Settings, check_run
from ..control import ControlServer
from ..exporter.exporter import Exporter
from ..fdlimit import raise_soft_limit
from ..exporter.ports import PortFilter
from ..node import Node, NodeConfig, NodeError
from ..node.exitnode import peer_label
from ..policy import NodeHandoff, RouteDialer, RouteTableFile, TablePublisher, TailnetView
from ..printable import printable
from ..proxy.dialer import DirectDialer
from ..proxy.server import Proxy
from ..resolver import DNSResponder, NameService, PlaceholderMap, node_dns_query
from ..resolver.namepublisher import start_name_table
from ..rundir import RunDirError, create_run_dir
from .child import run_child as _run_child
from .childenv import child_env
from .exitnodes import ExitNodes
from .lan import local_networks
from .program import program_and_preload
from .. import eventloop

_DRAIN_S = 5.0      # after the program exits, for its last bytes to reach the tailnet


def _say(msg: str) -> None:
    print(f"tailproxy: {printable(msg)}", file=sys.stderr, flush=True)


def _log_line(line: str) -> None:
    print(printable(line), file=sys.stderr, flush=True)


class _Terminated(Exception):
    pass


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _up_stoppable_by_sigterm(node: Node, timeout: float) -> None:
    """node.up(), during which a SIGTERM stops the node cleanly (an ephemeral one logs out)
    instead of killing us; up() polls in short calls, so the exception lands between them.
    Only here: raised elsewhere (inside a fork hook, say) it could be lost. Once the program
    runs, the event loop forwards SIGTERM to it."""
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        node.up(timeout)
    finally:
        signal.signal(signal.SIGTERM, old)


def run(settings: Settings, command: list[str]) -> int:
    raise_soft_limit()      # fds for every connection of the program (fdlimit.py)
    verbose = settings.verbose
    log = _say if verbose else (lambda msg: None)
    found = program_and_preload(command, _say, settings.intercept)
    if isinstance(found, int):
        return found
    program, preload, interception = found
    try:
        check_run(settings)     # flag combinations (config.py)
    except ConfigError as e:
        _say(str(e))
        return 2

    try:
        rundir = create_run_dir()  # 0700 in the per-user runtime dir: only we reach the channel
    except RunDirError as e:
        _say(str(e))
        return 1
    node = exits = view = None
    try:
        if not settings.no_tailnet:
            node = Node(NodeConfig(state_dir=settings.state_dir, hostname=settings.hostname,
                                   authkey=settings.authkey, control_url=settings.control_url,
                                   ephemeral=settings.ephemeral,
                                   accept_routes=settings.accept_routes), log=log)
            try:
                _up_stoppable_by_sigterm(node, settings.timeout)
                log(f"on the tailnet as {settings.hostname} ({', '.join(node.ips())})")
                view = TailnetView(node.localapi.status, accept_routes=settings.accept_routes)
                if settings.exit_node:
                    exits = ExitNodes(node, settings.exit_node,
                                      settings.exit_node_allow_lan_access, _say,
                                      on_change=view.invalidate)    # until the dialer exists
                    exits.select_initial(timeout=settings.timeout)
                    log(f"exit node: {peer_label(exits.current)}")
                elif node.exit_node():
                    node.clear_exit_node()  # saved state may carry one; this run asked for none
            except NodeError as e:
                _say(f"cannot join the tailnet: {e}" if not node.running else str(e))
                return 1
            except ValueError as e:
                _say(str(e))
                return 2
        else:
            log("--no-tailnet: dialling destinations directly")
        names = None
        if settings.dns != "off":   # the name service (docs/NAMES.md)
            names = NameService(
                status=node.localapi.status if node else None,
                dns_query=node_dns_query(node.localapi) if node else None,
                mode="tailnet" if settings.dns == "tailnet" else "auto", log=log,
                placeholders=PlaceholderMap(settings.dns_placeholder_v4,
                                            settings.dns_placeholder_v6))
        dialer = RouteDialer(node=node, direct=DirectDialer(), view=view,
                             placeholders=names.placeholders if names else None,
                             tailnet_only=settings.tailnet_only, log=_say)
        if exits:
            exits.on_change = dialer.exit_node_changed
            exits.on_changing = dialer.exit_node_changing
        serve = _serve(settings, dialer, rundir, preload, program, command, node, exits, names,
                       interception)
        try:
            return eventloop.run(serve)
        finally:
            serve.close()       # a signal before it started: no "never awaited" warning
    except KeyboardInterrupt:
        return 130
    except _Terminated:
        return 128 + signal.SIGTERM
    finally:
        if node:
            node.close()
        shutil.rmtree(rundir, ignore_errors=True)


async def _serve(settings: Settings, dialer, rundir, preload, program, command, node, exits,
                 names=None, interception=None) -> int:
    proxy_only = not command
    if proxy_only:
        listen = settings.socks5
        auth = None if settings.socks5_no_auth else (
            settings.socks5_auth or ("tailproxy", secrets.token_urlsafe(16)))
    else:
        listen = ("127.0.0.1", 0)
        auth = ("tailproxy", secrets.token_urlsafe(16))
    proxy = Proxy(dialer, channel_path=os.path.join(rundir, "channel.sock"), socks_listen=listen,
                  socks_auth=auth, connect_timeout=settings.connect_timeout,
                  verbose=settings.verbose, log=_log_line,
                  handoff=NodeHandoff(node) if node else None)
    exporter = None
    if settings.export_listeners and node:
        exporter = Exporter(node, PortFilter(settings.export_allow_ports,
                                             settings.export_deny_ports, settings.export_max),
                            settings.export_proxy_protocol, _say, verbose=settings.verbose,
                            idle_timeout=settings.export_idle_timeout)
        proxy.on_listen = exporter.on_notice
    control = ControlServer(control_mod.handler(settings, node, exits, command, dialer, _say,
                                                exporter, names))
    responder = None
    if names:
        await names.refresh()
        proxy.on_names = names.handle
        if not proxy_only:
            responder = DNSResponder(names.query, log=_say if settings.verbose else None)
    # The run's parts start in this order and stop in the reverse one, however the run ends.
    async with contextlib.AsyncExitStack() as parts:
        try:
            await _start_parts(parts, exporter, responder, proxy)
        except OSError as e:
            await parts.aclose()
            _say(f"cannot start the local proxy on {listen[0]}:{listen[1]}: {e.strerror or e}")
            return 1
        try:
            await control.start()
            parts.push_async_callback(control.close)
        except OSError as e:
            _say(f"warning: no runtime control ({e}); `tailproxy ps` will not list this run")
        if exits:
            exits.start_monitor()
            parts.push_async_callback(exits.stop)
        if proxy_only:
            return await _serve_proxy_only(proxy, auth, settings.show_password)
        bypass = list(settings.bypass)
        if settings.exit_node_allow_lan_access:
            bypass += [n for n in local_networks() if n not in bypass]
        table = await _start_table(parts, dialer, rundir, settings, bypass)
        names_table = await start_name_table(parts, names, rundir, _say)
        seccomp = interception is not None and interception.kind == "seccomp"
        env = child_env(dict(os.environ), preload=preload, channel=proxy.channel_path,
                        bypass=bypass, verbose=settings.verbose,
                        # intercepted programs get no proxy variables: never proxied twice
                        proxy_addr=None if seccomp else proxy.socks_address, proxy_auth=auth,
                        export_listeners=exporter is not None, park_ports=proxy.park_ports,
                        dns_server=responder.env_value() if responder else None,
                        table=table, names=names_table)
        if interception is not None:
            env = interception.env(env, dict(os.environ), preload)
            program, command = interception.argv(program, command)
        status = await _run_child(program, command, env)
        # Data the program sent just before exiting may still be on its way to the node:
        # stopping now would cut it off.
        left = await proxy.drain(_DRAIN_S)
        if left:
            _say(f"{left} connection(s) still sending after {_DRAIN_S:g}s; closing them")
        return status


async def _start_table(parts: contextlib.AsyncExitStack, dialer: RouteDialer, rundir: str,
                       settings: Settings, bypass: list[str]) -> str | None:
    """The routing table the preload reads (policy/publisher.py), published and kept
    current; its path, or None (then the preload hands every connection over)."""
    if settings.proxy_all:
        return None
    try:
        table = RouteTableFile(os.path.join(rundir, "routes"))
    except OSError as e:
        _say(f"warning: no routing table ({e}); every connection goes through the proxy")
        return None
    publisher = TablePublisher(table, view=dialer.view, placeholders=dialer.placeholders,
                               tailnet_only=settings.tailnet_only, bypass=bypass, log=_say)
    dialer.table = publisher
    await publisher.start()
    parts.push_async_callback(publisher.stop)
    return table.path


async def _start_parts(parts: contextlib.AsyncExitStack, exporter, responder, proxy) -> None:
    """Exporter, DNS responder, proxy: each one's stop is pushed on `parts` once it runs."""
    if exporter:
        await exporter.start()
        parts.push_async_callback(exporter.close)
    if responder:
        parts.push_async_callback(responder.close)  # before start: it undoes a partial start too
        await responder.start()
    await proxy.start()
    parts.push_async_callback(proxy.close)


async def _serve_proxy_only(proxy, auth, show_password: bool) -> int:
    say_proxy_address(proxy.socks_address, auth, show_password)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    return 0


def say_proxy_address(address, auth, show_password: bool) -> None:
    """The start-up banner of proxy-only mode (here, or on an agent: agent/client.py)."""
    host, port = address
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # stderr often ends up in logs and terminal scrollback: the password only on request.
    password = auth[1] if show_password else "PASSWORD"
    cred = f"{auth[0]}:{password}@" if auth else ""
    if not auth:
        how = " (no authentication)"
    elif show_password:
        how = f" (user {auth[0]}, password {auth[1]})"
    else:
        how = f" (user {auth[0]}, password hidden: --show-password prints it)"
    _say(f"SOCKS5 and HTTP proxy on {hp}{how}")
    _say(f"e.g. curl --proxy socks5h://{cred}{hp} http://HOST/   — Ctrl-C to stop")
