package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The preload's parked CONNECTs to tailnet peers, taken without Python.
//
// The preload parks a program's socket and sends one datagram (docs/CHANNEL.md). The proxy
// owns that datagram socket and lends it to the node. When a datagram is a well-formed parked
// CONNECT to an online peer's tailnet address (which the proxy's policy always sends to the
// node: policy/route.py), the node dials the peer, completes the program's connect by the
// simultaneous open (complete.go) and relays, with no Python on the way. Everything else,
// and every dial that fails, goes on to the proxy unchanged over the forward socket, which
// routes, fails or rejects it as it always did: the policy stays in one place.

// parkedSpec configures the fast path (tp_parked_serve's JSON).
type parkedSpec struct {
	Park4            int   `json:"park4"` // the proxy's parking ports (127.0.0.1, ::1; 0 = none)
	Park6            int   `json:"park6"`
	DefaultTimeoutMS int64 `json:"default_timeout_ms"` // a CONNECT without its own timeout
	MaxTimeoutMS     int64 `json:"max_timeout_ms"`     // how long a parked socket can wait
	Report           bool  `json:"report"`             // a report per connection (parked_reports.go)
	ReportEach       bool  `json:"report_each"`        // each at once, not batched (--verbose)
}

// Wire format of a CONNECT request (docs/CHANNEL.md), host byte order.
const (
	connectReqSize = 288
	opConnect      = 1
	flagParked     = 1 << 1
	maxParkedFDs   = 8 // a datagram with more is truncated (MSG_CTRUNC) and forwarded as such
)

// forwardHeader precedes each message passed on to the proxy:
// u32 pid | i32 errno (0: route it yourself; else the node's dial failed) | u16 message
// length | u16 flags (bit 0: the datagram was truncated) | the message | the reason text.
const (
	forwardHeaderSize = 12
	forwardTruncated  = 1
)

type datagram struct {
	pid       uint32
	data      []byte
	fds       []int
	truncated bool
}

type connectReq struct {
	token   uint64
	dst     netip.AddrPort
	timeout time.Duration
}

// parseParkedConnect accepts exactly what the fast path may take: a version 1 parked
// CONNECT for an IP address with no host name attached.
func parseParkedConnect(d datagram) (connectReq, bool) {
	b := d.data
	if d.truncated || d.pid == 0 || len(d.fds) != 1 || len(b) != connectReqSize {
		return connectReq{}, false
	}
	le := binary.NativeEndian
	if b[0] != 1 || b[1] != opConnect || le.Uint16(b[2:])&flagParked == 0 || b[9] != 0 || b[32] != 0 {
		return connectReq{}, false
	}
	port := le.Uint16(b[10:])
	var ip netip.Addr
	switch b[8] {
	case 4:
		ip = netip.AddrFrom4([4]byte(b[12:16]))
	case 6:
		ip = netip.AddrFrom16([16]byte(b[12:28])).Unmap()
	default:
		return connectReq{}, false
	}
	if port == 0 {
		return connectReq{}, false
	}
	return connectReq{
		token:   uint64(d.pid)<<32 | uint64(le.Uint32(b[4:])),
		dst:     netip.AddrPortFrom(ip, port),
		timeout: time.Duration(le.Uint32(b[28:])) * time.Millisecond,
	}, true
}

type parkedServer struct {
	n       *node
	id      int64 // the events' id
	in, fwd *net.UnixConn
	spec    parkedSpec
	peers   atomic.Pointer[map[netip.Addr]struct{}] // online peers' tailnet addresses
	dial    func(ctx context.Context, network, addr string) (net.Conn, error)
	stop    chan struct{}
	once    sync.Once

	reports *reportBatch // the per-connection reports, when spec.Report asks for them

	mu   sync.Mutex
	live map[netip.AddrPort]liveRelay // by the program's address
}

// liveRelay is a connection being relayed: the node's end of the program's connection,
// and where the program asked to connect (its getpeername, if the preload must ask).
type liveRelay struct {
	local   *net.TCPConn
	dst     netip.AddrPort
	pid     uint32      // the process that connected (the kernel's word, from the datagram)
	asked   time.Time   // when the program's connect reached us
	relayed time.Time   // when its connect completed and the relay began
	bytes   *byteCounts // delivered so far, each way
}

// serveParked starts the fast path on the proxy's datagram socket (in) and forward socket.
// Both are duplicates: the caller keeps and closes its own descriptors.
func (n *node) serveParked(id int64, inFD, fwdFD int, spec parkedSpec) error {
	in, err := unixConn(inFD)
	if err != nil {
		return err
	}
	fwd, err := unixConn(fwdFD)
	if err != nil {
		in.Close()
		return err
	}
	p := newParkedServer(n, id, in, fwd, spec)
	n.mu.Lock()
	if old, ok := n.listeners[id]; ok {
		old.Close()
	}
	n.listeners[id] = p
	if n.parked == nil {
		n.parked = map[int64]*parkedServer{}
	}
	n.parked[id] = p
	n.mu.Unlock()
	p.refreshPeers()
	go p.watchPeers()
	go p.readLoop()
	return nil
}

func newParkedServer(n *node, id int64, in, fwd *net.UnixConn, spec parkedSpec) *parkedServer {
	p := &parkedServer{n: n, id: id, in: in, fwd: fwd, spec: spec, dial: n.dialRetrying,
		stop: make(chan struct{}), live: map[netip.AddrPort]liveRelay{}}
	p.reports = &reportBatch{n: n, id: id, each: spec.ReportEach}
	p.peers.Store(&map[netip.Addr]struct{}{})
	return p
}

// Close stops taking datagrams (tp_unlisten, node close). Relays already running go on
// until they end or the node stops.
func (p *parkedServer) Close() error {
	p.once.Do(func() {
		close(p.stop)
		p.in.Close()
		p.fwd.Close()
	})
	return nil
}

// peerRefresh is how stale the set of online peers may be: the same order as the proxy's
// own view of the tailnet (policy/view.py), whose routing a stale set must not contradict
// for longer than the proxy's would.
const peerRefresh = time.Second

func (p *parkedServer) watchPeers() {
	defer recoverToLog(p.n, "parked peers")
	t := time.NewTicker(peerRefresh)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.refreshPeers()
		}
	}
}

func (p *parkedServer) refreshPeers() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := p.n.lc.Status(ctx)
	if err != nil {
		return // keep the last set; the proxy routes whatever it does not cover
	}
	online := map[netip.Addr]struct{}{}
	for _, peer := range st.Peer {
		if !peer.Online {
			continue
		}
		for _, ip := range peer.TailscaleIPs {
			online[ip] = struct{}{}
		}
	}
	p.peers.Store(&online)
}

func (p *parkedServer) takes(ip netip.Addr) bool {
	_, ok := (*p.peers.Load())[ip]
	return ok
}

func (p *parkedServer) readLoop() {
	defer recoverToLog(p.n, "parked datagrams")
	buf := make([]byte, connectReqSize+64)
	oob := make([]byte, syscall.CmsgSpace(4*maxParkedFDs)+syscall.CmsgSpace(syscall.SizeofUcred))
	for {
		nr, noob, flags, _, err := p.in.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			fmt.Fprintf(p.n.logFile, "tailproxy: parked datagrams: %v\n", err)
			select {
			case <-p.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			continue
		}
		d := readDatagram(buf[:nr], oob[:noob], flags)
		p.handle(d)
	}
}

// readDatagram takes the pid and the descriptors out of the control messages; the data is
// copied, since the buffer is reused.
func readDatagram(data, oob []byte, flags int) datagram {
	d := datagram{data: append([]byte(nil), data...),
		truncated: flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		d.truncated = true
		return d
	}
	for _, m := range msgs {
		if fds, err := syscall.ParseUnixRights(&m); err == nil {
			d.fds = append(d.fds, fds...)
		} else if cred, err := syscall.ParseUnixCredentials(&m); err == nil {
			d.pid = uint32(cred.Pid)
		}
	}
	return d
}

func (p *parkedServer) handle(d datagram) {
	req, ok := parseParkedConnect(d)
	if !ok || !p.takes(req.dst.Addr()) {
		p.forward(d, 0, "")
		return
	}
	sock := d.fds[0]
	park, ok := p.parkingAddress(sock, req.dst.Addr())
	if !ok {
		p.forward(d, 0, "") // not a parked TCP socket of ours: the proxy says why
		return
	}
	goWork(func() { p.connect(d, req, sock, park) })
}

// connect dials the peer for a parked socket, completes the program's connect and relays.
func (p *parkedServer) connect(d datagram, req connectReq, sock int, park syscall.Sockaddr) {
	defer recoverToLog(p.n, "parked connect")
	t0 := time.Now()
	timeout := p.timeout(req.timeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	c, err := p.dial(ctx, "tcp", req.dst.String())
	cancel()
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("timed out after %v: %w", timeout, context.DeadlineExceeded)
		}
		p.forward(d, errnoFor(err), err.Error())
		return
	}
	remote, ok := c.(halfCloser)
	if !ok {
		c.Close()
		p.forward(d, syscall.ECONNRESET, "the tailnet connection cannot half-close")
		return
	}
	local, prog, err := completeParked(sock, park)
	if err != nil {
		remote.Close()
		p.forward(d, syscall.ECONNRESET, "could not complete the program's connect: "+err.Error())
		return
	}
	syscall.Close(sock) // the program keeps its own descriptor of it
	counts := &byteCounts{}
	relayed := time.Now()
	p.track(prog, liveRelay{local: local, dst: req.dst, pid: d.pid, asked: t0, relayed: relayed,
		bytes: counts})
	defer p.untrack(prog, local, nil) // if the relay panics; untracking twice is harmless
	res := relayCounting(local, remote, counts)
	var report *event
	if p.spec.Report {
		report = &event{Kind: "done", Token: req.token, Src: prog.String(),
			Dst: req.dst.String(), Up: res.Up, Down: res.Down, Reason: res.Reason,
			Errno: int(res.Errno), Millis: time.Since(t0).Milliseconds(), Pid: d.pid,
			Micros: max(relayed.Sub(t0).Microseconds(), 1)}
	}
	p.untrack(prog, local, report)
}

func (p *parkedServer) timeout(asked time.Duration) time.Duration {
	t := asked
	if t <= 0 {
		t = time.Duration(p.spec.DefaultTimeoutMS) * time.Millisecond
	}
	if max := time.Duration(p.spec.MaxTimeoutMS) * time.Millisecond; max > 0 && t > max {
		t = max
	}
	if t <= 0 {
		t = 30 * time.Second
	}
	return t
}

// parkingAddress checks that sock is a TCP socket parked (SYN_SENT) at the proxy's parking
// listener of its family, and returns that listener's address.
func (p *parkedServer) parkingAddress(sock int, dst netip.Addr) (syscall.Sockaddr, bool) {
	family, ok := parkedTCPFamily(sock)
	switch {
	case !ok:
		return nil, false
	case family == syscall.AF_INET && dst.Is4() && p.spec.Park4 > 0:
		return &syscall.SockaddrInet4{Port: p.spec.Park4, Addr: [4]byte{127, 0, 0, 1}}, true
	case family == syscall.AF_INET6 && p.spec.Park6 > 0:
		return &syscall.SockaddrInet6{Port: p.spec.Park6, Addr: netip.IPv6Loopback().As16()}, true
	}
	return nil, false
}

// forward passes a datagram the fast path did not finish to the proxy, descriptors and all.
// When the proxy cannot take it, the descriptors are closed: the program's socket then stays
// parked until its own timeout, as it would with the proxy gone.
func (p *parkedServer) forward(d datagram, errno syscall.Errno, reason string) {
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	msg := make([]byte, forwardHeaderSize, forwardHeaderSize+len(d.data)+len(reason))
	le := binary.NativeEndian
	le.PutUint32(msg[0:], d.pid)
	le.PutUint32(msg[4:], uint32(errno))
	le.PutUint16(msg[8:], uint16(len(d.data)))
	if d.truncated {
		le.PutUint16(msg[10:], forwardTruncated)
	}
	msg = append(append(msg, d.data...), reason...)
	var oob []byte
	if len(d.fds) > 0 {
		oob = syscall.UnixRights(d.fds...)
	}
	if _, _, err := p.fwd.WriteMsgUnix(msg, oob, nil); err != nil {
		fmt.Fprintf(p.n.logFile, "tailproxy: parked connect not passed to the proxy: %v\n", err)
	}
	for _, fd := range d.fds {
		syscall.Close(fd)
	}
}

func (p *parkedServer) track(prog netip.AddrPort, r liveRelay) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.live[prog] = r
}

// untrack ends a relay's entry and queues its report (if any) in one step, so that a drain
// that finds the relay gone finds its report queued, and a PEER query after the report
// cannot find the relay.
func (p *parkedServer) untrack(prog netip.AddrPort, local *net.TCPConn, report *event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live[prog].local == local { // the port may have been reused by a newer connection
		delete(p.live, prog)
	}
	if report != nil {
		p.reports.add(*report)
	}
}

// peerOf is the destination of the connection relayed for the program's socket at prog.
func (p *parkedServer) peerOf(prog netip.AddrPort) (netip.AddrPort, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.live[netip.AddrPortFrom(prog.Addr().Unmap(), prog.Port())]
	return r.dst, ok
}

// drain waits until no relay is still delivering what its program sent (delivering), or
// timeout; it returns how many still were.
func (p *parkedServer) drain(timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		left := 0
		p.mu.Lock()
		for _, r := range p.live {
			if delivering(r.local) {
				left++
			}
		}
		p.mu.Unlock()
		if left == 0 || time.Now().After(deadline) {
			p.reports.flush() // the ended ones' reports now, not a batch later
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// drainParked drains the parked-connect server `id` (one program's connections), or every
// server with id 0 (the node is about to stop), within one deadline.
func (n *node) drainParked(id int64, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	left := 0
	for sid, p := range n.parkedServers() {
		if id == 0 || sid == id {
			left += p.drain(time.Until(deadline))
		}
	}
	return left
}

func (n *node) parkedPeer(prog netip.AddrPort) (netip.AddrPort, bool) {
	for _, p := range n.parkedServers() {
		if d, ok := p.peerOf(prog); ok {
			return d, true
		}
	}
	return netip.AddrPort{}, false
}

// parkedServers is every parked-connect server that is open or still relays; a closed one
// whose last relay has ended is forgotten here.
func (n *node) parkedServers() map[int64]*parkedServer {
	n.mu.Lock()
	all := make(map[int64]*parkedServer, len(n.parked))
	for id, p := range n.parked {
		all[id] = p
	}
	n.mu.Unlock()
	for id, p := range all {
		if p.finished() {
			n.mu.Lock()
			if n.parked[id] == p {
				delete(n.parked, id)
			}
			n.mu.Unlock()
			delete(all, id)
		}
	}
	return all
}

// finished: closed (no more datagrams taken) and no relay of its own left running.
func (p *parkedServer) finished() bool {
	select {
	case <-p.stop:
	default:
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.live) == 0
}

func unixConn(fd int) (*net.UnixConn, error) {
	c, err := fileConnOf(fd)
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("fd %d is not a Unix socket", fd)
	}
	return uc, nil
}
