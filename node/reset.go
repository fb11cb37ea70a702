package main

import (
	"net"
	"reflect"
	"unsafe"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// resetConn ends c with a TCP reset, so that the far side sees ECONNRESET and
// never a clean end: kernel sockets by SO_LINGER 0, netstack's (the tailnet
// side) by aborting the endpoint. gonet.TCPConn's Close sends a FIN and it
// does not expose its endpoint, so reflection reaches it; gVisor is pinned by
// go.sum, and a test fails if the field is ever not found.
func resetConn(c net.Conn) {
	switch t := c.(type) {
	case *net.TCPConn:
		_ = t.SetLinger(0)
	case *gonet.TCPConn:
		if ep := gonetEndpoint(t); ep != nil {
			ep.Abort()
		}
	case *tailnetSide:
		resetConn(t.halfCloser)
		return
	}
	_ = c.Close()
}

// gonetEndpoint is the netstack endpoint inside a gonet.TCPConn, or nil.
func gonetEndpoint(c *gonet.TCPConn) tcpip.Endpoint {
	f := reflect.ValueOf(c).Elem().FieldByName("ep")
	if !f.IsValid() || !f.CanAddr() {
		return nil
	}
	ep, _ := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(tcpip.Endpoint)
	return ep
}
