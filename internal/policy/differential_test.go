package policy_test

import (
	"flag"
	"testing"
	"time"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/policy/policytest"
)

var seedFlag = flag.Uint64("policy.seed", 0, "one more seed for TestCompileAgreesWithEvaluate (to replay a failure of FuzzCompileAgreesWithEvaluate)")

// TestCompileAgreesWithEvaluate compiles random policies and checks that the datapath's lookup over the
// entries (simulated) decides random packets, aimed at the edges of cidrs, excepts, ipcache entries and
// port ranges, exactly as the reference evaluator does. Its seeds are fixed, so every run draws the same;
// FuzzCompileAgreesWithEvaluate (make fuzz) tries others.
func TestCompileAgreesWithEvaluate(t *testing.T) {
	seeds := []uint64{1, 2, 3, 0x5eed}
	if *seedFlag != 0 {
		seeds = append(seeds, *seedFlag)
	}

	start := time.Now()
	total := 0
	for _, seed := range seeds {
		n, ok := differential(t, seed)
		total += n
		if !ok {
			t.Fatalf("seed %d disagrees (rerun with -policy.seed=%d)", seed, seed)
		}
	}
	t.Logf("%d packets compared in %v", total, time.Since(start).Round(time.Millisecond))
	if total < 100_000 {
		t.Errorf("only %d packets compared", total)
	}
}

// FuzzCompileAgreesWithEvaluate is TestCompileAgreesWithEvaluate over the seeds the fuzzer draws. It has no
// seed corpus of its own, so `go test` does not run it: `make fuzz` does.
func FuzzCompileAgreesWithEvaluate(f *testing.F) {
	f.Fuzz(func(t *testing.T, seed uint64) {
		if _, ok := differential(t, seed); !ok {
			t.Fatalf("seed %d disagrees (rerun with go test -run TestCompileAgreesWithEvaluate -policy.seed=%d)", seed, seed)
		}
	})
}

// differential runs one seed: policies of 1 to 1,000 rules, each with its own ipcache and packets. It
// returns how many packets it compared and whether all of them agreed.
func differential(t *testing.T, seed uint64) (int, bool) {
	t.Helper()
	rng := policytest.NewRand(seed)
	compared := 0
	for i := range 60 {
		rules := policytest.RuleCount(rng, i)
		g := policytest.NewGenerator(rng)
		p := g.Policy(rules)
		ipc := g.IPCache()
		d := g.Defaults()
		n := 400 + 4*rules
		if i%4 == 1 {
			// now and then, an identity without a policy map
			if ok := agree(t, seed, nil, d, ipc, g, n/4); !ok {
				return compared, false
			}
			compared += n / 4
		}
		if ok := agree(t, seed, p, d, ipc, g, n); !ok {
			return compared, false
		}
		compared += n
	}
	return compared, true
}

// agree compiles p and compares n random packets; on the first disagreement it reports a shrunk policy.
func agree(t *testing.T, seed uint64, p *policy.IdentityPolicy, d policy.Defaults, ipc *policy.IPCache, g *policytest.Generator, n int) bool {
	t.Helper()
	var entries []policy.Entry
	if p != nil {
		var err error
		if entries, err = policy.Compile(p); err != nil {
			t.Errorf("seed %d: Compile: %v\n%s", seed, err, policytest.FormatPolicy(p))
			return false
		}
		checkEntries(t, entries)
	}
	m, err := newDatapathModel(entries, d, ipc, p != nil)
	if err != nil {
		t.Errorf("seed %d: %v\n%s", seed, err, policytest.FormatPolicy(p))
		return false
	}
	tg := policytest.NewTargets(p, ipc)
	for range n {
		pkt := g.Packet(tg)
		want := policy.Evaluate(p, d, ipc, pkt)
		if got := m.decide(pkt); got != want {
			small, rules := shrink(p, d, ipc, pkt), 0
			if p != nil {
				rules = len(p.Rules)
			}
			t.Errorf("seed %d: the datapath disagrees with Evaluate\npacket %s\ndatapath %s\nEvaluate %s\n"+
				"defaults egress %s ingress %s\npolicy (shrunk from %d rules) %sipcache entries of the remote:\n%s",
				seed, policytest.FormatPacket(pkt), policytest.FormatResult(simulateOne(small, d, ipc, pkt)),
				policytest.FormatResult(policy.Evaluate(small, d, ipc, pkt)), policytest.ActionName(d.DefaultEgress),
				policytest.ActionName(d.DefaultIngress), rules, policytest.FormatPolicy(small), policytest.FormatIPCache(ipc, pkt.Remote))
			return false
		}
	}
	return true
}

// simulateOne compiles p and decides one packet with the simulated datapath.
func simulateOne(p *policy.IdentityPolicy, d policy.Defaults, ipc *policy.IPCache, pkt policy.Packet) policy.Result {
	var entries []policy.Entry
	if p != nil {
		var err error
		if entries, err = policy.Compile(p); err != nil {
			panic(err)
		}
	}
	return simulate(entries, d, ipc, p != nil, pkt)
}

// shrink removes rules from p while the datapath still disagrees with Evaluate about pkt.
func shrink(p *policy.IdentityPolicy, d policy.Defaults, ipc *policy.IPCache, pkt policy.Packet) *policy.IdentityPolicy {
	return policytest.Shrink(p, func(q *policy.IdentityPolicy) bool {
		return simulateOne(q, d, ipc, pkt) != policy.Evaluate(q, d, ipc, pkt)
	})
}

// checkEntries checks what the datapath assumes of a policy map: a root port entry per direction, keys sorted and unique,
// no bits set beyond a key's prefixlen, class ids that fit their two bytes, and rule references that name
// a rule or none.
func checkEntries(t *testing.T, entries []policy.Entry) {
	t.Helper()
	roots := 0
	for _, e := range entries {
		if e.Key == bpf.PortKey(bpf.Egress, 0, 0, 8) || e.Key == bpf.PortKey(bpf.Ingress, 0, 0, 8) {
			roots++
		}
	}
	if roots != 2 {
		t.Fatalf("%d root port entries, want one per direction", roots)
	}
	for i, e := range entries {
		if i > 0 && policy.CompareEntries(entries[i-1], e) >= 0 {
			t.Fatalf("entries %d and %d out of order or equal", i-1, i)
		}
		if masked := maskData(e.Key.Data, e.Key.Prefixlen); masked != e.Key.Data {
			t.Fatalf("entry %d: bits beyond prefixlen %d: %x", i, e.Key.Prefixlen, e.Key.Data)
		}
		switch bpf.PolicyKind(e.Key.Data[0]) {
		case bpf.KindPort:
			if e.Value.PortClass > policy.MaxClasses || e.Key.Prefixlen < 16 || e.Key.Prefixlen > 48 {
				t.Fatalf("entry %d: port entry %+v", i, e)
			}
		case bpf.KindCIDR, bpf.KindPeer:
			for _, ref := range []bpf.RuleRef{e.Value.Enforce, e.Value.Audit} {
				if (ref.Order == bpf.OrderNone) != (ref.RuleId == 0) {
					t.Fatalf("entry %d: rule reference %+v", i, ref)
				}
			}
			if e.Value.Enforce.Order == bpf.OrderNone && e.Value.Audit.Order == bpf.OrderNone &&
				bpf.PolicyKind(e.Key.Data[0]) == bpf.KindPeer {
				t.Fatalf("entry %d: a peer entry naming no rule", i)
			}
		default:
			t.Fatalf("entry %d: kind %d", i, e.Key.Data[0])
		}
	}
}
