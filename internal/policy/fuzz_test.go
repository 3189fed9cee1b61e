package policy_test

import (
	"math/rand/v2"
	"testing"

	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/policy/policytest"
)

// FuzzCompile decodes the input into a small policy over a small world of addresses and ports, and checks
// that the simulated datapath agrees with Evaluate on every packet aimed at an edge of a cidr, except,
// ipcache entry or port range.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x1f, 0x00, 0x01, 0x01, 0x01, 0x00, 0x10, 0x08, 0x10, 0x00, 0x01, 0x05})
	f.Add([]byte{0x23, 0x3a, 0x12, 0x07, 0x09, 0x00, 0x00, 0x10, 0x04, 0x00, 0x01, 0x04, 0x1e, 0x0d, 0x33})
	rng := rand.New(rand.NewPCG(7, 11))
	for range 24 {
		b := make([]byte, 16+rng.IntN(112))
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		f.Add(b)
	}
	ipc := policytest.SmallIPCache()
	d := policy.Defaults{DefaultEgress: allow, DefaultIngress: deny}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := policytest.ByteReader(data)
		p := policytest.DecodePolicy(&r)
		if err := p.Validate(); err != nil {
			t.Fatalf("the decoder made an invalid policy: %v\n%s", err, policytest.FormatPolicy(p))
		}
		entries, err := policy.Compile(p)
		if err != nil {
			t.Fatalf("Compile: %v\n%s", err, policytest.FormatPolicy(p))
		}
		checkEntries(t, entries)
		m, err := newDatapathModel(entries, d, ipc, true)
		if err != nil {
			t.Fatal(err)
		}
		for _, pkt := range policytest.NewEdges(p, ipc).Packets() {
			want := policy.Evaluate(p, d, ipc, pkt)
			if got := m.decide(pkt); got != want {
				t.Fatalf("the datapath disagrees with Evaluate\npacket %s\ndatapath %s\nEvaluate %s\npolicy %sipcache entries of the remote:\n%s",
					policytest.FormatPacket(pkt), policytest.FormatResult(got), policytest.FormatResult(want),
					policytest.FormatPolicy(p), policytest.FormatIPCache(ipc, pkt.Remote))
			}
		}
	})
}
