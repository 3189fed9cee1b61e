package main

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/testutil"
)

// BenchmarkPluginAddDel measures Moat's own ADD and DEL, apart from the primary plugin's: the moat binary run as
// a runtime runs it, on a veth the test made, over 200 pods per run (50 with MOAT_BENCH_QUICK), with each attach
// mode (default: staged in clsact at ADD). It reports p50 and p99 in milliseconds. The veth outlives each pod, so
// the links a tcx DEL released are detached between pods, untimed, as the veth's deletion would: the next ADD
// attaches afresh rather than taking them up.
func BenchmarkPluginAddDel(b *testing.B) {
	pl := testutil.NewPodLink(b, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")}, nil)
	n := newNodeIn(b, pl.Host, true)
	for _, mode := range []bpf.AttachMode{"", bpf.ModeTCX, bpf.ModeClsact} {
		name := string(mode)
		if mode == "" {
			name = "default"
		}
		b.Run("mode="+name, func(b *testing.B) {
			stdin := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": "moattest", "type": "moat", "pinRoot": %q, "endpointDir": %q,
		"attachMode": %q, "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": %q}],
		"ips": [{"address": "10.250.0.2/24", "interface": 0}]}}`, n.pinRoot, filepath.Join(n.state, "endpoints"), mode,
				pl.Pod.Path())
			pods := 200
			if os.Getenv("MOAT_BENCH_QUICK") != "" {
				pods = 50 // make bench QUICK=1
			}
			var adds, dels []time.Duration
			for i := 0; i < b.N*pods; i++ {
				for _, cmd := range []string{"ADD", "DEL"} {
					env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": fmt.Sprintf("bench-%s-%d", mode, i),
						"CNI_NETNS": pl.Pod.Path(), "CNI_IFNAME": "eth0", "CNI_PATH": binDir,
						"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + testNamespace + ";K8S_POD_NAME=bench"}
					start := time.Now()
					code, out := n.runBinary(b, "moat", invocation{env: env, stdin: stdin})
					took := time.Since(start)
					if code != 0 {
						b.Fatalf("%s %d: code %d: %s", cmd, i, code, out)
					}
					if cmd == "ADD" {
						adds = append(adds, took)
						continue
					}
					dels = append(dels, took)
					if err := n.inHost(func() error { _, err := n.life().DetachAllLinks(); return err }); err != nil {
						b.Fatal(err)
					}
				}
			}
			for name, d := range map[string][]time.Duration{"add": adds, "del": dels} {
				slices.Sort(d)
				b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"-p50-ms")
				b.ReportMetric(float64(d[len(d)*99/100].Microseconds())/1000, name+"-p99-ms")
			}
			b.ReportMetric(float64(pods), "pods")
		})
	}
}
