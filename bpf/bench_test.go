package bpf_test

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// benchPolicy is n egress rules of one identity with distinct CIDRs and ports; the one that matches
// 198.51.100.0/24 port 443 comes last, with the given action.
func benchPolicy(n int, last bpf.Action) *policy.IdentityPolicy {
	p := &policy.IdentityPolicy{Identity: podID, DefaultEgress: bpf.ActionAllow, DefaultIngress: bpf.ActionDeny}
	for i := 0; i < n-1; i++ {
		// distinct /28s in 100.64.0.0/10 and distinct ports from 1024 up
		a := netip.AddrFrom4([4]byte{100, 64 + byte(i>>12), byte(i >> 4), byte(i&15) << 4})
		p.Rules = append(p.Rules, policy.Rule{ID: uint32(i + 1), Direction: bpf.Egress, Action: bpf.ActionDeny,
			Peers: []policy.Peer{{CIDR: netip.PrefixFrom(a, 28)}},
			Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: uint16(1024 + i), Last: uint16(1024 + i)}}})
	}
	p.Rules = append(p.Rules, policy.Rule{ID: uint32(n), Direction: bpf.Egress, Action: last,
		Peers: []policy.Peer{{CIDR: netip.MustParsePrefix("198.51.100.0/24")}},
		Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: 443, Last: 443}}})
	return p
}

// runRepeat runs prog repeat times in the kernel and returns the kernel's own time per run: BPF_PROG_TEST_RUN
// stops its clock while the thread is rescheduled, so other work on a busy machine does not count (wall time
// around the system call would). The library's Run does not return that time, and its Benchmark takes no context
// (the endpoint's ifindex), so the call is made here.
func runRepeat(b *testing.B, prog *ebpf.Program, frame, ctx []byte, repeat int, want uint32) time.Duration {
	b.Helper()
	attr := struct {
		progFD, retval, dataSizeIn, dataSizeOut uint32
		dataIn, dataOut                         uint64
		repeat, duration, ctxSizeIn, ctxSizeOut uint32
		ctxIn, ctxOut                           uint64
		flags, cpu, batchSize, _                uint32
	}{
		progFD: uint32(prog.FD()), dataSizeIn: uint32(len(frame)), dataIn: uint64(uintptr(unsafe.Pointer(&frame[0]))),
		repeat: uint32(repeat), ctxSizeIn: uint32(len(ctx)), ctxIn: uint64(uintptr(unsafe.Pointer(&ctx[0]))),
	}
	errno := unix.EINTR
	for errno == unix.EINTR { // a signal to the thread (the Go runtime's preemption) ends a run early: run again
		_, _, errno = unix.Syscall(unix.SYS_BPF, unix.BPF_PROG_TEST_RUN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	}
	runtime.KeepAlive(frame)
	runtime.KeepAlive(ctx)
	if errno != 0 {
		b.Fatalf("BPF_PROG_TEST_RUN: %v", errno)
	}
	if attr.retval != want {
		b.Fatalf("program returned %s, want %s", verdictName(attr.retval), verdictName(want))
	}
	return time.Duration(attr.duration)
}

// freshFlows runs a program on a new flow at every run of a BPF_PROG_TEST_RUN with repeat, which otherwise passes
// the same packet, so the same flow, every time: a wrapper program counts its runs in an array map, writes the
// count into the IPv4 TCP packet's source port and the low bits of its destination address (198.51.100.128-191),
// and tail-calls the program in slot 0 of its program array. Run with the empty program in the slot, it is the
// baseline of the same work.
type freshFlows struct {
	wrapper        *ebpf.Program
	count, targets *ebpf.Map
}

func newFreshFlows(b *testing.B) *freshFlows {
	b.Helper()
	count, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	targets, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		b.Fatal(err)
	}
	const sportOff, daddrLowOff = 14 + 20, 14 + 16 + 3 // after Ethernet: IPv4 without options, then TCP
	wrapper, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, count.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		asm.Add.Imm(asm.R7, 1),
		asm.StoreMem(asm.R0, 0, asm.R7, asm.Word),
		// source port: the count's low 16 bits
		asm.Mov.Reg(asm.R8, asm.R7),
		asm.And.Imm(asm.R8, 0xffff),
		asm.HostTo(asm.BE, asm.R8, asm.Half),
		asm.StoreMem(asm.RFP, -8, asm.R8, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, sportOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -8),
		asm.Mov.Imm(asm.R4, 2),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		// destination: 128 + the next 6 bits, so no flow of the other paths (to .7) is met
		asm.Mov.Reg(asm.R8, asm.R7),
		asm.RSh.Imm(asm.R8, 16),
		asm.And.Imm(asm.R8, 0x3f),
		asm.Or.Imm(asm.R8, 0x80),
		asm.StoreMem(asm.RFP, -12, asm.R8, asm.Byte),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, daddrLowOff),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -12),
		asm.Mov.Imm(asm.R4, 1),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkbStoreBytes.Call(),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, targets.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, -1).WithSymbol("out"),
		asm.Return(),
	}})
	if err != nil {
		b.Fatal(err)
	}
	f := &freshFlows{wrapper: wrapper, count: count, targets: targets}
	b.Cleanup(func() { wrapper.Close(); count.Close(); targets.Close() })
	return f
}

// run runs prog on n new flows made from frame and returns the time per run.
func (f *freshFlows) run(b *testing.B, prog *ebpf.Program, frame, ctx []byte, n int, want uint32) time.Duration {
	b.Helper()
	if err := f.targets.Put(uint32(0), prog); err != nil {
		b.Fatal(err)
	}
	return runRepeat(b, f.wrapper, frame, ctx, n, want)
}

// BenchmarkVerdict measures the datapath's cost per packet, net of an empty program run through the same harness
// (BPF_PROG_TEST_RUN's own cost). Paths: miss (no rule matches, world default), allow and deny (the last of N
// rules decides a new flow; RST keeps the packet from creating a conntrack entry, so every run is a new flow),
// ct-hit (a packet of an established flow), syn (an allowed SYN of the same flow every run: a SYN on a reused port,
// which writes over the flow's conntrack entry), syn-new (an allowed SYN of a flow never seen before, which inserts
// its conntrack entry: see freshFlows; net of the same wrapper around the empty program). The endpoint has a
// conntrack bound, as the enforcer always sets one, so a new flow pays for its count; the bound is high enough that
// the benchmark never reaches it.
func BenchmarkVerdict(b *testing.B) {
	parent := b // harnesses live until the whole benchmark ends, not just the sub-benchmark that made them
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()
	var fresh *freshFlows
	for _, n := range []int{10, 100, 1000, 10000} {
		// one datapath per N, shared by the paths (loading it and n rules is most of a run's time); each path has
		// a source port of its own so that no path's conntrack entry decides another's packets, and deny, which
		// needs the last rule to deny, goes last
		var h *harness
		last := bpf.ActionAllow
		for i, path := range []string{"miss", "allow", "ct-hit", "syn", "syn-new", "deny"} {
			b.Run(fmt.Sprintf("rules=%d/path=%s", n, path), func(b *testing.B) {
				if h == nil {
					h = newHarness(parent, bpf.Options{})
					h.policy(benchPolicy(n, last))
					if err := h.dp.UpdateConfig(func(c *bpf.Config) { c.CtMaxPerEndpoint = 1 << 30 }); err != nil {
						b.Fatal(err)
					}
				}
				if path == "deny" && last != bpf.ActionDeny {
					last = bpf.ActionDeny
					h.policy(benchPolicy(n, last))
				}
				pkt := tcp(podV4, worldV4, uint16(40000+i), 443, testutil.TCPRst|testutil.TCPAck)
				want := uint32(retNext)
				switch path {
				case "miss":
					pkt.DPort = 80
				case "deny":
					want = retDrop
				case "ct-hit":
					syn := tcp(podV4, worldV4, pkt.SPort, 443, testutil.TCPSyn)
					if got := h.from(syn); got != retNext {
						b.Fatalf("establishing the flow: %s", verdictName(got))
					}
					pkt.TCPFlags = testutil.TCPAck
				case "syn", "syn-new":
					pkt.TCPFlags = testutil.TCPSyn // a new connection's first packet: it writes its conntrack entry
				}
				frame, ctx := pkt.Bytes(), skbContext(h.ifindex)
				b.ResetTimer()
				var per, base time.Duration
				if path == "syn-new" {
					if fresh == nil {
						fresh = newFreshFlows(parent)
					}
					per = fresh.run(b, h.dp.FromPod, frame, ctx, b.N, want)
					base = fresh.run(b, empty, frame, ctx, b.N, retNext)
				} else {
					per = runRepeat(b, h.dp.FromPod, frame, ctx, b.N, want)
					base = runRepeat(b, empty, frame, ctx, b.N, retNext)
				}
				b.ReportMetric(float64(per-base), "ns/op")
				b.ReportMetric(float64(base), "empty-ns")
				entries, _ := policy.Compile(benchPolicy(n, last))
				b.ReportMetric(float64(len(entries))/float64(n), "entries/rule")
				if mem, err := h.dp.PolicyBytes(podID); err == nil {
					b.ReportMetric(float64(mem)/float64(n), "bytes/rule")
				}
			})
		}
	}
}

// BenchmarkEndpointBytes reports what one pod costs in the maps (its endpoint entry and the ipcache entries of an
// IPv4 and an IPv6 address) and what one tracked flow costs, in key and value bytes.
func BenchmarkEndpointBytes(b *testing.B) {
	dp := loadDatapath(b, bpf.Options{})
	sizes := dp.EntryBytes()
	for i := 0; i < b.N; i++ {
		_ = sizes["local_endpoints"]
	}
	b.ReportMetric(float64(sizes["local_endpoints"]+2*sizes["ipcache"]), "bytes/endpoint")
	b.ReportMetric(float64(sizes["conntrack"]), "bytes/flow")
	b.ReportMetric(float64(sizes["identities"]), "bytes/namespace")
}
