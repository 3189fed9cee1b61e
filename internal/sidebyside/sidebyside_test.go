package sidebyside

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func requireTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, bpf, iptables): run as root")
	}
	for _, tool := range []string{"ip", "taskset", "iperf3", "iptables-legacy-restore", "iptables-nft-restore", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s missing: run internal/sidebyside/prereqs.sh", tool)
		}
	}
}

// hostRules is the host namespace's iptables-legacy and nft rulesets (iptables-nft shows in the latter).
func hostRules(t *testing.T) string {
	t.Helper()
	legacy, err := output(context.Background(), nil, "iptables-legacy-save")
	if err != nil {
		t.Fatal(err)
	}
	nft, err := output(context.Background(), nil, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	return string(legacy) + string(nft)
}

// reachable sets up cfg with n rules (without the matching one if withoutMatch), starts the echo server and
// makes one exchange from the client.
func reachable(ctx context.Context, cfg string, n int, withoutMatch bool) (err error) {
	topo, err := newTopology(ctx)
	if err != nil {
		return err
	}
	defer topo.close()
	remove, err := installFilter(ctx, topo, cfg, n, withoutMatch)
	if err != nil {
		return err
	}
	defer remove()
	argv, env, err := helperCommand(topo.server, serverCPU, "server", fmt.Sprintf("%s:%d", serverAddr, rrPort))
	if err != nil {
		return err
	}
	srv := exec.Command(argv[0], argv[1:]...)
	srv.Env = env
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	time.Sleep(300 * time.Millisecond) // the server listening; a refused connect would read as a drop otherwise
	return probe(ctx, topo, rrPort)
}

func TestSideBySideSmoke(t *testing.T) {
	requireTools(t)
	ctx := context.Background()
	before := hostRules(t)

	for _, cfg := range Configs {
		t.Run(cfg, func(t *testing.T) {
			got, err := measure(ctx, cfg, 10, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range Metrics {
				if v, ok := got[m]; !ok || v <= 0 {
					t.Errorf("%s: %v (present %v), want a positive number", m, v, ok)
				}
			}
			t.Logf("%v", got)
		})
	}

	// The filters are real: each lets the flow through with its matching rule and drops it without.
	for _, cfg := range []string{ConfigMoat, ConfigIptablesLegacy, ConfigIptablesNft, ConfigNftables} {
		t.Run(cfg+"/drops", func(t *testing.T) {
			if err := reachable(ctx, cfg, 10, false); err != nil {
				t.Fatalf("with the matching rule: %v", err)
			}
			if err := reachable(ctx, cfg, 10, true); err == nil {
				t.Fatal("without the matching rule the connection still went through")
			}
		})
	}

	after := hostRules(t)
	for _, leak := range []string{clientAddr, "sidebyside", "100.64.0.0/28"} {
		if strings.Contains(after, leak) && !strings.Contains(before, leak) {
			t.Errorf("the host namespace's rules name %s after the test:\n%s", leak, after)
		}
	}
	out, err := output(ctx, nil, "ip", "netns", "list")
	if err != nil {
		t.Fatal(err)
	}
	if tag := fmt.Sprintf("sbs%d-", os.Getpid()); strings.Contains(string(out), tag) {
		t.Errorf("namespaces left behind:\n%s", out)
	}
}

// TestSideBySideReport runs the whole comparison when SIDEBYSIDE_OUT names a folder, and writes the Markdown
// section (sidebyside.md) and the plots there. SIDEBYSIDE_QUICK=1 measures N=10 and 10,000 only.
func TestSideBySideReport(t *testing.T) {
	dir := os.Getenv("SIDEBYSIDE_OUT")
	if dir == "" {
		t.Skip("set SIDEBYSIDE_OUT to a folder to run the comparison")
	}
	requireTools(t)
	opts := Options{Quick: os.Getenv("SIDEBYSIDE_QUICK") == "1"}
	if d, err := time.ParseDuration(os.Getenv("SIDEBYSIDE_DURATION")); err == nil {
		opts.Duration = d
	}
	if _, err := fmt.Sscan(os.Getenv("SIDEBYSIDE_REPS"), &opts.Reps); err != nil {
		opts.Reps = 0
	}
	results, err := Run(context.Background(), opts, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	md := Render(results)
	if err := os.WriteFile(filepath.Join(dir, "sidebyside.md"), []byte(md), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WritePlots(dir, results); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + md)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
