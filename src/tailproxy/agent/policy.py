"""A program's own policy on an agent (config.PER_PROGRAM), as the agent receives it with the
program's attach request (wire.policy_of() on the launcher's side) and checks it: the agent
believes no type or range it did not check."""
from __future__ import annotations

import dataclasses

from ..config import PER_PROGRAM


@dataclasses.dataclass(frozen=True)
class ProgramPolicy:
    """What one program on an agent asked for (config.PER_PROGRAM), applied to it alone."""
    verbose: bool = False
    tailnet_only: bool = False
    connect_timeout: float = 30.0
    dns: str = "auto"
    proxy_all: bool = False
    export_listeners: bool = False
    export_allow_ports: tuple | None = None
    export_deny_ports: tuple | None = None
    export_max: int | None = None
    export_proxy_protocol: bool = False
    export_idle_timeout: float | None = None


if tuple(f.name for f in dataclasses.fields(ProgramPolicy)) != PER_PROGRAM:
    raise AssertionError("ProgramPolicy and config.PER_PROGRAM name different keys")


def _flag(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"policy: {key} must be true or false")
    return value


def _port_ranges(value, key: str) -> tuple | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 1024:
        raise ValueError(f"policy: {key} must be a list of at most 1024 port ranges")
    out = []
    for r in value:
        if not (isinstance(r, list) and len(r) == 2 and all(type(p) is int for p in r)
                and 0 < r[0] <= r[1] < 65536):
            raise ValueError(f"policy: {key} has a bad port range {r!r}")
        out.append((r[0], r[1]))
    return tuple(out)


def policy_from_json(values) -> ProgramPolicy:
    """The policy in an attach request, checked (ValueError naming the key otherwise): the
    agent believes no type or range it did not check."""
    if not isinstance(values, dict):
        raise ValueError("policy: expected a JSON object")
    unknown = set(values) - set(PER_PROGRAM)
    if unknown:
        raise ValueError(f"policy: unknown key {sorted(unknown)[0]!r}")
    d = ProgramPolicy()
    timeout = values.get("connect_timeout", d.connect_timeout)
    if type(timeout) not in (int, float) or not 0 < timeout <= 86400:
        raise ValueError("policy: connect_timeout must be seconds between 0 and 86400")
    dns = values.get("dns", d.dns)
    if dns not in ("auto", "tailnet", "off"):
        raise ValueError("policy: dns must be auto, tailnet or off")
    most = values.get("export_max")
    if most is not None and (type(most) is not int or most < 1):
        raise ValueError("policy: export_max must be a whole number of at least 1")
    idle = values.get("export_idle_timeout")
    if idle is not None and (type(idle) not in (int, float) or not 0 < idle <= 86400):
        raise ValueError("policy: export_idle_timeout must be seconds between 0 and 86400")
    return ProgramPolicy(
        **{k: _flag(values.get(k, False), k) for k in (
            "verbose", "tailnet_only", "proxy_all", "export_listeners", "export_proxy_protocol")},
        connect_timeout=float(timeout), dns=dns, export_max=most,
        export_idle_timeout=None if idle is None else float(idle),
        export_allow_ports=_port_ranges(values.get("export_allow_ports"), "export_allow_ports"),
        export_deny_ports=_port_ranges(values.get("export_deny_ports"), "export_deny_ports"))
