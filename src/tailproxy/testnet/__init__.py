"""A complete, throwaway Tailscale tailnet on this one machine, for tests.

    python -m tailproxy.testnet [--json-out FILE] [--exit-nodes N] -- CMD [ARGS...]

Hosts (control, peer, exit, [exit2], internet, client) are network namespaces joined by a
bridge that lives in its own namespace; nothing links to the root namespace and no namespace
has a default route, so no packet can leave the machine. Control is headscale v0.28.0 with its
embedded DERP server and STUN, over TLS from a per-run CA (see control.py, tls.py).

Modules: __main__ (CLI), core (build/describe/tear down), netns (namespaces, links),
procs (processes, logs), binaries (find/build pinned binaries), control (headscale),
hosts (tailscaled nodes), services (echo/http servers), dnsmasq (the DNS servers: Debian's
dnsmasq), tls (CA).
"""
