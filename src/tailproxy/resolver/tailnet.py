"""Tailnet names from a LocalAPI status snapshot: MagicDNS short names, FQDNs, the node's own."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass
class TailnetNames:
    suffix: str = ""                                     # MagicDNS suffix, e.g. "ts.test"
    names: dict[str, tuple[str, list[str]]] = field(default_factory=dict)   # name -> (fqdn, ips)
    by_ip: dict[str, str] = field(default_factory=dict)  # ip -> fqdn
    exit_node_in_use: bool = False

    @classmethod
    def from_status(cls, st: dict) -> "TailnetNames":
        suffix = ((st.get("CurrentTailnet") or {}).get("MagicDNSSuffix") or "").rstrip(".").lower()
        out = cls(suffix=suffix,
                  exit_node_in_use=bool((st.get("ExitNodeStatus") or {}).get("ID")))
        nodes = list((st.get("Peer") or {}).values())
        if st.get("Self"):
            nodes.insert(0, st["Self"])   # our own name wins a clash
        for p in nodes:
            fqdn = (p.get("DNSName") or "").rstrip(".").lower()
            ips = [str(ipaddress.ip_address(i)) for i in (p.get("TailscaleIPs") or [])]
            if not fqdn or not ips:
                continue
            ips.sort(key=lambda i: ":" in i)          # IPv4 first
            out.names.setdefault(fqdn, (fqdn, ips))
            short = fqdn.split(".", 1)[0]
            if short and (not suffix or fqdn.endswith("." + suffix)):
                out.names.setdefault(short, (fqdn, ips))
            for i in ips:
                out.by_ip.setdefault(i, fqdn)
        return out

    def lookup(self, name: str) -> tuple[str, list[str]] | None:
        return self.names.get(name.rstrip(".").lower())

    def under_suffix(self, name: str) -> bool:
        n = name.rstrip(".").lower()
        return bool(self.suffix) and (n == self.suffix or n.endswith("." + self.suffix))
