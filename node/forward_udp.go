package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// UDP exports: <node>:port on the tailnet, served by the program's loopback UDP socket. Each
// peer address is a flow: a UDP socket of ours connected to the program's, so the program sees
// one client per peer and its replies come back on that flow and go out to that peer from
// <node>:port. Flows are bounded per export and end after udpFlowIdle without a datagram.

var maxFlowsPerExport = 256 // a var for the tests

var udpFlowIdle = 2 * time.Minute

// udpExport is what n.listeners holds for a UDP export: one packet listener per tailnet
// address of the node.
type udpExport struct {
	conns []net.PacketConn
	once  sync.Once
}

func (e *udpExport) Close() error {
	e.once.Do(func() {
		for _, c := range e.conns {
			c.Close()
		}
	})
	return nil
}

func (n *node) listenUDP(id int64, spec listenSpec) error {
	target, err := net.ResolveUDPAddr("udp", spec.Target)
	if err != nil || target.IP == nil || !target.IP.IsLoopback() {
		return fmt.Errorf("a UDP export forwards to a loopback address, not %q", spec.Target)
	}
	ip4, ip6 := n.srv.TailscaleIPs()
	e := &udpExport{}
	for _, ip := range []netip.Addr{ip4, ip6} {
		if !ip.IsValid() {
			continue
		}
		pc, err := n.srv.ListenPacket("udp", netip.AddrPortFrom(ip, uint16(spec.Port)).String())
		if err != nil {
			e.Close()
			return err
		}
		e.conns = append(e.conns, pc)
	}
	if len(e.conns) == 0 {
		return errors.New("the node has no tailnet address yet")
	}
	n.mu.Lock()
	if old, ok := n.listeners[id]; ok {
		old.Close()
	}
	n.listeners[id] = e
	n.mu.Unlock()
	for _, pc := range e.conns {
		pc := pc
		go n.serveUDPExport(id, pc, target, spec)
	}
	return nil
}

type udpFlow struct {
	c        *net.UDPConn // connected to the program's socket
	last     atomic.Int64 // unix nanoseconds of the last datagram either way
	up, down atomic.Int64 // bytes peer→program, program→peer
}

// serveUDPExport reads the peers' datagrams on pc until it is closed (the export ended; flows
// end with it).
func (n *node) serveUDPExport(id int64, pc net.PacketConn, target *net.UDPAddr, spec listenSpec) {
	defer recoverToLog(n, "udp export")
	idle, maxFlows := udpFlowIdle, maxFlowsPerExport
	var mu sync.Mutex
	flows := map[string]*udpFlow{}
	defer func() {
		mu.Lock()
		for _, f := range flows {
			f.c.Close()
		}
		mu.Unlock()
	}()
	buf := make([]byte, maxDatagram+1)
	for {
		nr, src, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		key := src.String()
		mu.Lock()
		f := flows[key]
		if f == nil {
			if len(flows) >= maxFlows {
				mu.Unlock()
				continue // dropped: this export holds as many peers as it may
			}
			c, err := net.DialUDP("udp", nil, target)
			if err != nil {
				mu.Unlock()
				continue
			}
			f = &udpFlow{c: c}
			f.last.Store(time.Now().UnixNano())
			flows[key] = f
			go n.udpFlowDown(id, pc, src, f, spec, idle, func() {
				mu.Lock()
				if flows[key] == f {
					delete(flows, key)
				}
				mu.Unlock()
			})
		}
		mu.Unlock()
		f.last.Store(time.Now().UnixNano())
		if _, err := f.c.Write(buf[:nr]); err == nil {
			f.up.Add(int64(nr))
		}
	}
}

// udpFlowDown carries the program's replies to the peer until the flow is idle, the program's
// socket is gone (ECONNREFUSED) or the export closed.
func (n *node) udpFlowDown(id int64, pc net.PacketConn, peer net.Addr, f *udpFlow, spec listenSpec,
	idle time.Duration, forget func()) {
	defer recoverToLog(n, "udp export flow")
	start := time.Now()
	reason := ""
	buf := make([]byte, maxDatagram+1)
	for {
		f.c.SetReadDeadline(time.Now().Add(idle / 4))
		nr, err := f.c.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if time.Since(time.Unix(0, f.last.Load())) < idle {
					continue
				}
			} else if !errors.Is(err, net.ErrClosed) {
				reason = "from the program: " + err.Error()
			}
			break
		}
		f.last.Store(time.Now().UnixNano())
		if _, err := pc.WriteTo(buf[:nr], peer); err != nil {
			if errors.Is(err, net.ErrClosed) {
				break
			}
			continue // one datagram lost, as UDP may
		}
		f.down.Add(int64(nr))
	}
	forget()
	f.c.Close()
	if spec.Report {
		who := n.whois(peer.String())
		n.events.send(event{ID: id, Kind: "inbound", Src: peer.String(), Node: who.Node,
			User: who.User, Up: f.up.Load(), Down: f.down.Load(), Reason: reason,
			Millis: time.Since(start).Milliseconds()})
	}
}
