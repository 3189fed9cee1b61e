package bpf_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// A packet sees one identity's old policy or its new one whole, never a mix. The two policies below both deny
// the test packet, but a packet that read the header of one and the rules of the other would be allowed:
//
//	old: world default Deny, no rule.
//	new: world default Allow, a rule that denies the packet.
//
// While one goroutine swaps them as fast as it can, packets run on the other CPU; a single pass is a mix.
func TestPolicySwapIsAtomic(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	oldPolicy := &policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionDeny, DefaultIngress: bpf.ActionDeny}
	newPolicy := &policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionDeny,
		Rules: []policy.Rule{{ID: 1, Direction: bpf.Egress, Action: bpf.ActionDeny, Peers: []policy.Peer{cidr("198.51.100.0/24")},
			Ports: ports(policy.ProtoTCP, 443, 443)}}}
	compile := func(p *policy.IdentityPolicy) []bpf.PolicyEntry {
		entries, err := policy.Compile(p)
		if err != nil {
			t.Fatal(err)
		}
		return entries
	}
	oldEntries, newEntries := compile(oldPolicy), compile(newPolicy)
	h.policy(oldPolicy)

	var stop atomic.Bool
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			entries := oldEntries
			if i%2 == 0 {
				entries = newEntries
			}
			if err := h.dp.ReplacePolicy(podID, entries); err != nil {
				t.Error(err)
				return
			}
			swaps.Add(1)
		}
	}()
	frame := tcp(podV4, worldV4, 40000, 443, testutil.TCPRst).Bytes() // RST: never a conntrack entry
	// Each swap waits for an RCU grace period (the kernel's guarantee that no program still uses the old trie),
	// so packets keep running until enough swaps have happened under them.
	passed, packets := 0, 0
	for ; swaps.Load() < 40 && packets < 5_000_000 && !t.Failed(); packets++ {
		if h.run(h.dp.FromPod, frame) != retDrop {
			passed++
		}
	}
	stop.Store(true)
	wg.Wait()
	if swaps.Load() < 40 {
		t.Fatalf("only %d swaps happened while %d packets ran: the test proved nothing", swaps.Load(), packets)
	}
	if passed != 0 {
		t.Errorf("%d of %d packets passed during %d swaps: a packet saw a mix of two policies", passed, packets, swaps.Load())
	}
	t.Logf("%d packets during %d policy swaps, none passed", packets, swaps.Load())
}

// A change to one identity's policy builds only that identity's trie: the others keep theirs untouched.
func TestPolicyUpdateIsLocal(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	other := &policy.IdentityPolicy{Identity: peerID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionAllow,
		Rules: []policy.Rule{{ID: 2, Direction: bpf.Egress, Action: bpf.ActionDeny, AllPeers: true, AllPorts: true}}}
	h.policy(other)
	h.policy(egressOnly443())
	before, err := h.dp.PolicyMapID(peerID)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := h.dp.PolicyMapID(podID)
	if err != nil {
		t.Fatal(err)
	}
	p := egressOnly443()
	p.DefaultEgress = bpf.ActionAllow
	h.policy(p)
	after, _ := h.dp.PolicyMapID(peerID)
	mineAfter, _ := h.dp.PolicyMapID(podID)
	if after != before {
		t.Errorf("identity %d's trie changed (%d -> %d) when only identity %d's policy did", peerID, before, after, podID)
	}
	if mineAfter == mine {
		t.Errorf("identity %d's trie was not replaced", podID)
	}
	keys, err := h.dp.PolicyEntries(peerID)
	if err != nil || len(keys) == 0 {
		t.Errorf("identity %d's entries after another identity's change: %d, %v", peerID, len(keys), err)
	}
}

// Several identities swap with one batch; each gets its own trie.
func TestReplacePolicies(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	batch := map[uint32][]bpf.PolicyEntry{}
	for id := uint32(100); id < 164; id++ {
		p := egressOnly443()
		p.Identity = id
		entries, err := policy.Compile(p)
		if err != nil {
			t.Fatal(err)
		}
		batch[id] = entries
	}
	if err := h.dp.ReplacePolicies(batch); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for id, want := range batch {
		mapID, err := h.dp.PolicyMapID(id)
		if err != nil {
			t.Fatalf("identity %d: %v", id, err)
		}
		if seen[uint64(mapID)] {
			t.Errorf("identity %d shares trie %d with another identity", id, mapID)
		}
		seen[uint64(mapID)] = true
		keys, err := h.dp.PolicyEntries(id)
		if err != nil || len(keys) != len(want) {
			t.Errorf("identity %d: %d entries (%v), want %d", id, len(keys), err, len(want))
		}
	}
	// and the datapath uses them: an endpoint of identity 130 is decided by its policy
	h.endpoint(130, bpf.ModeEnforce, podV4, podV6)
	if got := h.from(tcp(podV4, worldV4, 1000, 80, testutil.TCPSyn)); got != retDrop {
		t.Errorf("endpoint of a batch-swapped identity, denied port: %s, want drop", verdictName(got))
	}
	// the policy map is an array with a slot per identity: its fill counts the identities with a policy
	fills, err := h.dp.MapFills()
	if err != nil {
		t.Fatal(err)
	}
	if got := fills["policy"]; got.Entries != len(batch) || got.Capacity != bpf.MaxIdentities {
		t.Errorf("policy map fill = %+v, want %d of %d", got, len(batch), bpf.MaxIdentities)
	}
	if err := h.dp.DeletePolicy(130); err != nil {
		t.Fatal(err)
	}
	if err := h.dp.DeletePolicy(130); err != nil {
		t.Errorf("deleting an empty slot: %v, want no error", err)
	}
	if _, err := h.dp.PolicyMapID(130); err == nil {
		t.Error("identity 130 still has a policy after DeletePolicy")
	}
	if fills, _ := h.dp.MapFills(); fills["policy"].Entries != len(batch)-1 {
		t.Errorf("policy map fill after a delete = %+v, want %d", fills["policy"], len(batch)-1)
	}
	for _, id := range []uint32{0, bpf.MaxIdentities} {
		if err := h.dp.ReplacePolicies(map[uint32][]bpf.PolicyEntry{id: batch[130]}); err == nil {
			t.Errorf("policy of identity %d accepted, want an error (identities run 1..%d)", id, bpf.MaxIdentities-1)
		}
	}
}
