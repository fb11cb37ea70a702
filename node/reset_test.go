package main

import (
	"reflect"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
)

// resetConn reaches netstack's endpoint inside gonet.TCPConn by its field
// name; a gVisor upgrade that renames or retypes it must fail here, not
// silently turn resets back into clean ends.
func TestGonetEndpointFieldIsFound(t *testing.T) {
	f, ok := reflect.TypeOf(gonet.TCPConn{}).FieldByName("ep")
	if !ok {
		t.Fatal("gonet.TCPConn has no field ep")
	}
	if f.Type.String() != "tcpip.Endpoint" {
		t.Fatalf("gonet.TCPConn.ep is %v, want tcpip.Endpoint", f.Type)
	}
}
