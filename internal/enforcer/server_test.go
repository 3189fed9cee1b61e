package enforcer

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/testutil"
)

const brokenPolicyYAML = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: broken}
spec:
  egress:
  - action: Perhaps
`

// The API socket answers status, endpoints, policies, trace and flows about a real pod, and trace agrees with the
// traffic the datapath actually lets through.
func TestServerAnswersAboutARealPod(t *testing.T) {
	root, dp, e := newTestEnforcer(t)
	dir := t.TempDir()
	write(t, dir, "base.yaml", baseYAML)
	write(t, dir, "policy.yaml", policyYAML("443"))
	write(t, dir, "zz-broken.yaml", brokenPolicyYAML)
	folder := &Folder{Dir: dir, Log: e.log}
	s, err := folder.Load()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	web := e.Identities()["web"]

	pl := testutil.NewPodLink(t, []netip.Prefix{netip.MustParsePrefix("10.250.0.2/24")},
		[]netip.Prefix{netip.MustParsePrefix("10.250.0.1/24"), netip.MustParsePrefix("198.51.100.1/24"),
			netip.MustParsePrefix("169.254.169.254/32")})
	for _, addr := range []string{"198.51.100.1:443", "198.51.100.1:80", "169.254.169.254:443"} {
		testutil.Listen(t, pl.Host, addr)
	}
	rec := &endpoint.Record{Network: "net", ContainerID: "c1", IfName: "eth0", Namespace: "web", Pod: "client",
		HostIfname: pl.HostIfname, HostIfindex: pl.HostIfindex, Addresses: []string{"10.250.0.2"}}
	if err := pl.Host.Do(func(ns.NetNS) error {
		return guard(dp, rec, web, root)
	}); err != nil {
		t.Fatal(err)
	}
	store := endpoint.Store{Dir: t.TempDir()}
	if err := store.Save(rec); err != nil {
		t.Fatal(err)
	}
	if err := dp.UpdateConfig(func(c *bpf.Config) { c.Flags |= uint32(bpf.ConfigAllowEvents) }); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	flowsDone := make(chan struct{})
	go func() { defer close(flowsDone); _ = e.RunFlows(ctx, store, nil) }()
	defer func() { cancel(); <-flowsDone }() // before the datapath closes (t.Cleanup)

	socket := filepath.Join(t.TempDir(), "run", "enforcer.sock")
	ln, err := agentapi.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	if _, err := agentapi.Listen(socket); err == nil || !strings.Contains(err.Error(), "another enforcer") {
		t.Errorf("a second listener on a served socket: %v, want a refusal", err)
	}
	// the host veth is in the test's host namespace
	links, err := netlink.NewHandleAt(netns.NsHandle(pl.Host.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer links.Close()
	srv := &Server{E: e, Store: store, Source: "folder " + dir, Links: links}
	go func() { _ = srv.Serve(ctx, ln) }()
	c := agentapi.NewClient(socket)

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Generation == 0 || st.Endpoints != 1 || st.AttachModes["tcx"] != 1 || st.InvalidPolicies != 1 ||
		st.Namespaces != 1 || st.Maps["local_endpoints"].Entries != 1 || st.Maps["conntrack"].Capacity == 0 {
		t.Errorf("status %+v", st)
	}
	if !strings.Contains(strings.Join(st.Problems, "\n"), "zz-broken.yaml") {
		t.Errorf("status problems %v do not name the broken file", st.Problems)
	}

	eps, err := c.Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != 1 || eps[0].Pod != "client" || eps[0].Namespace != "web" || eps[0].Identity != web ||
		eps[0].HostVeth != pl.HostIfname || eps[0].Mode != "tcx" || !eps[0].Attached || eps[0].Problem != "" {
		t.Errorf("endpoints %+v", eps)
	}

	pols, err := c.Policies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(pols) != 2 || pols[0].Name != "broken" || pols[0].State != "Invalid" || !strings.Contains(pols[0].Reason, "Perhaps") ||
		pols[1].Name != "web-out" || pols[1].State != "Accepted" || pols[1].Rules != 1 ||
		strings.Join(pols[1].Namespaces, ",") != "web" || !strings.Contains(pols[1].Origin, "policy.yaml") {
		t.Errorf("policies %+v", pols)
	}

	cases := []struct {
		remote string
		port   uint16
		want   agentapi.TraceResult
	}{
		{"198.51.100.1", 443, agentapi.TraceResult{Verdict: "allowed", Reason: "allowed-by-rule", Policy: "web-out", Rule: "egress[0]", RemoteClass: "world"}},
		{"198.51.100.1", 80, agentapi.TraceResult{Verdict: "denied", Reason: "denied-by-default", RemoteClass: "world"}},
		{"169.254.169.254", 443, agentapi.TraceResult{Verdict: "denied", Reason: "metadata-api", RemoteClass: "metadata"}},
	}
	for _, tc := range cases {
		got, err := c.Trace(ctx, agentapi.TraceRequest{Namespace: "web", Pod: "client", Protocol: "tcp", Port: tc.port, Remote: tc.remote})
		if err != nil {
			t.Fatal(err)
		}
		if got.Verdict != tc.want.Verdict || got.Reason != tc.want.Reason || got.Policy != tc.want.Policy ||
			got.Rule != tc.want.Rule || got.RemoteClass != tc.want.RemoteClass || got.Identity != web || got.Explanation == "" {
			t.Errorf("trace to %s:%d: %+v, want %+v", tc.remote, tc.port, got, tc.want)
		}
		real := testutil.Exchange(pl.Pod, netip.AddrPortFrom(netip.MustParseAddr(tc.remote), tc.port).String(), time.Second) == nil
		if real != (got.Verdict == "allowed") {
			t.Errorf("trace to %s:%d says %s, real traffic passed: %v", tc.remote, tc.port, got.Verdict, real)
		}
	}

	for _, bad := range []struct {
		req  agentapi.TraceRequest
		want string
	}{
		{agentapi.TraceRequest{Namespace: "nope", Remote: "198.51.100.1"}, `unknown namespace "nope"`},
		{agentapi.TraceRequest{Namespace: "web", Pod: "ghost", Remote: "198.51.100.1"}, "not on this node"},
		{agentapi.TraceRequest{Namespace: "web", Remote: "not-an-address"}, "not an address"},
		{agentapi.TraceRequest{Namespace: "web", Remote: "198.51.100.1", Protocol: "carrier-pigeon"}, "protocol"},
		{agentapi.TraceRequest{Namespace: "web"}, "needs a remote"},
	} {
		if _, err := c.Trace(ctx, bad.req); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("trace %+v: %v, want an error with %q", bad.req, err, bad.want)
		}
	}

	// past flows, filtered; then a followed stream sees a new denied flow
	var denied []agentapi.Flow
	if !waitFor(func() bool {
		denied = nil
		err := c.Flows(ctx, agentapi.FlowFilter{Verdict: "denied", Namespace: "web", Since: time.Minute}, func(f agentapi.Flow) error {
			denied = append(denied, f)
			return nil
		})
		return err == nil && len(denied) >= 2
	}) {
		t.Fatalf("denied flows %+v", denied)
	}
	for _, f := range denied {
		if f.Verdict != "denied" || f.Pod != "client" {
			t.Errorf("flow %+v passed the filter", f)
		}
	}
	followCtx, stopFollow := context.WithTimeout(ctx, 10*time.Second)
	defer stopFollow()
	seen := make(chan agentapi.Flow, 1)
	go func() {
		_ = c.Flows(followCtx, agentapi.FlowFilter{Verdict: "denied", Limit: 1, Follow: true}, func(f agentapi.Flow) error {
			if f.Dport == 80 && f.Time.After(time.Now().Add(-2*time.Second)) {
				seen <- f
				return errors.New("done")
			}
			return nil
		})
	}()
	if !waitFor(func() bool { // the follower is there before the flow
		e.flows.mu.Lock()
		defer e.flows.mu.Unlock()
		return len(e.flows.followers) > 0
	}) {
		t.Fatal("the followed flow stream never started")
	}
	_ = testutil.Exchange(pl.Pod, "198.51.100.1:80", 500*time.Millisecond)
	select {
	case <-seen:
	case <-followCtx.Done():
		t.Errorf("a followed flow stream never showed the new denied flow")
	}

	// an enforcer that is not there: the error says where moatctl looked
	_, err = agentapi.NewClient(filepath.Join(t.TempDir(), "none.sock")).Status(ctx)
	if !errors.Is(err, agentapi.ErrNoEnforcer) || !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("no enforcer: %v", err)
	}
}
