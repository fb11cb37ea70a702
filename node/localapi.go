package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
)

// newLocalRequest builds a LocalAPI request as tsnet's in-process LocalClient
// expects it: a path under /localapi/, addressed to the in-memory socket.
func newLocalRequest(ctx context.Context, method, path string, body io.Reader) (*http.Request, error) {
	if !strings.HasPrefix(path, "/localapi/") {
		path = "/localapi/v0/" + strings.TrimPrefix(path, "/")
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://local-tailscaled.sock"+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, nil
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
