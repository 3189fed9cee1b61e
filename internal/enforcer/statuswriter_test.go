package enforcer

import (
	"context"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// Two nodes' enforcers against one API server: the one holding the status Lease writes the policies' status,
// the other none; when the writer stops, the other takes the Lease and writes what changed since.
func TestOneEnforcerWritesPolicyStatus(t *testing.T) {
	cluster := kubetest.Start(t)
	dyn, client := clients(t, cluster.Config)
	installCRDs(t, cluster)
	ctx := context.Background()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "moat-system"}},
		metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	type node struct {
		name string
		logs *test.Hook
		stop func()
	}
	start := func(name string) *node {
		_, _, e := newTestEnforcer(t)
		log, hook := test.NewNullLogger()
		k := &Kubernetes{Config: cluster.Config, NodeName: name, LeaseNamespace: "moat-system", Log: logrus.NewEntry(log)}
		ctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			if err := e.Run(ctx, k, nil); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}()
		n := &node{name: name, logs: hook, stop: func() { cancel(); <-stopped }}
		t.Cleanup(n.stop)
		return n
	}
	writes := func(n *node) int {
		c := 0
		for _, e := range n.logs.AllEntries() {
			if e.Message == "policy status written" {
				c++
			}
		}
		return c
	}
	a, b := start("node-a"), start("node-b")
	policies := dyn.Resource(PoliciesResource)
	accepted := func(want metav1.ConditionStatus) bool {
		u, err := policies.Get(ctx, "p", metav1.GetOptions{})
		if err != nil {
			return false
		}
		var p v1alpha1.FirewallPolicy
		if fromUnstructured(u, &p) != nil {
			return false
		}
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		return c != nil && c.Status == want && c.ObservedGeneration == p.Generation
	}
	if _, err := policies.Create(ctx, fromYAML(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: p}
spec:
  namespaceSelector: {}
  egress: [{action: Allow}]
`), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(60*time.Second, func() bool { return accepted(metav1.ConditionTrue) }) {
		t.Fatal("the policy's status was never written")
	}
	lease, err := client.CoordinationV1().Leases("moat-system").Get(ctx, StatusLease, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		t.Fatalf("status lease: %v %+v", err, lease)
	}
	leader, other := a, b
	if *lease.Spec.HolderIdentity == "node-b" {
		leader, other = b, a
	}
	if writes(leader) == 0 || writes(other) != 0 {
		t.Errorf("status writes: leader %s %d, other %s %d; want the leader's only", leader.name, writes(leader), other.name, writes(other))
	}
	// the leader goes (releasing its Lease); a change made then is written by the other
	leader.stop()
	if _, err := policies.Patch(ctx, "p", "application/merge-patch+json",
		[]byte(`{"spec":{"egress":[{"action":"Allow"},{"action":"Deny"}]}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	if !poll(60*time.Second, func() bool { return accepted(metav1.ConditionTrue) && writes(other) > 0 }) {
		t.Errorf("after the writer stopped: status of the new generation written %v, by %s %d times",
			accepted(metav1.ConditionTrue), other.name, writes(other))
	}
}
