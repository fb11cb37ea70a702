package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of one loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type accepted struct {
		c   net.Conn
		err error
	}
	ch := make(chan accepted, 1)
	go func() {
		c, err := ln.Accept()
		ch <- accepted{c, err}
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b.err != nil {
		t.Fatal(b.err)
	}
	t.Cleanup(func() { a.Close(); b.c.Close() })
	return a.(*net.TCPConn), b.c.(*net.TCPConn)
}

// noLeak returns a check that the goroutine count is back to where it was.
func noLeak(t *testing.T) func() {
	t.Helper()
	running := func() int { return runtime.NumGoroutine() - int(idleCount.Load()) } // idle workers wait by design
	before := running()
	return func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			now := running()
			if now <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("goroutines: %d before, %d after\n%s", before, now, buf)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// relayRig is a relay between two real connections:
// prog ⇄ local —relay— remote ⇄ tail.
type relayRig struct {
	prog halfCloser // the program's socket (peer of local)
	tail halfCloser // the tailnet peer (peer of remote)
	done chan relayResult
}

func startRelay(t *testing.T, prog, local, remote, tail halfCloser) *relayRig {
	r := &relayRig{prog: prog, tail: tail, done: make(chan relayResult, 1)}
	go func() { r.done <- relay(local, remote) }()
	return r
}

func newTCPRelay(t *testing.T) *relayRig {
	prog, local := tcpPair(t)
	remote, tail := tcpPair(t)
	return startRelay(t, prog, local, remote, tail)
}

func (r *relayRig) wait(t *testing.T) relayResult {
	t.Helper()
	select {
	case res := <-r.done:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
		return relayResult{}
	}
}

func (r *relayRig) stillRunning(t *testing.T) {
	t.Helper()
	select {
	case res := <-r.done:
		t.Fatalf("the relay ended early: %+v", res)
	case <-time.After(50 * time.Millisecond):
	}
}

// readWithin reads c to its end, failing the test if that takes too long.
func readWithin(t *testing.T, c net.Conn, d time.Duration) ([]byte, error) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("no end of stream within %v (read %d bytes)", d, len(b))
	}
	return b, err
}

func readExactly(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return b
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// sendAll writes b and half-closes, in the background.
func sendAll(c halfCloser, b []byte) chan error {
	ch := make(chan error, 1)
	go func() {
		_, err := c.Write(b)
		if err == nil {
			err = c.CloseWrite()
		}
		ch <- err
	}()
	return ch
}

func TestRelayCopiesBothWaysExactly(t *testing.T) {
	defer noLeak(t)()
	r := newTCPRelay(t)
	up := randomBytes(t, 8<<20+12345)
	down := randomBytes(t, 6<<20+777)
	upErr, downErr := sendAll(r.prog, up), sendAll(r.tail, down)

	type got struct {
		b   []byte
		err error
	}
	atTail := make(chan got, 1)
	go func() { b, err := io.ReadAll(r.tail); atTail <- got{b, err} }()
	atProg, err := readWithin(t, r.prog, 20*time.Second)
	if err != nil {
		t.Fatalf("program side read: %v", err)
	}
	g := <-atTail
	if g.err != nil {
		t.Fatalf("tailnet side read: %v", g.err)
	}
	if err := <-upErr; err != nil {
		t.Fatal(err)
	}
	if err := <-downErr; err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(g.b) != sha256.Sum256(up) || len(g.b) != len(up) {
		t.Errorf("upstream bytes differ: sent %d, got %d", len(up), len(g.b))
	}
	if sha256.Sum256(atProg) != sha256.Sum256(down) || len(atProg) != len(down) {
		t.Errorf("downstream bytes differ: sent %d, got %d", len(down), len(atProg))
	}
	res := r.wait(t)
	if res.Up != int64(len(up)) || res.Down != int64(len(down)) {
		t.Errorf("counts: up %d down %d, want %d %d", res.Up, res.Down, len(up), len(down))
	}
	if res.Reason != "" || res.Errno != 0 {
		t.Errorf("clean end reported as %q (errno %v)", res.Reason, res.Errno)
	}
	r.prog.Close()
	r.tail.Close()
}

// The program half-closes first: the tailnet peer sees EOF and can still
// answer; the relay ends cleanly when the answer is half-closed too.
func TestRelayHalfCloseFromProgram(t *testing.T) {
	defer noLeak(t)()
	r := newTCPRelay(t)
	if _, err := r.prog.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if got := readExactly(t, r.tail, 7); string(got) != "request" {
		t.Fatalf("tail got %q", got)
	}
	if err := r.prog.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err := readWithin(t, r.tail, 5*time.Second)
	if err != nil || len(rest) != 0 {
		t.Fatalf("tail after half-close: %q, %v (want clean EOF)", rest, err)
	}
	r.stillRunning(t)

	// The other direction still works.
	for i := 0; i < 3; i++ {
		if _, err := r.tail.Write([]byte("answer")); err != nil {
			t.Fatalf("tail write after program half-close: %v", err)
		}
		if got := readExactly(t, r.prog, 6); string(got) != "answer" {
			t.Fatalf("program got %q", got)
		}
	}
	if err := r.tail.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	rest, err = readWithin(t, r.prog, 5*time.Second)
	if err != nil || len(rest) != 0 {
		t.Fatalf("program after tail half-close: %q, %v", rest, err)
	}
	res := r.wait(t)
	if res.Reason != "" || res.Up != 7 || res.Down != 18 {
		t.Errorf("result %+v, want clean with up 7 down 18", res)
	}
	r.prog.Close()
	r.tail.Close()
}

// The tailnet side half-closes first: the program sees EOF and can still send.
func TestRelayHalfCloseFromTailnet(t *testing.T) {
	defer noLeak(t)()
	r := newTCPRelay(t)
	if _, err := r.tail.Write([]byte("banner")); err != nil {
		t.Fatal(err)
	}
	if err := r.tail.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := readWithin(t, r.prog, 5*time.Second)
	if err != nil || string(got) != "banner" {
		t.Fatalf("program got %q, %v; want banner then EOF", got, err)
	}
	r.stillRunning(t)
	payload := randomBytes(t, 1<<20)
	errc := sendAll(r.prog, payload)
	atTail, err := readWithin(t, r.tail, 10*time.Second)
	if err != nil || !bytes.Equal(atTail, payload) {
		t.Fatalf("tail got %d bytes (%v), want %d", len(atTail), err, len(payload))
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	res := r.wait(t)
	if res.Reason != "" || res.Up != int64(len(payload)) || res.Down != 6 {
		t.Errorf("result %+v", res)
	}
	r.prog.Close()
	r.tail.Close()
}

func resetClose(t *testing.T, c halfCloser) {
	t.Helper()
	if err := c.(*net.TCPConn).SetLinger(0); err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// A reset from the tailnet side must reach the program as ECONNRESET, not as
// a clean EOF that would make a cut transfer look complete.
func TestRelayRemoteResetReachesProgram(t *testing.T) {
	for _, halfClosed := range []bool{false, true} {
		name := "open"
		if halfClosed {
			name = "program-half-closed"
		}
		t.Run(name, func(t *testing.T) {
			defer noLeak(t)()
			r := newTCPRelay(t)
			if _, err := r.tail.Write([]byte("partial")); err != nil {
				t.Fatal(err)
			}
			if got := readExactly(t, r.prog, 7); string(got) != "partial" {
				t.Fatalf("program got %q", got)
			}
			if halfClosed {
				r.prog.CloseWrite()
				if b, err := readWithin(t, r.tail, 5*time.Second); err != nil || len(b) != 0 {
					t.Fatalf("tail: %q %v", b, err)
				}
			}
			resetClose(t, r.tail)
			b, err := readWithin(t, r.prog, 5*time.Second)
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("program read after remote reset: %q, %v; want ECONNRESET", b, err)
			}
			res := r.wait(t)
			if res.Reason == "" {
				t.Errorf("abnormal end with an empty reason: %+v", res)
			}
			if res.Errno != syscall.ECONNRESET {
				t.Errorf("errno %v, want ECONNRESET (reason %q)", res.Errno, res.Reason)
			}
			if !strings.Contains(res.Reason, "from the tailnet") {
				t.Errorf("reason %q does not say where", res.Reason)
			}
			r.prog.Close()
		})
	}
}

// A reset from the program aborts the tailnet side: the relay ends at once
// (it does not wait for the tailnet peer to close) and the peer's read ends.
func TestRelayLocalResetAbortsRemote(t *testing.T) {
	defer noLeak(t)()
	r := newTCPRelay(t)
	if _, err := r.prog.Write([]byte("upload, cut short")); err != nil {
		t.Fatal(err)
	}
	readExactly(t, r.tail, 17)
	resetClose(t, r.prog)
	res := r.wait(t) // the tailnet peer has closed nothing
	if res.Reason == "" || res.Errno != syscall.ECONNRESET {
		t.Errorf("result %+v, want a reason and ECONNRESET", res)
	}
	if !strings.Contains(res.Reason, "from the program") {
		t.Errorf("reason %q does not say where", res.Reason)
	}
	if _, err := readWithin(t, r.tail, 5*time.Second); err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("tail read: %v", err)
	}
	r.tail.Close()
}

// The tailnet side resets while the program is sending: the program must
// learn of the reset, from its write or from its read, never from a clean EOF.
func TestRelayResetWhileProgramSends(t *testing.T) {
	defer noLeak(t)()
	r := newTCPRelay(t)
	resetClose(t, r.tail)
	_, werr := r.prog.Write([]byte("into the void"))
	res := r.wait(t)
	if res.Reason == "" {
		t.Errorf("clean result after the tailnet side reset: %+v", res)
	}
	// The kernel reports a reset once: to the write if it came first.
	_, rerr := readWithin(t, r.prog, 5*time.Second)
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(rerr, syscall.ECONNRESET) {
		t.Errorf("program write: %v, read: %v; want ECONNRESET from one of them", werr, rerr)
	}
	r.prog.Close()
}

// resetOnce is a tailnet connection that reports a reset once, to whichever
// call takes it first, as gVisor's netstack does (and the kernel): here a
// write in flight takes it, and the read that was waiting then gets a plain
// EOF. The write returns a little later, as a goroutine may be slow to run.
type resetOnce struct {
	reset, taken, closed chan struct{}
	closeOnce            sync.Once
	writeLag             time.Duration
}

func newResetOnce(lag time.Duration) *resetOnce {
	return &resetOnce{reset: make(chan struct{}), taken: make(chan struct{}), closed: make(chan struct{}),
		writeLag: lag}
}

func (c *resetOnce) Write(b []byte) (int, error) {
	select { // a full send window: blocked until the reset
	case <-c.reset:
	case <-c.closed:
		return 0, net.ErrClosed
	}
	close(c.taken)
	time.Sleep(c.writeLag)
	return 0, &net.OpError{Op: "write", Net: "tcp", Err: errors.New("connection reset by peer")}
}

func (c *resetOnce) Read(b []byte) (int, error) {
	select {
	case <-c.taken:
		return 0, io.EOF // what gonet returns once the reset was taken
	case <-c.closed:
		return 0, net.ErrClosed
	}
}

func (c *resetOnce) Close() error                     { c.closeOnce.Do(func() { close(c.closed) }); return nil }
func (c *resetOnce) CloseWrite() error                { return nil }
func (c *resetOnce) LocalAddr() net.Addr              { return strAddr("100.64.0.2:40000") }
func (c *resetOnce) RemoteAddr() net.Addr             { return strAddr("100.64.0.1:80") }
func (c *resetOnce) SetDeadline(time.Time) error      { return nil }
func (c *resetOnce) SetReadDeadline(time.Time) error  { return nil }
func (c *resetOnce) SetWriteDeadline(time.Time) error { return nil }

// A reset that an upload write took must still reach the program as a reset:
// the download's EOF that follows it is not a clean end.
func TestRelayResetTakenByUploadWrite(t *testing.T) {
	defer noLeak(t)()
	prog, local := tcpPair(t)
	remote := newResetOnce(10 * time.Millisecond)
	done := make(chan relayResult, 1)
	go func() { done <- relay(local, remote) }()
	if _, err := prog.Write([]byte("upload")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the relay is now in remote.Write
	close(remote.reset)
	b, err := readWithin(t, prog, 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("program read %q, %v after the tailnet side reset; want ECONNRESET", b, err)
	}
	select {
	case res := <-done:
		if res.Reason == "" || res.Errno != syscall.ECONNRESET {
			t.Errorf("result %+v, want a reason and ECONNRESET", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not end")
	}
	prog.Close()
}

// A clean half-close from the tailnet side reaches the program even while an
// upload is blocked because the tailnet peer does not read.
func TestRelayEOFWhileUploadBlocked(t *testing.T) {
	defer noLeak(t)()
	r := newTCPRelay(t)
	stop := make(chan struct{})
	writerDone := make(chan int64, 1)
	go func() {
		var n int64
		buf := make([]byte, 64<<10)
		for {
			select {
			case <-stop:
				writerDone <- n
				return
			default:
			}
			_ = r.prog.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
			w, err := r.prog.Write(buf)
			n += int64(w)
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				writerDone <- n
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // every buffer on the way fills up
	if _, err := r.tail.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	r.tail.CloseWrite()
	b, err := readWithin(t, r.prog, 5*time.Second)
	if err != nil || string(b) != "bye" {
		t.Fatalf("program got %q, %v; want bye and a clean EOF", b, err)
	}
	close(stop)
	sent := <-writerDone
	r.prog.CloseWrite()
	got, err := readWithin(t, r.tail, 10*time.Second)
	if err != nil || int64(len(got)) != sent {
		t.Fatalf("tail read %d bytes (%v), program wrote %d", len(got), err, sent)
	}
	if res := r.wait(t); res.Reason != "" || res.Up != sent || res.Down != 3 {
		t.Errorf("result %+v, want clean, up %d, down 3", res, sent)
	}
	r.prog.Close()
	r.tail.Close()
}

// socketpair returns a stream socket pair: the fd Python would lend to Go and
// its peer as a Go connection.
func socketpair(t *testing.T) (int, halfCloser) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[1]), "peer")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return fds[0], c.(halfCloser)
}

func fdValid(fd int) bool {
	_, err := fcntl(fd, syscall.F_GETFD)
	return err == nil
}

func fcntl(fd, cmd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestRelayUnixSocketpairLocal(t *testing.T) {
	for _, callerCloses := range []bool{true, false} {
		name := "caller-keeps-fd"
		if callerCloses {
			name = "caller-closes-fd"
		}
		t.Run(name, func(t *testing.T) {
			defer noLeak(t)()
			fd, prog := socketpair(t)
			local, err := fileConn(fd)
			if err != nil {
				t.Fatal(err)
			}
			if !fdValid(fd) {
				t.Fatal("fileConn took the caller's fd")
			}
			if callerCloses {
				// Python closes its fd right after handing it over.
				if err := syscall.Close(fd); err != nil {
					t.Fatal(err)
				}
			}
			remote, tail := tcpPair(t)
			r := startRelay(t, prog, local, remote, tail)

			up := randomBytes(t, 3<<20)
			down := randomBytes(t, 2<<20)
			upErr, downErr := sendAll(prog, up), sendAll(tail, down)
			atTail := make(chan []byte, 1)
			go func() { b, _ := io.ReadAll(tail); atTail <- b }()
			atProg, err := readWithin(t, prog, 20*time.Second)
			if err != nil || !bytes.Equal(atProg, down) {
				t.Fatalf("program got %d bytes (%v), want %d", len(atProg), err, len(down))
			}
			if b := <-atTail; !bytes.Equal(b, up) {
				t.Fatalf("tail got %d bytes, want %d", len(b), len(up))
			}
			if err := <-upErr; err != nil {
				t.Fatal(err)
			}
			if err := <-downErr; err != nil {
				t.Fatal(err)
			}
			res := r.wait(t)
			if res.Reason != "" || res.Up != int64(len(up)) || res.Down != int64(len(down)) {
				t.Errorf("result %+v", res)
			}
			if !callerCloses {
				// The relay closed its own duplicate only.
				if !fdValid(fd) {
					t.Error("the relay closed the caller's fd")
				}
				syscall.Close(fd)
			}
			prog.Close()
			tail.Close()
		})
	}
}

func TestFileConnRejectsNonSockets(t *testing.T) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	before := openFDs(t)
	c, err := fileConn(p[0])
	if err == nil {
		c.Close()
		t.Fatal("fileConn accepted a pipe")
	}
	if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("error %q does not say the fd is not a socket", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("fileConn leaked fds: %d open before, %d after", before, after)
	}
	if !fdValid(p[0]) {
		t.Error("fileConn closed the caller's fd")
	}

	// A datagram socket cannot half-close.
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	uf, err := u.File()
	if err != nil {
		t.Fatal(err)
	}
	defer uf.Close()
	before = openFDs(t)
	if c, err := fileConn(int(uf.Fd())); err == nil {
		c.Close()
		t.Error("fileConn accepted a UDP socket")
	} else if !strings.Contains(err.Error(), "not a stream socket") {
		t.Errorf("UDP socket: %v", err)
	}
	if after := openFDs(t); after != before {
		t.Errorf("fileConn leaked fds on a UDP socket: %d before, %d after", before, after)
	}

	// An fd that is not open.
	if c, err := fileConn(1 << 20); err == nil {
		c.Close()
		t.Error("fileConn accepted a closed fd")
	} else if !errors.Is(err, syscall.EBADF) {
		t.Errorf("closed fd: %v, want EBADF", err)
	}
}

func TestRelayCountsBytesWhileItRuns(t *testing.T) {
	prog, local := tcpPair(t)
	remote, tail := tcpPair(t)
	counts := &byteCounts{}
	done := make(chan relayResult, 1)
	go func() { done <- relayCounting(local, remote, counts) }()
	if _, err := prog.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(tail, buf); err != nil {
		t.Fatal(err)
	}
	if _, err := tail.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(prog, buf[:2]); err != nil {
		t.Fatal(err)
	}
	// both copies have delivered: the counts say so before the relay ends
	if up, down := counts.up.Load(), counts.down.Load(); up != 5 || down != 2 {
		t.Fatalf("while running: up %d down %d, want 5 and 2", up, down)
	}
	prog.CloseWrite()
	tail.CloseWrite()
	select {
	case res := <-done:
		if res.Up != 5 || res.Down != 2 || counts.up.Load() != 5 || counts.down.Load() != 2 {
			t.Fatalf("at the end: %+v, counts %d/%d", res, counts.up.Load(), counts.down.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end")
	}
}

// A relay of a dialled connection (tp_relay) shows its bytes while it runs, the bytes a
// proxy handshake read past included, and stops answering once it has ended.
func TestRelayOfADialledConnectionCountsWhileItRuns(t *testing.T) {
	fn := newFakeNode(t)
	program, proxySide := tcpPair(t)
	dialled, peer := tcpPair(t)
	fn.node.mu.Lock()
	fn.node.dialed[9] = dialled
	fn.node.mu.Unlock()
	f, err := proxySide.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := fn.node.relayTo(9, int(f.Fd()), []byte("GET")); err != nil {
		t.Fatal(err)
	}
	proxySide.Close() // the node has its own duplicate
	if _, err := program.Write([]byte("12345")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "GET12345" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	if _, err := peer.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(program, got[:2]); err != nil {
		t.Fatal(err)
	}
	// a chunk is counted just after it is written: the reader may be a moment ahead
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		up, down, ok := fn.node.relayBytes(9)
		if ok && up == 8 && down == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("while running: up %d down %d running %v; want 8, 2, true", up, down, ok)
		}
	}
	program.CloseWrite()
	peer.CloseWrite()
	done := fn.events.next(t)
	if done.Kind != "done" || done.ID != 9 || done.Up != 8 || done.Down != 2 {
		t.Fatalf("done event %+v", done)
	}
	if _, _, ok := fn.node.relayBytes(9); ok {
		t.Fatal("relayBytes still answers after the relay ended")
	}
}
