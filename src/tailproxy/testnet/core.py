"""Build, describe and tear down one test tailnet. The CLI (__main__) wraps this.

Topology (one network namespace per host, names `<run id>-<host>`, run id `tn<pid>`):

    lan 198.18.0.0/24: bridge br0 inside the `sw` namespace, a veth to each host
      control .1 (headscale)   peer .2   exit .3   client .4   [exit2 .5]
    "internet": /32 point-to-point veths exit<->inet (198.19.0.1 <-> 198.19.0.2) and
      exit2<->inet (198.19.0.3 <-> 198.19.0.2); only exits can reach it.
    subnet route: `exit` also advertises the internet segment 198.19.0.0/24 (approved), so a
      node that accepts routes reaches the internet host through it without using an exit node.

No namespace has a default route or any link to the root namespace. Each host's processes run
in a private mount namespace with their own /etc/resolv.conf and /etc/hosts bound over the real
ones, so the host's /etc is never changed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from . import dnsmasq
from . import netns as netns_mod
from .binaries import find_binaries, log
from .control import Control
from .hosts import Node, mesh_problems, self_info
from .procs import PartFailed, Procs, log_tail
from .procs import _preexec as procs_preexec
from .tls import make_certs

LAN_PREFIX = "198.18.0.0/24"
LAN_IP = {"control": "198.18.0.1", "peer": "198.18.0.2", "exit": "198.18.0.3",
          "client": "198.18.0.4", "exit2": "198.18.0.5"}
INET_IP = "198.19.0.2"
EGRESS_IP = {"exit": "198.19.0.1", "exit2": "198.19.0.3"}
INET_ROUTE = "198.19.0.0/24"          # the internet segment, a subnet route through SUBNET_ROUTER
SUBNET_ROUTER = "exit"
INET_NAME = "internet.test"
DOMAIN = "ts.test"
ECHO_PORT = 7
PEER_HTTP_PORT = 8080
PEER_HTTP_SERVE_PORT = 8081  # same server behind `tailscale serve` (Host must be peer.<domain>:8081)
INET_HTTP_PORT = 80
PEER_SOCKS5 = "127.0.0.1:1055"
CLIENT_RESOLVER = "127.0.0.53"

SRC_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Never let a Tailscale or control process talk to anything off this machine.
TS_ENV = {
    "TS_NO_LOGS_NO_SUPPORT": "true",
    "TS_DISABLE_PORTMAPPER": "1",
    "TS_PANIC_IF_HIT_MAIN_CONTROL": "1",
}

HOSTS_FILE = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class Testnet:
    def __init__(self, exit_nodes: int = 1, run_id: str | None = None, timeout: float = 90):
        if exit_nodes not in (1, 2):
            raise ValueError("exit_nodes must be 1 or 2")
        self.exit_names = ["exit", "exit2"][:exit_nodes]
        self.run_id = run_id or f"tn{os.getpid()}"
        self.timeout = timeout
        self.ns = netns_mod.Netns(self.run_id)
        self.run_dir: str | None = None
        self.procs: Procs | None = None
        self.info: dict | None = None
        self._closed = False
        self._lock = threading.Lock()

    # ---- helpers ---------------------------------------------------------------------------

    def _host_dir(self, host: str) -> str:
        d = os.path.join(self.run_dir, "hosts", host)
        os.makedirs(d, exist_ok=True)
        return d

    def _etc(self, host: str, nameserver: str) -> dict[str, str]:
        """Files bound over /etc in this host's mount namespace."""
        d = self._host_dir(host)
        resolv = os.path.join(d, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver {nameserver}\noptions timeout:2 attempts:2\n")
        hosts = os.path.join(d, "hosts")
        with open(hosts, "w") as f:
            f.write(HOSTS_FILE)
        return {"/etc/resolv.conf": resolv, "/etc/hosts": hosts}

    def _wrapper(self, host: str):
        ns = self.ns.name(host)
        binds = self.binds[host]
        return lambda argv: netns_mod.wrap(ns, binds, argv)

    def _base_env(self) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
               "LANG": "C.UTF-8", **TS_ENV}
        if self.certs:
            env["SSL_CERT_FILE"] = self.certs.ca_cert
        return env

    # ---- steps -----------------------------------------------------------------------------

    def _network(self) -> None:
        n = self.ns
        lan_hosts = ["control", "peer", *self.exit_names, "client"]
        sw = n.add("sw")
        for h in lan_hosts + ["inet"]:
            n.add(h)
        n.bridge(sw, "br0")
        for h in lan_hosts:
            n.veth(sw, f"v-{h}", n.name(h), "eth0")
            n.up(sw, f"v-{h}", master="br0")
            n.addr(n.name(h), "eth0", f"{LAN_IP[h]}/24")
            n.up(n.name(h), "eth0")
        inet = n.name("inet")
        for h in self.exit_names:
            n.veth(n.name(h), "inet0", inet, f"{h}0")
            n.addr(n.name(h), "inet0", EGRESS_IP[h], peer=INET_IP)
            n.addr(inet, f"{h}0", INET_IP, peer=EGRESS_IP[h])
            n.up(n.name(h), "inet0")
            n.up(inet, f"{h}0")

    def _service(self, host: str, name: str, args: list[str]) -> str:
        ready = os.path.join(self.run_dir, "ready", name)
        os.makedirs(os.path.dirname(ready), exist_ok=True)
        argv = [sys.executable, "-m", "tailproxy.testnet.services", *args, "--ready-file", ready]
        env = dict(self._base_env(), PYTHONPATH=SRC_DIR, PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
        self.procs.start(name, self._wrapper(host)(argv), env)
        self._ready[name] = lambda: os.path.exists(ready)
        return ready

    def _dnsmasq(self, host: str, name: str, argv: list[str], log: str | None = None) -> None:
        """A dnsmasq (testnet.dnsmasq); ready once it logged its start (to log, or its stderr)."""
        proc = self.procs.start(name, self._wrapper(host)(argv), self._base_env())
        log = log or proc.log
        self._ready[name] = lambda: dnsmasq.started(log)

    def _start_services(self) -> None:
        self._ready: dict[str, Callable[[], bool]] = {}
        self._dnsmasq("client", "dnsrecord-client",
                      dnsmasq.recorder_argv(CLIENT_RESOLVER, self.dns_log), self.dns_log)
        self._service("inet", "http-internet", ["http", "--name", "internet", "--host", INET_IP,
                                                "--port", str(INET_HTTP_PORT)])
        self._service("inet", "udp-echo-internet", ["udp-echo", "--host", INET_IP,
                                                     "--port", str(ECHO_PORT)])
        self._dnsmasq("inet", "dns-internet",
                      dnsmasq.authoritative_argv(INET_IP, INET_NAME, {INET_NAME: INET_IP}))
        self._service("peer", "echo-peer", ["echo", "--host", "127.0.0.1", "--host", "::1",
                                            "--port", str(ECHO_PORT)])
        self._service("peer", "udp-echo-peer", ["udp-echo", "--host", "127.0.0.1", "--host", "::1",
                                                "--port", str(ECHO_PORT)])
        self._service("peer", "http-peer", ["http", "--name", "peer", "--host", "127.0.0.1", "--host", "::1",
                                            "--port", str(PEER_HTTP_PORT)])

    def _wait_services(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for name, ready in self._ready.items():
            while not ready():
                self.procs.check(name)
                if time.monotonic() > deadline:
                    raise PartFailed(name, f"not ready after {timeout:.0f}s", self.procs.procs[name].log)
                time.sleep(0.05)

    def _join_nodes(self, nodes: list[Node]) -> None:
        for node in nodes:
            node.start(self.procs)
        for node in nodes:
            node.wait_socket(self.procs)
        ups = []
        for node in nodes:
            logp = os.path.join(self.run_dir, "logs", f"up-{node.name}.log")
            with open(logp, "wb") as f:
                p = subprocess.Popen(node.up_argv(self.control.url, self.authkey), stdin=subprocess.DEVNULL,
                                     stdout=f, stderr=subprocess.STDOUT,
                                     env=dict(node.env, HOME=node.dir), preexec_fn=procs_preexec)
            ups.append((node, p, logp))
        for node, p, logp in ups:
            try:
                rc = p.wait(75)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = "timeout"
            if rc != 0:
                tail = log_tail(logp) + "\n  --- tailscaled ---\n" + log_tail(
                    self.procs.procs[f"tailscaled-{node.name}"].log, 15)
                raise PartFailed(f"tailscale up ({node.name})", f"failed ({rc})", logp, output=tail)

    def _wait_mesh(self, nodes: list[Node], timeout: float,
                   routes: dict[str, list[str]] | None = None) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            self.procs.check_all()
            statuses = {n.name: n.status() for n in nodes}
            problems = mesh_problems(statuses, self.exit_names, routes)
            if not problems:
                return statuses
            if time.monotonic() > deadline:
                raise PartFailed("tailnet", "not ready after %.0fs: %s" % (timeout, "; ".join(problems)),
                                 self.procs.procs["headscale"].log)
            time.sleep(0.2)

    # ---- public ----------------------------------------------------------------------------

    def start(self) -> dict:
        t0 = time.monotonic()
        netns_mod.check_tools()
        stale = netns_mod.prune_stale()
        stale += netns_mod.prune_stale_dirs(tempfile.gettempdir() if not os.environ.get("TESTNET_TMPDIR")
                                            else os.environ["TESTNET_TMPDIR"])
        if stale:
            log(f"removed leftovers of dead runs: {', '.join(stale)}")
        bins = find_binaries()
        self.certs = None
        self.run_dir = tempfile.mkdtemp(prefix=f"{self.run_id}-", dir=os.environ.get("TESTNET_TMPDIR"))
        os.chmod(self.run_dir, 0o755)
        os.makedirs(os.path.join(self.run_dir, "logs"))
        self.procs = Procs(os.path.join(self.run_dir, "logs"))
        self.dns_log = os.path.join(self.run_dir, "dns_queries.log")
        open(self.dns_log, "w").close()

        t1 = time.monotonic()
        self._network()
        resolvers = {"control": "127.0.0.1", "peer": "127.0.0.1", "client": CLIENT_RESOLVER,
                     "inet": INET_IP, **{h: INET_IP for h in self.exit_names}}
        self.binds = {h: self._etc(h, r) for h, r in resolvers.items()}
        self._start_services()
        log(f"network up ({time.monotonic() - t1:.1f}s): {self.run_id}-*")

        t1 = time.monotonic()
        self.certs = make_certs(os.path.join(self.run_dir, "tls"), LAN_IP["control"])
        env = self._base_env()
        self.control = Control(self.run_dir, self.ns.name("control"), LAN_IP["control"], bins["headscale"],
                               self._wrapper("control"), env, DOMAIN)
        self.control.write_config(self.certs)
        self.control.start(self.procs)
        user_id = self.control.create_user("testnet")
        self.authkey = self.control.create_authkey(user_id)
        log(f"control up ({time.monotonic() - t1:.1f}s): {self.control.url}")

        t1 = time.monotonic()
        nodes = [Node("peer", self.ns.name("peer"), LAN_IP["peer"], self._host_dir("peer") + "/ts",
                      socks5=PEER_SOCKS5)]
        for h in self.exit_names:
            nodes.append(Node(h, self.ns.name(h), LAN_IP[h], self._host_dir(h) + "/ts", socks5=PEER_SOCKS5,
                              exit_node=True, routes=(INET_ROUTE,) if h == SUBNET_ROUTER else ()))
        for node in nodes:
            node.wrap = self._wrapper(node.name)
            node.env = env
            node.bins = bins
        self._join_nodes(nodes)
        subnet_routes = {SUBNET_ROUTER: [INET_ROUTE]}
        self.control.approve_exit_routes(self.exit_names, subnet_routes=subnet_routes)
        self._wait_services()
        nodes[0].serve_http(PEER_HTTP_SERVE_PORT, f"http://127.0.0.1:{PEER_HTTP_PORT}")
        statuses = self._wait_mesh(nodes, self.timeout, subnet_routes)
        log(f"tailnet ready ({time.monotonic() - t1:.1f}s; total {time.monotonic() - t0:.1f}s)")
        self.nodes = {n.name: n for n in nodes}
        self.info = self._describe(statuses, bins)
        with open(self.info_path, "w") as f:
            json.dump(self.info, f, indent=2)
        return self.info

    @property
    def info_path(self) -> str:
        return os.path.join(self.run_dir, "info.json")

    def _describe(self, statuses: dict[str, dict], bins: dict[str, str]) -> dict:
        def node_info(name: str) -> dict:
            n = self.nodes[name]
            return {"name": name, **self_info(statuses[name]), "netns": n.ns, "lan_ipv4": n.lan_ip,
                    "socket": n.socket, "socks5": n.socks5,
                    "tailscaled_pid": self.procs.procs[f"tailscaled-{name}"].pid}  # e.g. for failover tests

        peer = node_info("peer")
        peer.update(echo_port=ECHO_PORT, udp_echo_port=ECHO_PORT, http_port=PEER_HTTP_PORT, http_serve_port=PEER_HTTP_SERVE_PORT)
        exits = []
        for h in self.exit_names:
            e = node_info(h)
            e["egress_ipv4"] = EGRESS_IP[h]
            exits.append(e)
        return {
            "run_id": self.run_id,
            "run_dir": self.run_dir,
            "control_url": self.control.url,
            "authkey": self.authkey,
            "domain": DOMAIN,
            "ca_cert": self.certs.ca_cert,
            "control": {"netns": self.ns.name("control"), "ipv4": LAN_IP["control"],
                        "headscale_config": self.control.config_path, "headscale_socket": self.control.socket},
            "peers": {"peer": peer},
            "exit_node": exits[0],
            "exit_nodes": exits,
            "internet": {"name": INET_NAME, "ipv4": INET_IP, "http_port": INET_HTTP_PORT,
                         "udp_echo_port": ECHO_PORT,
                         "dns": f"{INET_IP}:53", "netns": self.ns.name("inet")},
            # the internet segment as a subnet route: its router, and the address the
            # internet host sees for connections routed through it
            "subnet_route": {"route": INET_ROUTE, "router": SUBNET_ROUTER,
                             "router_fqdn": self_info(statuses[SUBNET_ROUTER])["fqdn"],
                             "egress_ipv4": EGRESS_IP[SUBNET_ROUTER]},
            "client": {"netns": self.ns.name("client"), "ipv4": LAN_IP["client"], "resolver": CLIENT_RESOLVER},
            "lan": {"prefix": LAN_PREFIX, "switch_netns": self.ns.name("sw")},
            "dns_log": self.dns_log,
            "logs": os.path.join(self.run_dir, "logs"),
            "bin": bins,
            "netns": list(self.ns.created),
        }

    def client_argv(self, cmd: list[str]) -> list[str]:
        return self._wrapper("client")(cmd)

    def client_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        state = os.path.join(self.run_dir, "client-state")
        os.makedirs(state, exist_ok=True)
        env.update(TS_ENV)
        env.update({
            "TS_AUTHKEY": self.authkey,
            "TAILPROXY_CONTROL_URL": self.control.url,
            "SSL_CERT_FILE": self.certs.ca_cert,
            "TESTNET_INFO": self.info_path,
            "XDG_STATE_HOME": state,
        })
        return env

    def close(self) -> None:
        """Idempotent: stop every process, delete namespaces and the run's temp dir."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)} \
            if threading.current_thread() is threading.main_thread() else {}
        try:
            if self.procs:
                self.procs.stop_all()
            left = self.ns.delete_all()
            if left:
                log(f"could not delete namespaces: {', '.join(left)}")
            if self.run_dir and os.environ.get("TESTNET_KEEP") != "1":
                shutil.rmtree(self.run_dir, ignore_errors=True)
            elif self.run_dir:
                log(f"kept {self.run_dir}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()
