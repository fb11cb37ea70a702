"""Tailscale nodes of the testnet: userspace tailscaled per host, joined with the pre-auth key.

Userspace networking needs no TUN device and keeps the node's traffic in its namespace;
inbound tailnet TCP is forwarded to 127.0.0.1/::1 of the node's host, which is where the
peer's services listen.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

from .procs import PartFailed, Procs, run

TS_PORT = 41641


@dataclass
class Node:
    name: str            # host name, also the tailnet hostname
    ns: str
    lan_ip: str
    dir: str             # statedir
    socks5: str | None = None
    exit_node: bool = False
    routes: tuple[str, ...] = ()   # subnet routes it advertises (it is their router)
    wrap: object = None  # argv -> argv inside this host
    env: dict = field(default_factory=dict)
    bins: dict = field(default_factory=dict)

    @property
    def socket(self) -> str:
        return os.path.join(self.dir, "tailscaled.sock")

    def start(self, procs: Procs) -> None:
        os.makedirs(self.dir, exist_ok=True)
        argv = [self.bins["tailscaled"], "--tun=userspace-networking", f"--statedir={self.dir}",
                f"--state={os.path.join(self.dir, 'tailscaled.state')}", f"--socket={self.socket}",
                f"--port={TS_PORT}", "--no-logs-no-support"]
        if self.socks5:
            argv.append(f"--socks5-server={self.socks5}")
        procs.start(f"tailscaled-{self.name}", self.wrap(argv), dict(self.env, HOME=self.dir))

    def cli(self, *args: str, check: bool = True, timeout: float = 30):
        argv = self.wrap([self.bins["tailscale"], f"--socket={self.socket}", *args])
        return run(f"tailscale {args[0]} ({self.name})", argv, env=dict(self.env, HOME=self.dir),
                   timeout=timeout, check=check)

    def wait_socket(self, procs: Procs, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            procs.check(f"tailscaled-{self.name}")
            if time.monotonic() > deadline:
                raise PartFailed(f"tailscaled-{self.name}", f"no socket after {timeout:.0f}s",
                                 procs.procs[f"tailscaled-{self.name}"].log)
            time.sleep(0.05)

    def up_argv(self, login_server: str, authkey: str) -> list[str]:
        argv = [self.bins["tailscale"], f"--socket={self.socket}", "up", f"--login-server={login_server}",
                f"--auth-key={authkey}", f"--hostname={self.name}", "--timeout=60s"]
        if self.exit_node:
            argv.append("--advertise-exit-node")
        if self.routes:
            argv.append("--advertise-routes=" + ",".join(self.routes))
        return self.wrap(argv)

    def serve_http(self, port: int, target: str) -> None:
        """`tailscale serve` plain HTTP on the tailnet port, proxied to target (adds X-Forwarded-For)."""
        self.cli("serve", "--bg", f"--http={port}", target)

    def status(self) -> dict | None:
        r = self.cli("status", "--json", check=False, timeout=10)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None


def peers_by_host(status: dict) -> dict[str, dict]:
    return {p.get("HostName"): p for p in (status.get("Peer") or {}).values()}


def mesh_problems(statuses: dict[str, dict | None], exit_names: list[str],
                  routes: dict[str, list[str]] | None = None) -> list[str]:
    """What still keeps the tailnet from being ready (empty list: ready). Pure, for tests.
    ``routes``: host -> the subnet routes every other host must see it as the primary of."""
    problems = []
    names = list(statuses)
    for name, st in statuses.items():
        if not st:
            problems.append(f"{name}: no status")
            continue
        if st.get("BackendState") != "Running":
            problems.append(f"{name}: {st.get('BackendState')}")
            continue
        peers = peers_by_host(st)
        for other in names:
            if other == name:
                continue
            p = peers.get(other)
            if not p:
                problems.append(f"{name}: does not see {other}")
            elif not p.get("Online"):
                problems.append(f"{name}: sees {other} offline")
            elif other in exit_names and not p.get("ExitNodeOption"):
                problems.append(f"{name}: {other} not an exit node option yet")
            else:
                missing = set((routes or {}).get(other, ())) - set(p.get("PrimaryRoutes") or ())
                if missing:
                    problems.append(f"{name}: {other} not the router of {', '.join(sorted(missing))} yet")
    return problems


def self_info(status: dict) -> dict:
    me = status.get("Self") or {}
    ips = me.get("TailscaleIPs") or []
    return {
        "ipv4": next((ip for ip in ips if ":" not in ip), None),
        "ipv6": next((ip for ip in ips if ":" in ip), None),
        "fqdn": (me.get("DNSName") or "").rstrip("."),
    }
