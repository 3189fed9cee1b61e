package enforcer

import (
	"net/netip"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// The source's hostPorts reach the datapath with their pod's namespace identity, and leave it with the pod.
func TestHostPortsReachTheDatapath(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	a := netip.MustParseAddr
	hps := []HostPort{
		{Node: a("10.0.0.1"), Protocol: 6, Port: 8080, Pod: a("10.244.0.7"), PodPort: 80, Namespace: "web", Local: true},
		{Node: a("fd00:99::1"), Protocol: 6, Port: 8080, Pod: a("fd00:244::7"), PodPort: 80, Namespace: "web", Local: true},
		{Node: a("10.0.0.2"), Protocol: 17, Port: 53, Pod: a("10.244.1.3"), PodPort: 5353, Namespace: "gone"},
		{Node: a("10.0.0.1"), Protocol: 6, Port: 9090, Pod: a("fd00:244::8"), PodPort: 90, Namespace: "web"}, // families differ
	}
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web")}, HostPorts: hps}); err != nil {
		t.Fatal(err)
	}
	web := e.Identities()["web"]
	have, err := dp.HostPorts()
	if err != nil {
		t.Fatal(err)
	}
	if len(have) != 2 {
		t.Fatalf("%d hostPorts in the datapath, want 2 (a namespace without identity, mixed families left out): %v", len(have), have)
	}
	k := bpf.HostPort{Node: a("10.0.0.1"), Protocol: 6, Port: 8080}.Key()
	if v := have[k]; v.Identity != web || v.Port != 80 || v.Local != 1 || v.Addr != bpf.Addr16(a("10.244.0.7")) {
		t.Errorf("hostPort 10.0.0.1:8080 is %+v, want web's pod 10.244.0.7:80, local", v)
	}
	if err := e.Apply(State{Namespaces: []v1alpha1.Namespace{namespace("web")}}); err != nil {
		t.Fatal(err)
	}
	if have, err = dp.HostPorts(); err != nil || len(have) != 0 {
		t.Errorf("hostPorts after the pods went: %v (%v), want none", have, err)
	}
}
