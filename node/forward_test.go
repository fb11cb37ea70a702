package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// strAddr is a net.Addr with a given text, e.g. a v4-mapped IPv6 address
// (net.TCPAddr would print that one as plain IPv4).
type strAddr string

func (a strAddr) Network() string { return "tcp" }
func (a strAddr) String() string  { return string(a) }

// The PROXY v2 signature, from HAProxy's proxy-protocol.txt, section 2.2.
var proxySig = []byte{0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestProxyV2Header(t *testing.T) {
	tcp := func(s string) net.Addr {
		a, err := net.ResolveTCPAddr("tcp", s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	v4 := cat(proxySig,
		[]byte{0x21},       // version 2, command PROXY
		[]byte{0x11},       // AF_INET, STREAM
		[]byte{0x00, 0x0C}, // 12 address bytes follow
		[]byte{100, 64, 0, 1},
		[]byte{100, 64, 0, 2},
		[]byte{0xD4, 0x31}, // 54321
		[]byte{0x1F, 0x90}, // 8080
	)
	v6 := cat(proxySig,
		[]byte{0x21},
		[]byte{0x21},       // AF_INET6, STREAM
		[]byte{0x00, 0x24}, // 36 address bytes follow
		[]byte{0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01},
		[]byte{0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0xab, 0xcd, 0, 0, 0, 0, 0, 0, 0x12, 0x34},
		[]byte{0x01, 0xBB}, // 443
		[]byte{0x00, 0x01}, // 1
	)
	mixed := cat(proxySig,
		[]byte{0x21},
		[]byte{0x21},
		[]byte{0x00, 0x24},
		[]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 100, 64, 0, 1}, // IPv4 as v4-mapped IPv6
		[]byte{0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02},
		[]byte{0x00, 0x50},
		[]byte{0x00, 0x51},
	)
	tests := []struct {
		name     string
		src, dst net.Addr
		want     []byte
	}{
		{"ipv4", tcp("100.64.0.1:54321"), tcp("100.64.0.2:8080"), v4},
		{"ipv6", tcp("[fd7a:115c:a1e0::1]:443"), tcp("[fd7a:115c:a1e0:abcd::1234]:1"), v6},
		{"v4-mapped is ipv4", strAddr("[::ffff:100.64.0.1]:54321"), strAddr("[::ffff:100.64.0.2]:8080"), v4},
		{"one v4-mapped", strAddr("[::ffff:100.64.0.1]:54321"), tcp("100.64.0.2:8080"), v4},
		{"mixed families", tcp("100.64.0.1:80"), tcp("[fd7a:115c:a1e0::2]:81"), mixed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := proxyV2Header(tc.src, tc.dst)
			if !bytes.Equal(got, tc.want) {
				t.Errorf("header\n got % x\nwant % x", got, tc.want)
			}
			// Self-consistency with the spec: 16 fixed bytes, then the length.
			if len(got) >= 16 {
				if n := int(binary.BigEndian.Uint16(got[14:16])); n != len(got)-16 {
					t.Errorf("length field %d, but %d bytes follow", n, len(got)-16)
				}
			}
		})
	}
}

// fakeNode is a node without a tsnet server: enough for the code paths that
// only use events, the maps and the log (relayTo, drop, forward, deliver).
type fakeNode struct {
	*node
	events *eventReader
}

func newFakeNode(t *testing.T) *fakeNode {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.CreateTemp(t.TempDir(), "node-log")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{
		events:    newEventPipe(w),
		logFile:   logFile,
		started:   time.Now(),
		dialed:    map[int64]net.Conn{},
		cancels:   map[int64]context.CancelFunc{},
		listeners: map[int64]io.Closer{},
		relaying:  map[int64]*byteCounts{},
	}
	t.Cleanup(func() {
		n.relays.Wait()
		n.events.close()
		r.Close()
		logFile.Close()
		if b, _ := os.ReadFile(logFile.Name()); len(b) > 0 {
			t.Errorf("node log:\n%s", b)
		}
	})
	return &fakeNode{node: n, events: newEventReader(t, r)}
}

// The export path: a tailnet connection is forwarded to the program's
// loopback listener, after a PROXY v2 header naming the tailnet client.
func TestForwardWithProxyHeader(t *testing.T) {
	n := newFakeNode(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, c := tcpPair(t) // client: the tailnet peer; c: what tsnet's listener accepted
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.forward(3, c, listenSpec{Port: 80, Target: ln.Addr().String(), ProxyProtocol: true})
	}()
	_ = ln.(*net.TCPListener).SetDeadline(time.Now().Add(5 * time.Second))
	prog, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()

	cl := client.LocalAddr().(*net.TCPAddr)
	srv := client.RemoteAddr().(*net.TCPAddr)
	want := cat(proxySig, []byte{0x21, 0x11, 0x00, 0x0C}, cl.IP.To4(), srv.IP.To4(),
		binary.BigEndian.AppendUint16(nil, uint16(cl.Port)),
		binary.BigEndian.AppendUint16(nil, uint16(srv.Port)))
	if got := readExactly(t, prog, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("PROXY header\n got % x\nwant % x", got, want)
	}
	if _, err := client.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	client.CloseWrite()
	req, err := readWithin(t, prog, 5*time.Second)
	if err != nil || string(req) != "GET / HTTP/1.0\r\n\r\n" {
		t.Fatalf("program got %q, %v", req, err)
	}
	prog.Write([]byte("HTTP/1.0 200 OK\r\n\r\nhi"))
	prog.(*net.TCPConn).CloseWrite()
	resp, err := readWithin(t, client, 5*time.Second)
	if err != nil || string(resp) != "HTTP/1.0 200 OK\r\n\r\nhi" {
		t.Fatalf("client got %q, %v", resp, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("forward did not return")
	}
}

// An export whose program is not listening closes the tailnet connection.
func TestForwardTargetDown(t *testing.T) {
	n := newFakeNode(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close()
	client, c := tcpPair(t)
	go n.forward(4, c, listenSpec{Port: 80, Target: target})
	if b, err := readWithin(t, client, 5*time.Second); len(b) != 0 {
		t.Fatalf("client got %q, %v", b, err)
	}
}

// The library's listen: each tailnet connection becomes an "accept" event
// with one end of a socket pair, relayed to the connection.
func TestDeliver(t *testing.T) {
	n := newFakeNode(t)
	client, c := tcpPair(t)
	go n.deliver(5, c)
	ev := n.events.next(t)
	if ev.ID != 5 || ev.Kind != "accept" || ev.FD <= 0 {
		t.Fatalf("event %+v", ev)
	}
	if ev.Src != client.LocalAddr().String() || ev.Dst != client.RemoteAddr().String() {
		t.Errorf("accept names %s → %s, want %s → %s", ev.Src, ev.Dst, client.LocalAddr(), client.RemoteAddr())
	}
	f := os.NewFile(uintptr(ev.FD), "accepted")
	prog, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	client.Write([]byte("ping"))
	client.CloseWrite()
	if b, err := readWithin(t, prog, 5*time.Second); err != nil || string(b) != "ping" {
		t.Fatalf("program got %q, %v", b, err)
	}
	prog.Write([]byte("pong"))
	prog.(*net.UnixConn).CloseWrite()
	if b, err := io.ReadAll(client); err != nil || string(b) != "pong" {
		t.Fatalf("client got %q, %v", b, err)
	}
}
