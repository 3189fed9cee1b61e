package hostile

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/simnode"
)

// floodFlows is how many short flows the flooding pod starts: several times the whole table.
const floodFlows = 20000

// flood starts n short flows from the pod to distinct world (address, port) pairs, from port first on: two
// datagrams each. A second packet matters: the kernel's LRU map keeps an entry that was looked up again
// (referenced) ahead of entries that were only inserted, so a flood of one-packet flows only evicts itself,
// while flows of two packets push a quiet connection's entry out. The flows are sent from every CPU in turn:
// the LRU map keeps a list of new entries per CPU, and an entry made on a CPU the flood never runs on would
// otherwise outlive it.
func flood(t *testing.T, p *simnode.Pod, first, n int) {
	t.Helper()
	cpus := runtime.NumCPU()
	for cpu := range cpus {
		err := p.Net.Do(func(ns.NetNS) error {
			var was unix.CPUSet
			if err := unix.SchedGetaffinity(0, &was); err != nil {
				return err
			}
			var on unix.CPUSet
			on.Set(cpu)
			if err := unix.SchedSetaffinity(0, &on); err != nil {
				return err
			}
			defer unix.SchedSetaffinity(0, &was) //nolint:errcheck // best effort: the thread goes back to the pool either way
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: ip(p.Addr)})
			if err != nil {
				return err
			}
			defer c.Close()
			for i := cpu; i < n; i += cpus {
				// 198.51.100.0/24 and 203.0.113.0/24 both lead to the stand-in Internet
				w := simnode.World[i%2].Addr().As4()
				w[3] = byte(2 + (i/2)%250)
				to := netip.AddrPortFrom(netip.AddrFrom4(w), uint16(first+i/500))
				for range 2 {
					if _, err := c.WriteToUDPAddrPort([]byte("flood"), to); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("flood from CPU %d: %v", cpu, err)
		}
	}
}

// conntrackFlood: one pod starts many short flows to fill the conntrack table, evicting the entries of other
// pods' connections; a connection into a namespace that denies world ingress then dies at the server's next
// packet. Moat bounds the entries one endpoint may hold (spec.conntrack.maxPerEndpoint) and drops a flow over
// the bound (reason conntrack-limit). Without Moat there is no conntrack to evict, so this case's baseline is a
// Moat node whose bound is the whole table: there the flood does break the other pod's connection.
func conntrackFlood(t *testing.T, e *env) {
	if !e.moat {
		t.Skip("without Moat there is no conntrack table to flood: the baseline is the Moat node with no per-endpoint bound")
	}
	if !e.ctEntries {
		t.Fatal("moat-enforcer has no --conntrack-entries flag: the table cannot be made small enough to flood")
	}
	a, b := e.pods["flood-a"], e.pods["stream-b"]
	port := 1024
	for _, c := range []struct {
		name   string
		bound  int
		breaks bool
	}{
		// the bounded run first, while the table is nearly empty
		{"bound of 1024 per endpoint", 1024, false},
		// the default bound (65536), far above this small table: in effect none
		{"no bound (the baseline)", 65536, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.apply(t, "00-config.yaml", configYAML(fmt.Sprintf("  conntrack: {maxPerEndpoint: %d}\n", c.bound)))
			s := openStream(t, e, b, uint16(7100+c.bound%100))
			if err := s.exchange("before", 3*time.Second); err != nil {
				t.Fatalf("the stream does not work to begin with: %v", err)
			}
			if !c.breaks {
				start := time.Now()
				flood(t, a, port, floodFlows)
				port += floodFlows/500 + 1
				t.Logf("%d flows sent in %v", floodFlows, time.Since(start).Round(time.Millisecond))
				if err := s.exchange("after", 3*time.Second); err != nil {
					t.Errorf("the flood broke the other pod's connection: %v", err)
				}
				if _, ok := e.waitFlow(t, func(f agentapi.Flow) bool {
					return f.Reason == "conntrack-limit" && f.Src == a.Addr.String()
				}); !ok {
					t.Errorf("no flow event dropping the flood's excess with reason conntrack-limit")
				}
				return
			}
			// Once the entry is gone the server's next segment is decided as new world ingress, and denied. LRU
			// eviction is approximate, so the flood gets a few rounds; a segment that still passes refreshes the
			// entry and the next round tries again.
			for round := 1; ; round++ {
				start := time.Now()
				flood(t, a, port, floodFlows)
				port += floodFlows/500 + 1
				t.Logf("round %d: %d flows sent in %v", round, floodFlows, time.Since(start).Round(time.Millisecond))
				_ = s.server.SetWriteDeadline(time.Now().Add(time.Second))
				_, _ = fmt.Fprintf(s.server, "after %d\n", round)
				if _, ok := e.waitFlow(t, func(f agentapi.Flow) bool {
					return f.Direction == "ingress" && f.Verdict == "denied" && f.Src == s.serverAddr.Addr().String() &&
						f.Sport == s.serverAddr.Port() && f.Dport == s.podPort
				}); ok {
					return
				}
				if round == 3 {
					t.Fatalf("with no per-endpoint bound %d rounds of flood did not evict the other pod's entry: no attack", round)
				}
			}
		})
	}
}
