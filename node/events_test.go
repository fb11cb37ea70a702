package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// eventReader is the Python end of an event pipe: it decodes JSON lines.
type eventReader struct {
	ch chan event
}

func newEventReader(t *testing.T, r *os.File) *eventReader {
	er := &eventReader{ch: make(chan event, 1024)}
	go func() {
		defer close(er.ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var ev event
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("event line is not JSON: %v: %q", err, sc.Text())
				continue
			}
			er.ch <- ev
		}
	}()
	return er
}

func (er *eventReader) next(t *testing.T) event {
	t.Helper()
	select {
	case ev, ok := <-er.ch:
		if !ok {
			t.Fatal("the event pipe ended")
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10 s")
	}
	return event{}
}

func (er *eventReader) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case ev, ok := <-er.ch:
		if ok {
			t.Fatalf("unexpected event %+v", ev)
		}
	case <-time.After(d):
	}
}

// Events sent from many goroutines at once arrive as whole lines, each once,
// in the order each goroutine sent them. The lines are longer than PIPE_BUF,
// so concurrent writers would interleave.
func TestEventPipeWholeLines(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := newEventPipe(w)
	const senders, each = 12, 80
	reason := func(g, i int) string { return strings.Repeat(string(rune('a'+g)), 4000+37*i) }

	type result struct {
		lines int
		err   error
	}
	got := make(chan result, 1)
	go func() {
		last := make([]int, senders)
		for i := range last {
			last[i] = -1
		}
		br := bufio.NewReaderSize(r, 64)
		n := 0
		for {
			line, err := br.ReadBytes('\n')
			if err == io.EOF && len(line) == 0 {
				got <- result{n, nil}
				return
			}
			if err != nil {
				got <- result{n, fmt.Errorf("line %d: %v (%q...)", n, err, line[:min(len(line), 80)])}
				return
			}
			var ev event
			if err := json.Unmarshal(line, &ev); err != nil {
				got <- result{n, fmt.Errorf("line %d is not one JSON object: %v", n, err)}
				return
			}
			g, i := int(ev.ID/1000), int(ev.ID%1000)
			if g >= senders || ev.Kind != "test" || ev.Reason != reason(g, i) {
				got <- result{n, fmt.Errorf("line %d garbled: id %d kind %q reason %d bytes", n, ev.ID, ev.Kind,
					len(ev.Reason))}
				return
			}
			if i != last[g]+1 {
				got <- result{n, fmt.Errorf("sender %d: event %d after %d", g, i, last[g])}
				return
			}
			last[g] = i
			n++
		}
	}()

	var wg sync.WaitGroup
	for g := 0; g < senders; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				p.send(event{ID: int64(g*1000 + i), Kind: "test", Reason: reason(g, i)})
			}
		}()
	}
	wg.Wait()
	p.close() // flushes, then closes the write end: the reader sees EOF
	select {
	case res := <-got:
		if res.err != nil {
			t.Fatal(res.err)
		}
		if res.lines != senders*each {
			t.Fatalf("%d lines, want %d", res.lines, senders*each)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the reader did not finish")
	}
}

// Once Python has closed its end, sending must never block, however many
// events are sent (more than the channel holds), and close must return.
func TestEventPipeDeadReader(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := newEventPipe(w)
	r.Close()
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for i := 0; i < 3*cap(p.ch); i++ {
			p.send(event{ID: int64(i), Kind: "done", Reason: strings.Repeat("x", 100)})
		}
		p.close()
	}()
	select {
	case <-finished:
	case <-time.After(10 * time.Second):
		t.Fatal("send or close blocked with the reader gone")
	}
	// The pipe's write end was closed by the pipe's goroutine.
	if _, err := w.Write([]byte("x")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("write end still open after close: %v", err)
	}
}

// A send after close (a relay ending while the node closes) is dropped.
func TestEventPipeSendAfterClose(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	er := newEventReader(t, r)
	defer r.Close()
	p := newEventPipe(w)
	p.send(event{ID: 1, Kind: "before"})
	p.close()
	p.send(event{ID: 2, Kind: "after"}) // must not panic
	if ev := er.next(t); ev.ID != 1 || ev.Kind != "before" {
		t.Fatalf("event %+v", ev)
	}
	if ev, ok := <-er.ch; ok {
		t.Fatalf("event after close: %+v", ev)
	}
}
