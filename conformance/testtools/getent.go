package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"
)

// getent hosts NAME|ADDRESS: the address and name as the C library's resolver finds them (/etc/hosts first,
// then DNS with resolv.conf's search list), exit status 2 when there is none.
func getent(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	if len(args) != 2 || args[0] != "hosts" {
		fmt.Fprintln(stderr, "getent: only `getent hosts NAME` here")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := args[1]
	if ip := net.ParseIP(key); ip != nil {
		names, err := net.DefaultResolver.LookupAddr(ctx, key)
		if err != nil || len(names) == 0 {
			return 2
		}
		fmt.Fprintf(stdout, "%-15s %s\n", ip, names[0])
		return 0
	}
	addrs, err := net.DefaultResolver.LookupHost(ctx, key)
	if err != nil || len(addrs) == 0 {
		return 2
	}
	for _, a := range addrs {
		fmt.Fprintf(stdout, "%-15s %s\n", a, key)
	}
	return 0
}
