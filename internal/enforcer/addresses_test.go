package enforcer

import (
	"net/netip"
	"slices"
	"testing"
	"time"
	"unique"

	"github.com/moatfw/moat/bpf"
)

// Of the claims on one prefix the strongest class wins, and among pods the newest; a claim said again changes
// nothing; the changes name each prefix whose winner may have moved, once.
func TestAddressBook(t *testing.T) {
	b := newAddressBook()
	p := netip.MustParsePrefix("10.2.0.7/32")
	older, newer := time.Unix(100, 0).UnixNano(), time.Unix(200, 0).UnixNano()
	one := func(c claim) []prefixClaim { return []prefixClaim{{prefix: p, claim: c}} }
	changes := func() map[netip.Prefix]*Address {
		c, ok := b.changes()
		if !ok {
			t.Fatal("changes refused")
		}
		return c
	}
	win := func() *Address { return changes()[p] }
	cidr := []prefixClaim{{prefix: netip.MustParsePrefix("10.2.0.0/16"),
		claim: claim{owner: owner{kind: ownerServiceCIDR, namespace: noNamespace, name: "x"}, class: uint8(bpf.ClassCluster)}}}
	svc := one(claim{owner: owner{kind: ownerService, namespace: unique.Make("web"), name: "api"}, class: uint8(bpf.ClassService), created: newer})
	oldPod := one(claim{owner: owner{kind: ownerPod, namespace: unique.Make("db"), name: "old"}, class: uint8(bpf.ClassPod), created: older})
	newPod := one(claim{owner: owner{kind: ownerPod, namespace: unique.Make("web"), name: "new"}, class: uint8(bpf.ClassPod), created: newer})

	b.set(nil, cidr)
	b.set(nil, svc)
	if a := win(); a == nil || a.Class != bpf.ClassService || a.Namespace != "web" {
		t.Fatalf("a Service's address: %+v", a)
	}
	b.set(nil, oldPod)
	if a := win(); a == nil || a.Class != bpf.ClassPod || a.Namespace != "db" {
		t.Errorf("a pod over a Service: %+v", a)
	}
	b.set(nil, newPod)
	if a := win(); a == nil || a.Namespace != "web" {
		t.Errorf("the newest pod: %+v", a)
	}
	if b.set(newPod, newPod) {
		t.Error("a claim said again reported a change")
	}
	if got := changes(); len(got) != 0 {
		t.Errorf("changes after none: %v", got)
	}
	b.set(newPod, nil)
	if a := win(); a == nil || a.Namespace != "db" {
		t.Errorf("the newest pod gone, the older one: %+v", a)
	}
	b.set(oldPod, nil)
	b.set(svc, nil)
	if c := changes(); len(c) != 1 || c[p] != nil {
		t.Errorf("nothing claims the address any more: %v", c)
	}
	if all := slices.Collect(b.takeAll); len(all) != 1 || all[0].Prefix != netip.MustParsePrefix("10.2.0.0/16") {
		t.Errorf("all: %+v", all)
	}
}
