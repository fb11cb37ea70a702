package main

import (
	"sort"
	"time"
)

// parkedConn is one connection the fast path relays now, as `tailproxy top` lists it
// (tp_parked_snapshot), with the bytes its relay delivered so far each way.
type parkedConn struct {
	Server    int64   `json:"server"` // the parked-connect server: one per program
	Pid       uint32  `json:"pid"`
	Src       string  `json:"src"` // the program's socket
	Dst       string  `json:"dst"`
	ConnectMS float64 `json:"connect_ms"`
	AgeMS     int64   `json:"age_ms"` // since the program's connect
	Up        int64   `json:"up"`     // delivered to the tailnet so far
	Down      int64   `json:"down"`   // delivered to the program so far
}

// parkedSnapshot lists at most limit of the fast path's live relays, oldest first.
func (n *node) parkedSnapshot(limit int) []parkedConn {
	now := time.Now()
	out := []parkedConn{}
	for id, p := range n.parkedServers() {
		p.mu.Lock()
		for prog, r := range p.live {
			out = append(out, parkedConn{Server: id, Pid: r.pid, Src: prog.String(),
				Dst: r.dst.String(), ConnectMS: float64(r.relayed.Sub(r.asked).Microseconds()) / 1000,
				AgeMS: now.Sub(r.asked).Milliseconds(), Up: r.bytes.up.Load(), Down: r.bytes.down.Load()})
		}
		p.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AgeMS > out[j].AgeMS })
	if len(out) > limit {
		out = out[:limit]
	}
	return out
}
