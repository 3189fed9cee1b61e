package enforcer

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
)

func TestMetrics(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	reg := prometheus.NewRegistry()
	if _, err := e.NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	// b's label is a problem; the policy selects no namespace (a warning); the source could not use another policy
	b := namespace("b")
	b.Labels = map[string]string{v1alpha1.LabelEgress: "block"}
	nobody := v1alpha1.FirewallPolicy{Spec: v1alpha1.FirewallPolicySpec{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "nobody"}}}}
	nobody.Name = "nobody"
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("a"), b}, Policies: []v1alpha1.FirewallPolicy{nobody},
		Problems: []ObjectProblem{{Kind: v1alpha1.KindFirewallPolicy, Name: "broken", Origin: "kubernetes", Message: "bad"}}}); err != nil {
		t.Fatal(err)
	}
	ep, _ := bpf.NewEndpoint(1, bpf.ModeEnforce, []netip.Addr{netip.MustParseAddr("10.1.0.2")})
	if err := dp.SetEndpoint(5, &ep); err != nil {
		t.Fatal(err)
	}
	value := gather(t, reg)
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"moat_policy_generation", nil, 1},
		{"moat_endpoints", nil, 1},
		{"moat_map_entries", map[string]string{"map": "identities"}, 2},
		{"moat_map_entries", map[string]string{"map": "local_endpoints"}, 1},
		{"moat_map_entries", map[string]string{"map": "conntrack"}, 0},
		{"moat_map_entries", map[string]string{"map": "ipcache"}, 6}, // the metadata API's six addresses
		{"moat_map_max_entries", map[string]string{"map": "conntrack"}, 262144},
		{"moat_policy_apply_seconds", nil, 1},
		{"moat_events_lost_total", nil, 0},
		{"moat_conntrack_limited_total", nil, 0},
		{"moat_conntrack_per_endpoint_max", nil, 65536},
		{"moat_packets_total", map[string]string{"reason": "conntrack-limit", "verdict": "drop"}, 0},
		{"moat_packets_total", map[string]string{"reason": "no-endpoint", "verdict": "drop"}, 0},
		{"moat_problems", map[string]string{"kind": "Namespace"}, 1},
		{"moat_problems", map[string]string{"kind": "FirewallPolicy"}, 1},
		{"moat_problems", map[string]string{"kind": "FirewallConfig"}, 0},
		{"moat_warnings", map[string]string{"kind": "FirewallPolicy"}, 1},
	} {
		v, ok := value(c.name, c.labels)
		if !ok || v != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
}

// gather scrapes reg and looks a metric up by name and labels (the ones given; others may be anything): a
// gauge's or a counter's value, a histogram's count.
func gather(t *testing.T, reg *prometheus.Registry) func(name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]*dto.Metric{}
	for _, f := range families {
		got[f.GetName()] = f.GetMetric()
	}
	return func(name string, labels map[string]string) (float64, bool) {
		for _, m := range got[name] {
			match := true
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					match = false
				}
			}
			if !match {
				continue
			}
			switch {
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue(), true
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue(), true
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount()), true
			}
		}
		return 0, false
	}
}
