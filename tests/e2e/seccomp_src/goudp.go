// A Go UDP test client for tailproxy's seccomp interception (tests/e2e/test_seccomp_udp.py),
// built by the test with CGO_ENABLED=0. Standard library only. Each mode prints one JSON line.
//
//	goudp dial ADDR MSG    net.Dial("udp"): a connected socket; Write MSG, Read the reply;
//	                       {"reply", "remote"} (RemoteAddr: getpeername)
//	goudp to ADDR MSG      net.ListenPacket("udp", ":0"): unconnected; WriteTo ADDR, ReadFrom;
//	                       {"reply", "from"}
//	goudp big ADDR         unconnected: WriteTo of 1,253 bytes (over IPv4's tailnet limit) and
//	                       of 1,252; {"big": error, "fits": reply length}
//	goudp serve :PORT      a UDP server: answers each datagram with "got:" + it, until killed;
//	                       {"serving": its local address} once bound
//
// ADDR is host:port (a name or an IP). Replies are awaited 10 s, sending again every second.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func out(v map[string]any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

// exchange sends until a reply comes (UDP may drop the first while the tailnet path warms up).
func exchange(send func() error, recv func([]byte) (int, net.Addr, error), setDeadline func(time.Time) error) ([]byte, net.Addr) {
	buf := make([]byte, 65536)
	end := time.Now().Add(10 * time.Second)
	for time.Now().Before(end) {
		if err := send(); err != nil {
			fail(err)
		}
		setDeadline(time.Now().Add(time.Second))
		n, from, err := recv(buf)
		if err == nil {
			return buf[:n], from
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			fail(err)
		}
	}
	fail(errors.New("no reply in 10 s"))
	return nil, nil
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: goudp dial|to ADDR MSG | big ADDR | serve :PORT")
		os.Exit(2)
	}
	addr := os.Args[2]
	switch os.Args[1] {
	case "serve":
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			fail(err)
		}
		out(map[string]any{"serving": c.LocalAddr().String()})
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				fail(err)
			}
			if _, err := c.WriteTo(append([]byte("got:"), buf[:n]...), from); err != nil {
				fail(err)
			}
		}
	case "dial":
		c, err := net.Dial("udp", addr)
		if err != nil {
			fail(err)
		}
		msg := []byte(os.Args[3])
		reply, _ := exchange(func() error { _, err := c.Write(msg); return err },
			func(b []byte) (int, net.Addr, error) { n, err := c.Read(b); return n, nil, err },
			c.SetReadDeadline)
		out(map[string]any{"reply": string(reply), "remote": c.RemoteAddr().String()})
	case "to", "big":
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			fail(err)
		}
		c, err := net.ListenPacket("udp", ":0")
		if err != nil {
			fail(err)
		}
		if os.Args[1] == "big" {
			_, bigErr := c.WriteTo(make([]byte, 1253), ua)
			if bigErr != nil && errors.Is(bigErr, syscall.EMSGSIZE) {
				bigErr = syscall.EMSGSIZE
			}
			payload := []byte(strings.Repeat("x", 1252))
			reply, _ := exchange(func() error { _, err := c.WriteTo(payload, ua); return err },
				c.ReadFrom, c.SetReadDeadline)
			out(map[string]any{"big": fmt.Sprint(bigErr), "fits": len(reply)})
			return
		}
		msg := []byte(os.Args[3])
		reply, from := exchange(func() error { _, err := c.WriteTo(msg, ua); return err },
			c.ReadFrom, c.SetReadDeadline)
		out(map[string]any{"reply": string(reply), "from": from.String()})
	default:
		os.Exit(2)
	}
}
