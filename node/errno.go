package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
)

// errnoFor is the one place where a Go error becomes the errno a program sees.
// gVisor's netstack reports TCP errors as strings inside net.OpError, so those
// are matched by their text; kernel errors carry their syscall.Errno.
func errnoFor(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return syscall.ETIMEDOUT
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) {
		return syscall.ECANCELED
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return syscall.ECONNRESET
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsTimeout {
			return syscall.ETIMEDOUT
		}
		return syscall.EHOSTUNREACH
	}
	msg := strings.ToLower(err.Error())
	for _, m := range messageErrnos {
		if strings.Contains(msg, m.text) {
			return m.errno
		}
	}
	return syscall.EHOSTUNREACH
}

var messageErrnos = []struct {
	text  string
	errno syscall.Errno
}{
	{"refused", syscall.ECONNREFUSED},
	{"reset", syscall.ECONNRESET},
	{"timed out", syscall.ETIMEDOUT},
	{"timeout", syscall.ETIMEDOUT},
	{"network is unreachable", syscall.ENETUNREACH},
	{"no route", syscall.EHOSTUNREACH},
	{"host is unreachable", syscall.EHOSTUNREACH},
	{"unreachable", syscall.EHOSTUNREACH},
	{"aborted", syscall.ECONNABORTED},
	{"broken pipe", syscall.EPIPE},
	{"no such host", syscall.EHOSTUNREACH},
	{"not found", syscall.EHOSTUNREACH},
}
