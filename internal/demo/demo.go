// Package demo runs Moat on a simulated node and shows it working: `make demo`.
//
// The node (internal/simnode) is a network namespace with a bridge network, the reference CNI plugins and a
// stand-in Internet with a metadata API; moat-install chains Moat into its network, moat-enforcer runs on the
// policies of examples/demo, and pods of four namespaces try connections. The demo prints what each attempt was
// expected to do and what it did, the flow log's account of the denials, the enforcer's counters and moatctl's
// report; then it changes a namespace label and a policy file, live, and shows the table again.
package demo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/simnode"
)

// Options say where the demo finds what it needs.
type Options struct {
	BinDir   string    // simnode.Binaries, built
	Examples string    // the policy folder to start from (examples/demo); the demo edits a copy
	Dir      string    // the node's state; removed by the caller
	Out      io.Writer // what the user reads
}

// attempt is one connection the demo tries.
type attempt struct {
	from, to, what string
	want           bool
	try            func() error
	trace          agentapi.TraceRequest
}

// result is what became of an attempt.
type result struct {
	attempt
	got     bool
	decided string
}

// Run runs the demo and returns how many verdicts differed from the expected ones.
func Run(ctx context.Context, o Options) (int, error) {
	w := o.Out
	step := func(format string, args ...any) { fmt.Fprintf(w, "\n==> "+format+"\n", args...) }

	step("a simulated node: a bridge network (the cluster's CNI), a stand-in Internet on 198.51.100.0/24 and 203.0.113.0/24, a metadata API on 169.254.169.254")
	cniBin := filepath.Join(o.Dir, "cni-bin")
	if err := os.MkdirAll(cniBin, 0o755); err != nil {
		return 0, err
	}
	for _, name := range []string{"bridge", "host-local", "loopback", "portmap", "moat-enforcer"} {
		if err := copyFile(filepath.Join(o.BinDir, name), filepath.Join(cniBin, name)); err != nil {
			return 0, err
		}
	}
	node, err := simnode.New(filepath.Join(o.Dir, "node"), cniBin, simnode.Options{Unchained: true, Ports: []uint16{80, 443, 8080}})
	if err != nil {
		return 0, fmt.Errorf("set up the node: %w", err)
	}
	defer func() {
		fmt.Fprintln(w, "\n==> cleaning up: pods, the enforcer, namespaces, links, pins")
		if err := node.Close(); err != nil {
			fmt.Fprintf(w, "cleanup: %v\n", err)
		}
	}()

	step("moat-install: copy moat and moat-ipam into the CNI bin folder and chain moat into the node's network")
	set := node.ChainSettings("closed")
	install := exec.CommandContext(ctx, filepath.Join(o.BinDir, "moat-install"), "--cni-bin-dir", cniBin,
		"--cni-conf-dir", node.ConfDir, "--source-dir", o.BinDir, "--pin-root", node.PinRoot, "--endpoint-dir",
		node.EndpointDir(), "--socket", node.Socket, "--ipam-shim", "--fail-policy", "closed", "--plugin-log-file", set.LogFile)
	if out, err := install.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("moat-install: %w\n%s", err, out)
	} else {
		printIndented(w, out)
	}

	step("moat-enforcer on the policies of %s", o.Examples)
	if err := copyPolicies(o.Examples, node); err != nil {
		return 0, err
	}
	const metrics = "127.0.0.1:9464" // in the node's own network namespace, as on a real node
	if err := node.StartEnforcer(ctx, "--cni-conf-dir", node.ConfDir, "--cni-ipam-shim", "--cni-fail-policy", "closed",
		"--metrics-addr", metrics); err != nil {
		return 0, err
	}
	for _, f := range listYAML(node.PolicyDir) {
		fmt.Fprintf(w, "    %s\n", f)
	}

	step("pods, created through the CNI chain as a kubelet's runtime would")
	pods := map[string]*simnode.Pod{}
	for _, p := range [][2]string{{"payments", "api"}, {"dev", "sandbox"}, {"ops", "agent"}, {"shared", "db"}} {
		pod, err := node.AddPod(ctx, p[0], p[1])
		if err != nil {
			return 0, err
		}
		pods[p[0]] = pod
		fmt.Fprintf(w, "    %s/%s  %s\n", p[0], p[1], pod.Addr)
	}
	if err := pods["shared"].Serve(8080); err != nil {
		return 0, err
	}

	provider, elsewhere := simnode.WorldAddr(0), simnode.WorldAddr(1)
	db := netip.AddrPortFrom(pods["shared"].Addr, 8080).String()
	out := func(ns, what string, want bool, to netip.AddrPort) attempt {
		p := pods[ns]
		return attempt{from: ns + "/" + p.Name, to: to.String(), what: what, want: want,
			try:   func() error { return p.Connect(to.String(), 500*time.Millisecond) },
			trace: agentapi.TraceRequest{Namespace: ns, Pod: p.Name, Protocol: "tcp", Remote: to.Addr().String(), Port: to.Port()}}
	}
	toDB := func(ns string, want bool) attempt {
		p := pods[ns]
		return attempt{from: ns + "/" + p.Name, to: "shared/db:8080", what: "the shared database", want: want,
			try: func() error { return p.Connect(db, 500*time.Millisecond) },
			trace: agentapi.TraceRequest{Namespace: ns, Pod: p.Name, Protocol: "tcp", RemoteNamespace: "shared",
				RemotePod: "db", Port: 8080}}
	}
	at := netip.AddrPortFrom
	attempts := func(round int) []attempt {
		return []attempt{
			out("payments", "the payment provider", true, at(provider, 443)),
			out("payments", "elsewhere on the Internet", round == 2, at(elsewhere, 443)),
			out("payments", "the provider, plain HTTP", false, at(provider, 80)),
			out("payments", "the metadata API", false, at(simnode.Metadata, 80)),
			toDB("payments", true),
			out("dev", "the Internet", round == 1, at(elsewhere, 443)),
			out("dev", "the metadata API", false, at(simnode.Metadata, 80)),
			toDB("dev", false),
			out("ops", "the metadata API", true, at(simnode.Metadata, 80)),
			out("ops", "the Internet, plain HTTP", true, at(provider, 80)),
			{from: "Internet " + elsewhere.String(), to: "shared/db:8080", what: "the database, from outside", want: false,
				try: func() error { return node.ConnectFromInternet(elsewhere, db, 500*time.Millisecond) },
				trace: agentapi.TraceRequest{Namespace: "shared", Pod: "db", Direction: "ingress", Protocol: "tcp",
					Remote: elsewhere.String(), Port: 8080}},
		}
	}
	api := agentapi.NewClient(node.Socket)

	step("round 1: every connection, expected and actual (and the rule that decides it, from moatctl trace)")
	first, err := try(ctx, api, attempts(1))
	if err != nil {
		return 0, err
	}
	bad := table(w, first, nil)

	step("the flow log explains the denials (moatctl flows --verdict denied)")
	if err := moatctl(ctx, w, o.BinDir, node.Socket, "flows", "--verdict", "denied", "--limit", "12"); err != nil {
		return bad, err
	}
	step("the enforcer's counters (http://%s/metrics on the node)", metrics)
	if err := counters(w, node, metrics); err != nil {
		return bad, err
	}
	step("who can reach what (moatctl report)")
	if err := moatctl(ctx, w, o.BinDir, node.Socket, "report"); err != nil {
		return bad, err
	}

	step("live changes: label namespace dev moat.dev/egress=Deny, and let payments reach 203.0.113.0/24 on 443")
	if err := change(ctx, w, api, node, "10-namespaces.yaml", "labels: {moat.dev/zone: dev}",
		"labels: {moat.dev/zone: dev, moat.dev/egress: Deny}", "namespace dev labelled moat.dev/egress=Deny"); err != nil {
		return bad, err
	}
	if err := change(ctx, w, api, node, "20-payments.yaml", "    to: [{cidr: 198.51.100.0/24}]",
		"    to: [{cidr: 198.51.100.0/24}, {cidr: 203.0.113.0/24}]", "FirewallPolicy payments-egress allows 203.0.113.0/24"); err != nil {
		return bad, err
	}

	step("round 2: the same connections after the changes (* marks a verdict that changed)")
	second, err := try(ctx, api, attempts(2))
	if err != nil {
		return bad, err
	}
	bad += table(w, second, first)
	total := len(first) + len(second)
	if bad > 0 {
		fmt.Fprintf(w, "\n%d of %d verdicts differ from the expected ones\n", bad, total)
	} else {
		fmt.Fprintf(w, "\nall %d verdicts as expected\n", total)
	}
	return bad, nil
}

// try makes every attempt and asks the enforcer's trace what decides it.
func try(ctx context.Context, api *agentapi.Client, as []attempt) ([]result, error) {
	var rs []result
	for _, a := range as {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r := result{attempt: a, got: a.try() == nil}
		if tr, err := api.Trace(ctx, a.trace); err == nil {
			r.decided = tr.Reason
			if tr.Policy != "" {
				r.decided = tr.Policy + " " + tr.Rule
			}
			if tr.PeerPolicy != "" && tr.PeerVerdict == "denied" {
				r.decided = tr.PeerPolicy + " " + tr.PeerRule + " (receiver)"
			}
		} else {
			r.decided = "trace: " + err.Error()
		}
		rs = append(rs, r)
	}
	return rs, nil
}

// table prints the results and returns how many differ from the expected verdict; with before, it marks the
// rows whose verdict changed.
func table(w io.Writer, rs, before []result) int {
	verdict := func(ok bool) string {
		if ok {
			return "allowed"
		}
		return "denied"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  \tFROM\tTO\tWHAT\tEXPECTED\tACTUAL\tDECIDED BY")
	bad := 0
	for i, r := range rs {
		mark := " "
		if before != nil && i < len(before) && before[i].got != r.got {
			mark = "*"
		}
		actual := verdict(r.got)
		if r.got != r.want {
			actual = strings.ToUpper(actual) + "  <-- NOT AS EXPECTED"
			bad++
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", mark, r.from, r.to, r.what, verdict(r.want), actual, r.decided)
	}
	_ = tw.Flush()
	return bad
}

// change edits a file of the node's policy folder and waits until the enforcer applied it.
func change(ctx context.Context, w io.Writer, api *agentapi.Client, node *simnode.Node, file, old, new, what string) error {
	path := filepath.Join(node.PolicyDir, file)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !strings.Contains(string(data), old) {
		return fmt.Errorf("%s holds no %q to change", path, old)
	}
	st, err := api.Status(ctx)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := node.WritePolicy(file, strings.Replace(string(data), old, new, 1)); err != nil {
		return err
	}
	for {
		now, err := api.Status(ctx)
		if err == nil && now.Generation > st.Generation {
			fmt.Fprintf(w, "    %s: enforced in %d ms (generation %d)\n", what, time.Since(start).Milliseconds(), now.Generation)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Since(start) > 10*time.Second {
			return fmt.Errorf("the enforcer did not apply %s within 10 s:\n%s", file, node.EnforcerLog())
		}
	}
}

func moatctl(ctx context.Context, w io.Writer, binDir, socket string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "moatctl"), append([]string{"--socket", socket}, args...)...)
	out, err := cmd.CombinedOutput()
	printIndented(w, out)
	if err != nil {
		return fmt.Errorf("moatctl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// counters prints the enforcer's own series from its metrics that are not zero (not Go's, not histogram buckets,
// not map sizes). The metrics
// listen on the node's loopback, so the connection is made from a thread in the node's namespace.
func counters(w io.Writer, node *simnode.Node, addr string) error {
	var conn net.Conn
	if err := node.Host.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 2*time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\nHost: node\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "moat_") && !strings.Contains(line, "_bucket{") && !strings.HasSuffix(line, " 0") &&
			!strings.HasPrefix(line, "moat_map_max_entries") {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	return sc.Err()
}

func printIndented(w io.Writer, out []byte) {
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintf(w, "    %s\n", l)
	}
}

func copyPolicies(from string, node *simnode.Node) error {
	files := listYAML(from)
	if len(files) == 0 {
		return fmt.Errorf("no policy files in %s", from)
	}
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			return err
		}
		if err := node.WritePolicy(f, string(data)); err != nil {
			return err
		}
	}
	return nil
}

func listYAML(dir string) []string {
	var out []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".yaml") && !strings.HasPrefix(e.Name(), ".") {
			out = append(out, e.Name())
		}
	}
	return out
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}
