package main

import (
	"fmt"
	"sync"
	"time"
)

// The fast path's per-connection reports ("done": how each relay ended, for the agent's
// measurements and --verbose) reach Python at most once per reportDelay: the first report after
// a quiet spell leaves at once, later ones wait for the next batch. Under --verbose (each) every
// report leaves at once: its lines are one per connection anyway and must keep up with the
// program. A program making thousands of short connections then wakes Python a few times a
// second, not once per connection (bench/REPORT.md: the fast path's connect latency rose 40%
// with a Python wake-up per connection).
const (
	reportDelay   = 200 * time.Millisecond
	reportBacklog = 4096 // reports held between two batches; more are counted and dropped
)

type reportBatch struct {
	n    *node
	id   int64 // the parked-connect server's events id
	each bool  // no batching: each report leaves at once (--verbose)

	mu        sync.Mutex
	pending   []event
	dropped   int
	scheduled bool
	lastSent  time.Time
}

// add queues one report; it leaves now if no batch left within reportDelay, else with the next.
func (b *reportBatch) add(ev event) {
	b.mu.Lock()
	if len(b.pending) < reportBacklog {
		b.pending = append(b.pending, ev)
	} else {
		b.dropped++
	}
	if b.scheduled {
		b.mu.Unlock()
		return
	}
	b.scheduled = true
	wait := reportDelay - time.Since(b.lastSent)
	if b.each {
		wait = 0
	}
	b.mu.Unlock()
	if wait <= 0 {
		b.flush()
		return
	}
	time.AfterFunc(wait, b.flush)
}

// flush sends what is queued as one "done_batch" event.
func (b *reportBatch) flush() {
	b.mu.Lock()
	done, dropped := b.pending, b.dropped
	b.pending, b.dropped, b.scheduled = nil, 0, false
	if len(done) > 0 {
		b.lastSent = time.Now()
	}
	b.mu.Unlock()
	if dropped > 0 {
		fmt.Fprintf(b.n.logFile, "tailproxy: %d fast-path connection reports dropped (more than %d in %v)\n",
			dropped, reportBacklog, reportDelay)
	}
	if len(done) > 0 {
		b.n.events.send(event{ID: b.id, Kind: "done_batch", Done: done, Dropped: dropped})
	}
}
