package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Completing a parked connect, the node's copy of what proxy/loopback.py does for the proxy
// (docs/CHANNEL.md): the program's socket sits in SYN_SENT towards the parking address P. A
// new socket bound to P (SO_REUSEPORT, like the parking listener) connects to the program's
// own address L; the SYNs cross and both ends become ESTABLISHED. The program sees its
// connect complete and nothing else: no error, no hang-up, its bind() untouched.

// parkedTCPFamily returns the address family of sock if it is a TCP socket in SYN_SENT.
// Only a TCP socket answers TCP_INFO (any other, raw ones included, fails it), so that one
// call also checks the type and protocol.
func parkedTCPFamily(sock int) (int, bool) {
	info, err := unix.GetsockoptTCPInfo(sock, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil || info.State != unix.BPF_TCP_SYN_SENT {
		return 0, false
	}
	family, err := unix.GetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || (family != unix.AF_INET && family != unix.AF_INET6) {
		return 0, false
	}
	return family, true
}

// completeParked completes the program's connect on sock, parked at park. It returns the
// node's end of the program's connection and the program's address. On error
// the program's socket is unchanged (still parked).
func completeParked(sock int, park syscall.Sockaddr) (*net.TCPConn, netip.AddrPort, error) {
	var none netip.AddrPort
	local, err := syscall.Getsockname(sock)
	if err != nil {
		return nil, none, err
	}
	family := syscall.AF_INET
	if _, ok := park.(*syscall.SockaddrInet6); ok {
		family = syscall.AF_INET6
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, none, err
	}
	if err := connector(fd, family, park, local); err != nil {
		syscall.Close(fd)
		return nil, none, err
	}
	f := os.NewFile(uintptr(fd), "connector")
	c, err := net.FileConn(f) // a duplicate: f's own descriptor is closed next
	f.Close()
	if err != nil {
		return nil, none, err
	}
	tcp, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return nil, none, fmt.Errorf("the connector is not TCP")
	}
	return tcp, sockaddrAddrPort(local), nil
}

func connector(fd, family int, park, local syscall.Sockaddr) error {
	if err := syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		return err
	}
	if family == syscall.AF_INET6 {
		if err := syscall.SetsockoptInt(fd, syscall.IPPROTO_IPV6, syscall.IPV6_V6ONLY, 1); err != nil {
			return err
		}
	}
	if err := syscall.Bind(fd, park); err != nil {
		return fmt.Errorf("bind the parking address: %w", err)
	}
	if err := syscall.Connect(fd, local); err != nil && err != syscall.EINPROGRESS {
		return fmt.Errorf("connect to the program's socket: %w", err)
	}
	return nil
}

// sockaddrAddrPort is sa as a key: an IPv4-mapped IPv6 address counts as IPv4.
func sockaddrAddrPort(sa syscall.Sockaddr) netip.AddrPort {
	switch a := sa.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port))
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), uint16(a.Port))
	}
	return netip.AddrPort{}
}

// delivering is true while what the program sent is still on its way through c (the node's
// end of the program's connection): bytes wait in c for the relay to read them, or the
// program ended its side (c left ESTABLISHED) and the relay has not ended yet. The same test
// as the proxy's for relays it started (policy/upstream.py).
func delivering(c *net.TCPConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return false
	}
	busy := false
	_ = raw.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if err != nil {
			return
		}
		if info.State != unix.BPF_TCP_ESTABLISHED {
			busy = true
			return
		}
		inq, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		busy = err == nil && inq > 0
	})
	return busy
}

// fileConnOf makes a Go connection of a duplicate of fd; the caller keeps fd.
func fileConnOf(fd int) (net.Conn, error) {
	dup, err := syscall.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("dup fd %d: %w", fd, err)
	}
	f := os.NewFile(uintptr(dup), "socket")
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("fd %d is not a socket: %w", fd, err)
	}
	return c, nil
}
