package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/conformance/node"
	"github.com/moatfw/moat/internal/agentapi"
)

// A pod deleted on node B and its addresses (both families) handed to a pod of another namespace on B: node A,
// where the addresses are remote and known only from the API server, never decides the new pod by the old pod's
// namespace. A's namespace allows the old namespace and denies the new one, both ways; the new pod is created as
// soon as B's IPAM has released the addresses (the old pod may still be terminating in the API), and dials A's
// server from inside its network namespace from the moment Moat's plugin has recorded it, before the pod runs,
// while a pod on A dials the addresses without a pause from before the old pod goes: neither may ever reach the
// new pod's side. Once it runs, both nodes decide it by its own namespace.
func TestAddressReuseAcrossNodes(t *testing.T) {
	a, b := suite.nodes[0], suite.nodes[1]
	for _, zone := range []string{"e2e-xr-a", "e2e-xr-old", "e2e-xr-new"} {
		namespace(t, zone, map[string]string{"moat.dev/zone": zone})
	}
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-xr-a}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-xr-a}}
  priority: 100
  ingress:
  - action: Allow
    from: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-xr-old}}}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-xr-new}}}]
  egress:
  - action: Allow
    to: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-xr-old}}}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    to: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-xr-new}}}]
`)
	server := agent(t, "e2e-xr-a", "server", onNode(a))
	client := agent(t, "e2e-xr-a", "client", onNode(a))
	peer := agent(t, "e2e-xr-a", "peer", onNode(b)) // the same namespace on B, where the new pod is local
	old := agent(t, "e2e-xr-old", "old", onNode(b))
	if server.node == old.node {
		t.Fatalf("%s and %s run on the same node %s", server, old, server.node)
	}
	if !old.v6.IsValid() || !server.v6.IsValid() || !client.v6.IsValid() || !peer.v6.IsValid() {
		t.Fatalf("the pods have no IPv6 address: old %s, server %s, client %s, peer %s", old.v6, server.v6, client.v6, peer.v6)
	}
	families := []bool{false, true}
	// the old namespace is let through both ways, on both nodes
	for _, v6 := range families {
		settle := applied
		if v6 {
			settle = 0
		}
		expect(t, old, "tcp", at8080(server, v6), true, settle)
		expect(t, client, "tcp", at8080(old, v6), true, settle)
		expect(t, old, "tcp", at8080(peer, v6), true, settle)
	}

	// A's client dials the old pod's addresses from before it goes until the new pod has settled
	fromA := startDialing(podNetns(t, client), at8080(old, false), at8080(old, true))
	defer fromA.finish()
	ctx := context.Background()
	if err := suite.client.CoreV1().Pods(old.ns).Delete(ctx, old.name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete %s: %v", old, err)
	}
	// host-local hands out the address after the last one it reserved in each range: point each just before the
	// freed one, as a busy node's pool would come round to it
	leases := b.IPAMDir()
	for i, addr := range []netip.Addr{old.v4, old.v6} {
		if !eventually(60*time.Second, func() bool {
			_, err := os.Stat(filepath.Join(leases, addr.String()))
			return os.IsNotExist(err)
		}) {
			t.Fatalf("the address %s was never released (CNI DEL)", addr)
		}
		if err := os.WriteFile(filepath.Join(leases, fmt.Sprintf("last_reserved_ip.%d", i)), []byte(addr.Prev().String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// the new pod's first packets: from the moment the plugin has recorded its network namespace
	fromNew := startDialingWhen(func() (ns.NetNS, bool) { return findNetns(b, "e2e-xr-new", "new") }, true,
		at8080(server, false), at8080(server, true))
	defer fromNew.finish()
	created := time.Now()
	fresh := agent(t, "e2e-xr-new", "new", onNode(b))
	running := time.Since(created)
	reused := fmt.Sprintf("%s %s", fresh.v4, fresh.v6)
	if !record(t, "the freed addresses go to a pod of another namespace on "+b.Name, fmt.Sprintf("%s %s", old.v4, old.v6), reused, 0) {
		t.Fatalf("the new pod got %s, not the freed %s %s", reused, old.v4, old.v6)
	}
	// settled: A decides the new pod by its namespace both ways, and so does B, where it is local
	for _, v6 := range families {
		expect(t, fresh, "tcp", at8080(server, v6), false, 0)
		expect(t, client, "tcp", at8080(fresh, v6), false, 0)
		expect(t, fresh, "tcp", at8080(peer, v6), false, 0)
		world := netip.MustParseAddr("203.0.113.1")
		if v6 {
			world = netip.MustParseAddr("2001:db8::1")
		}
		expect(t, fresh, "tcp", netip.AddrPortFrom(world, 80).String(), true, 0) // the new pod's network works
	}
	fromNew.finish()
	fromA.finish()
	// from the moment the new pod is there, anything but a timeout got through A
	there := fromNew.started()
	if there.IsZero() {
		t.Fatalf("the new pod's network namespace was never found in %s's endpoint records", b.Name)
	}
	t.Logf("the new pod: recorded (dialing A) %s after its creation, running after %s; its tries: %v; A's tries at its addresses from then: %v (in all: %v)",
		there.Sub(created).Round(time.Millisecond), running.Round(time.Millisecond), fromNew.outcomes(there),
		fromA.outcomes(there), fromA.outcomes(time.Time{}))
	if got := fromNew.through(there); !record(t, "new pod -> A's server from its first packet: tries that got through", "0 of N", got, 0) {
		t.Errorf("the new pod's connections to A's server got through A from the reused addresses: %s (%v)", got, fromNew.outcomes(there))
		explain(t)
	}
	if got := fromA.through(there); !record(t, "A's client -> the reused addresses once the new pod is there: tries that got through", "0 of N", got, 0) {
		t.Errorf("A's client got through to the new pod: %s (%v)", got, fromA.outcomes(there))
		explain(t)
	}
	// every denial A made of the reused addresses named the new namespace or an unknown pod, never the old one
	for _, v6 := range families {
		src, dst := addrOf(fresh, v6), addrOf(server, v6)
		got := deniedAt(src, dst)
		if !record(t, fmt.Sprintf("where %s -> %s is denied", src, dst), a.Name+" ingress e2e-xr-a remote e2e-xr-new", got, 0) {
			t.Errorf("the denial of new -> server: %s", got)
		}
		src, dst = addrOf(client, v6), addrOf(fresh, v6)
		got = deniedAt(src, dst)
		if !record(t, fmt.Sprintf("where %s -> %s is denied", src, dst), a.Name+" egress e2e-xr-a remote e2e-xr-new", got, 0) {
			t.Errorf("the denial of client -> new: %s", got)
		}
		remotes := remotesOn(t, a, addrOf(fresh, v6))
		t.Logf("%s: the denials of %s's flows named %v", a.Name, addrOf(fresh, v6), remotes)
		took := "never"
		if slices.Contains(remotes, "e2e-xr-old") {
			took = "the old namespace"
		}
		if !record(t, fmt.Sprintf("%s took %s for the old pod's namespace", a.Name, addrOf(fresh, v6)), "never", took, 0) {
			t.Errorf("%s denied flows of %s naming the old namespace: %v", a.Name, addrOf(fresh, v6), remotes)
		}
	}
}

func at8080(p pod, v6 bool) string { return netip.AddrPortFrom(addrOf(p, v6), 8080).String() }

// findNetns is a pod's network namespace on a node, once Moat's plugin has recorded it.
func findNetns(n *node.Node, namespace, name string) (ns.NetNS, bool) {
	files, _ := filepath.Glob(n.HostPath("/run/moat/endpoints") + "/*/*.json")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var rec struct {
			Namespace string `json:"namespace"`
			Pod       string `json:"pod"`
			Netns     string `json:"netns"`
		}
		if json.Unmarshal(data, &rec) == nil && rec.Namespace == namespace && rec.Pod == name {
			netns, err := ns.GetNS(n.HostPath(rec.Netns))
			return netns, err == nil
		}
	}
	return nil, false
}

// dialing exchanges a line with each target in turn, over a new TCP connection each time, from inside a network
// namespace, until finish, and keeps each try's outcome. A connection Moat denies times out (the datapath drops
// it without an answer); any other outcome (an echo, a refusal, an unreachable) means the packet got past the
// enforcers to a host that answered.
type dialing struct {
	stop, done chan struct{}
	once       sync.Once
	mu         sync.Mutex
	tries      []dialTry
}

type dialTry struct {
	at      time.Time
	outcome string // "answer <server's name>", "timeout", "refused", "reset", "unreachable", "failed: ..."
}

func startDialing(netns ns.NetNS, targets ...string) *dialing {
	return startDialingWhen(func() (ns.NetNS, bool) { return netns, true }, false, targets...)
}

// startDialingWhen polls for the network namespace (every 10 ms) and dials from it once it is there; with owned,
// it closes the namespace when it stops.
func startDialingWhen(find func() (ns.NetNS, bool), owned bool, targets ...string) *dialing {
	d := &dialing{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(d.done)
		var netns ns.NetNS
		for {
			var ok bool
			if netns, ok = find(); ok {
				if owned {
					defer netns.Close()
				}
				break
			}
			select {
			case <-d.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		for i := 0; ; i++ {
			select {
			case <-d.stop:
				return
			default:
			}
			at := time.Now()
			outcome := exchangeFrom(netns, targets[i%len(targets)])
			d.mu.Lock()
			d.tries = append(d.tries, dialTry{at: at, outcome: outcome})
			d.mu.Unlock()
			if outcome != "timeout" {
				time.Sleep(20 * time.Millisecond) // an answer comes at once: do not flood the peer
			}
		}
	}()
	return d
}

// finish stops the dialing (again: a no-op) and waits for it.
func (d *dialing) finish() {
	d.once.Do(func() { close(d.stop) })
	<-d.done
}

// started is when the first try was made (zero: none was).
func (d *dialing) started() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.tries) == 0 {
		return time.Time{}
	}
	return d.tries[0].at
}

// through is "K of N": of the N tries made from since on, the K that got any answer, or "no tries".
func (d *dialing) through(since time.Time) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, k := 0, 0
	for _, tr := range d.tries {
		if tr.at.Before(since) {
			continue
		}
		n++
		if tr.outcome != "timeout" {
			k++
		}
	}
	if n == 0 {
		return "no tries"
	}
	return fmt.Sprintf("%d of N", k)
}

// outcomes counts the tries by outcome, from since on.
func (d *dialing) outcomes(since time.Time) map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for _, tr := range d.tries {
		if !tr.at.Before(since) {
			out[tr.outcome]++
		}
	}
	return out
}

// exchangeFrom sends a line to target from inside netns and says what came of it: "answer <the server's name>",
// or the failure's kind.
func exchangeFrom(netns ns.NetNS, target string) string {
	var server string
	err := netns.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", target, 200*time.Millisecond)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := fmt.Fprintf(c, "dial %s\n", target); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if f := strings.Fields(line); len(f) > 0 {
			server = f[0]
		}
		return nil
	})
	var ne net.Error
	switch {
	case err == nil:
		return "answer " + server
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF):
		return "reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return "failed: " + err.Error()
}

// remotesOn is what a node's enforcer took addr for in the denied flows to or from it that it still holds: each
// flow's remote, or its reason where that is unknown-pod.
func remotesOn(t *testing.T, n *node.Node, addr netip.Addr) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "exec", moatPod(t, n), "-c", "enforcer", "--",
		"moatctl", "flows", "--verdict", "denied", "-o", "json")
	if err != nil {
		t.Fatalf("%s: moatctl flows: %v: %s", n.Name, err, out)
	}
	var remotes []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var f agentapi.Flow
		if err := dec.Decode(&f); err != nil {
			t.Fatalf("%s: moatctl flows: %v", n.Name, err)
		}
		if f.Src != addr.String() && f.Dst != addr.String() {
			continue
		}
		r := f.Remote
		if f.Reason == "unknown-pod" {
			r = f.Reason
		}
		if !slices.Contains(remotes, r) {
			remotes = append(remotes, r)
		}
	}
	return remotes
}
