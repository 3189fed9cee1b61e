package bpf_test

import (
	"testing"
	"time"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

// Events decode into flows with wall-clock time, addresses, ports and the decision.
func TestEventReader(t *testing.T) {
	h := newHarness(t, bpf.Options{})
	h.policy(truthPolicy())
	r, err := h.dp.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	before := time.Now()
	if got := h.from(tcp(podV4, worldV4, 40003, 80, testutil.TCPSyn)); got != retDrop {
		t.Fatalf("denied packet: %s", verdictName(got))
	}
	if got := h.to(tcp(peerV6, podV6, 50003, 8443, testutil.TCPSyn)); got != retDrop {
		t.Fatalf("denied inbound packet: %s", verdictName(got))
	}
	want := []bpf.Flow{
		{Ifindex: h.ifindex, Identity: podID, RemoteClass: bpf.ClassWorld, RuleID: 12, Direction: bpf.Egress,
			Verdict: bpf.VerdictDenied, Reason: bpf.ReasonDenyRule, Protocol: testutil.ProtoTCP,
			Src: podV4, Dst: worldV4, SrcPort: 40003, DstPort: 80},
		{Ifindex: h.ifindex, Identity: podID, RemoteIdentity: peerID, RemoteClass: bpf.ClassPod, RuleID: 22,
			Direction: bpf.Ingress, Verdict: bpf.VerdictDenied, Reason: bpf.ReasonDenyRule, Protocol: testutil.ProtoTCP,
			Src: peerV6, Dst: podV6, SrcPort: 50003, DstPort: 8443},
	}
	for i, w := range want {
		r.SetDeadline(time.Now().Add(time.Second))
		f, err := r.Read()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if f.Time.Before(before.Add(-time.Second)) || f.Time.After(time.Now().Add(time.Second)) {
			t.Errorf("event %d at %v, want between %v and now", i, f.Time, before)
		}
		w.Time = f.Time
		if f != w {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, f, w)
		}
	}
	r.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if f, err := r.Read(); err == nil {
		t.Errorf("an unexpected event: %+v", f)
	}
	ingress := want[1]
	if ingress.Remote() != peerV6 || want[0].Remote() != worldV4 {
		t.Errorf("Remote() of ingress %v, of egress %v", ingress.Remote(), want[0].Remote())
	}
}
