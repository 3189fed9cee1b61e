package bpf_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/moatfw/moat/bpf"
)

// kernelLearns runs an answer (the first byte picks IPv4 or IPv6) through moat_to_pod on a harness of
// fqdnHarness with nothing learned, and returns what the pod's identity learned and whether the answer went to
// the agent.
func (h *harness) kernelLearns(t testing.TB, v6 bool, payload []byte) (map[netip.Addr]uint64, bool) {
	h.t = t // a fuzz target's harness is the *testing.F's, whose Helper may not be called from an input's run
	h.forgetAll()
	from, to := resolverV4, podV4
	if v6 {
		from, to = resolverV6, podV6
	}
	before := h.reasonCount(bpf.ReasonDNSToAgent)
	ret, err := h.tryRun(h.dp.ToPod, answerFrame(from, to, payload))
	if err != nil {
		t.Fatal(err)
	}
	agent := h.reasonCount(bpf.ReasonDNSToAgent) != before
	if agent != (ret == retDrop) {
		t.Fatalf("verdict %s, to the agent: %t (%x)", verdictName(ret), agent, payload)
	}
	return h.learned(podID), agent
}

// FuzzDNSAnswer sends the input as a trusted resolver's answer to a pod with fqdn patterns and holds the kernel
// to the reference reading (fqdn.ReadAnswer, miekg/dns reading the names): it never learns an address the
// reference does not, nor other slots; what it hands to the agent it learns nothing from. One datapath serves
// every input of a process.
func FuzzDNSAnswer(f *testing.F) {
	for _, seed := range [][]byte{
		answerMsg(f, "api.example.com.", true, "api.example.com. 60 IN A 198.51.100.7"),
		answerMsg(f, "api.example.com.", false, "api.example.com. 60 IN AAAA 2001:db8::7"),
		answerMsg(f, "x.cdn.example.", true, "x.cdn.example. 60 IN CNAME e.net.example.", "e.net.example. 5 IN A 203.0.113.9"),
		answerMsg(f, "X.CDN.example.", false, "x.cdn.example. 60 IN CNAME e.net.example.", "e.net.example. 5 IN A 203.0.113.9"),
		answerMsg(f, "api.example.com.", true, "other.example. 60 IN A 198.51.100.66", "api.example.com. 1 IN A 198.51.100.7"),
	} {
		f.Add(append([]byte{0}, seed...))
	}
	h := fqdnHarness(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 1 || len(data) > 1400 {
			return
		}
		payload := data[1:]
		got, agent := h.kernelLearns(t, data[0]&1 == 1, payload)
		if agent && len(got) != 0 {
			t.Fatalf("handed to the agent, and learned %v in the kernel (%x)", got, payload)
		}
		want := reference(payload)
		for addr, slots := range got {
			if want[addr] != slots {
				t.Fatalf("learned %s for slots %#x, the reference %#x (%x)", addr, slots, want[addr], payload)
			}
		}
	})
}

// fqdnNames are the names the differential test's answers are made of: names of the patterns, names of none, and
// their cases.
var fqdnNames = []string{"api.example.com.", "API.Example.com.", "x.cdn.example.", "y.cdn.example.", "cdn.example.",
	"a.b.cdn.example.", "other.example.", "e.net.example.", "f.net.example.", "example.com.", "www.api.example.com."}

// randomAnswer is an answer made by miekg/dns: a question of fqdnNames, then records of owners and CNAME targets
// of fqdnNames (the question's most often), of types A, AAAA, CNAME, TXT and MX, class IN mostly, compressed or
// not.
func randomAnswer(r *rand.Rand) []byte {
	pick := func() string { return fqdnNames[r.IntN(len(fqdnNames))] }
	m := new(dns.Msg)
	q := pick()
	m.SetQuestion(q, dns.TypeA)
	m.Response = true
	m.Compress = r.IntN(2) == 0
	for range r.IntN(7) {
		owner := q
		if r.IntN(3) == 0 {
			owner = pick()
		}
		class := "IN"
		if r.IntN(8) == 0 {
			class = "CH"
		}
		var s string
		switch r.IntN(6) {
		case 0, 1:
			s = fmt.Sprintf("%s %d %s A 198.51.100.%d", owner, r.IntN(120), class, r.IntN(8))
		case 2:
			s = fmt.Sprintf("%s %d %s AAAA 2001:db8::%x", owner, r.IntN(120), class, r.IntN(8))
		case 3, 4:
			s = fmt.Sprintf("%s %d %s CNAME %s", owner, r.IntN(120), class, pick())
		case 5:
			if r.IntN(2) == 0 {
				s = fmt.Sprintf("%s 60 %s TXT \"%s\"", owner, class, strings.Repeat("t", r.IntN(40)))
			} else {
				s = fmt.Sprintf("%s 60 %s MX 10 %s", owner, class, pick())
			}
		}
		rr, err := dns.NewRR(s)
		if err != nil {
			panic(fmt.Sprintf("%s: %v", s, err))
		}
		m.Answer = append(m.Answer, rr)
	}
	b, err := m.Pack()
	if err != nil {
		panic(err)
	}
	return b
}

// Many answers made by miekg/dns, compressed and not, through the kernel and through the reference: the kernel
// learns exactly what the reference does, or hands the answer to the agent and learns nothing; most are decided in
// the kernel.
func TestFQDNAnswerDifferential(t *testing.T) {
	h := fqdnHarness(t)
	r := rand.New(rand.NewPCG(18, 2026))
	const n = 400
	agent, learned := 0, 0
	for i := range n {
		msg := randomAnswer(r)
		got, toAgent := h.kernelLearns(t, i%2 == 1, msg)
		if toAgent {
			agent++
			if len(got) != 0 {
				t.Errorf("answer %d: handed to the agent, and learned %v in the kernel (%x)", i, got, msg)
			}
			continue
		}
		if want := reference(msg); !maps.Equal(got, want) {
			var m dns.Msg
			_ = m.Unpack(msg)
			t.Errorf("answer %d: the kernel learned %v, the reference %v:\n%v", i, got, want, &m)
		}
		if len(got) > 0 {
			learned++
		}
	}
	t.Logf("%d answers: %d handed to the agent, %d taught the kernel something", n, agent, learned)
	if agent > n/2 || learned < n/10 {
		t.Errorf("%d of %d answers went to the agent and %d taught something: the test decides too little", agent, n, learned)
	}
}
