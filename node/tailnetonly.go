package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// tsnet's dialer sends an address that no peer's allowed IPs cover (no tailnet
// address, no accepted route, no exit node) out through the host's own network
// instead of the tailnet. For tailproxy that would be a connection from the
// user's own address that the policy never chose — for instance in the moment
// an exit node is cleared. The node therefore only ever dials over WireGuard.

// errNotOnTailnet is the refusal: the node has no route for that address.
type errNotOnTailnet struct{ addr string }

func (e errNotOnTailnet) Error() string {
	return fmt.Sprintf("%s: no peer or exit node of this node covers that address", e.addr)
}

func (e errNotOnTailnet) Unwrap() error { return syscall.ENETUNREACH }

// dialTailnetOnly dials addr through the node and refuses anything that would
// leave through the host. An IP address is checked before the dial; a name can
// only be checked after tsnet resolved and dialled it, so a host connection made
// for a name is closed unused (tailproxy resolves names itself and passes the node
// names only for MagicDNS or through an exit node).
func (n *node) dialTailnetOnly(ctx context.Context, network, addr string) (net.Conn, error) {
	if ap, err := netip.ParseAddrPort(addr); err == nil && !n.coveredByTailnet(ap.Addr().Unmap()) {
		return nil, errNotOnTailnet{addr}
	}
	c, err := n.srv.Dial(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	if viaHost(c) {
		c.Close()
		return nil, errNotOnTailnet{addr}
	}
	return c, nil
}

// coveredByTailnet reports whether tsnet sends ip through its netstack (a peer's
// allowed IPs, an accepted route, or the exit node's default route cover it).
func (n *node) coveredByTailnet(ip netip.Addr) bool {
	d, ok := n.srv.Sys().Dialer.GetOK()
	return ok && d.UseNetstackForIP != nil && d.UseNetstackForIP(ip)
}

// viaHost is true for a connection of the host's own network stack; the
// tailnet's connections are gVisor's.
func viaHost(c net.Conn) bool {
	switch c.(type) {
	case *net.TCPConn, *net.UDPConn:
		return true
	}
	return false
}
