package enforcer

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
)

// RunDNS reads the datapath's DNS events until ctx ends and keeps the recent ones for the API (moatctl dns). A
// full ring loses events in the kernel (counted); no reader slows the datapath.
func (e *Enforcer) RunDNS(ctx context.Context, store endpoint.Store) error {
	r, err := e.dp.NewDNSEventReader()
	if err != nil {
		return err
	}
	index := &pods{store: store}
	return readRing(ctx, r, "DNS events", func(ev bpf.DNSEvent) error {
		e.answers.publish(e.DescribeDNS(ev, index.lookup(int(ev.Ifindex))))
		return nil
	})
}

// DescribeDNS turns a datapath DNS event into what the API serves: namespace and pod by name, the type and rcode
// by name, the dnsDeny rule by its policy, the fqdn patterns by their slots.
func (e *Enforcer) DescribeDNS(ev bpf.DNSEvent, pod *endpoint.Record) agentapi.DNSAnswer {
	a := agentapi.DNSAnswer{Time: ev.Time.UTC(), Name: ev.Name, Type: typeName(ev.Type), Rcode: rcodeName(ev.Rcode),
		Answer: "resolver", Records: int(ev.AnswerCount), LatencyMicros: ev.Latency.Microseconds(),
		Resolver: ev.Resolver.String(), Proto: "udp", ToAgent: ev.Flags&bpf.DNSToAgent != 0,
		Truncated: ev.Flags&bpf.DNSTruncated != 0, Partial: ev.Flags&bpf.DNSPartial != 0}
	if ev.Flags&bpf.DNSOverTCP != 0 {
		a.Proto = "tcp"
	}
	switch {
	case ev.Flags&bpf.DNSSynthesized != 0:
		a.Answer = "moat"
	case ev.Flags&bpf.DNSAudited != 0:
		a.Answer = "audit"
	}
	for _, ad := range ev.Addresses {
		a.Addresses = append(a.Addresses, ad.Addr.String())
	}
	snap := e.published.Load()
	a.Namespace = snap.Namespace(ev.Identity)
	if k, ok := snap.Rules[ev.RuleID]; ok && ev.RuleID != 0 {
		a.Policy, a.Rule = k.Policy, k.Name()
	}
	for pattern, slot := range snap.FQDNSlots[ev.Identity] {
		if ev.Slots&(1<<slot) != 0 {
			a.FQDN = append(a.FQDN, pattern)
		}
	}
	slices.Sort(a.FQDN)
	if pod != nil {
		a.Pod = pod.Pod
		if a.Namespace == "" {
			a.Namespace = pod.Namespace
		}
	} else {
		a.Pod = ev.Pod.String()
	}
	return a
}

// DNS is the recent DNS answers that f selects, as Flows is of flows. A name filter that is no name or pattern
// is an error.
func (e *Enforcer) DNS(f agentapi.DNSFilter) (past []agentapi.DNSAnswer, next <-chan agentapi.DNSAnswer, stop func(), err error) {
	if f.Name != "" {
		if _, err := v1alpha1.ParseNamePattern(f.Name); err != nil {
			return nil, nil, nil, fmt.Errorf("name %q: %w", f.Name, err)
		}
	}
	if f.Rcode != "" {
		if _, ok := dns.StringToRcode[strings.ToUpper(f.Rcode)]; !ok {
			return nil, nil, nil, fmt.Errorf("rcode %q: want NOERROR, NXDOMAIN, SERVFAIL, REFUSED or another DNS rcode", f.Rcode)
		}
	}
	past, next, stop = e.answers.query(f, f.Since, f.Limit, f.Follow, func(a agentapi.DNSAnswer) time.Time { return a.Time })
	return past, next, stop, nil
}

// selectsDNS tells whether an answer is of f's namespace, pod, name (or pattern) and rcode (empty: any).
func selectsDNS(f agentapi.DNSFilter, a agentapi.DNSAnswer) bool {
	if (f.Namespace != "" && a.Namespace != f.Namespace) || (f.Pod != "" && a.Pod != f.Pod) ||
		(f.Rcode != "" && !strings.EqualFold(a.Rcode, f.Rcode)) {
		return false
	}
	if f.Name == "" {
		return true
	}
	p, err := v1alpha1.ParseNamePattern(f.Name)
	return err == nil && p.Matches(a.Name)
}

// typeName names a DNS type as DNS tools do (A, AAAA, HTTPS, TYPE4242).
func typeName(t uint16) string {
	if s, ok := dns.TypeToString[t]; ok {
		return s
	}
	return fmt.Sprintf("TYPE%d", t)
}

// rcodeName names a DNS rcode (NOERROR, NXDOMAIN, RCODE14).
func rcodeName(r uint8) string {
	if s, ok := dns.RcodeToString[int(r)]; ok {
		return s
	}
	return fmt.Sprintf("RCODE%d", r)
}
