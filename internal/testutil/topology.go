package testutil

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// NewNS creates a network namespace that goes away when the test ends, even on failure.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("remove network namespace %s: %v", n.Path(), err)
		}
	})
	return n
}

// PodLink is a pod namespace joined to a host-side namespace by a veth, as a CNI would leave it.
type PodLink struct {
	Pod, Host   ns.NetNS
	HostIfindex int    // the host side of the veth, in Host
	HostIfname  string // its name
	PodAddrs    []netip.Prefix
	HostAddrs   []netip.Prefix
}

// NewPodLink makes a pod namespace and a host namespace joined by a veth. The pod side is eth0 with podAddrs and
// default routes over the link; the host side carries hostAddrs (the stand-in gateway, Internet and metadata
// addresses). Neither namespace has any other way out, so no test packet can reach the machine's uplink.
func NewPodLink(t testing.TB, podAddrs, hostAddrs []netip.Prefix) *PodLink {
	t.Helper()
	pl := &PodLink{Pod: NewNS(t), Host: NewNS(t), PodAddrs: podAddrs, HostAddrs: hostAddrs,
		HostIfname: fmt.Sprintf("moath%05x", rand.IntN(1<<20))}
	err := pl.Host.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: pl.HostIfname, MTU: 1500}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(pl.Pod.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		host, err := netlink.LinkByName(pl.HostIfname)
		if err != nil {
			return err
		}
		pl.HostIfindex = host.Attrs().Index
		return configure(host, hostAddrs, nil)
	})
	if err != nil {
		t.Fatalf("host side: %v", err)
	}
	err = pl.Pod.Do(func(ns.NetNS) error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		return configure(eth0, podAddrs, hostAddrs)
	})
	if err != nil {
		t.Fatalf("pod side: %v", err)
	}
	return pl
}

// configure brings a link up with addresses (no DAD), and default routes over it when gateways are given.
func configure(l netlink.Link, addrs, gateways []netip.Prefix) error {
	for _, a := range addrs {
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}
		if a.Addr().Is6() {
			addr.Flags = 0x02 // IFA_F_NODAD
		}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("add %s to %s: %w", a, l.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return err
	}
	done := map[bool]bool{}
	for _, g := range gateways {
		is4 := g.Addr().Is4()
		if done[is4] {
			continue
		}
		done[is4] = true
		dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		if !is4 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		// on-link default route: the host side answers neighbour discovery for every address it holds
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}
		if err := netlink.RouteAdd(r); err != nil {
			return fmt.Errorf("default route over %s: %w", l.Attrs().Name, err)
		}
	}
	return nil
}

// Listen opens a TCP listener inside a namespace that echoes one line per connection; it closes when the test
// ends.
func Listen(t testing.TB, n ns.NetNS, addr string) {
	t.Helper()
	l, err := ListenTCP(n, addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go Serve(l, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err == nil {
			c.Write(buf[:n])
		}
	})
}

// ListenTCP opens a TCP listener on addr inside a namespace.
func ListenTCP(n ns.NetNS, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// Serve runs serve on every connection l accepts, each in a goroutine of its own, and closes the connection when
// serve returns. It returns once l is closed.
func Serve(l net.Listener, serve func(net.Conn)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			serve(c)
		}()
	}
}

// Exchange connects from inside a namespace, sends a line and waits for its echo. An error means the connection
// or the exchange failed within the timeout.
func Exchange(n ns.NetNS, addr string, timeout time.Duration) error {
	return ExchangeFrom(n, netip.Addr{}, addr, timeout)
}

// ExchangeFrom is Exchange from a given local address (the zero Addr lets the kernel choose).
func ExchangeFrom(n ns.NetNS, local netip.Addr, addr string, timeout time.Duration) error {
	return n.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: timeout}
		if local.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
		}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("moat\n")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		got, err := c.Read(buf)
		if err != nil {
			return err
		}
		if string(buf[:got]) != "moat\n" {
			return fmt.Errorf("echo %q", buf[:got])
		}
		return nil
	})
}

// UDPServer listens inside a namespace and reports the size of every datagram it receives on the returned
// channel; it closes when the test ends.
func UDPServer(t testing.TB, n ns.NetNS, addr string) <-chan int {
	t.Helper()
	var c net.PacketConn
	err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen udp on %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	sizes := make(chan int, 64)
	go func() {
		buf := make([]byte, 65536)
		for {
			got, _, err := c.ReadFrom(buf)
			if err != nil {
				close(sizes)
				return
			}
			select {
			case sizes <- got:
			default:
			}
		}
	}()
	return sizes
}

// SendUDP sends one datagram of size bytes from inside a namespace.
func SendUDP(n ns.NetNS, addr string, size int) error {
	return n.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(make([]byte, size))
		return err
	})
}
