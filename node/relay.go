package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// halfCloser is what both ends of a relay offer: TCP sockets, Unix socket
// pairs and gVisor's TCP connections all can end one direction alone.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// relayResult is how a relay ended. Reason is "" for a clean end (EOF each way).
type relayResult struct {
	Up, Down int64
	Reason   string
	Errno    syscall.Errno
}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// relay copies local→remote ("up") and remote→local ("down") until both
// directions end. An EOF on one side is passed on as a half-close
// (CloseWrite), so shutdown(SHUT_WR) crosses the relay. Any other end of a
// direction resets both sides (resetConn), so the program and the tailnet
// peer see ECONNRESET and never mistake a cut transfer for a clean EOF. The local socket is set to linger 0 from the start, so that the same
// holds if this process dies.
func relay(local, remote halfCloser) relayResult {
	return relayCounting(local, remote, nil)
}

// byteCounts are a relay's bytes so far, each way, for whoever looks while it runs
// (`tailproxy top`): one atomic add per copied chunk.
type byteCounts struct{ up, down atomic.Int64 }

// relayCounting is relay, with the bytes delivered so far kept in counts (nil: not kept).
func relayCounting(local, remote halfCloser, counts *byteCounts) relayResult {
	var upCount, downCount *atomic.Int64
	if counts != nil {
		upCount, downCount = &counts.up, &counts.down
	}
	tcp, _ := local.(*net.TCPConn)
	if tcp != nil {
		_ = tcp.SetLinger(0)
	}
	var res relayResult
	var once sync.Once
	var aborted atomic.Bool
	abort := func(err error, where string) {
		once.Do(func() {
			res.Reason = fmt.Sprintf("%s: %v", where, err)
			res.Errno = errnoFor(err)
			aborted.Store(true)
			resetConn(local)
			resetConn(remote)
		})
	}
	tail := &tailnetSide{halfCloser: remote, writing: make(chan struct{}, 1), aborted: &aborted, abort: abort}
	var wg sync.WaitGroup
	wg.Add(1)
	goWork(func() {
		defer wg.Done()
		res.Up = copyHalf(tail, local, "from the program", "to the tailnet", abort, upCount)
	})
	res.Down = copyHalf(local, tail, "from the tailnet", "to the program", abort, downCount)
	wg.Wait()
	if res.Reason == "" {
		if tcp != nil {
			_ = tcp.SetLinger(-1)
		}
		_ = local.Close()
		_ = remote.Close()
	}
	return res
}

// copyHalf copies src into dst, then half-closes dst. A read or write error
// other than src's EOF calls abort. Delivered bytes are added to count (if not nil) as they go.
func copyHalf(dst, src halfCloser, from, to string, abort func(error, string), count *atomic.Int64) int64 {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			n += int64(nw)
			if count != nil {
				count.Add(int64(nw))
			}
			if werr != nil {
				abort(werr, "write "+to)
				return n
			}
		}
		if rerr == io.EOF {
			if err := dst.CloseWrite(); err != nil {
				if !errors.Is(err, net.ErrClosed) {
					abort(err, "half-close "+to)
				}
				return n
			}
			return n
		}
		if rerr != nil {
			abort(rerr, "read "+from)
			return n
		}
	}
}

// tailnetSide keeps a reset of the tailnet side from reaching the program as a
// clean EOF. netstack (like the kernel) reports a reset once, to whichever call
// comes first: when an upload write takes it, the download's read then gets a
// plain EOF. So a write and its abort happen while holding the writing token,
// and an EOF is passed on only once no write is in flight (or one has been
// blocked for resetGrace, which a reset would have ended) and no abort happened.
type tailnetSide struct {
	halfCloser
	writing chan struct{} // capacity 1: held while a write is in flight
	aborted *atomic.Bool
	abort   func(error, string)
}

const resetGrace = 100 * time.Millisecond

func (t *tailnetSide) Write(b []byte) (int, error) {
	t.writing <- struct{}{}
	defer func() { <-t.writing }()
	n, err := t.halfCloser.Write(b)
	if err != nil {
		t.abort(err, "write to the tailnet")
	}
	return n, err
}

func (t *tailnetSide) Read(b []byte) (int, error) {
	n, err := t.halfCloser.Read(b)
	if err == io.EOF {
		wait := time.NewTimer(resetGrace)
		select {
		case t.writing <- struct{}{}:
			<-t.writing
		case <-wait.C:
		}
		wait.Stop()
		if t.aborted.Load() {
			return n, net.ErrClosed
		}
	}
	return n, err
}

// fileConn turns an fd lent by Python into a Go connection. Go works on its own
// duplicate; Python keeps (and closes) the fd it passed.
func fileConn(fd int) (halfCloser, error) {
	c, err := fileConnOf(fd)
	if err != nil {
		return nil, err
	}
	hc, ok := c.(halfCloser)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("fd %d is not a stream socket", fd)
	}
	return hc, nil
}

// dialRetrying dials through the node. A node that came up moments ago may
// not have a peer in its netmap yet, or its first WireGuard handshake still
// pending: such failures are retried until ctx ends, but only in the first
// seconds after start, so a real refusal later is reported at once.
func (n *node) dialRetrying(ctx context.Context, network, addr string) (net.Conn, error) {
	for {
		c, err := n.dialTailnetOnly(ctx, network, addr)
		if err == nil {
			return c, nil
		}
		if time.Since(n.started) > startupRetryWindow || errnoFor(err) == syscall.ECONNREFUSED {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

const startupRetryWindow = 10 * time.Second
