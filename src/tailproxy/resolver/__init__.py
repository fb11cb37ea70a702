"""The name service: MagicDNS names for unmodified programs and no DNS leaks (docs/NAMES.md).

- :class:`NameService` answers RESOLVE/REVERSE/QUERY from the preload (channel ops 4-6);
- :class:`PlaceholderMap` stands in addresses for names resolved on the exit node's side;
- :class:`DNSResponder` answers a program's own port-53 traffic redirected by the preload.
"""
from .hosts import HostsFile
from .placeholders import DEFAULT_V4, DEFAULT_V6, PlaceholderMap, check_range
from .responder import DNSResponder
from .service import MODES, NameService, node_dns_query
from .system import SystemResolver

__all__ = ["NameService", "PlaceholderMap", "DNSResponder", "HostsFile",
           "SystemResolver", "node_dns_query", "check_range", "DEFAULT_V4", "DEFAULT_V6", "MODES"]
