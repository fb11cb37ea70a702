"""Addresses of the preload tests' private network namespace (see conftest.py)."""

V4 = "198.18.0.1"            # non-loopback, on lo: proxied, reached by the direct dialer
V6 = "2001:db8::1"
BYPASSED = "198.18.0.2"      # a TAILPROXY_BYPASS target
UNREACH4 = "198.18.99.5"     # `unreachable` routes: EHOSTUNREACH
UNREACH6 = "2001:db8:99::5"

SETUP = [
    "ip link set lo up",
    f"ip addr add {V4}/32 dev lo",
    f"ip addr add {BYPASSED}/32 dev lo",
    f"ip -6 addr add {V6}/128 dev lo nodad",
    "ip route add unreachable 198.18.99.0/24",
    "ip -6 route add unreachable 2001:db8:99::/48",
]
