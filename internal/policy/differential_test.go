package policy

import (
	"flag"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/moatfw/moat/bpf"
)

var seedFlag = flag.Uint64("policy.seed", 0, "seed of the extra random run of TestCompileAgreesWithEvaluate (0: from the clock)")

// TestCompileAgreesWithEvaluate compiles random policies and checks that the datapath's lookup over the
// entries (simulated) decides random packets, aimed at the edges of cidrs, excepts, ipcache entries and
// port ranges, exactly as the reference evaluator does.
func TestCompileAgreesWithEvaluate(t *testing.T) {
	seeds := []uint64{1, 2, 3, 0x5eed}
	extra := *seedFlag
	if extra == 0 {
		extra = uint64(time.Now().UnixNano())
	}
	seeds = append(seeds, extra)

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

// differential runs one seed: policies of 1 to 1,000 rules, each with its own ipcache and packets. It
// returns how many packets it compared and whether all of them agreed.
func differential(t *testing.T, seed uint64) (int, bool) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	compared := 0
	for i := range 60 {
		rules := 1 + rng.IntN(30)
		switch {
		case i == 0:
			rules = 1000
		case i%8 == 7:
			rules = 100 + rng.IntN(300)
		case i%8 == 3:
			rules = 0
		}
		g := newGenerator(rng)
		p := g.policy(rules)
		ipc := g.ipcache()
		d := Defaults{DefaultEgress: g.action(), DefaultIngress: g.action()}
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
func agree(t *testing.T, seed uint64, p *IdentityPolicy, d Defaults, ipc *IPCache, g *generator, n int) bool {
	t.Helper()
	var entries []Entry
	if p != nil {
		var err error
		if entries, err = Compile(p); err != nil {
			t.Errorf("seed %d: Compile: %v\n%s", seed, err, formatPolicy(p))
			return false
		}
		checkEntries(t, entries)
	}
	m, err := newDatapathModel(entries, d, ipc, p != nil)
	if err != nil {
		t.Errorf("seed %d: %v\n%s", seed, err, formatPolicy(p))
		return false
	}
	tg := newTargets(p, ipc)
	for range n {
		pkt := g.packet(tg)
		want := Evaluate(p, d, ipc, pkt)
		if got := m.decide(pkt); got != want {
			small, rules := shrink(p, d, ipc, pkt), 0
			if p != nil {
				rules = len(p.Rules)
			}
			t.Errorf("seed %d: the datapath disagrees with Evaluate\npacket %s\ndatapath %s\nEvaluate %s\n"+
				"defaults egress %s ingress %s\npolicy (shrunk from %d rules) %sipcache entries of the remote:\n%s",
				seed, formatPacket(pkt), formatResult(simulateOne(small, d, ipc, pkt)), formatResult(Evaluate(small, d, ipc, pkt)),
				actionName(d.DefaultEgress), actionName(d.DefaultIngress), rules, formatPolicy(small), formatIPCache(ipc, pkt.Remote))
			return false
		}
	}
	return true
}

// simulateOne compiles p and decides one packet with the simulated datapath.
func simulateOne(p *IdentityPolicy, d Defaults, ipc *IPCache, pkt Packet) Result {
	var entries []Entry
	if p != nil {
		var err error
		if entries, err = Compile(p); err != nil {
			panic(err)
		}
	}
	return simulate(entries, d, ipc, p != nil, pkt)
}

// shrink removes rules from p while the datapath still disagrees with Evaluate about pkt.
func shrink(p *IdentityPolicy, d Defaults, ipc *IPCache, pkt Packet) *IdentityPolicy {
	if p == nil {
		return nil
	}
	disagrees := func(q *IdentityPolicy) bool { return simulateOne(q, d, ipc, pkt) != Evaluate(q, d, ipc, pkt) }
	cur := *p
	for chunk := len(cur.Rules) / 2; chunk >= 1; chunk /= 2 {
		for i := 0; i < len(cur.Rules); {
			next := cur
			next.Rules = append(append([]Rule(nil), cur.Rules[:i]...), cur.Rules[min(i+chunk, len(cur.Rules)):]...)
			if disagrees(&next) {
				cur = next
			} else {
				i += chunk
			}
		}
	}
	return &cur
}

// checkEntries checks what the datapath assumes of a policy map: one header first, keys sorted and unique,
// no bits set beyond a key's prefixlen, class ids that fit their two bytes, and rule references that name
// a rule or none.
func checkEntries(t *testing.T, entries []Entry) {
	t.Helper()
	if len(entries) == 0 || entries[0].Key != bpf.HeaderKey() {
		t.Fatalf("no header first")
	}
	for i, e := range entries {
		if i > 0 && compareEntries(entries[i-1], e) >= 0 {
			t.Fatalf("entries %d and %d out of order or equal", i-1, i)
		}
		if masked := maskData(e.Key.Data, e.Key.Prefixlen); masked != e.Key.Data {
			t.Fatalf("entry %d: bits beyond prefixlen %d: %x", i, e.Key.Prefixlen, e.Key.Data)
		}
		switch bpf.PolicyKind(e.Key.Data[0]) {
		case bpf.KindHeader:
			if i != 0 {
				t.Fatalf("entry %d: a second header", i)
			}
		case bpf.KindPort:
			if e.Value.PortClass > maxClasses || e.Key.Prefixlen < 16 || e.Key.Prefixlen > 40 {
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
