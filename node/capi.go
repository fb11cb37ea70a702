// The C API that src/tailproxy/node loads with ctypes. It is narrow on
// purpose: every function returns NULL on success or a malloc'd error string
// (free it with tp_free), never panics across the boundary, and never calls
// back into the caller; outcomes of background work arrive as JSON lines on
// the event fd given to tp_node_start.
package main

/*
#include <stdint.h>
#include <stdlib.h>
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"runtime/debug"
	"sync"
	"time"
	"unsafe"
)

var (
	nodesMu sync.Mutex
	nodes   = map[int64]*node{}
	nextID  int64
)

func lookup(h C.int64_t) (*node, error) {
	nodesMu.Lock()
	defer nodesMu.Unlock()
	n, ok := nodes[int64(h)]
	if !ok {
		return nil, fmt.Errorf("no node with handle %d (closed?)", int64(h))
	}
	return n, nil
}

// cerr turns an error into the C result: NULL for none.
func cerr(err error) *C.char {
	if err == nil {
		return nil
	}
	return C.CString(err.Error())
}

// guard converts a panic into an error string for the caller.
func guard(res **C.char) {
	if r := recover(); r != nil {
		*res = C.CString(fmt.Sprintf("internal error in the node library: %v\n%s", r, debug.Stack()))
	}
}

//export tp_free
func tp_free(p unsafe.Pointer) { C.free(p) }

//export tp_node_start
func tp_node_start(configJSON *C.char, eventFD C.int, handle *C.int64_t) (res *C.char) {
	defer guard(&res)
	var cfg nodeConfig
	if err := json.Unmarshal([]byte(C.GoString(configJSON)), &cfg); err != nil {
		return cerr(fmt.Errorf("bad node config: %w", err))
	}
	n, err := startNode(cfg, int(eventFD))
	if err != nil {
		return cerr(err)
	}
	nodesMu.Lock()
	nextID++
	id := nextID
	nodes[id] = n
	nodesMu.Unlock()
	*handle = C.int64_t(id)
	return nil
}

//export tp_node_close
func tp_node_close(h C.int64_t, timeoutMS C.int64_t) (res *C.char) {
	defer guard(&res)
	nodesMu.Lock()
	n, ok := nodes[int64(h)]
	delete(nodes, int64(h))
	nodesMu.Unlock()
	if !ok {
		return nil
	}
	return cerr(n.close(time.Duration(timeoutMS) * time.Millisecond))
}

//export tp_localapi
func tp_localapi(h C.int64_t, method, path *C.char, body *C.char, bodyLen C.int64_t,
	timeoutMS C.int64_t, status *C.int, out **C.char, outLen *C.int64_t) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	var b []byte
	if body != nil {
		b = C.GoBytes(unsafe.Pointer(body), C.int(bodyLen))
	}
	timeout := localAPITimeout
	if timeoutMS > 0 {
		timeout = time.Duration(timeoutMS) * time.Millisecond
	}
	code, resp, err := n.localAPI(C.GoString(method), C.GoString(path), b, timeout)
	if err != nil {
		return cerr(err)
	}
	*status = C.int(code)
	*out = (*C.char)(C.CBytes(resp))
	*outLen = C.int64_t(len(resp))
	return nil
}

//export tp_dial
func tp_dial(h C.int64_t, id C.int64_t, network, addr *C.char, timeoutMS C.int64_t) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	n.dial(int64(id), C.GoString(network), C.GoString(addr), time.Duration(timeoutMS)*time.Millisecond)
	return nil
}

//export tp_relay
func tp_relay(h C.int64_t, id C.int64_t, fd C.int, initial *C.char, initialLen C.int64_t) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	var first []byte
	if initial != nil && initialLen > 0 {
		first = C.GoBytes(unsafe.Pointer(initial), C.int(initialLen))
	}
	return cerr(n.relayTo(int64(id), int(fd), first))
}

// tp_relay_bytes gives the bytes the relay of dialled connection id delivered so far, each
// way; *running is 0 once it has ended (its "done" event has the totals).
//
//export tp_relay_bytes
func tp_relay_bytes(h C.int64_t, id C.int64_t, up, down *C.int64_t, running *C.int) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	u, d, ok := n.relayBytes(int64(id))
	*up, *down, *running = C.int64_t(u), C.int64_t(d), 0
	if ok {
		*running = 1
	}
	return nil
}

//export tp_drop
func tp_drop(h C.int64_t, id C.int64_t) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	n.drop(int64(id))
	return nil
}

//export tp_listen
func tp_listen(h C.int64_t, id C.int64_t, specJSON *C.char) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	var spec listenSpec
	if err := json.Unmarshal([]byte(C.GoString(specJSON)), &spec); err != nil {
		return cerr(fmt.Errorf("bad listen spec: %w", err))
	}
	return cerr(n.listen(int64(id), spec))
}

//export tp_parked_serve
func tp_parked_serve(h C.int64_t, id C.int64_t, dgramFD, forwardFD C.int, specJSON *C.char) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	var spec parkedSpec
	if err := json.Unmarshal([]byte(C.GoString(specJSON)), &spec); err != nil {
		return cerr(fmt.Errorf("bad parked spec: %w", err))
	}
	return cerr(n.serveParked(int64(id), int(dgramFD), int(forwardFD), spec))
}

//export tp_parked_drain
func tp_parked_drain(h C.int64_t, id C.int64_t, timeoutMS C.int64_t, left *C.int64_t) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	*left = C.int64_t(n.drainParked(int64(id), time.Duration(timeoutMS)*time.Millisecond))
	return nil
}

//export tp_parked_peer
func tp_parked_peer(h C.int64_t, prog *C.char, dst **C.char) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	ap, err := netip.ParseAddrPort(C.GoString(prog))
	if err != nil {
		return cerr(fmt.Errorf("bad address: %w", err))
	}
	*dst = nil
	if d, ok := n.parkedPeer(ap); ok {
		*dst = C.CString(d.String())
	}
	return nil
}

//export tp_parked_snapshot
func tp_parked_snapshot(h C.int64_t, limit C.int64_t, out **C.char) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	if limit < 0 {
		return cerr(fmt.Errorf("bad limit %d", int64(limit)))
	}
	b, err := json.Marshal(n.parkedSnapshot(int(limit)))
	if err != nil {
		return cerr(err)
	}
	*out = C.CString(string(b))
	return nil
}

//export tp_unlisten
func tp_unlisten(h C.int64_t, id C.int64_t) (res *C.char) {
	defer guard(&res)
	n, err := lookup(h)
	if err != nil {
		return cerr(err)
	}
	n.unlisten(int64(id))
	return nil
}

func main() {}
