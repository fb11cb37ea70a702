"""Which program on an agent exports which tailnet port.

One node has one port space on the tailnet, and every program on an agent exports through the
same node: the first program to export a port holds it until its export ends. A second program
listening on that port (on another loopback address, or with SO_REUSEPORT) gets a clear refusal,
and the first one's export goes on untouched."""
from __future__ import annotations


class PortClaims:
    """TCP and UDP ports are claimed apart: they are two port spaces on the tailnet too."""

    def __init__(self):
        # (protocol, port) -> (owner, its description)
        self._owners: dict[tuple[str, int], tuple[object, str]] = {}

    def claim(self, port: int, owner: object, description: str, proto: str = "tcp") -> str | None:
        """None once `owner` holds `port` (or held it already); else why it cannot."""
        held = self._owners.get((proto, port))
        if held is not None and held[0] is not owner:
            return f"it is exported already by another program on this node ({held[1]})"
        self._owners[(proto, port)] = (owner, description)
        return None

    def release(self, port: int, owner: object, proto: str = "tcp") -> None:
        held = self._owners.get((proto, port))
        if held is not None and held[0] is owner:
            del self._owners[(proto, port)]

    def held_by(self, owner: object) -> list:
        """The TCP ports `owner` holds, then its UDP ports as "PORT/udp" (as `ps` lists them)."""
        mine = sorted(k for k, (o, _) in self._owners.items() if o is owner)
        return [p for proto, p in mine if proto == "tcp"] + \
            [f"{p}/udp" for proto, p in mine if proto == "udp"]


class OwnerClaims:
    """One program's view of the claims (what an Exporter is given)."""

    def __init__(self, claims: PortClaims, owner: object, description: str):
        self.claims, self.owner, self.description = claims, owner, description

    def claim(self, port: int, proto: str = "tcp") -> str | None:
        return self.claims.claim(port, self.owner, self.description, proto)

    def release(self, port: int, proto: str = "tcp") -> None:
        self.claims.release(port, self.owner, proto)
