package enforcer

import (
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// The feed view hands each entry's changes on as a watch of Pods and Nodes would: an entry held by two slices at
// once (the publisher moving it) is read from the slice first by name, changes only when that one's entry does,
// and goes only when no slice holds it; a slice's update hands on only the entries that changed.
func TestFeedViewEntryInTwoSlices(t *testing.T) {
	var events []string
	on := func(old, obj any, gone bool) {
		describe := func(o any) string {
			switch o := o.(type) {
			case *corev1.Pod:
				return fmt.Sprintf("%s/%s %v", o.Namespace, o.Name, o.Status.PodIPs)
			case *corev1.Node:
				return fmt.Sprintf("node %s %v", o.Name, o.Spec.PodCIDRs)
			}
			return "-"
		}
		switch {
		case gone:
			events = append(events, "gone "+describe(obj))
		case old == nil:
			events = append(events, "add "+describe(obj))
		default:
			events = append(events, "update "+describe(old)+" -> "+describe(obj))
		}
	}
	v := newFeedView(on, on)
	h := v.handler()
	slice := func(name string, pods []v1alpha1.PodAddresses, nodes ...v1alpha1.NodeAddresses) *v1alpha1.AddressSlice {
		as := &v1alpha1.AddressSlice{Pods: pods, Nodes: nodes}
		as.Name = name
		return as
	}
	pod := func(name, ip string) v1alpha1.PodAddresses {
		return v1alpha1.PodAddresses{Namespace: "web", Name: name, Node: "n1", IPs: []string{ip}}
	}
	node := v1alpha1.NodeAddresses{Name: "n1", PodCIDRs: []string{"10.1.0.0/24"}}
	step := func(what string, do func(), want ...string) {
		t.Helper()
		events = nil
		do()
		slices.Sort(events)
		slices.Sort(want)
		if !slices.Equal(events, want) {
			t.Errorf("%s: handed on\n%q\nwant\n%q", what, events, want)
		}
	}
	b1 := slice("b", []v1alpha1.PodAddresses{pod("x", "10.1.0.7"), pod("y", "10.1.0.8")}, node)
	step("b comes", func() { h.OnAdd(b1, false) },
		"add web/x [{10.1.0.7}]", "add web/y [{10.1.0.8}]", "add node n1 [10.1.0.0/24]")
	a1 := slice("a", []v1alpha1.PodAddresses{pod("x", "10.1.0.9")})
	step("a takes x, with another address: a is first by name", func() { h.OnAdd(a1, false) },
		"update web/x [{10.1.0.7}] -> web/x [{10.1.0.9}]")
	b2 := slice("b", []v1alpha1.PodAddresses{pod("x", "10.1.0.6"), pod("y", "10.1.0.8")}, node)
	step("b changes x, which is read from a", func() { h.OnUpdate(b1, b2) })
	step("a gone: x is read from b again", func() { h.OnDelete(a1) },
		"update web/x [{10.1.0.9}] -> web/x [{10.1.0.6}]")
	b3 := slice("b", []v1alpha1.PodAddresses{pod("y", "10.1.0.8")}, node)
	step("b drops x", func() { h.OnUpdate(b2, b3) }, "gone web/x [{10.1.0.6}]")
	c1 := slice("c", []v1alpha1.PodAddresses{pod("y", "10.1.0.8")}, node)
	step("c holds y and n1 too, the same", func() { h.OnAdd(c1, false) })
	step("b gone: y and n1 stay, read from c", func() { h.OnDelete(b3) })
	step("c gone", func() { h.OnDelete(c1) }, "gone web/y [{10.1.0.8}]", "gone node n1 [10.1.0.0/24]")
	if len(v.holders) != 0 || len(v.others) != 0 || len(v.slices) != 0 {
		t.Errorf("the view keeps %d holders, %d others, %d slices after every slice went", len(v.holders),
			len(v.others), len(v.slices))
	}
}
