package enforcer

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

const dnsConfigYAML = `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec:
  defaultEgress: Deny
  defaultIngress: Deny
  dns: {trustedResolvers: [198.51.100.1], answerEventsPerSecond: 1000}
---
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {moat.dev/zone: web}}
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: web-names}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: web}}
  dnsDeny: [evil.example]
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.1/32}]
    ports: [{protocol: UDP, port: 53}]
  - action: Allow
    to: [{fqdn: api.example.com}]
    ports: [{protocol: TCP, port: 443}]
`

// A pod's DNS answers through the enforcer, on a real veth with a real resolver: moatctl's API lists each one
// with the pod, name, type, rcode, who answered (the resolver, or Moat for a dnsDeny name and its rule), the
// addresses and the fqdn patterns learned, and filters by namespace, pod, name pattern and rcode (refusing a
// filter that is no name or rcode); the metrics count the same answers per namespace.
func TestDNSAnswersOfARealPod(t *testing.T) {
	root, dp, e := newTestEnforcer(t)
	dir := t.TempDir()
	write(t, dir, "names.yaml", dnsConfigYAML)
	s, err := (&Folder{Dir: dir, Log: e.log}).Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if _, err := e.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}

	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	testutil.ServeDNS(t, pl.Host, "198.51.100.1:53", namesHandler(map[string]string{"api.example.com.": "203.0.113.1", "evil.example.": "203.0.113.66"}))
	rec := &endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "web", Pod: "client",
		HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}}
	if err := pl.Host.Do(func(ns.NetNS) error { return guard(dp, rec, e.Identities()["web"], root) }); err != nil {
		t.Fatal(err)
	}
	store := endpoint.Store{Dir: t.TempDir()}
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = e.RunDNS(ctx, store) }()
	defer func() { cancel(); <-done }() // before the datapath closes (t.Cleanup)
	socket := filepath.Join(t.TempDir(), "enforcer.sock")
	ln, err := agentapi.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = (&Server{E: e, Store: store}).Serve(ctx, ln) }()
	c := agentapi.NewClient(socket)

	for _, q := range []struct {
		name  string
		rcode int
	}{{"api.example.com.", dns.RcodeSuccess}, {"evil.example.", dns.RcodeNameError}, {"missing.example.", dns.RcodeNameError}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, dns.TypeA)
		a, err := testutil.ExchangeDNS(pl.Pod, "udp", "198.51.100.1:53", m)
		if err != nil || a.Rcode != q.rcode {
			t.Fatalf("%s from the pod: %v, %v; want %s", q.name, a, err, dns.RcodeToString[q.rcode])
		}
	}

	list := func(f agentapi.DNSFilter) (out []agentapi.DNSAnswer, err error) {
		err = c.DNS(ctx, f, func(a agentapi.DNSAnswer) error {
			out = append(out, a)
			return nil
		})
		return out, err
	}
	var all []agentapi.DNSAnswer
	for deadline := time.Now().Add(10 * time.Second); len(all) < 3 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if all, err = list(agentapi.DNSFilter{Namespace: "web"}); err != nil {
			t.Fatal(err)
		}
	}
	if len(all) != 3 {
		t.Fatalf("the answers of web: %+v, want 3", all)
	}
	api, evil, missing := all[0], all[1], all[2]
	if api.Name != "api.example.com" || api.Pod != "client" || api.Type != "A" || api.Rcode != "NOERROR" || api.Answer != "resolver" ||
		strings.Join(api.Addresses, ",") != "203.0.113.1" || strings.Join(api.FQDN, ",") != "api.example.com" ||
		api.Resolver != "198.51.100.1" || api.LatencyMicros <= 0 || api.Proto != "udp" {
		t.Errorf("api.example.com's answer: %+v", api)
	}
	if evil.Name != "evil.example" || evil.Rcode != "NXDOMAIN" || evil.Answer != "moat" || evil.Policy != "web-names" ||
		evil.Rule != "dnsDeny[0]" || len(evil.Addresses) != 0 {
		t.Errorf("evil.example's answer: %+v", evil)
	}
	if missing.Name != "missing.example" || missing.Rcode != "NXDOMAIN" || missing.Answer != "resolver" || len(missing.FQDN) != 0 {
		t.Errorf("missing.example's answer: %+v", missing)
	}
	for _, f := range []struct {
		filter agentapi.DNSFilter
		want   []string
	}{
		{agentapi.DNSFilter{Rcode: "nxdomain"}, []string{"evil.example", "missing.example"}},
		{agentapi.DNSFilter{Name: "*.example"}, []string{"evil.example", "missing.example"}},
		{agentapi.DNSFilter{Name: "API.example.com"}, []string{"api.example.com"}},
		{agentapi.DNSFilter{Pod: "client", Limit: 1}, []string{"missing.example"}},
		{agentapi.DNSFilter{Namespace: "other"}, nil},
	} {
		got, err := list(f.filter)
		var names []string
		for _, a := range got {
			names = append(names, a.Name)
		}
		if err != nil || strings.Join(names, " ") != strings.Join(f.want, " ") {
			t.Errorf("answers for %+v: %v (%v), want %v", f.filter, names, err, f.want)
		}
	}
	for _, bad := range []agentapi.DNSFilter{{Name: "*"}, {Name: "a..b"}, {Rcode: "BOGUS"}} {
		if _, err := list(bad); err == nil {
			t.Errorf("the filter %+v was taken", bad)
		}
	}

	value := gather(t, reg)
	for _, m := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"moat_dns_queries_total", map[string]string{"namespace": "web"}, 2}, // the denied name's never left
		{"moat_dns_answers_total", map[string]string{"namespace": "web", "type": "A", "rcode": "NOERROR"}, 1},
		{"moat_dns_answers_total", map[string]string{"namespace": "web", "type": "A", "rcode": "NXDOMAIN"}, 1},
		{"moat_dns_nxdomain_synthesized_total", map[string]string{"namespace": "web", "type": "A"}, 1},
		{"moat_dns_latency_seconds", map[string]string{"namespace": "web"}, 2},
		{"moat_fqdn_learned_addresses", map[string]string{"namespace": "web"}, 1},
		{"moat_dns_datapath_total", map[string]string{"counter": "events_lost"}, 0},
	} {
		if got, ok := value(m.name, m.labels); !ok || got != m.want {
			t.Errorf("%s%v = %v (%t), want %v", m.name, m.labels, got, ok, m.want)
		}
	}
}

// namesHandler answers A queries from names (name -> address); NXDOMAIN for other names.
func namesHandler(names map[string]string) dns.Handler {
	return dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(q)
		if a, ok := names[strings.ToLower(q.Question[0].Name)]; ok {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA,
				Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(a)})
		} else {
			m.SetRcode(q, dns.RcodeNameError)
		}
		_ = w.WriteMsg(m)
	})
}
