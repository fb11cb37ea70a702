package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// gonetError is an error as gVisor's gonet adapter returns it: the tcpip
// error's text inside a net.OpError.
func gonetError(op string, e tcpip.Error) error {
	return &net.OpError{Op: op, Net: "tcp", Addr: &net.TCPAddr{IP: net.IPv4(100, 64, 0, 1), Port: 1},
		Err: errors.New(e.String())}
}

func TestErrnoFor(t *testing.T) {
	kernel := func(op string, e syscall.Errno) error {
		return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, e)}
	}
	tests := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"nil", nil, 0},
		{"bare errno", syscall.ECONNREFUSED, syscall.ECONNREFUSED},
		{"kernel refused", kernel("connect", syscall.ECONNREFUSED), syscall.ECONNREFUSED},
		{"kernel reset", kernel("read", syscall.ECONNRESET), syscall.ECONNRESET},
		{"kernel broken pipe", kernel("write", syscall.EPIPE), syscall.EPIPE},
		{"kernel net unreachable", kernel("connect", syscall.ENETUNREACH), syscall.ENETUNREACH},
		{"wrapped errno", fmt.Errorf("dial: %w", syscall.EHOSTUNREACH), syscall.EHOSTUNREACH},
		{"context deadline", context.DeadlineExceeded, syscall.ETIMEDOUT},
		{"dial timeout as relayTo words it", fmt.Errorf("timed out after 5s: %w", context.DeadlineExceeded),
			syscall.ETIMEDOUT},
		{"os deadline", os.ErrDeadlineExceeded, syscall.ETIMEDOUT},
		{"i/o timeout in OpError", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded},
			syscall.ETIMEDOUT},
		{"context canceled", context.Canceled, syscall.ECANCELED},
		{"use of closed connection", &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed},
			syscall.ECANCELED},
		{"unexpected EOF", io.ErrUnexpectedEOF, syscall.ECONNRESET},

		// gVisor: text only.
		{"gvisor message refused", errors.New("connect tcp 100.64.0.1:1: connection was refused"),
			syscall.ECONNREFUSED},
		{"gvisor refused", gonetError("connect", &tcpip.ErrConnectionRefused{}), syscall.ECONNREFUSED},
		{"gvisor reset", gonetError("read", &tcpip.ErrConnectionReset{}), syscall.ECONNRESET},
		{"gvisor reset message", errors.New("read tcp 100.64.0.2:5->100.64.0.1:1: connection reset by peer"),
			syscall.ECONNRESET},
		{"gvisor no route", gonetError("connect", &tcpip.ErrHostUnreachable{}), syscall.EHOSTUNREACH},
		{"no route message", errors.New("connect tcp 100.64.0.9:80: no route to host"), syscall.EHOSTUNREACH},
		{"gvisor network unreachable", gonetError("connect", &tcpip.ErrNetworkUnreachable{}),
			syscall.ENETUNREACH},
		{"network unreachable message", errors.New("connect tcp [fd7a::1]:80: network is unreachable"),
			syscall.ENETUNREACH},
		{"gvisor timeout", gonetError("connect", &tcpip.ErrTimeout{}), syscall.ETIMEDOUT},
		{"gvisor aborted", gonetError("write", &tcpip.ErrConnectionAborted{}), syscall.ECONNABORTED},
		{"broken pipe message", errors.New("write: broken pipe"), syscall.EPIPE},
		{"upper case", errors.New("Connection Refused"), syscall.ECONNREFUSED},

		// DNS.
		{"dns not found", &net.DNSError{Err: "no such host", Name: "nope.ts.net", IsNotFound: true},
			syscall.EHOSTUNREACH},
		{"dns timeout", &net.DNSError{Err: "i/o timeout", Name: "slow.ts.net", IsTimeout: true},
			syscall.ETIMEDOUT},
		{"dns server failure", &net.DNSError{Err: "server misbehaving", Name: "x.ts.net", IsTemporary: true},
			syscall.EHOSTUNREACH},
		{"dns in OpError", &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "no such host", Name: "nope", IsNotFound: true}}, syscall.EHOSTUNREACH},

		{"unknown", errors.New("something odd happened"), syscall.EHOSTUNREACH},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := errnoFor(tc.err); got != tc.want {
				t.Errorf("errnoFor(%v) = %v (%d), want %v (%d)", tc.err, got, int(got), tc.want, int(tc.want))
			}
		})
	}
}

// The gVisor texts errnoFor matches must still be the texts of the gVisor
// version in go.mod: an upgrade that rewords one would otherwise silently
// turn "refused" into EHOSTUNREACH.
func TestErrnoForGVisorTexts(t *testing.T) {
	for _, tc := range []struct {
		e    tcpip.Error
		want syscall.Errno
	}{
		{&tcpip.ErrConnectionRefused{}, syscall.ECONNREFUSED},
		{&tcpip.ErrConnectionReset{}, syscall.ECONNRESET},
		{&tcpip.ErrNetworkUnreachable{}, syscall.ENETUNREACH},
		{&tcpip.ErrHostUnreachable{}, syscall.EHOSTUNREACH},
		{&tcpip.ErrTimeout{}, syscall.ETIMEDOUT},
		{&tcpip.ErrConnectionAborted{}, syscall.ECONNABORTED},
	} {
		if got := errnoFor(errors.New(tc.e.String())); got != tc.want {
			t.Errorf("gVisor %T (%q) → %v, want %v", tc.e, tc.e.String(), got, tc.want)
		}
	}
}
