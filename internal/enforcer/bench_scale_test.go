package enforcer

import (
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// BenchmarkApplyPolicyChangeAtScale applies one policy's change to the make scale shape: 2,000 namespaces in 20
// zones, 500 policies (a zone each, five for every namespace; namespace peers and a port each), and the remote
// pods' addresses of 5,000 pods and of 150,000 dual-stack ones. Each run flips one zone policy's port: the cost
// of a whole-state apply where one policy changed, which must not grow with the pods.
func BenchmarkApplyPolicyChangeAtScale(b *testing.B) {
	for _, addrs := range []int{5000, 300000} {
		b.Run(fmt.Sprintf("addresses=%d", addrs), func(b *testing.B) { benchPolicyChange(b, addrs) })
	}
}

func benchPolicyChange(b *testing.B, addrs int) {
	_, e := benchEnforcer(b)
	var s State
	for i := range 2000 {
		s.Namespaces = append(s.Namespaces, v1alpha1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%04d", i),
			Labels: map[string]string{v1alpha1.LabelZone: fmt.Sprintf("zone-%02d", i%20)}}})
	}
	zone := func(z int) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: fmt.Sprintf("zone-%02d", z%20)}}
	}
	port := func(p int) []v1alpha1.Port { return []v1alpha1.Port{{Protocol: "TCP", Port: new(int32(p))}} }
	for i := range 500 {
		sel := zone(i)
		if i < 5 {
			sel = &metav1.LabelSelector{}
		}
		s.Policies = append(s.Policies, v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p-%03d", i)},
			Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: sel, Priority: new(int32(i % 9)),
				Egress: []v1alpha1.Rule{
					{Action: v1alpha1.ActionAllow, To: []v1alpha1.Peer{{NamespaceSelector: zone(i + 1)}}, Ports: port(8000 + i)},
					{Action: v1alpha1.ActionDeny, To: []v1alpha1.Peer{{CIDR: fmt.Sprintf("203.0.113.%d/32", i%250)}}},
				},
				Ingress: []v1alpha1.Rule{{Action: v1alpha1.ActionAllow, From: []v1alpha1.Peer{{NamespaceSelector: zone(i + 3)}}, Ports: port(9000)}},
			}})
	}
	for i := range addrs {
		s.Addresses = append(s.Addresses, Address{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(64 + i>>16), byte(i >> 8), byte(i)}), 32),
			Class: bpf.ClassPod, Namespace: fmt.Sprintf("ns-%04d", i%2000)})
	}
	if err := e.Apply(s); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		next := s
		next.AddressChanges = map[netip.Prefix]*Address{} // as the Kubernetes source says when no address changed
		next.Policies = append([]v1alpha1.FirewallPolicy(nil), s.Policies...)
		p := next.Policies[10].DeepCopy()
		p.Spec.Egress[0].Ports = port(7000 + i%2)
		next.Policies[10] = *p
		if err := e.Apply(next); err != nil {
			b.Fatal(err)
		}
	}
}
