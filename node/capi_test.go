package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// Test files cannot use cgo, so the exported functions are called through
// reflect: Go values are converted to the C parameter types (strings become
// NUL-terminated byte arrays, integers are converted, nil is the zero value,
// missing trailing arguments are zero), and the returned error string is read
// and freed with tp_free.
func capi(t *testing.T, fn any, args ...any) string {
	t.Helper()
	fv := reflect.ValueOf(fn)
	ft := fv.Type()
	if len(args) > ft.NumIn() {
		t.Fatalf("%d arguments for %v", len(args), ft)
	}
	in := make([]reflect.Value, ft.NumIn())
	for i := range in {
		pt := ft.In(i)
		var a any
		if i < len(args) {
			a = args[i]
		}
		switch v := a.(type) {
		case nil:
			in[i] = reflect.Zero(pt)
		case string:
			b := append([]byte(v), 0)
			in[i] = reflect.NewAt(pt.Elem(), unsafe.Pointer(&b[0]))
		case []byte:
			if len(v) == 0 {
				in[i] = reflect.Zero(pt)
			} else {
				in[i] = reflect.NewAt(pt.Elem(), unsafe.Pointer(&v[0]))
			}
		case reflect.Value:
			in[i] = v
		default:
			in[i] = reflect.ValueOf(a).Convert(pt)
		}
	}
	out := fv.Call(in)
	res := out[0]
	if res.IsNil() {
		return ""
	}
	p := res.UnsafePointer()
	var n int
	for *(*byte)(unsafe.Add(p, n)) != 0 {
		n++
	}
	s := string(unsafe.Slice((*byte)(p), n))
	tp_free(p)
	return s
}

// register puts a node into the handle table, as tp_node_start would.
func register(t *testing.T, n *node) int64 {
	nodesMu.Lock()
	nextID++
	h := nextID
	nodes[h] = n
	nodesMu.Unlock()
	t.Cleanup(func() {
		nodesMu.Lock()
		delete(nodes, h)
		nodesMu.Unlock()
	})
	return h
}

func wantErr(t *testing.T, what, got, want string) {
	t.Helper()
	if !strings.Contains(got, want) {
		t.Errorf("%s: error %q, want one containing %q", what, got, want)
	}
}

func TestCAPIUnknownHandle(t *testing.T) {
	const h = 987654321
	const want = "no node with handle 987654321"
	wantErr(t, "tp_dial", capi(t, tp_dial, h, 1, "tcp", "100.64.0.1:80", 1000), want)
	wantErr(t, "tp_relay", capi(t, tp_relay, h, 1, 0), want)
	wantErr(t, "tp_localapi", capi(t, tp_localapi, h, "GET", "status"), want)
	wantErr(t, "tp_drop", capi(t, tp_drop, h, 1), want)
	wantErr(t, "tp_listen", capi(t, tp_listen, h, 1, `{"Port":80}`), want)
	wantErr(t, "tp_unlisten", capi(t, tp_unlisten, h, 1), want)
	// Closing twice (or a handle that never was) is not an error.
	if got := capi(t, tp_node_close, h, 1000); got != "" {
		t.Errorf("tp_node_close: %q", got)
	}
}

// tp_node_start refuses bad input and an uncontained environment before it
// creates anything (no tsnet server is started here).
func TestCAPINodeStartRefuses(t *testing.T) {
	t.Setenv("TS_NO_LOGS_NO_SUPPORT", "true")
	t.Setenv("TS_DISABLE_PORTMAPPER", "1")
	cfg := func(c nodeConfig) string { return string(mustJSON(c)) }
	good := nodeConfig{Dir: t.TempDir(), Hostname: "h", LogPath: "/nonexistent/dir/node.log"}

	start := func(config string) (string, int64) {
		t.Helper()
		nodesMu.Lock()
		before := len(nodes)
		nodesMu.Unlock()
		handle := reflect.New(reflect.TypeOf(tp_node_start).In(2).Elem())
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		got := capi(t, tp_node_start, config, int(w.Fd()), handle)
		nodesMu.Lock()
		after := len(nodes)
		nodesMu.Unlock()
		if after != before {
			t.Errorf("a refused start registered a node")
		}
		return got, handle.Elem().Int()
	}

	for _, tc := range []struct {
		name, config, want string
	}{
		{"not JSON", "{dir: x", "bad node config"},
		{"wrong type", `{"dir": 5}`, "bad node config"},
		{"no dir", cfg(nodeConfig{Hostname: "h"}), "dir and hostname are required"},
		{"no hostname", cfg(nodeConfig{Dir: good.Dir}), "dir and hostname are required"},
		{"log not writable", cfg(good), "node log"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, h := start(tc.config)
			wantErr(t, tc.name, got, tc.want)
			if h != 0 {
				t.Errorf("handle set to %d on error", h)
			}
		})
	}

	t.Run("logs not refused", func(t *testing.T) {
		os.Unsetenv("TS_NO_LOGS_NO_SUPPORT")
		got, _ := start(cfg(good))
		wantErr(t, "no TS_NO_LOGS_NO_SUPPORT", got, "TS_NO_LOGS_NO_SUPPORT=true must be set")
		os.Setenv("TS_NO_LOGS_NO_SUPPORT", "false")
		got, _ = start(cfg(good))
		wantErr(t, "TS_NO_LOGS_NO_SUPPORT=false", got, "TS_NO_LOGS_NO_SUPPORT=true must be set")
		os.Setenv("TS_NO_LOGS_NO_SUPPORT", "true")
	})
	t.Run("portmapper not disabled", func(t *testing.T) {
		os.Unsetenv("TS_DISABLE_PORTMAPPER")
		got, _ := start(cfg(good))
		wantErr(t, "no TS_DISABLE_PORTMAPPER", got, "TS_DISABLE_PORTMAPPER=1 must be set")
		os.Setenv("TS_DISABLE_PORTMAPPER", "1")
	})
	if err := checkContainment(); err != nil {
		t.Errorf("checkContainment with both set: %v", err)
	}
}

// A panic inside an exported function comes back as an error string; it
// does not cross the C boundary.
func TestCAPIGuardTurnsPanicIntoError(t *testing.T) {
	h := register(t, &node{}) // nil maps: dial panics on its first store
	got := capi(t, tp_dial, h, 1, "tcp", "100.64.0.1:80", 1)
	wantErr(t, "tp_dial on a broken node", got, "internal error in the node library")
	wantErr(t, "tp_dial on a broken node", got, "assignment to entry in nil map")
	wantErr(t, "tp_dial on a broken node", got, "goroutine ") // the stack
}

// tp_relay joins a dialled connection to a socket the caller lends: both
// directions, half-close, then a "done" event with the byte counts.
func TestCAPIRelay(t *testing.T) {
	fn := newFakeNode(t)
	defer noLeak(t)() // after the node's own event goroutines
	h := register(t, fn.node)
	remote, tail := tcpPair(t)
	fn.dialed[7] = remote
	fd, prog := socketpair(t)

	if got := capi(t, tp_relay, h, 7, fd); got != "" {
		t.Fatalf("tp_relay: %s", got)
	}
	syscall.Close(fd) // Python closes its fd once Go has its own
	if _, ok := fn.dialed[7]; ok {
		t.Error("the relayed connection is still waiting in dialed")
	}
	fd2, _ := socketpair(t)
	if got := capi(t, tp_relay, h, 7, fd2); !strings.Contains(got, "no dialled connection 7") {
		t.Errorf("second tp_relay of one connection: %q", got)
	}
	syscall.Close(fd2)

	prog.Write([]byte("hello"))
	prog.CloseWrite()
	if b, err := readWithin(t, tail, 5*time.Second); err != nil || string(b) != "hello" {
		t.Fatalf("tailnet got %q, %v", b, err)
	}
	tail.Write([]byte("world!"))
	tail.CloseWrite()
	if b, err := readWithin(t, prog, 5*time.Second); err != nil || string(b) != "world!" {
		t.Fatalf("program got %q, %v", b, err)
	}
	var done event
	for {
		ev := fn.events.next(t)
		if ev.ID != 7 {
			t.Fatalf("event for another id: %+v", ev)
		}
		if ev.Kind == "done" {
			done = ev
			break
		}
	}
	if done.Up != 5 || done.Down != 6 || done.Reason != "" || done.Errno != 0 {
		t.Errorf("done event %+v, want up 5 down 6 and clean", done)
	}
	fn.relays.Wait()
	prog.Close()
	tail.Close()
}

// The done event of a relay the tailnet side reset carries the reason and errno.
func TestCAPIRelayResetEvent(t *testing.T) {
	fn := newFakeNode(t)
	h := register(t, fn.node)
	remote, tail := tcpPair(t)
	fn.dialed[8] = remote
	fd, prog := socketpair(t)
	if got := capi(t, tp_relay, h, 8, fd); got != "" {
		t.Fatalf("tp_relay: %s", got)
	}
	syscall.Close(fd)
	tail.Write([]byte("abc"))
	readExactly(t, prog, 3)
	resetClose(t, tail)
	ev := fn.events.next(t)
	if ev.ID != 8 || ev.Kind != "done" || ev.Reason == "" || ev.Errno != int(syscall.ECONNRESET) || ev.Down != 3 {
		t.Errorf("done event %+v, want a reason, ECONNRESET and down 3", ev)
	}
	// The raw JSON names the fields Python reads.
	line := mustJSON(ev)
	var m map[string]any
	json.Unmarshal(line, &m)
	for _, k := range []string{"id", "ev", "errno", "reason", "down"} {
		if _, ok := m[k]; !ok {
			t.Errorf("done event has no %q: %s", k, line)
		}
	}
}

func TestCAPIRelayRefusals(t *testing.T) {
	fn := newFakeNode(t)
	h := register(t, fn.node)

	// An fd that is not a socket.
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	wantErr(t, "pipe fd", capi(t, tp_relay, h, 1, p[0]), "not a socket")

	// No such dialled connection: the lent fd stays the caller's.
	fd, prog := socketpair(t)
	before := openFDs(t)
	wantErr(t, "unknown id", capi(t, tp_relay, h, 2, fd), "no dialled connection 2")
	if after := openFDs(t); after != before {
		t.Errorf("fds: %d before, %d after a refused relay", before, after)
	}
	if !fdValid(fd) {
		t.Error("the caller's fd was closed")
	}
	syscall.Close(fd)
	prog.Close()

	// A connection that cannot half-close is refused and closed.
	a, b := net.Pipe()
	fn.dialed[3] = a
	fd, prog = socketpair(t)
	wantErr(t, "net.Pipe", capi(t, tp_relay, h, 3, fd), "cannot half-close")
	syscall.Close(fd)
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the refused connection was not closed: %v", err)
	}
	if _, ok := fn.dialed[3]; ok {
		t.Error("the refused connection is still in dialed")
	}
	prog.Close()
}

func TestCAPIDrop(t *testing.T) {
	fn := newFakeNode(t)
	h := register(t, fn.node)
	remote, tail := tcpPair(t)
	fn.dialed[1] = remote
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fn.cancels[2] = cancel

	if got := capi(t, tp_drop, h, 1); got != "" {
		t.Fatal(got)
	}
	if b, err := readWithin(t, tail, 5*time.Second); err != nil || len(b) != 0 {
		t.Errorf("dropped connection: peer read %q, %v; want EOF", b, err)
	}
	if got := capi(t, tp_drop, h, 2); got != "" {
		t.Fatal(got)
	}
	if ctx.Err() == nil {
		t.Error("dropping a dial in flight did not cancel it")
	}
	if len(fn.dialed) != 0 || len(fn.cancels) != 0 {
		t.Errorf("left behind: dialed %v cancels %v", fn.dialed, len(fn.cancels))
	}
	// Unknown ids are ignored.
	if got := capi(t, tp_drop, h, 99); got != "" {
		t.Error(got)
	}
}

func TestCAPIListenRefusesBadSpec(t *testing.T) {
	h := register(t, newFakeNode(t).node)
	wantErr(t, "bad JSON", capi(t, tp_listen, h, 1, "{port"), "bad listen spec")
	wantErr(t, "port 0", capi(t, tp_listen, h, 1, `{"Port":0}`), "invalid port 0")
	wantErr(t, "port 65536", capi(t, tp_listen, h, 1, `{"Port":65536}`), "invalid port 65536")
}
