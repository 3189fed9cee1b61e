package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/miekg/dns"

	"github.com/moatfw/moat/conformance/node"
)

// internetDNS is the stand-in Internet's authoritative server for the zone example. (UDP and TCP on
// node.InternetDNS:53), which logs every question it is asked. Every name under example. has the address
// 198.51.100.2 (A) and 2001:db8::2 (AAAA); other zones are NXDOMAIN.
type internetDNS struct {
	servers []*dns.Server
	mu      sync.Mutex
	asked   map[string]int // lower-case name -> questions
}

func serveInternetDNS(inet ns.NetNS) (*internetDNS, error) {
	d := &internetDNS{asked: map[string]int{}}
	handler := dns.HandlerFunc(d.answer)
	err := inet.Do(func(ns.NetNS) error {
		addr := netip.AddrPortFrom(node.InternetDNS, 53).String()
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			pc.Close()
			return err
		}
		d.servers = []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: ln, Handler: handler}}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, s := range d.servers {
		go func() { _ = s.ActivateAndServe() }()
	}
	return d, nil
}

func (d *internetDNS) answer(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	if len(q.Question) == 1 {
		name := strings.ToLower(q.Question[0].Name)
		d.mu.Lock()
		d.asked[name]++
		d.mu.Unlock()
		hdr := dns.RR_Header{Name: q.Question[0].Name, Class: dns.ClassINET, Ttl: 30}
		switch {
		case !strings.HasSuffix(name, ".example."):
			m.Rcode = dns.RcodeNameError
		case q.Question[0].Qtype == dns.TypeA:
			hdr.Rrtype = dns.TypeA
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: net.ParseIP("198.51.100.2")})
		case q.Question[0].Qtype == dns.TypeAAAA:
			hdr.Rrtype = dns.TypeAAAA
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: net.ParseIP("2001:db8::2")})
		}
	}
	_ = w.WriteMsg(m)
}

// questions is how often a name (any case) was asked.
func (d *internetDNS) questions(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.asked[strings.ToLower(dns.Fqdn(name))]
}

func (d *internetDNS) stop() {
	for _, s := range d.servers {
		_ = s.Shutdown()
	}
}

// resolveResult is what the agent's resolve prints.
type resolveResult struct {
	Rcode   string   `json:"rcode"`
	Answers []string `json:"answers"`
	Error   string   `json:"error"`
}

// resolveIn asks a pod's agent to resolve a name through the pod's resolver (the cluster DNS).
func resolveIn(p pod, name, qtype, proto string) resolveResult {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := suite.cluster.Kubectl(ctx, "-n", p.ns, "exec", p.name, "-c", "agent", "--", "/agent", "resolve",
		"--type", qtype, "--proto", proto, "--timeout", "3s", name)
	var r resolveResult
	line := strings.TrimSpace(string(out))
	if i := strings.LastIndex(line, "\n"); i >= 0 {
		line = line[i+1:]
	}
	if jerr := json.Unmarshal([]byte(line), &r); jerr != nil {
		r.Error = fmt.Sprintf("kubectl exec: %v: %s", err, out)
	}
	return r
}

// expectResolve checks (and records) what a pod's question gets: an rcode, or no answer (rcode "").
func expectResolve(t *testing.T, p pod, name, qtype, proto, want string, settle time.Duration) {
	t.Helper()
	start := time.Now()
	var r resolveResult
	eventually(settle, func() bool { r = resolveIn(p, name, qtype, proto); return r.Rcode == want })
	label := func(rcode string) string {
		if rcode == "" {
			return "no answer"
		}
		return rcode
	}
	what := fmt.Sprintf("%s resolves %s %s over %s", p, name, qtype, proto)
	if !record(t, what, label(want), label(r.Rcode), time.Since(start)) {
		t.Errorf("%s: %s, want %s (%+v)", what, label(r.Rcode), label(want), r)
		explain(t)
	}
}

// dnsDeny through the cluster's own DNS: a pod of a namespace whose policy denies a name gets NXDOMAIN for it, of
// any type and case, and the query never leaves the node (the Internet's server is never asked); over TCP the
// connection is reset. Names the policy does not deny resolve, and a namespace the policy does not select
// resolves the denied names (the control: the names are real and the resolvers answer them).
func TestDNSDeny(t *testing.T) {
	namespace(t, "names-denied", map[string]string{"moat.dev/zone": "names-denied"})
	namespace(t, "names-free", map[string]string{"moat.dev/zone": "names-free"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-dnsdeny}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: names-denied}}
  dnsDeny: ["**.denied.example", exact.example]`)
	denied := agent(t, "names-denied", "client")
	free := agent(t, "names-free", "client")
	run := fmt.Sprintf("r%d", time.Now().UnixNano()%1_000_000) // names never asked before: the logs start clean

	// the control first: without the rule the names resolve, and the question reaches the Internet
	expectResolve(t, free, "a."+run+".denied.example", "A", "udp", "NOERROR", 0)
	if n := suite.dns.questions("a." + run + ".denied.example"); n == 0 {
		t.Errorf("the control's question never reached the Internet's server")
	}
	// then the namespace under the rule (the policy may still be on its way: settle)
	expectResolve(t, denied, "b."+run+".denied.example", "A", "udp", "NXDOMAIN", 20*time.Second)
	expectResolve(t, denied, "C."+run+".Denied.Example", "AAAA", "udp", "NXDOMAIN", 0)
	expectResolve(t, denied, "d."+run+".denied.example", "HTTPS", "udp", "NXDOMAIN", 0)
	expectResolve(t, denied, "exact.example", "TXT", "udp", "NXDOMAIN", 0)
	expectResolve(t, denied, "e."+run+".denied.example", "A", "tcp", "", 0)
	for _, name := range []string{"b", "c", "d", "e"} {
		if n := suite.dns.questions(name + "." + run + ".denied.example"); n != 0 {
			t.Errorf("%s.%s.denied.example: a denied name reached the Internet's server %d times", name, run, n)
		}
	}
	// what the rule does not name resolves
	expectResolve(t, denied, run+".allowed.example", "A", "udp", "NOERROR", 0)
	expectResolve(t, denied, "sub."+run+".exact.example", "A", "tcp", "NOERROR", 0)
}
