package main

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/conflist"
	"github.com/moatfw/moat/internal/testutil"
)

const restartPolicy = `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec: {defaultEgress: Deny, defaultIngress: Deny}
---
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: web-out}
spec:
  namespaceSelector: {}
  egress: [{action: Allow, ports: [{protocol: TCP, port: 443}]}]
`

// Killing the enforcer with SIGKILL changes no verdict: while it is gone and while it starts again, a denied
// probe never gets through and an allowed TCP stream goes on; the new process adopts the pinned state.
func TestKillNineChangesNoVerdict(t *testing.T) {
	testutil.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "moat-enforcer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	root := testutil.PinRoot(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(restartPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := filepath.Join(t.TempDir(), "enforcer.log")
	socket := filepath.Join(t.TempDir(), "enforcer.sock")
	cniDir := t.TempDir()
	conflistPath := filepath.Join(cniDir, "10-net.conflist")
	if err := os.WriteFile(conflistPath, []byte(`{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"ptp"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	metricsAddr := testutil.FreeLocalAddr(t)
	start := func() *exec.Cmd {
		t.Helper()
		f, err := os.OpenFile(logs, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd := exec.Command(bin, "--pin-root", root, "--policy-dir", dir, "--metrics-addr", metricsAddr,
			"--endpoint-dir", filepath.Join(dir, "endpoints"), "--socket", socket, "--cni-conf-dir", cniDir)
		cmd.Stdout, cmd.Stderr = f, f
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	// until waits for cond, up to a liveness bound far above any real wait
	until := func(what string, cond func() bool) {
		t.Helper()
		for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			if cond() {
				return
			}
		}
		data, _ := os.ReadFile(logs)
		t.Fatalf("%s never happened; the enforcer logged:\n%s", what, data)
	}
	// applied tells whether an enforcer started at since or later has its policy in force
	applied := func(since time.Time) func() bool {
		return func() bool {
			st, err := agentapi.NewClient(socket).Status(context.Background())
			return err == nil && st.Generation != 0 && !st.Started.Before(since)
		}
	}
	first := start()
	until("the policy in force", applied(time.Time{}))

	dp, err := bpf.OpenPinned(root)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	web, ok, err := dp.NamespaceIdentity("web")
	if err != nil || !ok {
		t.Fatalf("identity of web: %v %v", ok, err)
	}
	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24")})
	ep, _ := bpf.NewEndpoint(web, bpf.ModeEnforce, []netip.Addr{netip.MustParseAddr("10.250.0.2")})
	if err := dp.SetEndpoint(uint32(pl.HostIfindex), &ep); err != nil {
		t.Fatal(err)
	}
	att, _ := bpf.NewAttacher(bpf.ModeTCX)
	var a bpf.Attachment
	if err := pl.Host.Do(func(ns.NetNS) error { a, err = att.Attach(pl.HostIfindex, dp.FromPod, dp.ToPod); return err }); err != nil {
		t.Fatal(err)
	}
	defer a.Detach()

	stream := testutil.StreamEcho(t, pl, "198.51.100.1:443")
	testutil.Listen(t, pl.Host, "198.51.100.1:80")
	var leaked, probes atomic.Int64
	stop := make(chan struct{})
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		for {
			select {
			case <-stop:
				return
			default:
			}
			probes.Add(1)
			if testutil.Exchange(pl.Pod, "198.51.100.1:80", 100*time.Millisecond) == nil {
				leaked.Add(1)
			}
		}
	}()

	// traffic waits for a few more denied probes and allowed exchanges than there were
	traffic := func(what string) {
		t.Helper()
		p, x := probes.Load(), stream.Exchanged()
		until(what, func() bool { return probes.Load() >= p+5 && stream.Exchanged() >= x+20 })
	}
	traffic("traffic with the first enforcer")
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	traffic("traffic with no enforcer at all")
	restarted := time.Now()
	start()
	until("the policy in force again", applied(restarted))
	traffic("traffic with the restarted enforcer")
	close(stop)
	<-probed
	exchanged, failed := stream.Stop()

	if leaked.Load() != 0 {
		t.Errorf("%d of %d denied probes got through around the restart", leaked.Load(), probes.Load())
	}
	if failed != nil || exchanged < 20 {
		t.Errorf("the allowed stream: %d exchanges, then %v; want it unbroken", exchanged, failed)
	}
	data, _ := os.ReadFile(logs)
	if !strings.Contains(string(data), "createdMaps=false") {
		t.Errorf("the restarted enforcer did not reuse the pinned maps:\n%s", data)
	}
	// the socket the killed enforcer left behind was taken over, and the new one reports the adopted state
	st, err := agentapi.NewClient(socket).Status(context.Background())
	if err != nil || !st.Ready || st.Namespaces != 1 || st.Generation == 0 {
		t.Errorf("status after the restart: %+v, %v", st, err)
	}
	// and the repair loop keeps moat in the CNI chain
	if data, _ := os.ReadFile(conflistPath); !conflist.Chained(data) {
		t.Errorf("the enforcer's repair loop did not chain moat:\n%s", data)
	}
	// the probes a DaemonSet uses: live, and ready only while the node is right (here: a CNI network to chain into)
	probe := func(path string) (int, string) {
		resp, err := http.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := probe("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := probe("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz of a healthy node: %d %s", code, body)
	}
	conflistData, _ := os.ReadFile(conflistPath)
	if err := os.Remove(conflistPath); err != nil {
		t.Fatal(err)
	}
	if code, body := probe("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no CNI network") {
		t.Errorf("/readyz without a CNI network: %d %s", code, body)
	}
	if err := os.WriteFile(conflistPath, conflistData, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, body := probe("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with the network back: %d %s", code, body)
	}
	t.Logf("%d denied probes, %d stream exchanges across a kill -9 and restart", probes.Load(), exchanged)
}
