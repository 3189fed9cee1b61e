package enforcer

import (
	"net/netip"
	"testing"
	"time"

	"github.com/moatfw/moat/bpf"
)

// Of the claims on one prefix the strongest class wins, and among pods the newest; a claim said again changes
// nothing; the changes name each prefix whose winner may have moved, once.
func TestAddressBook(t *testing.T) {
	b := newAddressBook()
	p := netip.MustParsePrefix("10.2.0.7/32")
	older, newer := time.Unix(100, 0), time.Unix(200, 0)
	one := func(c claim) map[netip.Prefix]claim { return map[netip.Prefix]claim{p: c} }
	win := func() *Address { return b.changes()[p] }

	b.set("servicecidr/x", map[netip.Prefix]claim{netip.MustParsePrefix("10.2.0.0/16"): {class: bpf.ClassCluster}})
	b.set("service/web/api", one(claim{class: bpf.ClassService, namespace: "web", created: newer}))
	if a := win(); a == nil || a.Class != bpf.ClassService || a.Namespace != "web" {
		t.Fatalf("a Service's address: %+v", a)
	}
	b.set("pod/db/old", one(claim{class: bpf.ClassPod, namespace: "db", created: older}))
	if a := win(); a == nil || a.Class != bpf.ClassPod || a.Namespace != "db" {
		t.Errorf("a pod over a Service: %+v", a)
	}
	b.set("pod/web/new", one(claim{class: bpf.ClassPod, namespace: "web", created: newer}))
	if a := win(); a == nil || a.Namespace != "web" {
		t.Errorf("the newest pod: %+v", a)
	}
	if b.set("pod/web/new", one(claim{class: bpf.ClassPod, namespace: "web", created: newer})) {
		t.Error("a claim said again reported a change")
	}
	if got := b.changes(); len(got) != 0 {
		t.Errorf("changes after none: %v", got)
	}
	b.set("pod/web/new", nil)
	if a := win(); a == nil || a.Namespace != "db" {
		t.Errorf("the newest pod gone, the older one: %+v", a)
	}
	b.set("pod/db/old", nil)
	b.set("service/web/api", nil)
	if c := b.changes(); len(c) != 1 || c[p] != nil {
		t.Errorf("nothing claims the address any more: %v", c)
	}
	if all := b.all(); len(all) != 1 || all[0].Prefix != netip.MustParsePrefix("10.2.0.0/16") {
		t.Errorf("all: %+v", all)
	}
}
