"""The agent: one background process per identity (state dir) that owns the node, the proxy
and channel, the name service, the exporter and the control socket, shared by every program
started with `tailproxy CMD` for that identity (docs/ARCHITECTURE.md, "The agent")."""
