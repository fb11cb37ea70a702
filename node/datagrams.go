package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// UDP through the tailnet. A dial with network "udp" gives a connected UDP socket on the
// netstack; relayTo joins it to a SOCK_SEQPACKET socket of the caller, which keeps
// datagram boundaries (a UDP datagram is one packet each way) and, unlike SOCK_DGRAM,
// tells each side when the other closed — or to a loopback UDP socket connected to the
// program's own UDP socket (the preload's associations, preload/src/udp.c): the program
// keeps a real UDP socket and the kernel's loopback carries its datagrams to us.

// maxDatagram is the largest UDP payload (65,535 - 8 - 20).
const maxDatagram = 65507

// datagramIdle ends an association that carried nothing either way for this long, as
// NAT and conntrack do (an unconnected protocol has no end of its own).
var datagramIdle = 2 * time.Minute

// relayDatagrams copies datagrams local→remote ("up") and remote→local ("down") until the
// local side closes, a side fails, or nothing moved for datagramIdle. A datagram is never
// split or merged, and order is kept within each direction.
//
// With a loopback UDP local (an association of the preload) the program's socket has no
// end to tell: idleness ends it only once the program's address is free (its socket closed;
// a write to it then also fails, ECONNREFUSED, which ends it sooner), and a datagram too
// large for the tailnet is dropped rather than ending the association (the preload refuses
// it with EMSGSIZE where it sees the send).
func relayDatagrams(local, remote net.Conn) relayResult {
	var res relayResult
	var last atomic.Int64 // unix nanoseconds of the last datagram either way
	last.Store(time.Now().UnixNano())
	var once sync.Once
	end := func(reason string, err error) {
		once.Do(func() {
			if err != nil {
				res.Reason = fmt.Sprintf("%s: %v", reason, err)
				res.Errno = errnoFor(err)
			} else {
				res.Reason = reason
			}
			local.Close()
			remote.Close()
		})
	}
	idle := datagramIdle
	stopIdle := make(chan struct{})
	keep := func() bool { return false }
	upLimit, lossy := maxDatagram, false
	if isDatagram(local) {
		lossy = true
		keep = func() bool { return addressInUse(local.RemoteAddr()) }
		upLimit = tailnetPayloadMax(remote)
	}
	go watchIdle(&last, idle, stopIdle, keep, func() { end("idle for "+idle.String(), nil) })

	var wg sync.WaitGroup
	wg.Add(1)
	goWork(func() {
		defer wg.Done()
		res.Up = copyDatagrams(remote, local, &last, upLimit, lossy, func(err error) {
			if errors.Is(err, io.EOF) {
				end("", nil) // the caller closed its side: the association ends cleanly
				return
			}
			end("from the program", err)
		})
	})
	res.Down = copyDatagrams(local, remote, &last, maxDatagram, false,
		func(err error) { end("from the tailnet", err) })
	wg.Wait()
	close(stopIdle)
	return res
}

// copyDatagrams copies until an error; a datagram longer than limit is dropped, and so is
// one whose write failed when lossy is set (a UDP send that fails loses that datagram only:
// the netstack refuses writes for a moment when its queues are full).
func copyDatagrams(dst, src net.Conn, last *atomic.Int64, limit int, lossy bool,
	stop func(error)) int64 {
	bp := datagramBuffers.Get().(*[]byte)
	defer datagramBuffers.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, err := src.Read(buf)
		if err != nil {
			stop(err)
			return n
		}
		last.Store(time.Now().UnixNano())
		if nr > limit {
			continue
		}
		if _, err := dst.Write(buf[:nr]); err != nil {
			if lossy && !errors.Is(err, net.ErrClosed) {
				continue
			}
			stop(err)
			return n
		}
		n += int64(nr)
	}
}

var datagramBuffers = sync.Pool{New: func() any { b := make([]byte, maxDatagram+1); return &b }}

// watchIdle calls expire once nothing moved for idle, unless keep says to wait another idle.
func watchIdle(last *atomic.Int64, idle time.Duration, stop chan struct{}, keep func() bool, expire func()) {
	t := time.NewTicker(idle / 4)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			if now.Sub(time.Unix(0, last.Load())) >= idle {
				if keep() {
					last.Store(now.UnixNano())
					continue
				}
				expire()
				return
			}
		}
	}
}

func isDatagram(c net.Conn) bool {
	return c.LocalAddr() != nil && c.LocalAddr().Network() == "udp"
}

// relayDatagramsTo joins dialled UDP connection id to the SOCK_SEQPACKET socket fd (see
// relayTo); initial, if any, is sent as the first datagram.
func (n *node) relayDatagramsTo(id int64, fd int, initial []byte) error {
	c, err := fileConnOf(fd)
	if err != nil {
		return err
	}
	if c.LocalAddr() == nil || (c.LocalAddr().Network() != "unixpacket" && !isConnectedUDP(c)) {
		c.Close()
		return fmt.Errorf("fd %d is neither a SOCK_SEQPACKET nor a connected UDP socket "+
			"(a UDP relay keeps datagrams whole)", fd)
	}
	n.mu.Lock()
	remote, ok := n.dialed[id]
	delete(n.dialed, id)
	n.mu.Unlock()
	if !ok {
		c.Close()
		return fmt.Errorf("no dialled connection %d", id)
	}
	n.relays.Add(1)
	goWork(func() {
		defer n.relays.Done()
		defer recoverToLog(n, "datagram relay")
		var res relayResult
		if len(initial) > 0 {
			if _, err := remote.Write(initial); err != nil {
				c.Close()
				remote.Close()
				n.events.send(event{ID: id, Kind: "done", Reason: "write to the tailnet: " + err.Error(),
					Errno: int(errnoFor(err))})
				return
			}
		}
		res = relayDatagrams(c, remote)
		res.Up += int64(len(initial))
		n.events.send(event{ID: id, Kind: "done", Up: res.Up, Down: res.Down,
			Reason: res.Reason, Errno: int(res.Errno)})
	})
	return nil
}

func isConnectedUDP(c net.Conn) bool {
	u, ok := c.(*net.UDPConn)
	return ok && u.RemoteAddr() != nil
}

// Payload that fits the tailnet's 1280-byte MTU in one IP packet: the userspace netstacks
// carry no IP fragments, so anything larger would be lost on the way.
const (
	tailnetMTU      = 1280
	tailnetPayload4 = tailnetMTU - 20 - 8
	tailnetPayload6 = tailnetMTU - 40 - 8
)

func tailnetPayloadMax(remote net.Conn) int {
	if a, ok := remote.RemoteAddr().(*net.UDPAddr); ok && a.IP.To4() != nil {
		return tailnetPayload4
	}
	return tailnetPayload6
}

// addressInUse tells whether a UDP socket still holds addr (the program's socket of an
// association): binding it fails while one does. Another process taking the freed port
// meanwhile only keeps an association one idle period longer.
func addressInUse(addr net.Addr) bool {
	a, ok := addr.(*net.UDPAddr)
	if !ok {
		return false
	}
	probe, err := net.ListenUDP("udp", &net.UDPAddr{IP: a.IP, Port: a.Port})
	if err != nil {
		return errors.Is(err, syscall.EADDRINUSE)
	}
	probe.Close()
	return false
}
