"""Which program on an agent exports which tailnet port.

One node has one port space on the tailnet, and every program on an agent exports through the
same node: the first program to export a port holds it until its export ends. A second program
listening on that port (on another loopback address, or with SO_REUSEPORT) gets a clear refusal,
and the first one's export goes on untouched."""
from __future__ import annotations


class PortClaims:
    def __init__(self):
        self._owners: dict[int, tuple[object, str]] = {}     # port -> (owner, its description)

    def claim(self, port: int, owner: object, description: str) -> str | None:
        """None once `owner` holds `port` (or held it already); else why it cannot."""
        held = self._owners.get(port)
        if held is not None and held[0] is not owner:
            return f"it is exported already by another program on this node ({held[1]})"
        self._owners[port] = (owner, description)
        return None

    def release(self, port: int, owner: object) -> None:
        held = self._owners.get(port)
        if held is not None and held[0] is owner:
            del self._owners[port]

    def held_by(self, owner: object) -> list[int]:
        return sorted(p for p, (o, _) in self._owners.items() if o is owner)


class OwnerClaims:
    """One program's view of the claims (what an Exporter is given)."""

    def __init__(self, claims: PortClaims, owner: object, description: str):
        self.claims, self.owner, self.description = claims, owner, description

    def claim(self, port: int) -> str | None:
        return self.claims.claim(port, self.owner, self.description)

    def release(self, port: int) -> None:
        self.claims.release(port, self.owner)
