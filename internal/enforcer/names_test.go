package enforcer

import (
	"maps"
	"testing"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/resolve"
)

// The API's name forms are the datapath's: a pattern's form indexes DNSValue's arrays.
func TestNameFormsAreTheDatapaths(t *testing.T) {
	if int(v1alpha1.NameExact) != int(bpf.DNSExact) || int(v1alpha1.NameOneLabel) != int(bpf.DNSOne) ||
		int(v1alpha1.NameAnyLabels) != int(bpf.DNSAny) {
		t.Fatal("v1alpha1.NameForm and bpf.DNSForm number the forms differently")
	}
}

// dnsDeny in the maps: namespaces with the same names share a set, a change of one namespace's names rewrites its
// own set in place, a namespace whose names go points at no set and its set's names go, and an enforcer started
// on the same pins writes its sets anew and removes what the one before left.
func TestDNSDenySets(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	zone := func(name, z string) v1alpha1.Namespace {
		ns := namespace(name)
		ns.Labels = map[string]string{v1alpha1.LabelZone: z}
		return ns
	}
	policy := func(name, z string, mode v1alpha1.Mode, names ...string) v1alpha1.FirewallPolicy {
		return v1alpha1.FirewallPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.FirewallPolicySpec{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.LabelZone: z}},
			Mode:              mode, DNSDeny: names}}
	}
	nss := []v1alpha1.Namespace{zone("web", "front"), zone("shop", "front"), zone("db", "back")}
	front := policy("front-names", "front", "", "*.Tracker.example", "bad.example.org")
	audit := policy("audit-names", "front", v1alpha1.ModeAudit, "tracker.example", "**.tracker.example")
	state := func(ps ...v1alpha1.FirewallPolicy) State { return State{Namespaces: nss, Policies: ps} }
	if err := e.Apply(state(front, audit)); err != nil {
		t.Fatal(err)
	}
	ids := e.Identities()
	rule := func(p string, i int) uint32 {
		return e.ruleID(resolve.RuleKey{Policy: p, Index: i, DNS: true})
	}
	sets, err := dp.DNSSets()
	if err != nil {
		t.Fatal(err)
	}
	if sets[ids["web"]] == 0 || sets[ids["web"]] != sets[ids["shop"]] || sets[ids["db"]] != 0 {
		t.Fatalf("sets by identity %v (web %d, shop %d, db %d): want web and shop to share one, db none", sets, ids["web"], ids["shop"], ids["db"])
	}
	set := sets[ids["web"]]
	names := readNames(t, dp, set)
	want := map[string]bpf.DNSValue{
		"tracker.example": {Rule: [3]uint32{0, rule("front-names", 0), 0}, AuditRule: [3]uint32{rule("audit-names", 0), 0, rule("audit-names", 1)}},
		"bad.example.org": {Rule: [3]uint32{rule("front-names", 1), 0, 0}},
	}
	if !maps.Equal(names, want) {
		t.Fatalf("set %d holds %v, want %v", set, names, want)
	}

	// shop alone gets one more name: a set of its own; web's is untouched
	shopOnly := policy("shop-names", "shop", "", "exfil.example")
	nss[1].Labels["shop"] = "yes"
	shopOnly.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"shop": "yes"}}
	if err := e.Apply(state(front, audit, shopOnly)); err != nil {
		t.Fatal(err)
	}
	sets, _ = dp.DNSSets()
	if sets[ids["web"]] != set || sets[ids["shop"]] == set || sets[ids["shop"]] == 0 {
		t.Fatalf("after shop's own name: sets %v, web's was %d", sets, set)
	}
	shopSet := sets[ids["shop"]]
	if got := readNames(t, dp, shopSet); len(got) != 3 || got["exfil.example"].Rule[bpf.DNSExact] != rule("shop-names", 0) {
		t.Errorf("shop's set %d holds %v", shopSet, got)
	}
	// shop's name changes: its set alone is rewritten in place
	shopOnly.Spec.DNSDeny = []string{"exfil.example.net"}
	if err := e.Apply(state(front, audit, shopOnly)); err != nil {
		t.Fatal(err)
	}
	sets, _ = dp.DNSSets()
	got := readNames(t, dp, shopSet)
	if sets[ids["shop"]] != shopSet || len(got) != 3 || got["exfil.example.net"].Rule[bpf.DNSExact] == 0 {
		t.Errorf("after shop's change: set %d (was %d) holds %v", sets[ids["shop"]], shopSet, got)
	}
	if _, still := got["exfil.example"]; still {
		t.Errorf("the name shop no longer denies is still in its set: %v", got)
	}

	// a new enforcer on the same pins: the sets are written anew and the old ones go
	e2, err := New(dp, logrus.NewEntry(logrus.New()))
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Apply(state(front, audit)); err != nil {
		t.Fatal(err)
	}
	sets, _ = dp.DNSSets()
	inUse, _ := dp.DNSNameSets()
	if s := sets[ids["web"]]; s == 0 || s != sets[ids["shop"]] || s == set || s == shopSet || len(inUse) != 1 || inUse[s] != 2 {
		t.Fatalf("after a restart: sets %v, names per set %v (before: %d and %d)", sets, inUse, set, shopSet)
	}
	// every name gone: no set, no names
	if err := e2.Apply(state()); err != nil {
		t.Fatal(err)
	}
	sets, _ = dp.DNSSets()
	inUse, _ = dp.DNSNameSets()
	if len(sets) != 0 || len(inUse) != 0 {
		t.Errorf("with no dnsDeny left: sets %v, names per set %v", sets, inUse)
	}
}

// readNames reads a set's names back from dns_names.
func readNames(t *testing.T, dp *bpf.Datapath, set uint32) map[string]bpf.DNSValue {
	t.Helper()
	out, err := dp.DNSNames(set)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
