package bpf_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

var (
	trafficPod4  = netip.MustParsePrefix("10.250.0.2/24")
	trafficPod6  = netip.MustParsePrefix("fd00:250::2/64")
	trafficHost4 = netip.MustParsePrefix("10.250.0.1/24")
	trafficHost6 = netip.MustParsePrefix("fd00:250::1/64")
	trafficNet4  = netip.MustParsePrefix("198.51.100.1/24") // the stand-in Internet, held by the host side
	trafficNet6  = netip.MustParsePrefix("2001:db8::1/64")
	trafficMeta4 = netip.MustParsePrefix("169.254.169.254/32")
)

// trafficPolicy allows TCP 443 and UDP 53 out, and nothing else in or out of the world.
func trafficPolicy() *policy.IdentityPolicy {
	return &policy.IdentityPolicy{
		Identity: podID, DefaultEgress: bpf.ActionDeny, DefaultIngress: bpf.ActionDeny,
		Rules: []policy.Rule{{ID: 61, Direction: bpf.Egress, Action: bpf.ActionAllow, AllPeers: true,
			Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: 443, Last: 443},
				{Protocol: policy.ProtoUDP, First: 53, Last: 53}}}},
	}
}

// guardPodLink makes the pod of pl an endpoint of identity podID (its addresses trafficPod4 and trafficPod6) and
// attaches the datapath to the host side of its veth in mode, until the test ends.
func (h *harness) guardPodLink(pl *testutil.PodLink, mode bpf.AttachMode) {
	h.t.Helper()
	ep, err := bpf.NewEndpoint(podID, bpf.ModeEnforce, []netip.Addr{trafficPod4.Addr(), trafficPod6.Addr()})
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.dp.SetEndpoint(uint32(pl.HostIfindex), &ep); err != nil {
		h.t.Fatal(err)
	}
	attacher, err := bpf.NewAttacher(mode)
	if err != nil {
		h.t.Fatal(err)
	}
	var att bpf.Attachment
	err = pl.Host.Do(func(ns.NetNS) error {
		att, err = attacher.Attach(pl.HostIfindex, h.dp.FromPod, h.dp.ToPod)
		return err
	})
	if err != nil {
		h.t.Fatalf("attach %s: %v", mode, err)
	}
	h.t.Cleanup(func() { _ = pl.Host.Do(func(ns.NetNS) error { return att.Detach() }) })
}

func TestRealTraffic(t *testing.T) {
	for _, mode := range []bpf.AttachMode{bpf.ModeTCX, bpf.ModeClsact} {
		t.Run(string(mode), func(t *testing.T) { realTraffic(t, mode) })
	}
}

func realTraffic(t *testing.T, mode bpf.AttachMode) {
	h := newHarness(t, bpf.Options{})
	pl := testutil.NewPodLink(t, []netip.Prefix{trafficPod4, trafficPod6},
		[]netip.Prefix{trafficHost4, trafficHost6, trafficNet4, trafficNet6, trafficMeta4})
	net4, net6, meta := trafficNet4.Addr().String(), "["+trafficNet6.Addr().String()+"]", trafficMeta4.Addr().String()
	for _, addr := range []string{net4 + ":443", net4 + ":80", net6 + ":443", net6 + ":80", meta + ":80"} {
		testutil.Listen(t, pl.Host, addr)
	}
	testutil.Listen(t, pl.Pod, ":8080")
	allowedUDP := testutil.UDPServer(t, pl.Host, net4+":53")
	deniedUDP := testutil.UDPServer(t, pl.Host, net4+":5353")

	// Without Moat everything connects: the failures below are the firewall's doing.
	for _, addr := range []string{net4 + ":80", meta + ":80", net6 + ":80"} {
		if err := testutil.Exchange(pl.Pod, addr, 2*time.Second); err != nil {
			t.Fatalf("baseline, no firewall, %s: %v", addr, err)
		}
	}

	h.policy(trafficPolicy())
	h.guardPodLink(pl, mode)

	for _, c := range []struct {
		addr  string
		allow bool
	}{
		{net4 + ":443", true}, {net6 + ":443", true}, {net4 + ":80", false}, {net6 + ":80", false}, {meta + ":80", false},
	} {
		err := testutil.Exchange(pl.Pod, c.addr, time.Second)
		if c.allow && err != nil {
			t.Errorf("%s: connect to %s: %v, want an echo (replies must pass)", mode, c.addr, err)
		}
		if !c.allow && err == nil {
			t.Errorf("%s: connect to %s went through, want it blocked", mode, c.addr)
		}
	}
	if err := testutil.ExchangeFrom(pl.Host, trafficNet4.Addr(), trafficPod4.Addr().String()+":8080", time.Second); err == nil {
		t.Errorf("%s: inbound connection from the world went through, want it blocked", mode)
	}
	// the same port from a node address is allowed: no rule matched, and nodes keep reaching pods
	if err := h.dp.SetIPCache(trafficHost4.Masked(), bpf.ClassNode, 0); err != nil {
		t.Fatal(err)
	}
	if err := testutil.ExchangeFrom(pl.Host, trafficHost4.Addr(), trafficPod4.Addr().String()+":8080", time.Second); err != nil {
		t.Errorf("%s: inbound connection from a node: %v, want it allowed", mode, err)
	}

	// A 4,000-byte datagram leaves as three IPv4 fragments: all follow the first one's verdict.
	before := h.reasonCount(bpf.ReasonFragment)
	if err := testutil.SendUDP(pl.Pod, net4+":53", 4000); err != nil {
		t.Fatal(err)
	}
	if err := testutil.SendUDP(pl.Pod, net4+":5353", 4000); err != nil {
		t.Fatal(err)
	}
	select {
	case size := <-allowedUDP:
		if size != 4000 {
			t.Errorf("%s: allowed datagram arrived with %d bytes, want 4000", mode, size)
		}
	case <-time.After(2 * time.Second):
		t.Errorf("%s: fragmented datagram to an allowed port never arrived whole", mode)
	}
	select {
	case size := <-deniedUDP:
		t.Errorf("%s: fragmented datagram to a denied port arrived (%d bytes)", mode, size)
	case <-time.After(500 * time.Millisecond):
	}
	if after := h.reasonCount(bpf.ReasonFragment); after < before+2 {
		t.Errorf("%s: %d non-first fragments passed, want at least 2", mode, after-before)
	}
	if n := h.reasonCount(bpf.ReasonMetadata); n == 0 {
		t.Errorf("%s: metadata drops not counted", mode)
	}

	// An enforcer restart reuses the pinned maps and detaches nothing: the pod's links keep their programs,
	// enforcement never stops, and policy the new enforcer writes takes effect through the same maps.
	h.dp.Close()
	if err := testutil.Exchange(pl.Pod, net4+":80", time.Second); err == nil {
		t.Errorf("%s: with the enforcer's handles closed, a denied connection went through", mode)
	}
	dp2, err := bpf.Load(h.root, bpf.Options{})
	if err != nil {
		t.Fatalf("reload: %v", err)
	}
	t.Cleanup(func() { dp2.Close() })
	if dp2.Created {
		t.Errorf("%s: reload created new maps instead of reusing the pinned ones", mode)
	}
	h.dp = dp2
	if err := testutil.Exchange(pl.Pod, net4+":80", time.Second); err == nil {
		t.Errorf("%s: after the restart, a denied connection went through", mode)
	}
	opened := trafficPolicy()
	opened.Rules[0].Ports = append(opened.Rules[0].Ports, policy.PortRange{Protocol: policy.ProtoTCP, First: 80, Last: 80})
	h.policy(opened)
	if err := testutil.Exchange(pl.Pod, net4+":80", time.Second); err != nil {
		t.Errorf("%s: port 80 allowed by the restarted enforcer: %v", mode, err)
	}
}
