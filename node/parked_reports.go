package main

import (
	"fmt"
	"sync"
	"time"
)

// The fast path's per-connection reports ("done": how each relay ended, for the agent's
// measurements and --verbose) reach Python in batches: one event per reportDelay at most,
// however many connections end, so that a program making thousands of short connections does
// not wake Python once for each (bench/REPORT.md: the fast path's connect latency rose 40%
// with a Python wake-up per connection).
const (
	reportDelay   = 200 * time.Millisecond
	reportBacklog = 4096 // reports held between two batches; more are counted and dropped
)

type reportBatch struct {
	n  *node
	id int64 // the parked-connect server's events id

	mu        sync.Mutex
	pending   []event
	dropped   int
	scheduled bool
}

// add queues one report; the batch leaves within reportDelay.
func (b *reportBatch) add(ev event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) < reportBacklog {
		b.pending = append(b.pending, ev)
	} else {
		b.dropped++
	}
	if !b.scheduled {
		b.scheduled = true
		time.AfterFunc(reportDelay, b.flush)
	}
}

// flush sends what is queued as one "done_batch" event.
func (b *reportBatch) flush() {
	b.mu.Lock()
	done, dropped := b.pending, b.dropped
	b.pending, b.dropped, b.scheduled = nil, 0, false
	b.mu.Unlock()
	if dropped > 0 {
		fmt.Fprintf(b.n.logFile, "tailproxy: %d fast-path connection reports dropped (more than %d in %v)\n",
			dropped, reportBacklog, reportDelay)
	}
	if len(done) > 0 {
		b.n.events.send(event{ID: b.id, Kind: "done_batch", Done: done, Dropped: dropped})
	}
}
