package main

import (
	"net"
	"sync/atomic"
	"time"
)

// idleWatch withdraws an export nobody uses (--export-idle-timeout): once no connection is
// open and none has begun or ended for the timeout, the listener is closed as unlisten
// closes it and Python is told with an "idle" event. Two atomics per listener; nothing per
// byte.
type idleWatch struct {
	open atomic.Int64
	last atomic.Int64 // unix nanoseconds of the last connection's start or end
}

func newIdleWatch() *idleWatch {
	w := &idleWatch{}
	w.last.Store(time.Now().UnixNano())
	return w
}

func (w *idleWatch) begin() {
	w.open.Add(1)
	w.last.Store(time.Now().UnixNano())
}

func (w *idleWatch) end() {
	w.last.Store(time.Now().UnixNano())
	w.open.Add(-1)
}

// idle: nothing open, and quiet for at least timeout at now.
func (w *idleWatch) idle(now time.Time, timeout time.Duration) bool {
	return w.open.Load() == 0 && now.Sub(time.Unix(0, w.last.Load())) >= timeout
}

// watchIdle runs while listener id is ln; it withdraws it when idle.
func (n *node) watchIdle(id int64, ln net.Listener, w *idleWatch, timeout time.Duration) {
	defer recoverToLog(n, "idle watch")
	tick := timeout / 4
	if tick > time.Second {
		tick = time.Second
	}
	if tick < 10*time.Millisecond {
		tick = 10 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for now := range t.C {
		n.mu.Lock()
		cur, ok := n.listeners[id]
		current := ok && cur == ln
		withdraw := current && w.idle(now, timeout)
		if withdraw {
			delete(n.listeners, id)
		}
		n.mu.Unlock()
		if !current {
			return // unlistened, replaced, or the node closed
		}
		if withdraw {
			ln.Close()
			n.events.send(event{ID: id, Kind: "idle"})
			return
		}
	}
}
