package bpf_test

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"github.com/moatfw/moat/bpf"
)

// fuzzNames are the patterns FuzzDNSQuery's namespace may not resolve, as (base, form).
var fuzzNames = map[string]bpf.DNSForm{"evil.example": bpf.DNSExact, "ads.example": bpf.DNSOne, "tracker.example": bpf.DNSAny}

// referenceDenied says, as a resolver would read the message (miekg/dns), whether it is a standard query and
// whether a name it asks is one of fuzzNames.
func referenceDenied(payload []byte) (query, denied bool, first string) {
	var m dns.Msg
	if err := m.Unpack(payload); err != nil || m.Response || m.Opcode != dns.OpcodeQuery {
		return false, false, ""
	}
	for i, q := range m.Question {
		labels := dns.SplitDomainName(strings.ToLower(q.Name))
		if i == 0 {
			first = q.Name
		}
		for base, form := range fuzzNames {
			b := strings.Split(base, ".")
			n, d := len(labels), len(b)
			if n < d || strings.Join(labels[n-d:], ".") != base {
				continue
			}
			if form == bpf.DNSExact && n == d || form == bpf.DNSOne && n == d+1 || form == bpf.DNSAny && n > d {
				denied = true
			}
		}
	}
	return true, denied, first
}

// FuzzDNSQuery sends the input as a pod's DNS query (the first byte picks IPv4 or IPv6) from a namespace with
// names it may not resolve, and holds the datapath to what a resolver would read (miekg/dns): a query that asks
// a denied name never passes; an answered query asked a denied name, and its answer is an NXDOMAIN for it. One
// datapath serves every input of a process.
func FuzzDNSQuery(f *testing.F) {
	for _, name := range []string{"evil.example.", "EVIL.example.", "x.ads.example.", "ads.example.", "a.b.tracker.example.",
		"good.example.", "evil.example.com."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		b, _ := m.Pack()
		f.Add(append([]byte{0}, b...))
		f.Add(append([]byte{1}, b...))
		m.SetEdns0(1232, false)
		b, _ = m.Pack()
		f.Add(append([]byte{0}, b...))
	}
	f.Add([]byte{0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1})
	h := newHarness(f, bpf.Options{})
	if err := h.dp.SetDNSSet(podID, 3); err != nil {
		f.Fatal(err)
	}
	for base, form := range fuzzNames {
		if err := h.dp.PutDNSName(3, base, deny(form, 70)); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 1 || len(data) > 1400 {
			return
		}
		src := podV4
		if data[0]&1 == 1 {
			src = podV6
		}
		payload := data[1:]
		in := rawQuery(src, payload)
		out := make([]byte, len(in)+256)
		ret, err := h.dp.FromPod.Run(&ebpf.RunOptions{Data: in, DataOut: out, Context: skbContext(h.ifindex)})
		if err != nil {
			t.Fatal(err)
		}
		out = out[:len(in)]
		query, denied, first := referenceDenied(payload)
		switch ret {
		case retNext:
			if query && denied {
				t.Fatalf("a query for a denied name passed: %q (%x)", first, payload)
			}
		case retRedirect:
			if !query {
				return // a message a resolver would not take: answering it harms no one
			}
			if !denied {
				t.Fatalf("answered NXDOMAIN for a name that is not denied: %q (%x)", first, payload)
			}
			_, l4, _, _ := udpOffsets(out)
			var a dns.Msg
			if err := a.Unpack(out[l4+8:]); err != nil || !a.Response || a.Rcode != dns.RcodeNameError || len(a.Answer) != 0 {
				t.Fatalf("the answer to %q is not an empty NXDOMAIN (%v): %v", first, err, &a)
			}
		case retDrop:
		default:
			t.Fatalf("verdict %d for %x", ret, payload)
		}
	})
}
