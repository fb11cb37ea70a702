"""The environment a program runs with under tailproxy."""
from __future__ import annotations

SECRETS = ("TS_AUTHKEY", "TS_AUTH_KEY", "TAILPROXY_AUTHKEY", "TAILPROXY_SOCKS5_AUTH")
_PROXY_VARS = ("ALL_PROXY", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _quote(text: str) -> str:
    """urllib.parse.quote(text, safe=""): without importing urllib.parse (and ipaddress with
    it), which an attaching run, timed to its program's exec, would pay for."""
    return "".join(c if c in _UNRESERVED else "".join(f"%{b:02X}" for b in c.encode())
                   for c in text)


def child_env(parent: dict, *, preload: str, channel: str, bypass: list[str], verbose: bool,
              proxy_addr: tuple[str, int] | None, proxy_auth: tuple[str, str] | None,
              export_listeners: bool = False, dns_server: str | None = None,
              park_ports: tuple[int, int] = (0, 0), table: str | None = None,
              names: str | None = None) -> dict:
    env = {k: v for k, v in parent.items() if k not in SECRETS}
    old = env.get("LD_PRELOAD", "").strip()
    env["LD_PRELOAD"] = f"{old}:{preload}" if old else preload
    env["TAILPROXY_SOCKET"] = channel
    env["TAILPROXY_BYPASS"] = ",".join(bypass)
    env["TAILPROXY_PARK"] = "%d,%d" % park_ports
    if table is not None:
        # the routing table: what the preload may connect by itself (policy/table.py)
        env["TAILPROXY_TABLE"] = table
    else:
        env.pop("TAILPROXY_TABLE", None)
    if export_listeners:
        env["TAILPROXY_EXPORT_LISTENERS"] = "1"
    else:
        env.pop("TAILPROXY_EXPORT_LISTENERS", None)
    if dns_server is not None:
        # names through the proxy's name service; port-53 traffic to its DNS responder
        env["TAILPROXY_RESOLVE"] = "1"
        env["TAILPROXY_DNS_SERVER"] = dns_server
    else:
        env.pop("TAILPROXY_RESOLVE", None)
        env.pop("TAILPROXY_DNS_SERVER", None)
    if dns_server is not None and names is not None:
        # the name table: names answered without a round trip (resolver/nametable.py)
        env["TAILPROXY_NAMES"] = names
    else:
        env.pop("TAILPROXY_NAMES", None)
    if verbose:
        env["TAILPROXY_VERBOSE"] = "1"
    else:
        env.pop("TAILPROXY_VERBOSE", None)
    if proxy_addr:
        # For programs the preload cannot reach (static Go binaries...) that honour proxy variables.
        host, port = proxy_addr
        cred = ""
        if proxy_auth:
            cred = "%s:%s@" % tuple(_quote(p) for p in proxy_auth)
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        values = {"ALL_PROXY": f"socks5h://{cred}{hostport}",
                  "HTTP_PROXY": f"http://{cred}{hostport}",
                  "HTTPS_PROXY": f"http://{cred}{hostport}",
                  "NO_PROXY": ",".join(["localhost", "127.0.0.0/8", "::1"] + bypass)}
        for name in _PROXY_VARS:
            env[name] = env[name.lower()] = values[name]
    return env
