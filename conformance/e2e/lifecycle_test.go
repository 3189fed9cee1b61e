package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/moatfw/moat/conformance/node"
)

// nodeOf is the node a pod runs on.
func nodeOf(t *testing.T, p pod) *node.Node {
	t.Helper()
	for _, n := range suite.nodes {
		if n.Name == p.node {
			return n
		}
	}
	t.Fatalf("%s runs on %q, not a node of the suite", p, p.node)
	return nil
}

// podNetns finds a pod's network namespace from the record Moat's plugin left for it on its node.
func podNetns(t *testing.T, p pod) ns.NetNS {
	t.Helper()
	n := nodeOf(t, p)
	files, _ := filepath.Glob(n.HostPath("/run/moat/endpoints") + "/*/*.json")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var rec struct {
			Namespace string `json:"namespace"`
			Pod       string `json:"pod"`
			Netns     string `json:"netns"`
		}
		if json.Unmarshal(data, &rec) == nil && rec.Namespace == p.ns && rec.Pod == p.name {
			netns, err := ns.GetNS(n.HostPath(rec.Netns))
			if err != nil {
				t.Fatalf("the network namespace of %s: %v", p, err)
			}
			t.Cleanup(func() { netns.Close() })
			return netns
		}
	}
	t.Fatalf("no endpoint record for %s in %s's /run/moat/endpoints", p, n.Name)
	return nil
}

// traffic runs, from inside a pod, an allowed TCP stream (a line every 50 ms on one connection) and a loop of
// new connections to a denied port, until stop: what must hold while Moat itself changes.
type traffic struct {
	stop      chan struct{}
	done      chan struct{}
	exchanges atomic.Int64
	streamErr atomic.Value
	probes    atomic.Int64
	leaked    atomic.Int64
	// datagrams, when withDatagrams added them: numbered UDP datagrams sent and those echoed back
	dgDone       chan struct{}
	sent, echoed atomic.Int64
}

// withDatagrams adds a numbered UDP datagram every 20 ms from inside the pod to target, which echoes each one:
// a datagram never echoed is an allowed packet lost (UDP has no retransmission to hide it).
func (tr *traffic) withDatagrams(t *testing.T, netns ns.NetNS, target string) {
	t.Helper()
	var conn net.Conn
	if err := netns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.Dial("udp", target)
		return err
	}); err != nil {
		t.Fatalf("open the datagram socket to %s: %v", target, err)
	}
	tr.dgDone = make(chan struct{})
	var seen sync.Map
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		buf := make([]byte, 512)
		for {
			n, err := conn.Read(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var seq int64
			if i := strings.LastIndex(string(buf[:n]), "seq "); err == nil && i >= 0 {
				if _, err := fmt.Sscan(string(buf[i+4:n]), &seq); err == nil {
					if _, dup := seen.LoadOrStore(seq, true); !dup {
						tr.echoed.Add(1)
					}
				}
			}
		}
	}()
	go func() {
		defer close(tr.dgDone)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
	send:
		for seq := int64(0); ; seq++ {
			select {
			case <-tr.stop:
				break send
			case <-tick.C:
			}
			if _, err := fmt.Fprintf(conn, "seq %d", seq); err == nil {
				tr.sent.Add(1)
			}
		}
		// the last echoes are on their way: wait for them (a lost one never comes)
		eventually(2*time.Second, func() bool { return tr.echoed.Load() >= tr.sent.Load() })
		conn.Close()
		<-readDone
	}()
}

func startTraffic(t *testing.T, netns ns.NetNS, allowed, denied string) *traffic {
	t.Helper()
	tr := &traffic{stop: make(chan struct{}), done: make(chan struct{})}
	var conn net.Conn
	if err := netns.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", allowed, 2*time.Second)
		return err
	}); err != nil {
		t.Fatalf("open the allowed stream to %s: %v", allowed, err)
	}
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		defer conn.Close()
		rd := bufio.NewReader(conn)
		for i := 0; ; i++ {
			select {
			case <-tr.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := fmt.Fprintf(conn, "ping %d\n", i); err != nil {
				tr.streamErr.Store(err.Error())
				return
			}
			line, err := rd.ReadString('\n')
			if err != nil || !strings.Contains(line, fmt.Sprintf("ping %d", i)) {
				tr.streamErr.Store(fmt.Sprintf("exchange %d: %q %v", i, line, err))
				return
			}
			tr.exchanges.Add(1)
		}
	}()
	go func() {
		defer close(tr.done)
		defer func() { <-streamDone }()
		for {
			select {
			case <-tr.stop:
				return
			default:
			}
			tr.probes.Add(1)
			var c net.Conn
			err := netns.Do(func(ns.NetNS) error {
				var err error
				c, err = net.DialTimeout("tcp", denied, 200*time.Millisecond)
				return err
			})
			if err == nil {
				tr.leaked.Add(1)
				c.Close()
			}
		}
	}()
	return tr
}

// finish stops the traffic and records what happened to it.
func (tr *traffic) finish(t *testing.T, what string) {
	t.Helper()
	close(tr.stop)
	<-tr.done
	serr, _ := tr.streamErr.Load().(string)
	leaks := fmt.Sprintf("%d of %d", tr.leaked.Load(), tr.probes.Load())
	if !record(t, what+": denied connections that got through", "0 of N", strings.Replace(leaks, fmt.Sprintf(" of %d", tr.probes.Load()), " of N", 1), 0) {
		t.Errorf("%s: %s denied connections got through", what, leaks)
	}
	stream := "unbroken"
	if serr != "" || tr.exchanges.Load() < 10 {
		stream = fmt.Sprintf("broken after %d exchanges: %s", tr.exchanges.Load(), serr)
	}
	if !record(t, what+": an allowed stream", "unbroken", stream, 0) {
		t.Errorf("%s: the allowed stream %s", what, stream)
	}
	if tr.dgDone != nil {
		<-tr.dgDone
		sent := tr.sent.Load()
		if !record(t, what+": allowed datagrams lost", "0 of N", fmt.Sprintf("%d of N", sent-tr.echoed.Load()), 0) || sent < 10 {
			t.Errorf("%s: %d of %d allowed datagrams were never echoed", what, sent-tr.echoed.Load(), sent)
		}
		t.Logf("%s: %d datagrams sent, %d echoed", what, sent, tr.echoed.Load())
	}
	t.Logf("%s: %d stream exchanges, %d denied probes", what, tr.exchanges.Load(), tr.probes.Load())
}

// moatPod is the name of the DaemonSet's pod on a node.
func moatPod(t *testing.T, n *node.Node) string {
	t.Helper()
	name, err := moatPodOn(context.Background(), n.Name)
	if err != nil {
		out, _ := suite.cluster.Kubectl(context.Background(), "-n", "moat-system", "get", "pods", "-o", "wide", "--show-labels")
		t.Fatalf("the Moat pod: %v\n%s", err, out)
	}
	return name
}

// allow443 is a policy that opens 198.51.100.0/24 on TCP 443 to the zone named like itself.
func allow443(zone string) string { return allowWorld(zone, "{protocol: TCP, port: 443}") }

// allowWorld is a policy that opens 198.51.100.0/24 on ports (YAML flow items) to the zone named like itself.
func allowWorld(zone, ports string) string {
	return fmt.Sprintf(`apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: %s}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: %s}}
  egress:
  - action: Allow
    to: [{cidr: 198.51.100.0/24}]
    ports: [%s]
`, zone, zone, ports)
}

// guardedClient is a pod of a new namespace whose world egress is denied but for allow443, once that policy is
// in force.
func guardedClient(t *testing.T, zone string) pod {
	t.Helper()
	namespace(t, zone, map[string]string{"moat.dev/zone": zone, "moat.dev/egress": "Deny"})
	mustApply(t, allow443(zone))
	p := agent(t, zone, "client")
	expect(t, p, "tcp", "198.51.100.1:443", true, applied)
	return p
}

// Deleting the Moat pod of the node a pod runs on while its traffic runs: no denied connection gets through, an allowed stream survives, and
// pods still start (and are guarded) once the DaemonSet's new pod is ready.
func TestMoatPodRestart(t *testing.T) {
	p := guardedClient(t, "e2e-restart")
	tr := startTraffic(t, podNetns(t, p), "198.51.100.1:443", "198.51.100.1:80")
	time.Sleep(time.Second)
	old := moatPod(t, nodeOf(t, p))
	ctx := context.Background()
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "delete", "pod", old, "--wait=true"); err != nil {
		t.Fatalf("delete the Moat pod: %v\n%s", err, out)
	}
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "120s"); err != nil {
		t.Fatalf("the DaemonSet did not come back: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	tr.finish(t, "Moat pod deleted and recreated")
	after := agent(t, "e2e-restart", "after")
	expect(t, after, "tcp", "198.51.100.1:443", true, applied)
	expect(t, after, "tcp", "198.51.100.1:80", false, 0)
}

// Rolling the DaemonSet to a new image: the same guarantees as a restart, one node at a time.
func TestRollToANewImage(t *testing.T) {
	p := guardedClient(t, "e2e-roll")
	tr := startTraffic(t, podNetns(t, p), "198.51.100.1:443", "198.51.100.1:80")
	time.Sleep(time.Second)
	ctx := context.Background()
	next := suite.next.Ref
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "set", "image", "daemonset/moat",
		"install="+next, "enforcer="+next); err != nil {
		t.Fatalf("set the new image: %v\n%s", err, out)
	}
	if out, err := suite.cluster.Kubectl(ctx, "-n", "moat-system", "rollout", "status", "daemonset/moat", "--timeout", "120s"); err != nil {
		t.Fatalf("the roll did not finish: %v\n%s", err, out)
	}
	out, _ := suite.cluster.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-l", "app.kubernetes.io/component=enforcer",
		"-o", "jsonpath={range .items[*]}{.spec.nodeName}={.spec.containers[0].image} {end}")
	var want []string
	for _, n := range suite.nodes {
		want = append(want, n.Name+"="+next)
	}
	got := strings.Fields(string(out))
	sort.Strings(got)
	if !record(t, "every node's Moat pod runs the new image", strings.Join(want, " "), strings.Join(got, " "), 0) {
		t.Errorf("after the roll the pods run %s", out)
	}
	time.Sleep(time.Second)
	tr.finish(t, "DaemonSet rolled to "+next)
}

// An address that one namespace's pod gave back goes to another namespace's pod: the identity follows the new
// pod, so the old namespace's policy does not apply to it.
func TestAddressReuseAcrossNamespaces(t *testing.T) {
	namespace(t, "e2e-reuse-a", map[string]string{"moat.dev/zone": "e2e-reuse-a", "moat.dev/egress": "Deny"})
	namespace(t, "e2e-reuse-b", map[string]string{"moat.dev/zone": "e2e-reuse-b"})
	a := agent(t, "e2e-reuse-a", "first")
	expect(t, a, "tcp", "203.0.113.1:80", false, applied)
	addr := a.v4
	deletePod(t, a)
	// host-local hands out the address after the last one it reserved: point it just before the freed one, as a
	// busy node's pool would come round to it
	leases := nodeOf(t, a).IPAMDir()
	if !eventually(60*time.Second, func() bool { _, err := os.Stat(filepath.Join(leases, addr.String())); return os.IsNotExist(err) }) {
		t.Fatalf("the address %s was never released (CNI DEL)", addr)
	}
	last := filepath.Join(leases, "last_reserved_ip.0")
	if err := os.WriteFile(last, []byte(addr.Prev().String()), 0o644); err != nil {
		t.Fatal(err)
	}
	b := agent(t, "e2e-reuse-b", "second")
	if !record(t, "the freed address goes to a pod of another namespace", addr.String(), b.v4.String(), 0) {
		t.Fatalf("the new pod got %s, not the freed %s", b.v4, addr)
	}
	expect(t, b, "tcp", "203.0.113.1:80", true, applied)
	// and the Internet answering the reused address reaches the new pod's namespace's verdicts too
	if _, ok := exchangeFromInternet(netip.MustParseAddr("203.0.113.1"), netip.AddrPortFrom(addr, 8080).String()); !record(t,
		"Internet -> the reused address, port 8080", "reached", verdict(ok), 0) {
		t.Errorf("the Internet cannot reach the new pod at the reused address")
	}
}
