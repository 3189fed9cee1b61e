package testutil

import (
	"net"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"
)

// ServeDNS answers DNS with h on UDP and TCP addr inside n until the test ends.
func ServeDNS(t testing.TB, n ns.NetNS, addr string, h dns.Handler) {
	t.Helper()
	var pc net.PacketConn
	var ln net.Listener
	if err := n.Do(func(ns.NetNS) error { // listen in n: a goroutine started in n.Do runs elsewhere
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go func() { _ = srv.ActivateAndServe() }()
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
}

// ExchangeDNS asks server q over network (udp or tcp) from inside n, giving the answer 2 seconds.
func ExchangeDNS(n ns.NetNS, network, server string, q *dns.Msg) (*dns.Msg, error) {
	var a *dns.Msg
	err := n.Do(func(ns.NetNS) error {
		var err error
		a, _, err = (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(q, server)
		return err
	})
	return a, err
}
