package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// listenSpec says what a tailnet listener does with each connection:
// forward it to Target (an export: the program's loopback listener), or, with
// Target empty, hand Python one end of a socket pair (the library's listen).
type listenSpec struct {
	Port          int
	Target        string // "127.0.0.1:8000" or "[::1]:8000"
	ProxyProtocol bool   // a PROXY v2 header naming the tailnet client first
	Report        bool   // an "inbound" event per connection, with the peer's identity
	Network       string // "tcp" (or empty), or "udp": an export of a UDP port (forward_udp.go)
	IdleTimeoutMS int64  // > 0: withdraw the export after this long unused (idle.go)
}

// listen accepts on the node's tailnet addresses only: tsnet forwards nothing
// it was not asked to listen on, which is what keeps the user's machine
// closed to the tailnet except for exports.
func (n *node) listen(id int64, spec listenSpec) error {
	if spec.Port <= 0 || spec.Port > 65535 {
		return fmt.Errorf("invalid port %d", spec.Port)
	}
	switch spec.Network {
	case "", "tcp":
	case "udp":
		return n.listenUDP(id, spec)
	default:
		return fmt.Errorf("invalid network %q", spec.Network)
	}
	ln, err := n.srv.Listen("tcp", fmt.Sprintf(":%d", spec.Port))
	if err != nil {
		return err
	}
	n.mu.Lock()
	if old, ok := n.listeners[id]; ok {
		old.Close()
	}
	n.listeners[id] = ln
	n.mu.Unlock()
	var idle *idleWatch
	if spec.IdleTimeoutMS > 0 {
		idle = newIdleWatch()
		go n.watchIdle(id, ln, idle, time.Duration(spec.IdleTimeoutMS)*time.Millisecond)
	}
	go n.acceptLoop(id, ln, spec, idle)
	return nil
}

func (n *node) unlisten(id int64) {
	n.mu.Lock()
	ln, ok := n.listeners[id]
	delete(n.listeners, id)
	n.mu.Unlock()
	if ok {
		ln.Close()
	}
}

// maxConnsPerListener bounds what tailnet peers can make one listener hold
// (goroutines, buffers and a local fd each); a connection over it is refused.
const maxConnsPerListener = 1024

func (n *node) acceptLoop(id int64, ln net.Listener, spec listenSpec, idle *idleWatch) {
	defer recoverToLog(n, "accept")
	slots := make(chan struct{}, maxConnsPerListener)
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed by unlisten or close
		}
		select {
		case slots <- struct{}{}:
		default:
			c.Close()
			continue
		}
		if idle != nil {
			idle.begin()
		}
		go func() {
			defer func() { <-slots }()
			if idle != nil {
				defer idle.end()
			}
			if spec.Target == "" {
				n.deliver(id, c)
			} else {
				n.forward(id, c, spec)
			}
		}()
	}
}

// deliver joins an accepted tailnet connection to one end of a socket pair
// and gives Python the other end as an fd in an "accept" event.
func (n *node) deliver(id int64, c net.Conn) {
	defer recoverToLog(n, "deliver")
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		c.Close()
		return
	}
	ours, err := fileConn(fds[0])
	syscall.Close(fds[0])
	if err != nil {
		syscall.Close(fds[1])
		c.Close()
		return
	}
	src, dst := c.RemoteAddr(), c.LocalAddr()
	if src == nil || dst == nil { // reset before we got here
		syscall.Close(fds[1])
		ours.Close()
		c.Close()
		return
	}
	n.events.send(event{ID: id, Kind: "accept", FD: fds[1], Src: src.String(), Dst: dst.String()})
	relay(ours, c.(halfCloser))
}

// forward serves one exported connection: dial the program's loopback
// listener, optionally say who the client is, and relay.
func (n *node) forward(id int64, c net.Conn, spec listenSpec) {
	defer recoverToLog(n, "forward")
	tc, ok := c.(halfCloser)
	// The addresses are read once, first: a reset endpoint has none any more.
	srcAddr, dstAddr := c.RemoteAddr(), c.LocalAddr()
	if !ok || srcAddr == nil || dstAddr == nil {
		c.Close()
		return
	}
	src := srcAddr.String()
	var who event
	if spec.Report {
		who = n.whois(src)
	}
	d := net.Dialer{Timeout: forwardDialTimeout}
	target, err := d.Dial("tcp", spec.Target)
	if err != nil {
		resetConn(c) // as the program's refusal would have
		if spec.Report {
			n.events.send(event{ID: id, Kind: "inbound", Src: src, Node: who.Node,
				User: who.User, Reason: "connect " + spec.Target + ": " + err.Error(),
				Errno: int(errnoFor(err))})
		}
		return
	}
	program := target.(*net.TCPConn)
	_ = program.SetNoDelay(true)
	if spec.ProxyProtocol {
		if _, err := program.Write(proxyV2Header(srcAddr, dstAddr)); err != nil {
			program.Close()
			c.Close()
			return
		}
	}
	start := time.Now()
	res := relay(program, tc)
	if spec.Report {
		n.events.send(event{ID: id, Kind: "inbound", Src: src, Node: who.Node,
			User: who.User, Up: res.Down, Down: res.Up, Reason: res.Reason, Errno: int(res.Errno),
			Millis: time.Since(start).Milliseconds()})
	}
}

const forwardDialTimeout = 5 * time.Second

func (n *node) whois(addr string) event {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	w, err := n.lc.WhoIs(ctx, addr)
	if err != nil || w == nil {
		return event{}
	}
	var ev event
	if w.Node != nil {
		ev.Node = strings.TrimSuffix(w.Node.Name, ".")
	}
	if w.UserProfile != nil {
		ev.User = w.UserProfile.LoginName
	}
	return ev
}

// proxyV2Header is a PROXY protocol v2 PROXY header for a TCP connection from
// src to dst (both of one family), as HAProxy's spec defines it.
func proxyV2Header(src, dst net.Addr) []byte {
	s, _ := netip.ParseAddrPort(src.String())
	d, _ := netip.ParseAddrPort(dst.String())
	sa, da := s.Addr().Unmap(), d.Addr().Unmap()
	hdr := []byte("\r\n\r\n\x00\r\nQUIT\n")
	hdr = append(hdr, 0x21) // version 2, PROXY
	if sa.Is4() && da.Is4() {
		hdr = append(hdr, 0x11, 0, 12)
		a4, b4 := sa.As4(), da.As4()
		hdr = append(hdr, a4[:]...)
		hdr = append(hdr, b4[:]...)
	} else {
		hdr = append(hdr, 0x21, 0, 36)
		a16, b16 := sa.As16(), da.As16()
		hdr = append(hdr, a16[:]...)
		hdr = append(hdr, b16[:]...)
	}
	hdr = binary.BigEndian.AppendUint16(hdr, s.Port())
	hdr = binary.BigEndian.AppendUint16(hdr, d.Port())
	return hdr
}
