package hostile

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/simnode"
	"github.com/moatfw/moat/internal/testutil"
)

var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run()
		}
		dir, err := os.MkdirTemp("", "moat-hostile-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		// what a node runs; moatctl and moat-install are not needed
		if err := simnode.Build(dir, nil, "moat", "moat-ipam", "moat-enforcer", "bridge", "host-local", "loopback", "portmap"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

// conntrackEntries is the size of the Moat node's whole conntrack table: small, so the flood case fills it.
const conntrackEntries = 4096

// The namespaces of the nodes and their labels; every case's pods live here. Each case writes the policies it
// needs into a file of its own.
const namespacesYAML = `apiVersion: v1
kind: Namespace
metadata: {name: icmp, labels: {moat.dev/zone: icmp, moat.dev/egress: Deny}}
---
apiVersion: v1
kind: Namespace
metadata: {name: locked, labels: {moat.dev/zone: locked, moat.dev/ingress: Deny}}
---
apiVersion: v1
kind: Namespace
metadata: {name: neigh, labels: {moat.dev/zone: neigh}}
---
apiVersion: v1
kind: Namespace
metadata: {name: tunnel, labels: {moat.dev/zone: tunnel}}
---
apiVersion: v1
kind: Namespace
metadata: {name: rst, labels: {moat.dev/zone: rst, moat.dev/ingress: Deny}}
---
apiVersion: v1
kind: Namespace
metadata: {name: nat64, labels: {moat.dev/zone: nat64}}
---
apiVersion: v1
kind: Namespace
metadata: {name: mobility, labels: {moat.dev/zone: mobility, moat.dev/egress: Deny}}
---
apiVersion: v1
kind: Namespace
metadata: {name: flood, labels: {moat.dev/zone: flood}}
---
apiVersion: v1
kind: Namespace
metadata: {name: stream, labels: {moat.dev/zone: stream, moat.dev/ingress: Deny}}
`

// configYAML is the FirewallConfig: the pod ranges are the cluster, the node's own addresses (its uplink and the
// pods' gateway) are nodes. extra is appended to its spec (indented two spaces).
func configYAML(extra string) string {
	return `apiVersion: moat.dev/v1alpha1
kind: FirewallConfig
metadata: {name: default}
spec:
  clusterCIDRs: [10.251.0.0/24, "fd00:251::/64"]
  nodeCIDRs: [10.99.0.0/30, 10.251.0.1/32, "fd00:250:99::/64", "fd00:251::1/128"]
` + extra
}

// pods are the pods of every node, by namespace.
var pods = map[string][]string{
	"icmp": {"icmp-a"}, "locked": {"locked-v"}, "neigh": {"neigh-a", "neigh-v", "neigh-w"}, "tunnel": {"tunnel-a"},
	"rst": {"rst-a"}, "nat64": {"nat64-a"}, "mobility": {"mobility-a"}, "flood": {"flood-a"}, "stream": {"stream-b"},
}

// env is one simulated node the cases run on: without Moat in the chain (baseline) or with it.
type env struct {
	name string
	moat bool
	node *simnode.Node
	pods map[string]*simnode.Pod
	// ctEntries says whether the enforcer took --conntrack-entries (the flood case needs it).
	ctEntries bool
	mu        sync.Mutex
	applied   int
}

// newEnv makes a dual-stack node, with Moat chained and its enforcer running when moat is set, and the pods.
func newEnv(ctx context.Context, dir string, moat bool) (*env, error) {
	e := &env{name: "baseline", moat: moat, pods: map[string]*simnode.Pod{}}
	if moat {
		e.name = "moat"
	}
	node, err := simnode.New(dir, binDir, simnode.Options{Ports: []uint16{53, 80, 443}, Unchained: !moat, DualStack: true})
	if err != nil {
		return nil, fmt.Errorf("%s node: %w", e.name, err)
	}
	e.node = node
	if moat {
		if err := node.WritePolicy("00-config.yaml", configYAML("")); err != nil {
			return e, err
		}
		if err := node.WritePolicy("01-namespaces.yaml", namespacesYAML); err != nil {
			return e, err
		}
		var args []string
		if help, _ := exec.Command(filepath.Join(binDir, "moat-enforcer"), "--help").CombinedOutput(); strings.Contains(string(help), "conntrack-entries") {
			args, e.ctEntries = []string{"--conntrack-entries", fmt.Sprint(conntrackEntries)}, true
		}
		if err := node.StartEnforcer(ctx, args...); err != nil {
			return e, err
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for namespace, names := range pods {
		for _, name := range names {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p, err := node.AddPod(ctx, namespace, name)
				if err != nil {
					errs <- err
					return
				}
				e.mu.Lock()
				e.pods[name] = p
				e.mu.Unlock()
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return e, fmt.Errorf("%s node: %w", e.name, err)
	}
	return e, nil
}

func (e *env) close() error {
	if e == nil || e.node == nil {
		return nil
	}
	return e.node.Close()
}

// apply writes a policy file and waits until the enforcer has it in force: the file carries a policy named after
// this write that selects nothing, and the enforcer lists its policies only after their maps are written. Without
// Moat it does nothing.
func (e *env) apply(t *testing.T, file, yaml string) {
	t.Helper()
	if !e.moat {
		return
	}
	e.mu.Lock()
	e.applied++
	marker := fmt.Sprintf("applied-%d", e.applied)
	e.mu.Unlock()
	doc := yaml
	if doc != "" && !strings.HasSuffix(doc, "\n") {
		doc += "\n"
	}
	if doc != "" {
		doc += "---\n"
	}
	doc += fmt.Sprintf(`apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: %s}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: nowhere}}
`, marker)
	if err := e.node.WritePolicy(file, doc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c := agentapi.NewClient(e.node.Socket)
	for {
		st, err := c.Status(ctx)
		if err == nil {
			for _, pr := range st.Problems {
				if strings.Contains(pr, file) {
					t.Fatalf("the enforcer has a problem with %s: %s", file, pr)
				}
			}
		}
		ps, err := c.Policies(ctx)
		if err == nil {
			for _, p := range ps {
				if p.Name == marker {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the enforcer never applied %s (%v):\n%s", file, err, e.node.EnforcerLog())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// verdict checks what reached the destination: without Moat the attack must get through (else the case proves
// nothing); with Moat it must be stopped when blocked is set, and get through otherwise.
func (e *env) verdict(t *testing.T, what string, arrived, blocked bool) {
	t.Helper()
	switch {
	case !e.moat && !arrived:
		t.Errorf("%s: did not get through without Moat, so it is no attack", what)
	case e.moat && blocked && arrived:
		t.Errorf("%s: got through Moat", what)
	case e.moat && !blocked && !arrived:
		t.Errorf("%s: Moat stopped it, and must let it through", what)
	}
}

// flows reads the node's flow log.
func (e *env) flows(t *testing.T) []agentapi.Flow {
	t.Helper()
	f, err := os.Open(e.node.FlowLog)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []agentapi.Flow
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		var fl agentapi.Flow
		if json.Unmarshal(sc.Bytes(), &fl) == nil {
			out = append(out, fl)
		}
	}
	return out
}

// waitFlow waits a few seconds for an event of the flow log that match accepts; false if none came.
func (e *env) waitFlow(t *testing.T, match func(agentapi.Flow) bool) (agentapi.Flow, bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, f := range e.flows(t) {
			if match(f) {
				return f, true
			}
		}
		if time.Now().After(deadline) {
			return agentapi.Flow{}, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHostile runs every case on a node without Moat (the baseline: each attack gets through) and on a node with
// Moat (each is stopped, or passes when it is legitimate). The nodes are made once, side by side.
func TestHostile(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var envs [2]*env
	var errs [2]error
	var wg sync.WaitGroup
	for i, moat := range []bool{false, true} {
		dir := t.TempDir()
		wg.Add(1)
		go func() {
			defer wg.Done()
			envs[i], errs[i] = newEnv(ctx, dir, moat)
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, e := range envs {
			if e != nil && e.moat && t.Failed() {
				t.Logf("enforcer log:\n%s", e.node.EnforcerLog())
			}
			if err := e.close(); err != nil {
				t.Errorf("close the %s node: %v", e.name, err)
			}
		}
	})
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, e := range envs {
				t.Run(e.name, func(t *testing.T) { c.run(t, e) })
			}
		})
	}
}

// A case is an attack, run once per node.
type hostileCase struct {
	name string
	run  func(t *testing.T, e *env)
}

// cases run in this order; the conntrack flood comes last, as it fills the table.
var cases = []hostileCase{
	{"icmp-error-tunnel", icmpErrors},
	{"arp", arp},
	{"neighbor-discovery", neighborDiscovery},
	{"to-pod-wrong-address", toPodWrongAddress},
	{"tunnel-to-node", tunnels},
	{"blind-rst", blindRST},
	{"nat64-metadata", nat64},
	{"ipv6-mobility-header", mobility},
	{"spoofed-cluster-source", spoofedClusterSource},
	{"masqueraded-nodeport", masqueradedNodePort},
	{"conntrack-flood", conntrackFlood},
}
