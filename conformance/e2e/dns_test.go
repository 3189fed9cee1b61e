package e2e

import (
	"bytes"
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
	corev1 "k8s.io/api/core/v1"

	"github.com/moatfw/moat/conformance/node"
	"github.com/moatfw/moat/internal/agentapi"
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
	return agentResolve(p, "--type", qtype, "--proto", proto, "--timeout", "3s", name)
}

// agentResolve runs the agent's resolve in a pod with the arguments given.
func agentResolve(p pod, args ...string) resolveResult {
	var r resolveResult
	if err := runAgent(p, &r, append([]string{"resolve"}, args...)...); err != nil {
		r.Error = err.Error()
	}
	return r
}

// expectResolve checks (and records) what a pod's question gets: an rcode, or no answer (rcode "").
func expectResolve(t *testing.T, p pod, name, qtype, proto, want string, settle time.Duration) {
	t.Helper()
	start := time.Now()
	var r resolveResult
	eventually(settle, func() bool { r = resolveIn(p, name, qtype, proto); return r.Rcode == want })
	what := fmt.Sprintf("%s resolves %s %s over %s", p, name, qtype, proto)
	if !record(t, what, rcodeLabel(want), rcodeLabel(r.Rcode), time.Since(start)) {
		t.Errorf("%s: %s, want %s (%+v)", what, rcodeLabel(r.Rcode), rcodeLabel(want), r)
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

	// moatctl dns on the pod's node: Moat's NXDOMAIN with the rule that gave it, and the resolver's answer
	answers := dnsAnswers(t, denied, "--name", "*."+run+".denied.example")
	b := answers["b."+run+".denied.example"]
	got := fmt.Sprintf("%s %s %s %s", b.Rcode, b.Answer, b.Policy, b.Rule)
	if !record(t, "moatctl dns: b."+run+".denied.example", "NXDOMAIN moat e2e-dnsdeny dnsDeny[0]", got, 0) {
		t.Errorf("moatctl dns --name *.%s.denied.example: %+v", run, answers)
	}
	ok := answers[run+".allowed.example"]
	if ok.Name == "" {
		ok = dnsAnswers(t, denied, "--name", run+".allowed.example")[run+".allowed.example"]
	}
	got = fmt.Sprintf("%s %s %s", ok.Rcode, ok.Answer, strings.Join(ok.Addresses, ","))
	if !record(t, "moatctl dns: "+run+".allowed.example", "NOERROR resolver 198.51.100.2", got, 0) || ok.LatencyMicros <= 0 {
		t.Errorf("moatctl dns: %s.allowed.example: %+v", run, ok)
	}
}

// dnsAnswers is what moatctl dns says, on the node of p, of p's answers (filtered by args), by name: the last
// answer of each.
func dnsAnswers(t *testing.T, p pod, args ...string) map[string]agentapi.DNSAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := moatctlOn(ctx, p.node, append([]string{"dns", "-n", p.ns, "--pod", p.name, "-o", "json"}, args...)...)
	if err != nil {
		t.Fatalf("moatctl dns on %s: %v\n%s", p.node, err, out)
	}
	answers := map[string]agentapi.DNSAnswer{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var a agentapi.DNSAnswer
		if err := dec.Decode(&a); err != nil {
			t.Fatalf("moatctl dns on %s: %v\n%s", p.node, err, out)
		}
		answers[strings.ToLower(a.Name)] = a
	}
	return answers
}

// Egress by name through the cluster DNS: a namespace that denies the world but for `*.allowed.example` on TCP 80
// reaches that name's address only once a pod of it has resolved the name (the first connection right after the
// answer), reaches no address it never resolved, and cannot ask a resolver of its own choosing; another namespace
// that resolves the same name gets nothing from it (scoped to the namespace that asked).
func TestEgressByName(t *testing.T) {
	namespace(t, "byname", map[string]string{"moat.dev/zone": "byname", "moat.dev/egress": "Deny"})
	namespace(t, "byname-other", map[string]string{"moat.dev/zone": "byname-other", "moat.dev/egress": "Deny"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-byname}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: byname}}
  egress:
  - action: Allow
    to: [{fqdn: "*.allowed.example"}]
    ports: [{protocol: TCP, port: 80}]
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-byname-resolver}
spec:
  namespaceSelector: {matchExpressions: [{key: moat.dev/zone, operator: In, values: [byname, byname-other]}]}
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.1/32}]
    ports: [{protocol: UDP, port: 53}]`)
	p := agent(t, "byname", "client")
	other := agent(t, "byname-other", "client")
	const addr = "198.51.100.2:80" // every name under example. has it

	// not resolved yet: the world is denied (the policy may still be on its way: the verdict holds either way)
	expect(t, p, "tcp", addr, false, 0)
	// resolved: reached at once, the address learned before the pod read the answer
	expectResolve(t, p, "www.allowed.example", "A", "udp", "NOERROR", 20*time.Second)
	expect(t, p, "tcp", addr, true, 0)
	expect(t, p, "tcp", "198.51.100.2:443", false, 0) // the rule's port only
	expect(t, p, "tcp", "203.0.113.1:80", false, 0)   // never resolved
	// the other namespace resolves the same name, which none of its rules names: nothing learned for it
	expectResolve(t, other, "www.allowed.example", "A", "udp", "NOERROR", 0)
	expect(t, other, "tcp", addr, false, 0)
	// a resolver of the pod's own choosing is refused, though a rule allows UDP 53 to it: the namespace has fqdn
	// rules (the control: the other namespace, under the same rule, gets the echo server's reply, which is no DNS
	// message but shows the question got there and back)
	replied := func(r resolveResult) string {
		if r.Rcode == "" && strings.Contains(r.Error, "timeout") {
			return "no reply"
		}
		return "a reply"
	}
	r := resolveInNS(other, "198.51.100.1:53", "www.allowed.example")
	if !record(t, "byname-other/client asks 198.51.100.1:53", "a reply", replied(r), 0) {
		t.Errorf("the control got no reply from 198.51.100.1:53: %+v", r)
	}
	r = resolveInNS(p, "198.51.100.1:53", "www.allowed.example")
	if !record(t, "byname/client asks 198.51.100.1:53", "no reply", replied(r), 0) {
		t.Errorf("an untrusted resolver replied to a namespace with fqdn rules: %+v", r)
		explain(t)
	}
	// moatctl dns: the answer, its address, and the pattern it was learned for; the other namespace's learned nothing
	a := dnsAnswers(t, p, "--name", "www.allowed.example")["www.allowed.example"]
	got := fmt.Sprintf("%s %s learned for %s", a.Rcode, strings.Join(a.Addresses, ","), strings.Join(a.FQDN, ","))
	if !record(t, "moatctl dns: byname/client www.allowed.example", "NOERROR 198.51.100.2 learned for *.allowed.example", got, 0) {
		t.Errorf("moatctl dns: %+v", a)
	}
	a = dnsAnswers(t, other, "--name", "www.allowed.example")["www.allowed.example"]
	got = fmt.Sprintf("%s %s learned for %s", a.Rcode, strings.Join(a.Addresses, ","), strings.Join(a.FQDN, ","))
	if !record(t, "moatctl dns: byname-other/client www.allowed.example", "NOERROR 198.51.100.2 learned for ", got, 0) {
		t.Errorf("moatctl dns: %+v", a)
	}
}

// Egress by name while the enforcer restarts: a pod resolves a new name of its fqdn rule and connects to its
// address five times a second, each connection given 900 ms (a SYN that is not let through the first time fails
// it); the Moat pod of its node is deleted in the middle and the DaemonSet starts another. Every round reaches its
// address, before, during and after: the kernel learns and decides without the enforcer, and the new enforcer
// takes over the learned addresses and the programs without a gap.
func TestEgressByNameAcrossAnEnforcerRestart(t *testing.T) {
	namespace(t, "byname-restart", map[string]string{"moat.dev/zone": "byname-restart", "moat.dev/egress": "Deny"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-byname-restart}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: byname-restart}}
  egress:
  - action: Allow
    to: [{fqdn: "**.allowed.example"}]
    ports: [{protocol: TCP, port: 80}]`)
	run := fmt.Sprintf("r%d", time.Now().UnixNano()%1_000_000)
	p := agent(t, "byname-restart", "loop", func(p *corev1.Pod) {
		p.Spec.Containers[0].Command = []string{"/agent", "lookup"}
		p.Spec.Containers[0].Args = []string{"--every", "200ms", "--unique", run + ".allowed.example"}
	})
	ctx := context.Background()
	rounds := func() []lookupRound {
		out, err := suite.cluster.Kubectl(ctx, "-n", p.ns, "logs", p.name)
		if err != nil {
			t.Fatalf("the loop's log: %v\n%s", err, out)
		}
		var rs []lookupRound
		dec := json.NewDecoder(bytes.NewReader(out))
		for dec.More() {
			var r lookupRound
			if dec.Decode(&r) != nil {
				break
			}
			rs = append(rs, r)
		}
		return rs
	}
	// the policy may still be on its way when the loop starts: it counts from the first round that reached
	first := 0
	if !eventually(60*time.Second, func() bool {
		for _, r := range rounds() {
			if r.Reached {
				first = r.Round
				return true
			}
		}
		return false
	}) {
		t.Fatalf("the loop never reached its address: %+v", rounds())
	}
	eventually(30*time.Second, func() bool { return len(rounds()) >= first+10 })

	old, err := moatPodOn(ctx, p.node)
	if err != nil {
		t.Fatal(err)
	}
	before := len(rounds())
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "delete", "pod", old, "--wait=true", "--timeout=120s"); err != nil {
		t.Fatalf("delete %s: %v\n%s", old, err, out)
	}
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "180s"); err != nil {
		t.Fatalf("the DaemonSet did not come back on %s: %v\n%s", p.node, err, out)
	}
	during := len(rounds())
	eventually(60*time.Second, func() bool { return len(rounds()) >= during+20 })

	all := rounds()
	var failed []lookupRound
	for _, r := range all {
		if r.Round >= first && !r.Reached {
			failed = append(failed, r)
		}
	}
	got := fmt.Sprintf("%d not reached", len(failed))
	what := fmt.Sprintf("%s: %d rounds (%d before the restart, %d while %s went and came back, %d after)", p,
		len(all)-first+1, before-first+1, during-before, old, len(all)-during)
	if !record(t, what, "0 not reached", got, 0) {
		t.Errorf("rounds that did not reach their address: %+v", failed)
		explain(t)
	}
}

// lookupRound is one line of the agent's lookup.
type lookupRound struct {
	Round   int    `json:"round"`
	Name    string `json:"name"`
	Rcode   string `json:"rcode"`
	Addr    string `json:"addr"`
	Reached bool   `json:"reached"`
	Error   string `json:"error"`
}

// rcodeLabel is an rcode as the table shows it.
func rcodeLabel(rcode string) string {
	if rcode == "" {
		return "no answer"
	}
	return rcode
}

// resolveInNS asks a given resolver from a pod.
func resolveInNS(p pod, server, name string) resolveResult {
	return agentResolve(p, "--server", server, "--timeout", "2s", name)
}
