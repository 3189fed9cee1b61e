package enforcer

import (
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
)

// FirewallConfig's conntrack bound and source validation reach the datapath's config, and come back to their
// defaults when the config goes.
func TestConfigReachesTheDatapath(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	check := func(when string, bound uint32, noSourceCheck bool) {
		t.Helper()
		c, err := dp.Config()
		if err != nil {
			t.Fatal(err)
		}
		if c.CtMaxPerEndpoint != bound || (c.Flags&uint32(bpf.ConfigNoSourceCheck) != 0) != noSourceCheck {
			t.Errorf("%s: bound %d, source check off %v; want %d, %v", when, c.CtMaxPerEndpoint,
				c.Flags&uint32(bpf.ConfigNoSourceCheck) != 0, bound, noSourceCheck)
		}
	}
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("a")}}); err != nil {
		t.Fatal(err)
	}
	check("defaults", v1alpha1.DefaultConntrackPerEndpoint, false)

	cfg := &v1alpha1.FirewallConfig{Spec: v1alpha1.FirewallConfigSpec{SourceValidation: v1alpha1.SourceValidationDisabled,
		Conntrack: &v1alpha1.Conntrack{MaxPerEndpoint: new(int32)}}}
	*cfg.Spec.Conntrack.MaxPerEndpoint = 100
	cfg.Name = v1alpha1.DefaultConfigName
	if err := e.Apply(State{Config: cfg, Namespaces: []v1alpha1.Namespace{namespace("a")}}); err != nil {
		t.Fatal(err)
	}
	check("configured", 100, true)

	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("a")}}); err != nil {
		t.Fatal(err)
	}
	check("config removed", v1alpha1.DefaultConntrackPerEndpoint, false)

	// a recount with nothing tracked leaves nothing behind and logs nothing
	if err := e.RecountConntrack(endpoint.Store{Dir: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
}
