package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

// BenchmarkEnforcerRSS measures the real moat-enforcer's memory with 250 pods recorded (veths in a network
// namespace of the benchmark's own, adopted and attached by the enforcer) and 10,000 rules from a folder, once
// everything is in force. Each op is one such run.
func BenchmarkEnforcerRSS(b *testing.B) {
	const pods, rules = 250, 10000
	testutil.RequireRoot(b)
	bin := filepath.Join(b.TempDir(), "moat-enforcer")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	var rss, hwm float64
	for i := 0; i < b.N; i++ {
		r, h := enforcerRSS(b, bin, pods, rules)
		rss, hwm = max(rss, r), max(hwm, h)
	}
	b.ReportMetric(rss, "rss-MiB")
	b.ReportMetric(hwm, "peak-rss-MiB")
	b.ReportMetric(0, "ns/op")
}

func enforcerRSS(b *testing.B, bin string, pods, rules int) (rss, hwm float64) {
	host := testutil.NewNS(b)
	h, err := netlink.NewHandleAt(netns.NsHandle(host.Fd()))
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	dir := b.TempDir()
	store := endpoint.Store{Dir: filepath.Join(dir, "endpoints")}
	for i := 0; i < pods; i++ {
		name := fmt.Sprintf("rss%d", i)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			b.Fatal(err)
		}
		l, err := h.LinkByName(name)
		if err != nil {
			b.Fatal(err)
		}
		if err := store.Save(&endpoint.Record{Network: "net", ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0",
			Namespace: fmt.Sprintf("ns%d", i%25), Pod: name, HostIfname: name, HostIfindex: l.Attrs().Index,
			Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 200+i>>16, (i>>8)&255, i&255)}}); err != nil {
			b.Fatal(err)
		}
	}
	var policy strings.Builder
	policy.WriteString("apiVersion: moat.dev/v1alpha1\nkind: FirewallConfig\nmetadata: {name: default}\nspec: {defaultEgress: Deny}\n")
	for i := 0; i < 25; i++ {
		fmt.Fprintf(&policy, "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: ns%d, labels: {moat.dev/zone: z%d}}\n", i, i%5)
	}
	for p := 0; p < 10; p++ { // ten policies of 1,000 rules, each selecting the namespaces of one zone or two
		fmt.Fprintf(&policy, "---\napiVersion: moat.dev/v1alpha1\nkind: FirewallPolicy\nmetadata: {name: bulk-%d}\nspec:\n", p)
		fmt.Fprintf(&policy, "  namespaceSelector: {matchExpressions: [{key: moat.dev/zone, operator: In, values: [z%d, z%d]}]}\n  egress:\n", p%5, (p+1)%5)
		for i := p * rules / 10; i < (p+1)*rules/10; i++ {
			fmt.Fprintf(&policy, "  - {action: Allow, to: [{cidr: 100.%d.%d.%d/32}], ports: [{protocol: TCP, port: %d}]}\n",
				64+i>>16, (i>>8)&255, i&255, 10000+i%50000)
		}
	}
	policyDir := filepath.Join(dir, "policy")
	if err := os.MkdirAll(policyDir, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "policy.yaml"), []byte(policy.String()), 0o600); err != nil {
		b.Fatal(err)
	}
	socket := filepath.Join(dir, "enforcer.sock")
	root := testutil.PinRoot(b)
	logFile, err := os.Create(filepath.Join(dir, "enforcer.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "--pin-root", root, "--policy-dir", policyDir, "--metrics-addr", "",
		"--endpoint-dir", store.Dir, "--socket", socket, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// started from a thread in the pods' host namespace, the enforcer runs there
	if err := host.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	c := agentapi.NewClient(socket)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st, err := c.Status(context.Background())
		if err == nil && st.Ready && st.AttachModes["tcx"] == pods {
			break
		}
		if time.Now().After(deadline) {
			data, _ := os.ReadFile(logFile.Name())
			b.Fatalf("the enforcer never had all %d pods attached: %+v %v\n%s", pods, st, err, data)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // steady state: the adoption's garbage collected
	if os.Getenv("MOAT_RSS_LOG") != "" {
		data, _ := os.ReadFile(logFile.Name())
		_ = os.WriteFile(os.Getenv("MOAT_RSS_LOG"), data, 0o600)
	}
	if p := os.Getenv("MOAT_RSS_SMAPS"); p != "" {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", cmd.Process.Pid))
		_ = os.WriteFile(p, data, 0o600)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	// the adopted pods' links go with their pins and veths; the namespace goes with the test
	for i := 0; i < pods; i++ {
		_ = host.Do(func(ns.NetNS) error {
			life := endpoint.Lifecycle{Store: store, PinRoot: root}
			return life.Forget(endpoint.Key{Network: "net", ContainerID: fmt.Sprintf("c%d", i), IfName: "eth0"})
		})
	}
	return rss, hwm
}
