package enforcer

import (
	"reflect"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// A slice's entries kept in their compact form give back what the feed said of them (its addresses in the
// feed's own form, one of each family, the first counting; an address that does not parse left out; no time for
// none), two entries compare equal only when every field does, and a copy shares nothing a change could reach.
func TestCompactFeedSlice(t *testing.T) {
	created := metav1.NewTime(time.Unix(1700000000, 0))
	as := &v1alpha1.AddressSlice{Pods: []v1alpha1.PodAddresses{
		{Namespace: "web", Name: "a", Node: "n1", Created: created, IPs: []string{"10.1.0.7", "fd00:250::7"},
			HostPorts: []v1alpha1.PodHostPort{{HostPort: 8080, ContainerPort: 80, Protocol: "TCP"}}},
		{Namespace: "web", Name: "b", Node: "n2", IPs: []string{"fd00:250::8", "not an address", "10.1.0.8", "10.1.0.9"}},
	}, Nodes: []v1alpha1.NodeAddresses{{Name: "n1", IPs: []string{"10.0.0.1"}, PodCIDRs: []string{"10.1.0.0/24"}}}}
	as.Name, as.ResourceVersion = "addrs-1", "42"
	fs := compactSlice(as)
	if fs.Name != "addrs-1" || fs.ResourceVersion != "42" || len(fs.pods) != 2 || len(fs.nodes) != 1 {
		t.Fatalf("the compact slice: %+v", fs)
	}
	if got := fs.pods[0].entry(); !reflect.DeepEqual(got, as.Pods[0]) {
		t.Errorf("entry a:\n got %+v\nwant %+v", got, as.Pods[0])
	}
	want := v1alpha1.PodAddresses{Namespace: "web", Name: "b", Node: "n2", IPs: []string{"10.1.0.8", "fd00:250::8"}}
	if got := fs.pods[1].entry(); !reflect.DeepEqual(got, want) {
		t.Errorf("entry b:\n got %+v\nwant %+v", got, want)
	}
	if p := fs.pods[0].pod(); p.Name != "a" || p.Namespace != "web" || len(p.Status.PodIPs) != 2 || len(p.Spec.Containers) != 1 {
		t.Errorf("the slim pod of a: %+v", p)
	}

	again := compactSlice(as)
	if !fs.pods[0].same(&again.pods[0]) || !fs.pods[1].same(&again.pods[1]) {
		t.Error("the same entries decoded twice compare different")
	}
	for name, change := range map[string]func(*feedPod){
		"node":      func(p *feedPod) { p.node = noNamespace },
		"created":   func(p *feedPod) { p.created++ },
		"IPv6":      func(p *feedPod) { p.v6[15]++ },
		"no IPv4":   func(p *feedPod) { p.has4 = false },
		"hostPorts": func(p *feedPod) { hp := []v1alpha1.PodHostPort{{HostPort: 8081}}; p.hostPorts = &hp },
		"none":      func(p *feedPod) { p.hostPorts = nil },
	} {
		q := again.pods[0]
		change(&q)
		if fs.pods[0].same(&q) {
			t.Errorf("a changed %s compares the same", name)
		}
	}

	cp := fs.DeepCopyObject().(*feedSlice)
	cp.pods[0].name = "changed"
	cp.nodes[0].IPs[0] = "10.0.0.2"
	(*cp.pods[0].hostPorts)[0].HostPort = 9
	if fs.pods[0].name != "a" || fs.nodes[0].IPs[0] != "10.0.0.1" || (*fs.pods[0].hostPorts)[0].HostPort != 8080 {
		t.Error("a change to the copy reached the original")
	}
}
