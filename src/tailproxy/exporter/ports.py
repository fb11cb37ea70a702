"""Port filters for --export-allow-ports / --export-deny-ports: "3000,8080,10000-10100"."""
from __future__ import annotations


class PortSpecError(ValueError):
    pass


def parse_ports(spec: str) -> list[tuple[int, int]]:
    """Inclusive ranges; raises PortSpecError naming the bad item."""
    ranges = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise PortSpecError(f"empty item in port list {spec!r}")
        lo, sep, hi = item.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise PortSpecError(f"{item!r} is not a port or a port range (e.g. 8080 or 10000-10100)")
        a, b = int(lo), int(hi) if sep else int(lo)
        if not (1 <= a <= 65535 and 1 <= b <= 65535):
            raise PortSpecError(f"{item!r}: ports are 1-65535")
        if a > b:
            raise PortSpecError(f"{item!r}: range start is after its end")
        ranges.append((a, b))
    return ranges


class PortFilter:
    def __init__(self, allow: list[tuple[int, int]] | None, deny: list[tuple[int, int]] | None,
                 max_exports: int | None):
        self.allow, self.deny, self.max_exports = allow, deny or [], max_exports

    @staticmethod
    def _in(port: int, ranges) -> bool:
        return any(a <= port <= b for a, b in ranges)

    def refusal(self, port: int, exported_now: int) -> str | None:
        """Why `port` must not be exported, or None. Deny wins over allow."""
        if self._in(port, self.deny):
            return "it is in --export-deny-ports"
        if self.allow is not None and not self._in(port, self.allow):
            return "it is not in --export-allow-ports"
        if self.max_exports is not None and exported_now >= self.max_exports:
            return f"--export-max={self.max_exports} ports are already exported"
        return None
