package testutil

import (
	"net"
	"testing"
)

// FreeLocalAddr is a 127.0.0.1 TCP address nothing listens on right now, for a child process to serve on.
func FreeLocalAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
