package resolve

import (
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// BenchmarkResolve resolves the scale benchmark's shape: 2,000 namespaces in 20 zones and 500 policies, each
// selecting a zone and naming two zones as peers (one allowed, one denied), five selecting every namespace.
func BenchmarkResolve(b *testing.B) {
	in := Input{Identities: map[string]uint32{}, RuleID: func(RuleKey) uint32 { return 1 }}
	for i := range 2000 {
		name := fmt.Sprintf("ns-%04d", i)
		in.Namespaces = append(in.Namespaces, v1alpha1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{v1alpha1.LabelZone: fmt.Sprintf("zone-%02d", i%20), "team": fmt.Sprintf("team-%03d", i%100)}}})
		in.Identities[name] = uint32(i + 1)
	}
	zone := func(z int) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: fmt.Sprintf("zone-%02d", z%20)}}
	}
	for i := range 500 {
		sel := zone(i)
		if i < 5 {
			sel = &metav1.LabelSelector{}
		}
		in.Policies = append(in.Policies, v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p-%03d", i)},
			Spec: v1alpha1.FirewallPolicySpec{NamespaceSelector: sel, Priority: new(int32(i % 9)),
				Egress: []v1alpha1.Rule{
					{Action: v1alpha1.ActionAllow, To: []v1alpha1.Peer{{NamespaceSelector: zone(i + 1)}}},
					{Action: v1alpha1.ActionDeny, To: []v1alpha1.Peer{{NamespaceSelector: zone(i + 2)}}},
				},
				Ingress: []v1alpha1.Rule{{Action: v1alpha1.ActionAllow, From: []v1alpha1.Peer{{NamespaceSelector: zone(i + 3)}}}},
			}})
	}
	b.ResetTimer()
	for b.Loop() {
		Resolve(in)
	}
}
