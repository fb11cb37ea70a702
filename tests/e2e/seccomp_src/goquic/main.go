// A Go QUIC test client for tailproxy's seccomp interception (tests/e2e/test_seccomp_udp.py):
// golang.org/x/net/quic (the module the node already uses, so it builds offline), built with
// CGO_ENABLED=0. Its endpoint is an unconnected UDP socket driven by sendmsg()/recvmsg() with
// ancillary data: everything of a real QUIC stack the supervisor must carry.
//
//	goquic ADDR CAFILE NBYTES   one stream to tests/e2e/quic_echo.py's server at ADDR (ALPN
//	                            "tailproxy-echo"): NBYTES sent, the echo read back; one JSON
//	                            line {"bytes": received, "same": the echo matches}
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"golang.org/x/net/quic"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: goquic ADDR CAFILE NBYTES")
		os.Exit(2)
	}
	pem, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	n, _ := strconv.Atoi(os.Args[3])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := &quic.Config{TLSConfig: &tls.Config{RootCAs: roots, NextProtos: []string{"tailproxy-echo"},
		MinVersion: tls.VersionTLS13}}
	ep, err := quic.Listen("udp", ":0", nil)
	if err != nil {
		fail(err)
	}
	conn, err := ep.Dial(ctx, "udp", os.Args[1], cfg)
	if err != nil {
		fail(fmt.Errorf("dial: %w", err))
	}
	s, err := conn.NewStream(ctx)
	if err != nil {
		fail(err)
	}
	s.SetReadContext(ctx)
	s.SetWriteContext(ctx)
	sent := bytes.Repeat([]byte("0123456789abcdef"), n/16+1)[:n]
	if _, err := s.Write(sent); err != nil {
		fail(fmt.Errorf("write: %w", err))
	}
	s.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil {
		fail(fmt.Errorf("read: %w", err))
	}
	b, _ := json.Marshal(map[string]any{"bytes": len(got),
		"same": bytes.Equal(got, append([]byte("echo: "), sent...))})
	fmt.Println(string(b))
	conn.Close()
}
