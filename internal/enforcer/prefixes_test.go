package enforcer

import (
	"net/netip"
	"testing"

	"github.com/moatfw/moat/bpf"
)

// The table counts the ipcache entries it records as written: a rewrite is not a second entry, a drop of one not
// written is nothing, an address that comes and goes leaves the count alone, and a written range counts too.
func TestPrefixTableCountsWrittenEntries(t *testing.T) {
	var tab prefixTable
	a := netip.MustParsePrefix("10.2.0.1/32")
	b := netip.MustParsePrefix("fd00:2::1/128")
	r := netip.MustParsePrefix("10.2.0.0/16")
	v := bpf.IPCacheValue{Class: uint8(bpf.ClassPod), Identity: 3}
	steps := []struct {
		what string
		do   func()
		want int
	}{
		{"an address the source gives", func() { tab.setAddress(Address{Prefix: a, Class: bpf.ClassPod, Namespace: "web"}) }, 0},
		{"its entry written", func() { tab.setIPCache(a, v) }, 1},
		{"written again", func() { tab.setIPCache(a, bpf.IPCacheValue{Class: uint8(bpf.ClassPod), Identity: 4}) }, 1},
		{"an IPv6 entry", func() { tab.setIPCache(b, v) }, 2},
		{"a range", func() { tab.setIPCache(r, bpf.IPCacheValue{Class: uint8(bpf.ClassCluster)}) }, 3},
		{"the address gone from the source, its entry kept", func() { tab.dropAddress(a) }, 3},
		{"its entry dropped", func() { tab.dropIPCache(a) }, 2},
		{"dropped again", func() { tab.dropIPCache(a) }, 2},
		{"a prefix never seen dropped", func() { tab.dropIPCache(netip.MustParsePrefix("10.9.0.1/32")) }, 2},
		{"the range dropped", func() { tab.dropIPCache(r) }, 1},
	}
	for _, s := range steps {
		s.do()
		n, walked := tab.writtenCount(), 0
		for range tab.written() {
			walked++
		}
		if n != s.want || walked != s.want {
			t.Fatalf("%s: counted %d, walked %d, want %d", s.what, n, walked, s.want)
		}
	}
}
