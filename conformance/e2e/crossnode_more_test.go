package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// A pod of node B created while node A's enforcer is down (the DaemonSet's pod gone from A; A's datapath stays
// pinned and enforcing what it last had): A does not know the pod's namespace, so it decides its address as a pod
// of unknown namespace, which a namespace that denies every other namespace denies, even the one it allows
// (fails closed, docs/policy.md). Once A's enforcer is back it learns the pod from the API server: the allowed
// namespace is allowed, the other still denied, now by its own name.
func TestPodCreatedWhileAnEnforcerIsDown(t *testing.T) {
	a, b := suite.nodes[0], suite.nodes[1]
	for _, zone := range []string{"e2e-dn-db", "e2e-dn-app", "e2e-dn-bad"} {
		namespace(t, zone, map[string]string{"moat.dev/zone": zone})
	}
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-dn-db-ingress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-dn-db}}
  priority: 100
  ingress:
  - action: Allow
    from: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-dn-app}}}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    from: [{namespaceSelector: {}}]
`)
	db := agent(t, "e2e-dn-db", "db", onNode(a))
	dbAt := netip.AddrPortFrom(db.v4, 8080).String()
	// before: a pod of B known on A, as usual
	early := agent(t, "e2e-dn-app", "early", onNode(b))
	expect(t, early, "tcp", dbAt, true, applied)

	// A's enforcer goes: the DaemonSet no longer selects A (its pod there is deleted, nothing else changes)
	ctx := context.Background()
	restore := func() {
		if out, err := suite.cluster.Kubectl(ctx, "label", "node", a.Name, "kubernetes.io/os=linux", "--overwrite"); err != nil {
			t.Errorf("label %s again: %v\n%s", a.Name, err, out)
		}
	}
	if out, err := suite.cluster.Kubectl(ctx, "label", "node", a.Name, "kubernetes.io/os-"); err != nil {
		t.Fatalf("unlabel %s: %v\n%s", a.Name, err, out)
	}
	t.Cleanup(func() {
		restore()
		if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "120s"); err != nil {
			t.Errorf("the DaemonSet did not come back on %s: %v\n%s", a.Name, err, out)
		}
	})
	// the DaemonSet's controller deletes it, and its enforcer has 30 s to stop: minutes on a loaded machine. A
	// kubelet that registers again (a slow first registration retried) puts its default labels back, so the label
	// is taken away again whenever it is seen; how often is logged.
	relabelled := 0
	if !eventually(4*time.Minute, func() bool {
		out, err := suite.cluster.Kubectl(ctx, "get", "node", a.Name, "-o", `jsonpath={.metadata.labels.kubernetes\.io/os}`)
		if err == nil && strings.TrimSpace(string(out)) != "" {
			relabelled++
			t.Logf("%s is labelled kubernetes.io/os=%s again (%d): unlabelling it", a.Name, out, relabelled)
			if out, err := suite.cluster.Kubectl(ctx, "label", "node", a.Name, "kubernetes.io/os-"); err != nil {
				t.Logf("unlabel %s: %v\n%s", a.Name, err, out)
			}
		}
		_, err = moatPodOn(ctx, a.Name)
		return err != nil
	}) {
		labels, _ := suite.cluster.Kubectl(ctx, "get", "node", a.Name, "--show-labels")
		events, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "events", "--sort-by", ".lastTimestamp")
		ds, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "daemonset", "moat", "-o", "wide")
		pods, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} deleted={.metadata.deletionTimestamp}{"\n"}{end}`)
		dumpMoat(ctx)
		t.Fatalf("the Moat pod of %s was never deleted (relabelled %d times)\n%s\n%s\n%s\n%s", a.Name, relabelled, labels, ds, pods, events)
	}

	// meanwhile, two pods on B: one of the namespace db allows, one of another
	app := agent(t, "e2e-dn-app", "app", onNode(b))
	bad := agent(t, "e2e-dn-bad", "bad", onNode(b))
	expect(t, bad, "tcp", dbAt, false, 0)
	expect(t, app, "tcp", dbAt, false, 0)  // not known on A: an unknown pod, which db's Deny of every namespace takes
	expect(t, early, "tcp", dbAt, true, 0) // known before: A still enforces what it had

	// A's enforcer comes back and learns both from the API server
	restore()
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "120s"); err != nil {
		t.Fatalf("the DaemonSet did not come back on %s: %v\n%s", a.Name, err, out)
	}
	if !eventually(90*time.Second, func() bool {
		_, err := moatPodOn(ctx, a.Name)
		return err == nil
	}) {
		t.Fatalf("no Moat pod on %s again", a.Name)
	}
	expect(t, app, "tcp", dbAt, true, applied)
	expect(t, bad, "tcp", dbAt, false, 0)
	got := deniedAt(bad.v4, db.v4)
	if !record(t, fmt.Sprintf("where %s -> %s is denied, A's enforcer back", bad.v4, db.v4), a.Name+" ingress e2e-dn-db-ingress remote e2e-dn-bad", got, 0) {
		t.Errorf("the denial of bad -> db: %s", got)
	}
}

// Ingress from the Internet through a NodePort of node A to a pod on node B (docs/policy.md, "Ingress and address
// translation"): with externalTrafficPolicy Local, node A has no endpoint and answers nothing, while B's NodePort
// keeps the client's address, so the pod's ingress rules by CIDR decide; with Cluster, kube-proxy on the node the
// client reached masquerades the connection, the pod sees a node's address, and rules by world CIDR cannot apply
// (the pod's namespace allows nodes, as every namespace does unless a rule names them).
func TestNodePortAcrossNodes(t *testing.T) {
	a, b := suite.nodes[0], suite.nodes[1]
	namespace(t, "e2e-np", map[string]string{"moat.dev/zone": "e2e-np"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-np-ingress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-np}}
  priority: 100
  ingress:
  - action: Allow
    from: [{cidr: 198.51.100.0/24}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    from: [{cidr: 203.0.113.0/24}]
`)
	web := agent(t, "e2e-np", "web", onNode(b))
	ctx := context.Background()
	nodePort(t, "e2e-np", "local", "web", corev1.ServiceExternalTrafficPolicyLocal, 30181)
	nodePort(t, "e2e-np", "cluster", "web", corev1.ServiceExternalTrafficPolicyCluster, 30182)
	allowed, denied := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1")
	at := func(n netip.Addr, port int) string { return netip.AddrPortFrom(n, uint16(port)).String() }
	aIP, bIP := netip.MustParseAddr(a.IP.String()), netip.MustParseAddr(b.IP.String())

	// Local, through B (the pod's node): the client's own address, decided by the CIDR rules
	fromInternet(t, allowed, at(bIP, 30181), true, applied)
	fromInternet(t, denied, at(bIP, 30181), false, 0)
	// Local, through A: no endpoint there, so kube-proxy drops it, whoever the client
	fromInternet(t, allowed, at(aIP, 30181), false, 0)
	// Cluster, through A: masqueraded to A's address on its way to B; the world CIDR rules do not see the client
	fromInternet(t, allowed, at(aIP, 30182), true, applied)
	fromInternet(t, denied, at(aIP, 30182), true, 0)

	// what the pod saw: the Internet client through B's Local port, node A's address through A's Cluster port
	out, _ := suite.cluster.Kubectl(ctx, "-n", "e2e-np", "logs", "web")
	log := string(out)
	saw := func(addr netip.Addr) string {
		return map[bool]string{true: "yes", false: "no"}[strings.Contains(log, addr.String())]
	}
	if !record(t, web.String()+" sees the client "+allowed.String()+" (Local, through B)", "yes", saw(allowed), 0) {
		t.Errorf("the pod's log does not name the client %s:\n%s", allowed, log)
	}
	if !record(t, web.String()+" sees node A "+aIP.String()+" (Cluster, through A)", "yes", saw(aIP), 0) {
		t.Errorf("the pod's log does not name node A %s:\n%s", aIP, log)
	}
}
