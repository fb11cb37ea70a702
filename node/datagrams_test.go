package main

import (
	"bytes"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// seqpacketPair returns the program's end and the relay's end of a SOCK_SEQPACKET pair.
func seqpacketPair(t *testing.T) (prog, local net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_SEQPACKET|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "seqpacket")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	prog, local = conn(fds[0]), conn(fds[1])
	t.Cleanup(func() { prog.Close(); local.Close() })
	return prog, local
}

// udpEcho returns a connected UDP socket whose peer echoes each datagram.
func udpEcho(t *testing.T) net.Conn {
	t.Helper()
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	go func() {
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			srv.WriteToUDP(buf[:n], from)
		}
	}()
	c, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func startDatagramRelay(local, remote net.Conn) chan relayResult {
	done := make(chan relayResult, 1)
	go func() { done <- relayDatagrams(local, remote) }()
	return done
}

// Datagrams cross whole, in order, up to the largest UDP payload; closing the program's
// side ends the association cleanly.
func TestDatagramRelayKeepsDatagramsWhole(t *testing.T) {
	t.Cleanup(noLeak(t))
	prog, local := seqpacketPair(t)
	done := startDatagramRelay(local, udpEcho(t))
	var sent int64
	for i, size := range []int{1, 100, 1472, 9000, maxDatagram} {
		msg := bytes.Repeat([]byte{byte('a' + i)}, size)
		if _, err := prog.Write(msg); err != nil {
			t.Fatal(err)
		}
		sent += int64(size)
		buf := make([]byte, maxDatagram+1)
		prog.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := prog.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], msg) {
			t.Fatalf("datagram %d (%d bytes): got %d bytes, %v", i, size, n, err)
		}
	}
	prog.Close()
	select {
	case res := <-done:
		if res.Reason != "" || res.Up != sent || res.Down != sent {
			t.Fatalf("result %+v, sent %d", res, sent)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the relay did not end when the program closed its side")
	}
}

// An association that carries nothing ends by itself, and the program's side learns it.
func TestDatagramRelayIdleTimeout(t *testing.T) {
	old := datagramIdle
	datagramIdle = 200 * time.Millisecond
	t.Cleanup(func() { datagramIdle = old })
	prog, local := seqpacketPair(t)
	done := startDatagramRelay(local, udpEcho(t))
	select {
	case res := <-done:
		if res.Reason != "idle for 200ms" {
			t.Fatalf("result %+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("an idle association was not ended")
	}
	prog.SetReadDeadline(time.Now().Add(time.Second))
	if n, err := prog.Read(make([]byte, 10)); n != 0 || err == nil {
		t.Fatalf("the program's side still open after the end: %d, %v", n, err)
	}
}

// loopbackAssociation returns the program's UDP socket and the relay's loopback UDP socket
// connected to it, as the proxy sets up an association of the preload.
func loopbackAssociation(t *testing.T) (prog *net.UDPConn, local net.Conn) {
	t.Helper()
	prog, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	port := prog.LocalAddr().(*net.UDPAddr).Port
	local, err = net.DialUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)},
		&net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close(); local.Close() })
	return prog, local
}

// A loopback association: datagrams cross both ways; one too large for the tailnet is
// dropped without ending it; idleness does not end it while the program's socket lives,
// and it ends once that socket is closed.
func TestDatagramRelayLoopbackAssociation(t *testing.T) {
	old := datagramIdle
	datagramIdle = 200 * time.Millisecond
	t.Cleanup(func() { datagramIdle = old })
	prog, local := loopbackAssociation(t)
	endpoint := local.LocalAddr().(*net.UDPAddr)
	done := startDatagramRelay(local, udpEcho(t))
	exchange := func(msg []byte) ([]byte, error) {
		if _, err := prog.WriteToUDP(msg, endpoint); err != nil {
			return nil, err
		}
		buf := make([]byte, maxDatagram)
		prog.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
		n, from, err := prog.ReadFromUDP(buf)
		if err == nil && from.Port != endpoint.Port {
			t.Fatalf("reply from %v, want the endpoint %v", from, endpoint)
		}
		return buf[:n], err
	}
	if got, err := exchange([]byte("one")); err != nil || string(got) != "one" {
		t.Fatalf("first datagram: %q, %v", got, err)
	}
	if got, err := exchange(bytes.Repeat([]byte{'x'}, tailnetPayload4+1)); err == nil {
		t.Fatalf("an oversize datagram crossed: %d bytes", len(got))
	}
	time.Sleep(3 * datagramIdle)
	if got, err := exchange(bytes.Repeat([]byte{'y'}, tailnetPayload4)); err != nil || len(got) != tailnetPayload4 {
		t.Fatalf("after idle periods with the program's socket open: %d bytes, %v", len(got), err)
	}
	prog.Close()
	select {
	case res := <-done:
		if res.Reason != "idle for 200ms" {
			t.Fatalf("result %+v", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the association outlived the program's socket")
	}
}
