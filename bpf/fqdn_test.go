package bpf_test

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// fqdnPolicy allows TCP 443 to the names of api.example.com and *.cdn.example (slots 1 and 0), and nothing else
// to the world; the metadata API is allowed to the namespace (so that an answer naming it is seen not to count).
func fqdnPolicy(identity uint32) *policy.IdentityPolicy {
	return &policy.IdentityPolicy{
		Identity: identity, DefaultEgress: bpf.ActionDeny, DefaultIngress: bpf.ActionDeny, MetadataAllowed: true,
		Rules: []policy.Rule{
			{ID: 31, Direction: bpf.Egress, Action: bpf.ActionAllow,
				Peers: []policy.Peer{{FQDN: "api.example.com"}, {FQDN: "*.cdn.example"}},
				Ports: ports(policy.ProtoTCP, 443, 443)},
		},
	}
}

const (
	slotCDN = 1 << 0 // *.cdn.example
	slotAPI = 1 << 1 // api.example.com
)

func (h *harness) learn(identity uint32, a netip.Addr, slots uint64, ttl time.Duration) {
	h.t.Helper()
	if err := h.dp.LearnFQDN(identity, a, slots, ttl); err != nil {
		h.t.Fatal(err)
	}
}

func syn(src, dst netip.Addr, sport uint16) testutil.Packet {
	return tcp(src, dst, sport, 443, testutil.TCPSyn)
}

// A world address learned for an fqdn pattern of the identity is that pattern's peer: the rule allows it; an
// address not learned, one learned for another identity only, another port, and a pod, node or metadata address
// learned all the same are not allowed by it. A NAT64 address is decided by the IPv4 address it embeds, learned
// as such.
func TestFQDNLearnedPeer(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(fqdnPolicy(podID))
	h.policy(fqdnPolicy(peerID))
	nat64 := netip.MustParseAddr("64:ff9b::cb00:7109") // 203.0.113.9
	check := func(what string, p testutil.Packet, want uint32, reason bpf.Reason) {
		t.Helper()
		before := h.reasonCount(reason)
		if got := h.from(p); got != want {
			t.Errorf("%s: %s, want %s", what, verdictName(got), verdictName(want))
		}
		if h.reasonCount(reason) != before+1 {
			t.Errorf("%s: not counted as %s", what, bpf.ReasonName(reason))
		}
	}
	check("before learning", syn(podV4, worldV4, 41000), retDrop, bpf.ReasonDenyDefault)
	h.learn(podID, worldV4, slotAPI, time.Minute)
	h.learn(peerID, world2V4, slotCDN, time.Minute)
	h.learn(podID, worldV6, slotCDN|slotAPI, time.Minute)
	h.learn(podID, peerV4, slotAPI, time.Minute)
	h.learn(podID, nodeV4, slotAPI, time.Minute)
	h.learn(podID, metaV4, slotAPI, time.Minute)
	check("learned v4", syn(podV4, worldV4, 41001), retNext, bpf.ReasonAllowRule)
	check("learned v6", syn(podV6, worldV6, 41002), retNext, bpf.ReasonAllowRule)
	check("learned, other port", tcp(podV4, worldV4, 41003, 80, testutil.TCPSyn), retDrop, bpf.ReasonDenyDefault)
	check("learned by another identity only", syn(podV4, world2V4, 41004), retDrop, bpf.ReasonDenyDefault)
	check("NAT64 of an address learned by another identity", syn(podV6, nat64, 41005), retDrop, bpf.ReasonDenyDefault)
	check("a pod's address in an answer", syn(podV4, peerV4, 41006), retNext, bpf.ReasonAllowDefault)
	check("the metadata API in an answer", syn(podV4, metaV4, 41007), retDrop, bpf.ReasonDenyDefault)
	h.learn(podID, nat64, slotCDN, time.Minute)
	check("NAT64, learned", syn(podV6, nat64, 41008), retNext, bpf.ReasonAllowRule)
	check("its IPv4 address, learned through it", syn(podV4, world2V4, 41009), retNext, bpf.ReasonAllowRule)

	// the other identity's pod: what podID learned is not its
	h.endpoint(peerID, bpf.ModeEnforce, podV4, podV6)
	check("the other identity, podID's address", syn(podV4, worldV4, 41010), retDrop, bpf.ReasonDenyDefault)
	check("the other identity, its own", syn(podV4, world2V4, 41011), retNext, bpf.ReasonAllowRule)

	// a pattern that is not the rule's: slot 2 has no PEER entry
	h.endpoint(podID, bpf.ModeEnforce, podV4, podV6)
	other := netip.MustParseAddr("198.51.100.99")
	h.learn(podID, other, 1<<2, time.Minute)
	check("a slot no rule names", syn(podV4, other, 41012), retDrop, bpf.ReasonDenyDefault)
}

// A learned address expires: with no minimum TTL and no grace, a TTL of 1 s passes for about a second, then the
// address is denied again; learning it again extends it and keeps the slots it had while live.
func TestFQDNLearnedExpires(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(fqdnPolicy(podID))
	if err := h.dp.SetDNSTiming(0, 0); err != nil {
		t.Fatal(err)
	}
	h.learn(podID, worldV4, slotAPI, time.Second)
	if got := h.from(syn(podV4, worldV4, 42000)); got != retNext {
		t.Fatalf("learned with a TTL of 1 s: %s, want passed", verdictName(got))
	}
	deadline := time.Now().Add(5 * time.Second)
	for port := uint16(42001); h.from(syn(podV4, worldV4, port)) != retDrop; port++ {
		if time.Now().After(deadline) {
			t.Fatal("a TTL of 1 s still passes after 5 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.learn(podID, worldV4, slotCDN, time.Minute)
	h.learn(podID, worldV4, slotAPI, time.Second)
	all, err := h.dp.LearnedFQDN()
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].Slots != slotCDN|slotAPI || time.Until(all[0].Expires) < 50*time.Second {
		t.Errorf("learned %+v, want one entry with both slots expiring in about a minute", all)
	}
	if n, err := h.dp.FQDNCount(podID); err != nil || n != 1 {
		t.Errorf("count %d (%v), want 1", n, err)
	}
	if err := h.dp.ForgetFQDN(podID, worldV4); err != nil {
		t.Fatal(err)
	}
	if got := h.from(syn(podV4, worldV4, 43000)); got != retDrop {
		t.Errorf("forgotten: %s, want dropped", verdictName(got))
	}
	if n, err := h.dp.FQDNCount(podID); err != nil || n != 0 {
		t.Errorf("count %d (%v) after forgetting, want 0", n, err)
	}
}

// A pinned tails of an earlier build of this layout (one slot: the query stage only) is replaced by the load's own,
// so the answer stage is reachable; without that the load would refuse the pinned map.
func TestSmallPinnedTailsReplaced(t *testing.T) {
	root := testutil.PinRoot(t)
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "tails", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(filepath.Join(root, "tails")); err != nil {
		t.Fatal(err)
	}
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatalf("load beside a pinned tails of one slot: %v", err)
	}
	defer dp.Close()
	tails, err := ebpf.LoadPinnedMap(filepath.Join(root, "tails"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tails.Close()
	var id uint32
	if tails.MaxEntries() < 3 || tails.Lookup(uint32(1), &id) != nil {
		t.Errorf("the pinned tails has %d slots, the answer stage in slot 1: %v", tails.MaxEntries(), tails.Lookup(uint32(1), &id))
	}
}

// SweepFQDN removes, in one walk, the learned addresses whose deadline passed, and sets each identity's count to
// what it holds (the datapath's own count also counted what the sweep removes).
func TestSweepFQDN(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	if err := h.dp.SetDNSTiming(0, 0); err != nil {
		t.Fatal(err)
	}
	a, b, c := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"), netip.MustParseAddr("2001:db8::3")
	h.learn(podID, a, slotAPI, time.Second)
	h.learn(podID, b, slotAPI, time.Hour)
	h.learn(peerID, c, slotCDN, time.Hour)
	counts, gone, err := h.dp.SweepFQDN(time.Now().Add(time.Minute))
	if err != nil || gone != 1 || counts[podID] != 1 || counts[peerID] != 1 {
		t.Fatalf("sweep a minute on: counts %v, %d gone (%v); want one each, one gone", counts, gone, err)
	}
	if got := h.learned(podID); len(got) != 1 || got[b] != slotAPI {
		t.Errorf("left of podID: %v, want %s only", got, b)
	}
	if n, err := h.dp.FQDNCount(podID); err != nil || n != 1 {
		t.Errorf("podID's count %d (%v), want 1", n, err)
	}
	if counts, gone, err := h.dp.SweepFQDN(time.Time{}); err != nil || gone != 0 || counts[podID] != 1 {
		t.Errorf("a recount: %v, %d gone (%v)", counts, gone, err)
	}
}
