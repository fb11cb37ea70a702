package main

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// A UDP export, with a loopback packet socket standing in for tsnet's: each peer address is a
// flow of its own to the program's socket, replies go back to that peer, and an idle flow ends.
func TestUDPExportFlows(t *testing.T) {
	old, oldMax := udpFlowIdle, maxFlowsPerExport
	udpFlowIdle, maxFlowsPerExport = 200*time.Millisecond, 2
	t.Cleanup(func() { udpFlowIdle, maxFlowsPerExport = old, oldMax })
	n := newFakeNode(t)
	program, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer program.Close()
	go func() { // the program: answers each datagram to whoever sent it
		buf := make([]byte, 2048)
		for {
			nr, from, err := program.ReadFromUDP(buf)
			if err != nil {
				return
			}
			program.WriteToUDP(append([]byte(from.String()+" "), buf[:nr]...), from)
		}
	}()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // the node's tailnet port
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		n.serveUDPExport(1, pc, program.LocalAddr().(*net.UDPAddr), listenSpec{Network: "udp"})
		close(done)
	}()
	peer := func() *net.UDPConn {
		c, err := net.DialUDP("udp", nil, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	ask := func(c *net.UDPConn, msg string) string {
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		nr, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no answer to %q: %v", msg, err)
		}
		return string(buf[:nr])
	}
	a, b := peer(), peer()
	ra1, rb := ask(a, "one"), ask(b, "two")
	ra2 := ask(a, "three")
	flowA := ra1[:bytes.IndexByte([]byte(ra1), ' ')]
	if !bytes.HasSuffix([]byte(ra1), []byte(" one")) || ra2 != flowA+" three" {
		t.Fatalf("peer a: %q then %q: not one flow", ra1, ra2)
	}
	if rb[:bytes.IndexByte([]byte(rb), ' ')] == flowA {
		t.Fatalf("peers a and b share the flow %s", flowA)
	}
	// a third peer is over the cap (2 here): its datagrams are dropped, the others go on
	c := peer()
	c.Write([]byte("over"))
	c.SetReadDeadline(time.Now().Add(udpFlowIdle / 2))
	if nr, err := c.Read(make([]byte, 100)); err == nil {
		t.Fatalf("a peer over the cap got an answer (%d bytes)", nr)
	}
	time.Sleep(4 * udpFlowIdle) // idle: the flow ends, the next datagram makes a new one
	if ra3 := ask(a, "four"); ra3 == flowA+" four" {
		t.Fatalf("the idle flow %s was not ended", flowA)
	}
	pc.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the export did not end when its packet socket closed")
	}
}
