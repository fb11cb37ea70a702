package main

import (
	"encoding/json"
	"os"
)

// event is one line on the node's event pipe: how Python learns the outcome
// of work it started (a dial, a relay, an accepted connection) without Go ever
// calling into Python.
type event struct {
	ID     int64  `json:"id"`
	Kind   string `json:"ev"`
	Token  uint64 `json:"token,omitempty"`
	Errno  int    `json:"errno,omitempty"`
	Err    string `json:"err,omitempty"`
	Up     int64  `json:"up,omitempty"`
	Down   int64  `json:"down,omitempty"`
	Reason string `json:"reason,omitempty"`
	FD     int    `json:"fd,omitempty"`
	Src    string `json:"src,omitempty"`
	Dst    string `json:"dst,omitempty"`
	Node   string `json:"node,omitempty"`
	User   string `json:"user,omitempty"`
	Millis int64  `json:"ms,omitempty"`
	Pid    uint32 `json:"pid,omitempty"`        // the process that connected (fast path)
	Micros int64  `json:"connect_us,omitempty"` // its connect's latency (fast path)

	Done    []event `json:"done,omitempty"`    // a batch of the fast path's reports (parked_reports.go)
	Dropped int     `json:"dropped,omitempty"` // reports not kept (the batch was full)
}

// eventPipe serialises events onto one file descriptor from a single
// goroutine, so lines never interleave and a slow reader only slows events.
type eventPipe struct {
	ch   chan event
	done chan struct{}
}

func newEventPipe(f *os.File) *eventPipe {
	p := &eventPipe{ch: make(chan event, 4096), done: make(chan struct{})}
	go p.run(f)
	return p
}

func (p *eventPipe) run(f *os.File) {
	defer close(p.done)
	defer f.Close()
	enc := json.NewEncoder(f)
	for ev := range p.ch {
		if err := enc.Encode(ev); err != nil {
			// The reader is gone (Python closed the pipe): keep draining so
			// senders never block on a dead reader.
			for range p.ch {
			}
			return
		}
	}
}

func (p *eventPipe) send(ev event) {
	defer func() { _ = recover() }() // a send racing close() is dropped, not a panic
	p.ch <- ev
}

func (p *eventPipe) close() {
	close(p.ch)
	<-p.done
}
