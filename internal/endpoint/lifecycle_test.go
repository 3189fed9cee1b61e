package endpoint_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

const identity = 7

// host is a pod's veth, the pinned datapath and a record store: what a node's plugin and enforcer share.
type host struct {
	pl   *testutil.PodLink
	dp   *bpf.Datapath
	life endpoint.Lifecycle
}

func newHost(t *testing.T) *host {
	t.Helper()
	testutil.RequireRoot(t)
	h := &host{pl: testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")}, nil)}
	root := testutil.PinRoot(t)
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	h.dp = dp
	h.life = endpoint.Lifecycle{Store: endpoint.Store{Dir: t.TempDir()}, PinRoot: root}
	t.Cleanup(func() { _ = h.do(func() error { _, err := h.life.DetachAllLinks(); return err }) })
	return h
}

func (h *host) do(f func() error) error { return h.pl.Host.Do(func(ns.NetNS) error { return f() }) }

// guard does the plugin's ADD for a container on the veth, in mode, and returns its record.
func (h *host) guard(t *testing.T, container string, mode bpf.AttachMode) *endpoint.Record {
	t.Helper()
	r := &endpoint.Record{Network: "net", ContainerID: container, IfName: "eth0", Namespace: "ns", Pod: container,
		HostIfname: h.pl.HostIfname, HostIfindex: h.pl.HostIfindex, Addresses: []string{"10.250.0.2"},
		Created: time.Now().UTC()}
	err := h.do(func() error {
		if _, err := h.life.Guard(h.dp, r, identity, mode); err != nil {
			return err
		}
		return h.life.Store.Save(r)
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// tcxPrograms counts the tcx programs on the veth's hooks.
func (h *host) tcxPrograms(t *testing.T) int {
	t.Helper()
	var n int
	if err := h.do(func() (err error) { n, err = bpf.TCXPrograms(h.pl.HostIfindex); return err }); err != nil {
		t.Fatal(err)
	}
	return n
}

func (h *host) released(t *testing.T) []string {
	dirs, _ := filepath.Glob(filepath.Join(h.life.PinRoot, "released", "*", "*"))
	return dirs
}

func (h *host) mover(age time.Duration) endpoint.Mover {
	return endpoint.Mover{Life: h.life, Log: logrus.NewEntry(logrus.New()), SurvivorAge: age}
}

// DEL's Release leaves tcx links on the veth (no endpoint entry: its packets are dropped) with their pins in the
// released folder; an ADD on the same veth takes them up instead of attaching again; once the veth is gone, a
// sweep removes the pins.
func TestReleaseLeavesLinksForTheDevice(t *testing.T) {
	h := newHost(t)
	first := h.guard(t, "c1", bpf.ModeTCX)
	if err := h.do(func() error { return h.life.Release(first.Key()) }); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := h.life.Store.Load(first.Key()); ok {
		t.Error("the record outlived Release")
	}
	if _, ok, _ := h.dp.LookupEndpoint(uint32(h.pl.HostIfindex)); ok {
		t.Error("the endpoint entry outlived Release: the veth's packets would still be allowed")
	}
	if _, err := os.Stat(first.Key().LinkDir(h.life.PinRoot)); err == nil {
		t.Error("the pod's link folder outlived Release")
	}
	if n := h.tcxPrograms(t); n != 2 || len(h.released(t)) != 1 {
		t.Fatalf("after Release: %d tcx programs, released %v; want Moat's 2 still attached, pinned once", n, h.released(t))
	}
	if err := h.do(func() error { _, err := h.life.SweepReleased(); return err }); err != nil || len(h.released(t)) != 1 {
		t.Errorf("a sweep while the veth is there: %v, released %v; want them kept", err, h.released(t))
	}

	// another pod's ADD on the veth that survived takes the links up, whatever the mode asks
	second := h.guard(t, "c2", "")
	if second.AttachMode != bpf.ModeTCX || second.MoveToTCX || h.tcxPrograms(t) != 2 || len(h.released(t)) != 0 {
		t.Errorf("ADD on the same veth: %+v, %d tcx programs, released %v; want the released links taken up",
			second.AttachmentRecord, h.tcxPrograms(t), h.released(t))
	}
	if err := h.do(func() error { return second.CheckAttachment(h.dp) }); err != nil {
		t.Errorf("check of the links taken up: %v", err)
	}

	if err := h.do(func() error { return h.life.Release(second.Key()) }); err != nil {
		t.Fatal(err)
	}
	if err := h.do(func() error {
		l, err := netlink.LinkByIndex(h.pl.HostIfindex)
		if err != nil {
			return err
		}
		return netlink.LinkDel(l)
	}); err != nil {
		t.Fatal(err)
	}
	if n, err := h.life.SweepReleased(); err != nil || n != 1 || len(h.released(t)) != 0 {
		t.Errorf("sweep after the veth went: removed %d, %v; released %v left", n, err, h.released(t))
	}
}

// The mover takes a staged pod to tcx (links at the head, no filter or qdisc left) and detaches released links
// from a veth that outlived its pod.
func TestMoverMovesStagedAndDetachesSurvivors(t *testing.T) {
	h := newHost(t)
	r := h.guard(t, "c1", "")
	if r.AttachMode != bpf.ModeClsact || !r.MoveToTCX || h.tcxPrograms(t) != 0 {
		t.Fatalf("ADD in the default mode: %+v, %d tcx programs; want clsact staged for tcx", r.AttachmentRecord, h.tcxPrograms(t))
	}
	var moved int
	if err := h.do(func() (err error) { moved, err = h.mover(time.Hour).Pass(context.Background()); return err }); err != nil {
		t.Fatal(err)
	}
	r, _, _ = h.life.Store.Load(r.Key())
	if moved != 1 || r.AttachMode != bpf.ModeTCX || r.MoveToTCX || len(r.Filters) != 0 || h.tcxPrograms(t) != 2 {
		t.Fatalf("after the mover's pass: moved %d, %+v, %d tcx programs; want tcx", moved, r.AttachmentRecord, h.tcxPrograms(t))
	}
	if err := h.do(func() error { return r.CheckAttachment(h.dp) }); err != nil {
		t.Errorf("check after the move: %v", err)
	}
	err := h.do(func() error {
		l, err := netlink.LinkByIndex(h.pl.HostIfindex)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		for _, q := range qs {
			if q.Type() == "clsact" {
				t.Error("the clsact qdisc Moat added is left after the move")
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	if err := h.do(func() error { return h.life.Release(r.Key()) }); err != nil {
		t.Fatal(err)
	}
	if err := h.do(func() (err error) { _, err = h.mover(time.Nanosecond).Pass(context.Background()); return err }); err != nil {
		t.Fatal(err)
	}
	if n := h.tcxPrograms(t); n != 0 || len(h.released(t)) != 0 {
		t.Errorf("released links on a veth that outlived its pod, after the mover: %d tcx programs, released %v", n, h.released(t))
	}
}

// A DEL that wins the race with a move: the move's links are detached again, and neither the record nor a pin
// comes back.
func TestMoveAfterReleaseLeavesNothing(t *testing.T) {
	h := newHost(t)
	r := h.guard(t, "c1", "")
	if err := h.do(func() error { return h.life.Release(r.Key()) }); err != nil {
		t.Fatal(err)
	}
	if err := h.do(func() error { return h.life.MoveToTCX(h.dp, r) }); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := h.life.Store.Load(r.Key()); ok {
		t.Error("the move brought the record back")
	}
	if _, err := os.Stat(r.Key().LinkDir(h.life.PinRoot)); err == nil {
		t.Error("the move pinned links for a pod that is gone")
	}
	if n := h.tcxPrograms(t); n != 0 {
		t.Errorf("%d tcx programs left by a move that lost to DEL", n)
	}
}
