"""The control host: headscale v0.28.0 config, start-up, user, pre-auth key, exit and subnet routes.

DERP/TLS choice: headscale serves control, Noise and its embedded DERP on one TLS listener,
https://198.18.0.1:443 (DERP requires TLS), with a per-run CA (tls.py). STUN listens on
198.18.0.1:3478. The DERP map holds only that embedded region (derp.urls and derp.paths are
empty, auto-update off), so no node ever fetches a map or relays off this machine. Nodes
trust the CA via SSL_CERT_FILE. Update checks and logtail are off.
"""
from __future__ import annotations

import json
import os
import time

from .procs import PartFailed, Procs, run

POLICY = {
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}


def headscale_config(run_dir: str, ip: str, certs, base_domain: str, policy_path: str) -> dict:
    d = os.path.join(run_dir, "control")
    return {
        "server_url": f"https://{ip}",
        "listen_addr": f"{ip}:443",
        "metrics_listen_addr": "127.0.0.1:9090",
        "grpc_listen_addr": "127.0.0.1:50443",
        "grpc_allow_insecure": False,
        "noise": {"private_key_path": os.path.join(d, "noise_private.key")},
        "prefixes": {"v4": "100.64.0.0/10", "v6": "fd7a:115c:a1e0::/48", "allocation": "sequential"},
        "derp": {
            "server": {
                "enabled": True,
                "region_id": 999,
                "region_code": "testnet",
                "region_name": "testnet embedded DERP",
                "verify_clients": True,
                "stun_listen_addr": f"{ip}:3478",
                "private_key_path": os.path.join(d, "derp_server_private.key"),
                "automatically_add_embedded_derp_region": True,
                "ipv4": ip,
            },
            "urls": [],
            "paths": [],
            "auto_update_enabled": False,
            "update_frequency": "24h",
        },
        "disable_check_updates": True,
        # Tell peers about a new node at once: headscale's defaults (800 ms batching plus a
        # 500 ms node-store batch) make a brand-new node's first WireGuard handshake arrive
        # before the peer knows its key, and WireGuard only retries after 5 s.
        "tuning": {"batch_change_delay": "10ms", "node_store_batch_timeout": "10ms"},
        "ephemeral_node_inactivity_timeout": "30m",
        "database": {
            "type": "sqlite",
            "sqlite": {"path": os.path.join(d, "db.sqlite"), "write_ahead_log": True},
        },
        "acme_url": "",
        "tls_letsencrypt_hostname": "",
        "tls_cert_path": certs.cert,
        "tls_key_path": certs.key,
        "log": {"level": "info", "format": "text"},
        "policy": {"mode": "file", "path": policy_path},
        "dns": {
            "magic_dns": True,
            "base_domain": base_domain,
            # Keep each node's own resolver for non-tailnet names (an exit node answers DNS
            # for its clients from its resolv.conf, which points at the internet host).
            "override_local_dns": False,
            "nameservers": {"global": [], "split": {}},
            "search_domains": [],
            "extra_records": [],
        },
        "unix_socket": os.path.join(d, "headscale.sock"),
        "unix_socket_permission": "0770",
        "logtail": {"enabled": False},
        "randomize_client_port": False,
        "taildrop": {"enabled": False},
    }


class Control:
    def __init__(self, run_dir: str, ns: str, ip: str, headscale: str, wrap, env: dict[str, str],
                 base_domain: str = "ts.test"):
        self.dir = os.path.join(run_dir, "control")
        os.makedirs(self.dir, exist_ok=True)
        self.run_dir = run_dir
        self.ns = ns
        self.ip = ip
        self.url = f"https://{ip}"
        self.headscale = headscale
        self.wrap = wrap  # argv -> argv running inside the control host
        self.env = dict(env, HOME=self.dir)
        self.base_domain = base_domain
        self.config_path = os.path.join(self.dir, "config.yaml")
        self.socket = os.path.join(self.dir, "headscale.sock")

    def write_config(self, certs) -> None:
        policy = os.path.join(self.dir, "policy.json")
        with open(policy, "w") as f:
            json.dump(POLICY, f, indent=2)
        cfg = headscale_config(self.run_dir, self.ip, certs, self.base_domain, policy)
        with open(self.config_path, "w") as f:
            json.dump(cfg, f, indent=2)  # JSON is valid YAML

    def start(self, procs: Procs, timeout: float = 30) -> None:
        procs.start("headscale", self.wrap([self.headscale, "-c", self.config_path, "serve"]), self.env)
        deadline = time.monotonic() + timeout
        while True:
            procs.check("headscale")
            if os.path.exists(self.socket):
                r = self.cli("users", "list", check=False)
                if r.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise PartFailed("headscale", f"not ready after {timeout:.0f}s", procs.procs["headscale"].log)
            time.sleep(0.1)

    def cli(self, *args: str, check: bool = True, timeout: float = 30):
        argv = self.wrap([self.headscale, "-c", self.config_path, *args])
        return run(f"headscale {args[0]} {args[1] if len(args) > 1 else ''}".strip(), argv,
                   env=self.env, timeout=timeout, check=check)

    def cli_json(self, *args: str):
        r = self.cli(*args, "-o", "json")
        try:
            return json.loads(r.stdout)
        except ValueError:
            raise PartFailed(f"headscale {' '.join(args[:2])}", "output is not JSON", output=r.stdout[-2000:])

    def create_user(self, name: str) -> int:
        u = self.cli_json("users", "create", name)
        return int(u["id"])

    def create_authkey(self, user_id: int) -> str:
        k = self.cli_json("preauthkeys", "create", "--user", str(user_id), "--reusable",
                          "--expiration", "24h")
        return k["key"]

    def nodes(self) -> list[dict]:
        return self.cli_json("nodes", "list") or []

    def approve_exit_routes(self, hostnames: list[str], timeout: float = 30,
                            subnet_routes: dict[str, list[str]] | None = None) -> None:
        """Approve 0.0.0.0/0 and ::/0 for each node once it has advertised them, and the
        subnet routes of ``subnet_routes`` (host -> routes) for their routers (one approval per
        node: headscale's approve-routes replaces the node's approved set)."""
        want = {h: ["0.0.0.0/0", "::/0"] for h in hostnames}
        for h, routes in (subnet_routes or {}).items():
            want.setdefault(h, []).extend(routes)
        todo = set(want)
        deadline = time.monotonic() + timeout
        while todo:
            for n in self.nodes():
                name = n.get("given_name") or n.get("name")
                if name not in todo:
                    continue
                avail = set(n.get("available_routes") or [])
                if set(want[name]) <= avail:
                    self.cli("nodes", "approve-routes", "--identifier", str(n["id"]),
                             "--routes", ",".join(want[name]))
                    todo.discard(name)
            if not todo:
                return
            if time.monotonic() > deadline:
                raise PartFailed("headscale", f"routes never advertised by {', '.join(sorted(todo))}",
                                 os.path.join(self.run_dir, "logs", "headscale.log"))
            time.sleep(0.2)
