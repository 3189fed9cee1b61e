package testutil

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/vishvananda/netlink"
)

// Dummy creates a device in the current network namespace for BPF_PROG_TEST_RUN's ifindex (a veth pair: this
// kernel kind has no dummy driver), and removes it when the test ends.
func Dummy(t testing.TB) int {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("moatt%06x", rand.IntN(1<<24))
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(name); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete veth %s: %v", name, err)
			}
		}
	})
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("find veth %s: %v", name, err)
	}
	return l.Attrs().Index
}
