package upstream

import (
	"net/netip"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/moatfw/moat/conformance/node"
	v1alpha1 "github.com/moatfw/moat/internal/api/v1alpha1"
)

// TestRestrictivePolicy decodes the restrictive pass's objects strictly (an unknown field is an error) and
// validates them as the enforcer does: the pass must not find out on a cluster that its policy is refused.
func TestRestrictivePolicy(t *testing.T) {
	doc, err := RestrictivePolicy(node.HostAddr)
	if err != nil {
		t.Fatal(err)
	}
	var policies []string
	var config *v1alpha1.FirewallConfig
	for _, part := range strings.Split(doc, "\n---\n") {
		var meta struct{ Kind string }
		if err := yaml.Unmarshal([]byte(part), &meta); err != nil {
			t.Fatal(err)
		}
		switch meta.Kind {
		case "FirewallConfig":
			config = &v1alpha1.FirewallConfig{}
			if err := strictDecode(part, config); err != nil {
				t.Fatal(err)
			}
			if errs := config.Validate(); len(errs) > 0 {
				t.Errorf("FirewallConfig: %v", errs)
			}
		case "FirewallPolicy":
			var p v1alpha1.FirewallPolicy
			if err := strictDecode(part, &p); err != nil {
				t.Fatal(err)
			}
			if errs := p.Validate(); len(errs) > 0 {
				t.Errorf("FirewallPolicy %s: %v", p.Name, errs)
			}
			policies = append(policies, p.Name)
		default:
			t.Errorf("unexpected kind %q", meta.Kind)
		}
	}
	if config == nil || config.Name != "default" || config.Spec.DefaultEgress != v1alpha1.ActionDeny ||
		config.Spec.DefaultIngress != v1alpha1.ActionDeny {
		t.Errorf("FirewallConfig %+v: want default, world denied both ways", config)
	}
	if strings.Join(policies, " ") != "cluster-dns system-zone tenant-zone closed-zones" {
		t.Errorf("policies %q", policies)
	}
	if !strings.Contains(doc, "cidr: "+node.HostAddr.String()+"/32") {
		t.Error("the control plane's address is not in the policy")
	}
	if _, err := RestrictivePolicy(netip.MustParseAddr("fd00::1")); err == nil {
		t.Error("an IPv6 control plane: no error")
	}
}

func strictDecode(doc string, into any) error { return sigsyaml.UnmarshalStrict([]byte(doc), into) }
