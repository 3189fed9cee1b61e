package policytest

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/moatfw/moat/internal/policy"
)

// draw is what a generator of seed makes of a policy of 40 rules: the policy, its ipcache and 2,000 packets.
func draw(seed uint64, avoid ...netip.Addr) (*policy.IdentityPolicy, []policy.IPCacheEntry, []policy.Packet) {
	g := NewGenerator(rand.New(rand.NewPCG(seed, seed)))
	g.Avoid(avoid...)
	p := g.Policy(40)
	ipc := g.IPCache()
	t := NewTargets(p, ipc)
	pkts := make([]policy.Packet, 2000)
	for i := range pkts {
		pkts[i] = g.Packet(t)
	}
	return p, ipc.Entries(), pkts
}

// A seed is all a failing differential test prints to be replayed: the same seed must draw the same.
func TestGeneratorIsDeterministic(t *testing.T) {
	p1, ipc1, pkts1 := draw(7)
	p2, ipc2, pkts2 := draw(7)
	if !reflect.DeepEqual(p1, p2) || !reflect.DeepEqual(ipc1, ipc2) || !reflect.DeepEqual(pkts1, pkts2) {
		t.Fatal("two generators of one seed drew different policies, ipcaches or packets")
	}
	if p3, _, _ := draw(8); reflect.DeepEqual(p1, p3) {
		t.Fatal("two seeds drew the same policy")
	}
}

func TestAvoid(t *testing.T) {
	_, _, pkts := draw(7)
	hits := map[netip.Addr]int{}
	var often netip.Addr
	for _, pkt := range pkts {
		if hits[pkt.Remote]++; hits[pkt.Remote] > hits[often] {
			often = pkt.Remote
		}
	}
	if hits[often] < 2 {
		t.Fatalf("no remote drawn twice in %d packets", len(pkts))
	}
	_, _, pkts = draw(7, often)
	for _, pkt := range pkts {
		if pkt.Remote == often {
			t.Fatalf("drew %s, which it was told to avoid (and drew %d times before)", often, hits[often])
		}
	}
}
