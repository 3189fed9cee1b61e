package bpf_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// What a TC program returns through BPF_PROG_TEST_RUN.
const (
	retNext = 0xFFFFFFFF // TCX_NEXT: passed on to the next program
	retDrop = 2          // TC_ACT_SHOT
)

var (
	podV4    = netip.MustParseAddr("10.1.0.2")
	podV6    = netip.MustParseAddr("fd00:250::2")
	peerV4   = netip.MustParseAddr("10.1.0.9") // a pod of identity peerID
	peerV6   = netip.MustParseAddr("fd00:250::9")
	worldV4  = netip.MustParseAddr("198.51.100.7")
	worldV6  = netip.MustParseAddr("2001:db8::7")
	world2V4 = netip.MustParseAddr("203.0.113.9")
	nodeV4   = netip.MustParseAddr("10.0.0.1")
	metaV4   = netip.MustParseAddr("169.254.169.254")
	metaV6   = netip.MustParseAddr("fd00:ec2::254")
)

const (
	podID  = 5
	peerID = 7
)

// harness is one loaded datapath with one endpoint on a dummy device of the test's own.
type harness struct {
	t       testing.TB
	root    string // pin root
	dp      *bpf.Datapath
	ifindex uint32
	events  *bpf.EventReader
}

// loadDatapath loads the datapath on a bpffs of the test's own; it is closed when the test ends.
func loadDatapath(t testing.TB, opts bpf.Options) *bpf.Datapath {
	t.Helper()
	dp, err := bpf.Load(testutil.PinRoot(t), opts)
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp
}

func newHarness(t testing.TB, opts bpf.Options) *harness {
	t.Helper()
	dp := loadDatapath(t, opts)
	h := &harness{t: t, root: dp.Root, dp: dp, ifindex: uint32(testutil.Dummy(t))}
	h.endpoint(podID, bpf.ModeEnforce, podV4, podV6)
	for _, e := range []struct {
		p     string
		class bpf.Class
		id    uint32
	}{
		{"10.1.0.9/32", bpf.ClassPod, peerID}, {"fd00:250::9/128", bpf.ClassPod, peerID},
		{"10.1.0.2/32", bpf.ClassPod, podID}, {"fd00:250::2/128", bpf.ClassPod, podID},
		{"10.0.0.0/24", bpf.ClassNode, 0}, {"10.0.0.0/8", bpf.ClassCluster, 0}, {"fd00:250::/48", bpf.ClassCluster, 0},
		{"169.254.169.254/32", bpf.ClassMetadata, 0}, {"fd00:ec2::254/128", bpf.ClassMetadata, 0},
	} {
		if err := dp.SetIPCache(netip.MustParsePrefix(e.p), e.class, e.id); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

func (h *harness) endpoint(identity uint32, mode bpf.EndpointMode, addrs ...netip.Addr) {
	h.t.Helper()
	ep, err := bpf.NewEndpoint(identity, mode, addrs)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.dp.SetEndpoint(h.ifindex, &ep); err != nil {
		h.t.Fatal(err)
	}
}

// policy compiles and swaps in an identity's policy, then bumps the generation as the enforcer does.
func (h *harness) policy(p *policy.IdentityPolicy) {
	h.t.Helper()
	entries, err := policy.Compile(p)
	if err != nil {
		h.t.Fatalf("compile: %v", err)
	}
	if err := h.dp.ReplacePolicy(p.Identity, entries); err != nil {
		h.t.Fatal(err)
	}
	if _, err := h.dp.BumpGeneration(); err != nil {
		h.t.Fatal(err)
	}
}

// skbContext is a __sk_buff with only ifindex set (offset 40), as BPF_PROG_TEST_RUN accepts it.
func skbContext(ifindex uint32) []byte {
	ctx := make([]byte, 192)
	binary.LittleEndian.PutUint32(ctx[40:], ifindex)
	return ctx
}

func (h *harness) run(prog *ebpf.Program, frame []byte) uint32 {
	h.t.Helper()
	ret, err := h.tryRun(prog, frame)
	if err != nil {
		h.t.Fatalf("run program on %d-byte frame: %v", len(frame), err)
	}
	return ret
}

// tryRun is run for frames the kernel's test harness may refuse: it reads the IP header of an IPv4 or IPv6
// frame itself and returns EINVAL when the frame is shorter than that header.
func (h *harness) tryRun(prog *ebpf.Program, frame []byte) (uint32, error) {
	return prog.Run(&ebpf.RunOptions{Data: frame, Context: skbContext(h.ifindex)})
}

// from runs the from-pod program (packets the pod sends); to runs the to-pod program.
func (h *harness) from(p testutil.Packet) uint32 { h.t.Helper(); return h.run(h.dp.FromPod, p.Bytes()) }
func (h *harness) to(p testutil.Packet) uint32   { h.t.Helper(); return h.run(h.dp.ToPod, p.Bytes()) }

func (h *harness) reasonCount(r bpf.Reason) uint64 {
	h.t.Helper()
	c, err := h.dp.ReasonCounters()
	if err != nil {
		h.t.Fatal(err)
	}
	return c[r].Packets
}

// openEvents starts reading the ring buffer; call before the packets whose events the test checks.
func (h *harness) openEvents() {
	h.t.Helper()
	r, err := h.dp.NewEventReader()
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { r.Close() })
	h.events = r
}

// nextEvent reads one event, failing the test when none comes.
func (h *harness) nextEvent() bpf.Event {
	h.t.Helper()
	ev, ok := h.tryEvent(time.Second)
	if !ok {
		h.t.Fatal("no event on the ring buffer")
	}
	return ev
}

func (h *harness) tryEvent(wait time.Duration) (bpf.Event, bool) {
	h.t.Helper()
	h.events.SetDeadline(time.Now().Add(wait))
	ev, err := h.events.ReadEvent()
	if err != nil { // a deadline or a closed reader: no event
		return bpf.Event{}, false
	}
	return ev, true
}

func verdictName(ret uint32) string {
	switch ret {
	case retNext:
		return "pass (TCX_NEXT)"
	case retDrop:
		return "drop"
	}
	return fmt.Sprintf("ret %d", ret)
}

func tcp(src, dst netip.Addr, sport, dport uint16, flags uint8) testutil.Packet {
	return testutil.Packet{Src: src, Dst: dst, Proto: testutil.ProtoTCP, SPort: sport, DPort: dport, TCPFlags: flags}
}

func udp(src, dst netip.Addr, sport, dport uint16) testutil.Packet {
	return testutil.Packet{Src: src, Dst: dst, Proto: testutil.ProtoUDP, SPort: sport, DPort: dport,
		Payload: []byte("moat")}
}
