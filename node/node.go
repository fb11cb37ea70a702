package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"tailscale.com/client/local"
	"tailscale.com/envknob"
	"tailscale.com/ipn/store/mem"
	"tailscale.com/tsnet"
	"tailscale.com/wgengine/netstack"
)

// nodeConfig is what Python passes to tp_node_start, as JSON. The auth key
// travels only here: never on argv or in the environment.
type nodeConfig struct {
	Dir        string `json:"dir"`
	Hostname   string `json:"hostname"`
	AuthKey    string `json:"authkey"`
	ControlURL string `json:"control_url"`
	Ephemeral  bool   `json:"ephemeral"`
	LogPath    string `json:"log_path"`
}

// node is one tsnet.Server plus the work Python started on it: dialled
// connections waiting for their local socket, and listeners.
type node struct {
	srv     *tsnet.Server
	lc      *local.Client
	events  *eventPipe
	logFile *os.File
	started time.Time

	stopProfile func() // TAILPROXY_NODE_CPUPROFILE (bench/REPORT.md's profiles)

	mu        sync.Mutex
	dialed    map[int64]net.Conn           // dialled, not yet relayed
	cancels   map[int64]context.CancelFunc // dials in flight
	listeners map[int64]io.Closer          // tailnet listeners, and the parked-connect server
	parked    map[int64]*parkedServer      // parked-connect servers whose relays may still run (an agent: one per program)
	relaying  map[int64]*byteCounts        // relays of dialled connections, while they run
	relays    sync.WaitGroup
}

// Containment: a node must never upload logs or open ports on a router. The
// Python side sets both variables before this library loads; refusing here
// too means no caller can forget.
func checkContainment() error {
	if !envknob.NoLogsNoSupport() {
		return errors.New("TS_NO_LOGS_NO_SUPPORT=true must be set before the node library loads")
	}
	if os.Getenv("TS_DISABLE_PORTMAPPER") == "" {
		return errors.New("TS_DISABLE_PORTMAPPER=1 must be set before the node library loads")
	}
	return nil
}

// startNode creates the tsnet server and starts it; it does not wait for the
// node to be Running (Python watches status, so that it can show a login URL).
func startNode(cfg nodeConfig, eventFD int) (*node, error) {
	if err := checkContainment(); err != nil {
		return nil, err
	}
	if cfg.Dir == "" || cfg.Hostname == "" {
		return nil, errors.New("dir and hostname are required")
	}
	logFile, err := os.OpenFile(cfg.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("node log: %w", err)
	}
	// A Go crash is written to the node log as well as to stderr.
	_ = debug.SetCrashOutput(logFile, debug.CrashOptions{})
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memoryLimit)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	stopProfile := startCPUProfile(os.Getenv("TAILPROXY_NODE_CPUPROFILE"), logFile)
	logger := log.New(logFile, "", log.LstdFlags|log.Lmicroseconds)
	// Some Tailscale packages log through the standard logger: to the node log too, never
	// onto the program's terminal.
	log.SetOutput(logFile)
	srv := &tsnet.Server{
		Dir:        cfg.Dir,
		Hostname:   cfg.Hostname,
		AuthKey:    cfg.AuthKey,
		ControlURL: cfg.ControlURL,
		Ephemeral:  cfg.Ephemeral,
		Logf:       logger.Printf,
		UserLogf:   logger.Printf,
	}
	if cfg.Ephemeral {
		srv.Store = new(mem.Store)
	}
	if err := srv.Start(); err != nil {
		stopProfile()
		logFile.Close()
		return nil, err
	}
	if err := shortenTimeWait(srv); err != nil {
		logger.Printf("tailproxy: %v", err)
	}
	lc, err := srv.LocalClient()
	if err != nil {
		srv.Close()
		stopProfile()
		logFile.Close()
		return nil, err
	}
	return &node{
		srv: srv, lc: lc, logFile: logFile, started: time.Now(), stopProfile: stopProfile,
		events:    newEventPipe(os.NewFile(uintptr(eventFD), "events")),
		dialed:    map[int64]net.Conn{},
		cancels:   map[int64]context.CancelFunc{},
		listeners: map[int64]io.Closer{},
		relaying:  map[int64]*byteCounts{},
	}, nil
}

// memoryLimit bounds the Go heap (GOMEMLIMIT overrides it): the netstack
// keeps buffers per connection, and the GC should work before RSS grows.
const memoryLimit = 192 << 20

// gcPercent lets the heap grow to 5x what is live before a collection: the node's
// garbage is per-packet and per-connection, and with the default (100) the GC took about
// a sixth of the node's CPU per connection. memoryLimit still bounds the total.
const gcPercent = 400

// shortenTimeWait sets the netstack's TCP TIME_WAIT to one second. With the
// default 60 s, each closed connection holds ~260 KB of heap for a minute, and
// Close can hang behind hundreds of them.
func shortenTimeWait(srv *tsnet.Server) error {
	ns, ok := srv.Sys().Netstack.GetOK()
	if !ok {
		return errors.New("no netstack to tune")
	}
	impl, ok := ns.(*netstack.Impl)
	if !ok {
		return errors.New("unexpected netstack type")
	}
	opt := tcpip.TCPTimeWaitTimeoutOption(time.Second)
	if err := impl.SetTransportProtocolOption(tcp.ProtocolNumber, &opt); err != nil {
		return fmt.Errorf("TIME_WAIT: %v", err)
	}
	return nil
}

// close stops the node: listeners, dials and relays first, then the server,
// bounded in time so that a stuck netstack cannot hang the program's exit.
func (n *node) close(timeout time.Duration) error {
	n.mu.Lock()
	for id, ln := range n.listeners {
		ln.Close()
		delete(n.listeners, id)
	}
	for id, cancel := range n.cancels {
		cancel()
		delete(n.cancels, id)
	}
	for id, c := range n.dialed {
		c.Close()
		delete(n.dialed, id)
	}
	n.mu.Unlock()
	done := make(chan error, 1)
	go func() { done <- n.srv.Close() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(timeout):
		err = fmt.Errorf("the node did not stop within %v", timeout)
	}
	n.events.close()
	n.stopProfile()
	n.logFile.Close()
	return err
}

// startCPUProfile writes a CPU profile of the node to path until the returned function is
// called: a diagnostic for the benchmarks (TAILPROXY_NODE_CPUPROFILE), off when path is "".
func startCPUProfile(path string, logFile *os.File) func() {
	if path == "" {
		return func() {}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(logFile, "tailproxy: no CPU profile: %v\n", err)
		if f != nil {
			f.Close()
		}
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// dial starts a connection through the tailnet; its outcome arrives as a
// "dialed" event. A successful connection waits for relayTo (or drop).
func (n *node) dial(id int64, network, addr string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	n.mu.Lock()
	n.cancels[id] = cancel
	n.mu.Unlock()
	goWork(func() {
		defer recoverToLog(n, "dial")
		c, err := n.dialRetrying(ctx, network, addr)
		n.mu.Lock()
		_, wanted := n.cancels[id]
		delete(n.cancels, id)
		if err == nil && wanted {
			n.dialed[id] = c
		}
		n.mu.Unlock()
		cancel()
		switch {
		case err == nil && !wanted:
			c.Close()
		case err == nil:
			n.events.send(event{ID: id, Kind: "dialed", Src: addrString(c.LocalAddr()),
				Dst: addrString(c.RemoteAddr())})
		default:
			if ctx.Err() == context.DeadlineExceeded {
				err = fmt.Errorf("timed out after %v: %w", timeout, context.DeadlineExceeded)
			}
			n.events.send(event{ID: id, Kind: "dialed", Errno: int(errnoFor(err)), Err: err.Error()})
		}
	})
}

// relayTo joins dialled connection id to the socket fd: Go sends initial (bytes
// a proxy handshake already read past) to the tailnet first, then copies both
// ways and reports "done" with byte counts and the reason an abnormal end had.
// A UDP connection is relayed datagram by datagram (datagrams.go).
func (n *node) relayTo(id int64, fd int, initial []byte) error {
	n.mu.Lock()
	remote, ok := n.dialed[id]
	n.mu.Unlock()
	if ok && isDatagram(remote) {
		return n.relayDatagramsTo(id, fd, initial)
	}
	local, err := fileConn(fd)
	if err != nil {
		return err
	}
	n.mu.Lock()
	remote, ok = n.dialed[id]
	delete(n.dialed, id)
	n.mu.Unlock()
	if !ok {
		local.Close()
		return fmt.Errorf("no dialled connection %d", id)
	}
	rc, ok := remote.(halfCloser)
	if !ok {
		local.Close()
		remote.Close()
		return fmt.Errorf("connection %d cannot half-close", id)
	}
	counts := &byteCounts{}
	n.mu.Lock()
	n.relaying[id] = counts
	n.mu.Unlock()
	n.relays.Add(1)
	goWork(func() {
		defer n.relays.Done()
		defer recoverToLog(n, "relay")
		defer n.relayEnded(id) // if the relay panics; ending twice is harmless
		if len(initial) > 0 {
			if _, err := rc.Write(initial); err != nil {
				local.Close()
				rc.Close()
				n.relayEnded(id)
				n.events.send(event{ID: id, Kind: "done", Reason: "write to the tailnet: " + err.Error(),
					Errno: int(errnoFor(err))})
				return
			}
			counts.up.Add(int64(len(initial)))
		}
		res := relayCounting(local, rc, counts)
		res.Up += int64(len(initial))
		n.relayEnded(id) // before the event: whoever reads it finds the relay ended
		n.events.send(event{ID: id, Kind: "done", Up: res.Up, Down: res.Down,
			Reason: res.Reason, Errno: int(res.Errno)})
	})
	return nil
}

func (n *node) relayEnded(id int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.relaying, id)
}

// relayBytes is what the relay of dialled connection id delivered so far each way; ok is
// false once it has ended (its done event has the totals) or if it never ran.
func (n *node) relayBytes(id int64) (up, down int64, ok bool) {
	n.mu.Lock()
	c, ok := n.relaying[id]
	n.mu.Unlock()
	if !ok {
		return 0, 0, false
	}
	return c.up.Load(), c.down.Load(), true
}

// drop abandons a dial in flight or a dialled connection not yet relayed.
func (n *node) drop(id int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if cancel, ok := n.cancels[id]; ok {
		delete(n.cancels, id)
		cancel()
	}
	if c, ok := n.dialed[id]; ok {
		delete(n.dialed, id)
		c.Close()
	}
}

// localAPI performs one LocalAPI request in process (tsnet's LocalClient),
// bounded by timeout (a ping waits for its pong until then).
func (n *node) localAPI(method, path string, body []byte, timeout time.Duration) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytesReader(body)
	}
	req, err := newLocalRequest(ctx, method, path, rd)
	if err != nil {
		return 0, nil, err
	}
	resp, err := n.lc.DoLocalRequest(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, maxLocalAPIResponse))
	return resp.StatusCode, out, err
}

const (
	localAPITimeout     = 30 * time.Second
	maxLocalAPIResponse = 64 << 20
)

// addrString is a.String(), or "" for the nil address of a connection that
// was reset meanwhile.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func recoverToLog(n *node, where string) {
	if r := recover(); r != nil {
		fmt.Fprintf(n.logFile, "tailproxy: panic in %s: %v\n%s\n", where, r, debug.Stack())
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
