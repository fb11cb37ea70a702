package main

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

func TestNotOnTailnetIsNetworkUnreachable(t *testing.T) {
	err := error(errNotOnTailnet{"198.18.0.4:80"})
	if got := errnoFor(err); got != syscall.ENETUNREACH {
		t.Fatalf("errno %v, want ENETUNREACH", got)
	}
	if !errors.Is(err, syscall.ENETUNREACH) {
		t.Fatal("errors.Is does not see ENETUNREACH")
	}
}

func TestViaHostTellsHostConnectionsApart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !viaHost(c) {
		t.Fatal("a kernel TCP connection is not seen as the host's")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if viaHost(a) {
		t.Fatal("a connection that is not the kernel's is seen as the host's")
	}
}
