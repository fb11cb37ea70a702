package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// parkingListener is the proxy's parking listener in miniature: its accept queue is full,
// so a SYN to it is dropped and the connecting socket stays in SYN_SENT.
func parkingListener(t *testing.T) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(fd)
	port := sa.(*unix.SockaddrInet4).Port
	filler, err := net.Dial("tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return port
}

// parkedSocket is a program's socket as the preload leaves it: connecting to the parking
// listener, in SYN_SENT.
func parkedSocket(t *testing.T, park int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: park, Addr: [4]byte{127, 0, 0, 1}})
	if err != unix.EINPROGRESS {
		t.Fatalf("parking connect: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, ok := parkedTCPFamily(fd); ok {
			return fd
		}
		if time.Now().After(deadline) {
			t.Fatal("the socket did not stay in SYN_SENT")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connectMsg encodes a CONNECT request as the preload sends it.
func connectMsg(flags uint16, seq uint32, dst netip.AddrPort, host string) []byte {
	b := make([]byte, connectReqSize)
	le := binary.NativeEndian
	b[0], b[1] = 1, opConnect
	le.PutUint16(b[2:], flags)
	le.PutUint32(b[4:], seq)
	if dst.Addr().Is4() {
		b[8] = 4
		a := dst.Addr().As4()
		copy(b[12:], a[:])
	} else {
		b[8] = 6
		a := dst.Addr().As16()
		copy(b[12:], a[:])
	}
	le.PutUint16(b[10:], dst.Port())
	b[32] = byte(len(host))
	copy(b[33:], host)
	return b
}

type parkedRig struct {
	n      *fakeNode
	p      *parkedServer
	send   *net.UnixConn // the preload's end of the datagram socket
	fwd    *net.UnixConn // the proxy's end of the forward socket
	park   int
	target netip.AddrPort // what the fast path takes: a "peer" (an echo server here)
}

func newParkedRig(t *testing.T, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *parkedRig {
	t.Helper()
	n := newFakeNode(t)
	dg, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(dg[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	fw, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) *net.UnixConn {
		c, err := unixConn(fd)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		return c
	}
	r := &parkedRig{n: n, send: conn(dg[0]), fwd: conn(fw[1]), park: parkingListener(t)}
	r.p = newParkedServer(n.node, 7, conn(dg[1]), conn(fw[0]), parkedSpec{Park4: r.park,
		DefaultTimeoutMS: 2000, MaxTimeoutMS: 5000, Report: true})
	if dial != nil {
		r.p.dial = dial
	}
	go r.p.readLoop()
	t.Cleanup(func() { r.p.Close(); r.send.Close(); r.fwd.Close() })
	return r
}

func (r *parkedRig) takePeer(a netip.AddrPort) {
	r.target = a
	r.p.peers.Store(&map[netip.Addr]struct{}{a.Addr(): {}})
}

func (r *parkedRig) sendMsg(t *testing.T, msg []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := r.send.WriteMsgUnix(msg, oob, nil); err != nil {
		t.Fatal(err)
	}
}

type forwarded struct {
	pid       uint32
	errno     syscall.Errno
	msg       []byte
	reason    string
	truncated bool
	fds       []int
}

func (r *parkedRig) nextForwarded(t *testing.T) forwarded {
	t.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, 256)
	r.fwd.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, noob, _, _, err := r.fwd.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("nothing forwarded: %v", err)
	}
	le := binary.NativeEndian
	f := forwarded{pid: le.Uint32(buf), errno: syscall.Errno(le.Uint32(buf[4:])),
		truncated: le.Uint16(buf[10:])&forwardTruncated != 0}
	size := int(le.Uint16(buf[8:]))
	f.msg = append([]byte(nil), buf[forwardHeaderSize:forwardHeaderSize+size]...)
	f.reason = string(buf[forwardHeaderSize+size : n])
	d := readDatagram(nil, oob[:noob], 0)
	f.fds = d.fds
	t.Cleanup(func() {
		for _, fd := range f.fds {
			unix.Close(fd)
		}
	})
	return f
}

func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// The fast path end to end, without a tailnet: a parked socket to a taken destination is
// dialled, completed by the simultaneous open, relayed both ways with half-close, and
// reported with its token; the program's socket is the one that was parked.
func TestParkedConnectCompletedAndRelayed(t *testing.T) {
	t.Cleanup(noLeak(t)) // first registered, so checked after the rig is gone
	r := newParkedRig(t, nil)
	r.p.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	r.takePeer(echoServer(t))
	prog := parkedSocket(t, r.park)
	r.sendMsg(t, connectMsg(flagParked, 42, r.target, ""), prog)

	f := os.NewFile(uintptr(prog), "program")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	// The program's connect completes inside the node's completion, just before the node
	// starts tracking the relay: wait for it (bounded) rather than race it.
	progAddr := netip.MustParseAddrPort(c.LocalAddr().String())
	for deadline := time.Now().Add(5 * time.Second); ; {
		dst, ok := r.p.peerOf(progAddr)
		if ok && dst == r.target {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peerOf(%v) = %v, %v while relaying; want %v", progAddr, dst, ok, r.target)
		}
		time.Sleep(time.Millisecond)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "hello" {
		t.Fatalf("echo %q, %v", got, err)
	}
	batch := r.n.events.next(t)
	if batch.Kind != "done_batch" || batch.ID != 7 || len(batch.Done) != 1 {
		t.Fatalf("report batch %+v", batch)
	}
	done := batch.Done[0]
	want := uint64(os.Getpid())<<32 | 42
	if done.Kind != "done" || done.Token != want || done.Up != 5 || done.Down != 5 ||
		done.Reason != "" || done.Src != progAddr.String() || done.Dst != r.target.String() ||
		done.Pid != uint32(os.Getpid()) || done.Micros <= 0 || done.Micros > done.Millis*1000+1000 {
		t.Fatalf("done event %+v (token want %x)", done, want)
	}
	if _, ok := r.p.peerOf(progAddr); ok {
		t.Fatal("peerOf still answers after the relay ended")
	}
	if left := r.p.drain(time.Second); left != 0 {
		t.Fatalf("drain: %d relays left after the end", left)
	}
}

// What the fast path does not take reaches the proxy whole, with the sender's pid and its
// descriptors, whatever is wrong with it.
func TestParkedForwardsWhatItDoesNotTake(t *testing.T) {
	r := newParkedRig(t, func(context.Context, string, string) (net.Conn, error) {
		t.Error("dialled something it should have forwarded")
		return nil, syscall.ECONNREFUSED
	})
	peer := netip.MustParseAddrPort("100.64.0.2:80")
	r.takePeer(peer)
	other := netip.MustParseAddrPort("192.0.2.1:80")
	short := connectMsg(flagParked, 1, peer, "")[:100]
	cases := []struct {
		name  string
		msg   []byte
		nfds  int
		trunc bool
	}{
		{"not a tailnet peer", connectMsg(flagParked, 1, other, ""), 1, false},
		{"not parked", connectMsg(0, 1, peer, ""), 1, false},
		{"a host name to resolve", connectMsg(flagParked, 1, peer, "db"), 1, false},
		{"short", short, 1, false},
		{"no descriptor", connectMsg(flagParked, 1, peer, ""), 0, false},
		{"two descriptors", connectMsg(flagParked, 1, peer, ""), 2, false},
		{"too long", append(connectMsg(flagParked, 1, peer, ""), make([]byte, 100)...), 1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var fds []int
			for i := 0; i < tc.nfds; i++ {
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer unix.Close(fd)
				fds = append(fds, fd)
			}
			r.sendMsg(t, tc.msg, fds...)
			f := r.nextForwarded(t)
			if f.pid != uint32(os.Getpid()) || f.errno != 0 || f.reason != "" || f.truncated != tc.trunc {
				t.Fatalf("forwarded %+v", f)
			}
			if n := min(len(tc.msg), connectReqSize+64); !bytes.Equal(f.msg, tc.msg[:n]) {
				t.Fatal("the message was not forwarded unchanged")
			}
			if len(f.fds) != tc.nfds {
				t.Fatalf("%d descriptors forwarded, %d sent", len(f.fds), tc.nfds)
			}
		})
	}
	// A UDP socket is the proxy's to reject.
	udp, _ := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(udp)
	r.sendMsg(t, connectMsg(flagParked, 1, peer, ""), udp)
	if f := r.nextForwarded(t); f.errno != 0 || len(f.fds) != 1 {
		t.Fatalf("a UDP socket: forwarded %+v", f)
	}
	// A socket that is not parked (here: never connected) is the proxy's to reject.
	fd, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(fd)
	r.sendMsg(t, connectMsg(flagParked, 1, peer, ""), fd)
	if f := r.nextForwarded(t); f.errno != 0 || len(f.fds) != 1 {
		t.Fatalf("an unparked socket: forwarded %+v", f)
	}
}

// A dial that fails is the proxy's to report and to fail the program's connect with: it
// gets the message, the socket and the errno the node chose.
func TestParkedDialFailureForwardedWithErrno(t *testing.T) {
	r := newParkedRig(t, func(context.Context, string, string) (net.Conn, error) {
		return nil, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}
	})
	peer := netip.MustParseAddrPort("100.64.0.2:80")
	r.takePeer(peer)
	prog := parkedSocket(t, r.park)
	defer unix.Close(prog)
	r.sendMsg(t, connectMsg(flagParked, 9, peer, ""), prog)
	f := r.nextForwarded(t)
	if f.errno != syscall.ECONNREFUSED || f.reason == "" || len(f.fds) != 1 {
		t.Fatalf("forwarded %+v", f)
	}
	if _, ok := parkedTCPFamily(f.fds[0]); !ok {
		t.Fatal("the program's socket is no longer parked: the proxy could not fail it")
	}
	r.n.events.none(t, 200*time.Millisecond)
}

func TestParkedTimeoutBounds(t *testing.T) {
	p := &parkedServer{spec: parkedSpec{DefaultTimeoutMS: 30000, MaxTimeoutMS: 10000}}
	for _, tc := range []struct{ asked, want time.Duration }{
		{0, 10 * time.Second}, {time.Second, time.Second}, {time.Minute, 10 * time.Second},
	} {
		if got := p.timeout(tc.asked); got != tc.want {
			t.Errorf("timeout(%v) = %v, want %v", tc.asked, got, tc.want)
		}
	}
}

// Without reports asked for, nothing per connection reaches Python: no event at all.
func TestParkedSilentWithoutReport(t *testing.T) {
	r := newParkedRig(t, func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
	r.p.spec.Report = false
	r.takePeer(echoServer(t))
	prog := parkedSocket(t, r.park)
	r.sendMsg(t, connectMsg(flagParked, 1, r.target, ""), prog)
	f := os.NewFile(uintptr(prog), "program")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	c.(*net.TCPConn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "x" {
		t.Fatalf("echo %q, %v", got, err)
	}
	c.Close()
	r.n.events.none(t, 2*reportDelay)
}

// An agent runs one parked-connect server per program on one node: the relayed peer of a
// program's socket is found whichever server took it, one program's drain looks at its own
// server only, and a closed server is forgotten once its last relay has ended (not before:
// its relays still answer peerOf and count in the node-wide drain).
func TestParkedServersOfOneNode(t *testing.T) {
	n := &node{parked: map[int64]*parkedServer{}}
	server := func(id int64) *parkedServer {
		p := &parkedServer{n: n, id: id, stop: make(chan struct{}),
			live: map[netip.AddrPort]liveRelay{}, reports: &reportBatch{n: n, id: id}}
		n.parked[id] = p
		return p
	}
	first, second := server(1), server(2)
	prog := netip.MustParseAddrPort("127.0.0.1:40001")
	dst := netip.MustParseAddrPort("100.64.0.2:7")
	first.live[prog] = liveRelay{dst: dst}
	if got, ok := n.parkedPeer(prog); !ok || got != dst {
		t.Fatalf("parkedPeer = %v, %v; want the first server's %v", got, ok, dst)
	}
	if left := n.drainParked(2, time.Second); left != 0 {
		t.Fatalf("the second program's drain counted %d relays of the first's", left)
	}
	close(first.stop) // its program has ended; its relay runs on
	if _, ok := n.parkedServers()[1]; !ok {
		t.Fatal("a closed server with a live relay was forgotten")
	}
	delete(first.live, prog)
	all := n.parkedServers()
	if _, ok := all[1]; ok || all[2] != second || len(n.parked) != 1 {
		t.Fatalf("servers after the last relay ended: %v (node keeps %d)", all, len(n.parked))
	}
	if _, ok := n.parkedPeer(prog); ok {
		t.Fatal("parkedPeer answers for a relay that ended")
	}
}

// The fast path's live relays as `tailproxy top` lists them: every program's server, the
// process, the destination, connect latency and age; oldest first, at most limit.
func TestParkedSnapshot(t *testing.T) {
	n := &node{parked: map[int64]*parkedServer{}}
	now := time.Now()
	for id, age := range map[int64]time.Duration{1: time.Second, 2: 3 * time.Second} {
		p := &parkedServer{n: n, id: id, stop: make(chan struct{}),
			live: map[netip.AddrPort]liveRelay{}, reports: &reportBatch{n: n, id: id}}
		n.parked[id] = p
		prog := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(40000+id))
		counts := &byteCounts{}
		counts.up.Add(10 * id)
		counts.down.Add(20 * id)
		p.live[prog] = liveRelay{dst: netip.MustParseAddrPort("100.64.0.2:7"), pid: uint32(100 + id),
			asked: now.Add(-age), relayed: now.Add(-age + 2500*time.Microsecond), bytes: counts}
	}
	all := n.parkedSnapshot(10)
	if len(all) != 2 || all[0].Server != 2 || all[0].Pid != 102 || all[1].Server != 1 {
		t.Fatalf("snapshot %+v: want both, the older (server 2) first", all)
	}
	if c := all[0]; c.Dst != "100.64.0.2:7" || c.Src != "127.0.0.1:40002" || c.ConnectMS != 2.5 ||
		c.AgeMS < 3000 || c.Up != 20 || c.Down != 40 {
		t.Fatalf("entry %+v", c)
	}
	if one := n.parkedSnapshot(1); len(one) != 1 || one[0].Server != 2 {
		t.Fatalf("limit 1: %+v", one)
	}
	if none := n.parkedSnapshot(0); none == nil || len(none) != 0 {
		t.Fatalf("limit 0: %+v", none)
	}
}

// The first report after a quiet spell leaves at once; the rest within reportDelay leave as one
// batch, however many connections end, and what does not fit the backlog is counted, not kept.
func TestParkedReportsBatchedAndBounded(t *testing.T) {
	fn := newFakeNode(t)
	b := &reportBatch{n: fn.node, id: 3}
	for i := 0; i < reportBacklog+10; i++ {
		b.add(event{Kind: "done", Token: uint64(i)})
	}
	first := fn.events.next(t)
	if first.Kind != "done_batch" || first.ID != 3 || len(first.Done) != 1 || first.Done[0].Token != 0 {
		t.Fatalf("the first report: %+v", first)
	}
	batch := fn.events.next(t)
	if len(batch.Done) != reportBacklog || batch.Dropped != 9 || batch.Done[0].Token != 1 ||
		batch.Done[reportBacklog-1].Token != reportBacklog {
		t.Fatalf("batch: %d reports from %d, %d dropped", len(batch.Done), batch.Done[0].Token, batch.Dropped)
	}
	fn.events.none(t, 2*reportDelay)
	b.add(event{Kind: "done", Token: 99}) // after a quiet spell: at once
	if next := fn.events.next(t); len(next.Done) != 1 || next.Done[0].Token != 99 || next.Dropped != 0 {
		t.Fatalf("the next batch: %+v", next)
	}
	log, _ := os.ReadFile(fn.node.logFile.Name())
	if !strings.Contains(string(log), "9 fast-path connection reports dropped") {
		t.Fatalf("node log: %q", log)
	}
	fn.node.logFile.Truncate(0) // read: the cleanup checks for unexpected lines
}
