package main

import (
	"net"
	"testing"
	"time"
)

// An export in use is never withdrawn: not while a connection is open (however long), and
// only a full timeout after the last one ended; then its listener is closed and removed,
// with one "idle" event.
func TestIdleWatchWithdrawsOnlyWhenUnused(t *testing.T) {
	n := newFakeNode(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 200 * time.Millisecond
	w := newIdleWatch()
	n.mu.Lock()
	n.listeners[7] = ln
	n.mu.Unlock()
	go n.acceptLoop(7, ln, listenSpec{Port: 1, Target: "127.0.0.1:1"}, w)
	done := make(chan struct{})
	go func() {
		n.watchIdle(7, ln, w, timeout)
		close(done)
	}()
	w.begin() // a connection held open for three timeouts
	time.Sleep(3 * timeout)
	n.mu.Lock()
	_, still := n.listeners[7]
	n.mu.Unlock()
	if !still {
		t.Fatal("withdrawn while a connection was open")
	}
	w.end()
	ended := time.Now()
	ev := n.events.next(t)
	if ev.Kind != "idle" || ev.ID != 7 {
		t.Fatalf("event %+v, want idle for 7", ev)
	}
	if quiet := time.Since(ended); quiet < timeout {
		t.Fatalf("withdrawn %v after the last connection ended, before the %v timeout", quiet, timeout)
	}
	<-done
	n.mu.Lock()
	_, still = n.listeners[7]
	n.mu.Unlock()
	if still {
		t.Fatal("the listener is still registered")
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("the listener still accepts")
	}
}

// A listener unlistened (or replaced) stops its watch without an event.
func TestIdleWatchStopsWithItsListener(t *testing.T) {
	n := newFakeNode(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n.mu.Lock()
	n.listeners[8] = ln
	n.mu.Unlock()
	done := make(chan struct{})
	go func() {
		n.watchIdle(8, ln, newIdleWatch(), time.Hour)
		close(done)
	}()
	n.unlisten(8)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the watch outlived its listener")
	}
}
