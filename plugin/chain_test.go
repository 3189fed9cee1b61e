package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/testutil"
)

// binDir holds moat and the reference plugins, built once for the package's tests at the versions go.mod pins.
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // the tests skip themselves
		}
		dir, err := os.MkdirTemp("", "moat-cni-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		for name, pkg := range map[string]string{
			"moat":       "github.com/moatfw/moat/plugin",
			"moat-ipam":  "github.com/moatfw/moat/ipam-shim",
			"bridge":     "github.com/containernetworking/plugins/plugins/main/bridge",
			"ptp":        "github.com/containernetworking/plugins/plugins/main/ptp",
			"loopback":   "github.com/containernetworking/plugins/plugins/main/loopback",
			"host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
			"portmap":    "github.com/containernetworking/plugins/plugins/meta/portmap",
		} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
				return 1
			}
		}
		binDir = dir
		return m.Run()
	}()
	os.Exit(code)
}

const (
	testNamespace = "payments"
	testIdentity  = 21
)

var (
	worldAddr = netip.MustParseAddr("198.51.100.1") // the stand-in Internet, on the host namespace's loopback
	metaAddr  = netip.MustParseAddr("169.254.169.254")
)

// node is a simulated node: a host network namespace of the test's own, the enforcer's pinned datapath, and a
// folder for endpoint records and host-local's leases.
type node struct {
	t       testing.TB
	host    ns.NetNS
	dp      *bpf.Datapath
	pinRoot string
	state   string
	cni     *libcni.CNIConfig
	// attachMode, when set, is written into moat's entry
	attachMode string
}

func newNode(t *testing.T, withEnforcer bool) *node {
	t.Helper()
	testutil.RequireRoot(t)
	return newNodeIn(t, testutil.NewNS(t), withEnforcer)
}

// newNodeIn makes a node whose host namespace is host.
func newNodeIn(t testing.TB, host ns.NetNS, withEnforcer bool) *node {
	t.Helper()
	n := &node{t: t, host: host, pinRoot: testutil.PinRoot(t), state: t.TempDir()}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(n.state, "cache"), nil)
	err := n.host.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		for _, a := range []netip.Addr{worldAddr, metaAddr} {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if withEnforcer {
		n.startEnforcer()
	}
	return n
}

// startEnforcer does what the enforcer does for these tests: load and pin the datapath, publish the namespace's
// identity with a policy that allows TCP 443 out and nothing else to the world, and a generation.
func (n *node) startEnforcer() {
	n.t.Helper()
	dp, err := bpf.Load(n.pinRoot, bpf.Options{})
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { dp.Close() })
	n.dp = dp
	if err := dp.SetNamespaceIdentity(testNamespace, testIdentity); err != nil {
		n.t.Fatal(err)
	}
	if err := dp.SetIPCache(netip.MustParsePrefix("169.254.169.254/32"), bpf.ClassMetadata, 0); err != nil {
		n.t.Fatal(err)
	}
	entries, err := policy.Compile(&policy.IdentityPolicy{Identity: testIdentity, DefaultEgress: bpf.ActionDeny,
		DefaultIngress: bpf.ActionDeny, Rules: []policy.Rule{{ID: 1, Direction: bpf.Egress, Action: bpf.ActionAllow,
			AllPeers: true, Ports: []policy.PortRange{{Protocol: policy.ProtoTCP, First: 443, Last: 443}}}}})
	if err != nil {
		n.t.Fatal(err)
	}
	if err := dp.ReplacePolicy(testIdentity, entries); err != nil {
		n.t.Fatal(err)
	}
	if _, err := dp.BumpGeneration(); err != nil {
		n.t.Fatal(err)
	}
}

// conflist is a bridge network with host-local addresses (through moat-ipam) and moat last, at a CNI version.
func (n *node) conflist(cniVersion, failPolicy string) *libcni.NetworkConfigList {
	return n.conflistWith(cniVersion, failPolicy, "bridge")
}

// conflistWith is conflist with a primary plugin: bridge or ptp.
func (n *node) conflistWith(cniVersion, failPolicy, primary string) *libcni.NetworkConfigList {
	n.t.Helper()
	ipam := fmt.Sprintf(`{"type": "moat-ipam", "pinRoot": %q, "endpointDir": %q,
      "delegate": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": "10.251.0.0/24"}]],
                   "routes": [{"dst": "0.0.0.0/0"}]}}`, n.pinRoot, filepath.Join(n.state, "endpoints"),
		filepath.Join(n.state, "ipam"))
	first := fmt.Sprintf(`{"type": "bridge", "bridge": "moatbr0", "isGateway": true, "ipMasq": false, "ipam": %s}`, ipam)
	if primary == "ptp" {
		first = fmt.Sprintf(`{"type": "ptp", "ipMasq": false, "ipam": %s}`, ipam)
	}
	attachKey := ""
	if n.attachMode != "" {
		attachKey = fmt.Sprintf(`, "attachMode": %q`, n.attachMode)
	}
	raw := fmt.Sprintf(`{
  "cniVersion": %q, "name": "moattest",
  "plugins": [
    %s,
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "moat", "pinRoot": %q, "endpointDir": %q, "failPolicy": %q, "logLevel": "debug",
     "logFile": %q%s}
  ]}`, cniVersion, first, n.pinRoot, filepath.Join(n.state, "endpoints"), failPolicy,
		filepath.Join(n.state, "moat.log"), attachKey)
	list, err := libcni.ConfListFromBytes([]byte(raw))
	if err != nil {
		n.t.Fatal(err)
	}
	return list
}

type pod struct {
	rt  *libcni.RuntimeConf
	net ns.NetNS
}

func (n *node) pod(name string) *pod { return n.podIn(testNamespace, name) }

// podIn is a pod of a given namespace, not yet added.
func (n *node) podIn(namespace, name string) *pod {
	p := &pod{net: testutil.NewNS(n.t)}
	p.rt = &libcni.RuntimeConf{ContainerID: "c-" + name, NetNS: p.net.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name},
			{"K8S_POD_UID", "uid-" + name}}}
	return p
}

// inHost runs f with the calling thread in the node's host namespace: the plugins it starts run there.
func (n *node) inHost(f func() error) error {
	return n.host.Do(func(ns.NetNS) error { return f() })
}

func (n *node) store() endpoint.Store {
	return endpoint.Store{Dir: filepath.Join(n.state, "endpoints")}
}

// podKey names a test pod's interface, eth0, in a network.
func podKey(network, containerID string) endpoint.Key {
	return endpoint.Key{Network: network, ContainerID: containerID, IfName: "eth0"}
}

func TestChainAddCheckDel(t *testing.T) {
	for _, c := range []struct {
		primary, version string
		mode             bpf.AttachMode
	}{
		{"bridge", "0.4.0", ""}, {"bridge", "1.0.0", ""}, {"bridge", "1.1.0", ""}, {"ptp", "0.4.0", ""}, {"ptp", "1.1.0", ""},
		{"bridge", "1.1.0", bpf.ModeClsact}, {"bridge", "1.1.0", bpf.ModeTCX},
	} {
		name := c.primary + "/" + c.version
		if c.mode != "" {
			name += "/" + string(c.mode)
		}
		t.Run(name, func(t *testing.T) {
			n := newNode(t, true)
			n.attachMode = string(c.mode)
			// the default mode stages the pod in clsact at ADD, and the enforcer's mover takes it to tcx
			wantMode := bpf.ModeClsact
			if c.mode != "" {
				wantMode = c.mode
			}
			list := n.conflistWith(c.version, cniconfig.FailClosed, c.primary)
			p := n.pod("web")
			t.Cleanup(func() { _ = n.inHost(func() error { return deleteBridge() }) })
			ctx := context.Background()
			if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, list, p.rt); return err }); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			rec, ok, err := n.store().Load(podKey("moattest", p.rt.ContainerID))
			if err != nil || !ok {
				t.Fatalf("endpoint record after ADD: %v %v", ok, err)
			}
			if rec.Identity != testIdentity || rec.Namespace != testNamespace || rec.Pod != "web" || rec.AttachMode != wantMode ||
				rec.MoveToTCX != (c.mode == "") {
				t.Errorf("record %+v, want attach mode %s (staged for tcx: %v)", rec, wantMode, c.mode == "")
			}
			if c.mode == "" { // staged: nothing runs before Moat's filters, which are the first on both hooks
				n.requireFirst(t, rec.HostIfindex, bpf.ModeClsact)
			}
			ep, ok, err := n.dp.LookupEndpoint(uint32(rec.HostIfindex))
			if err != nil || !ok || ep.Identity != testIdentity || len(ep.Addrs()) != 1 {
				t.Fatalf("endpoint entry of ifindex %d: %+v %v %v", rec.HostIfindex, ep, ok, err)
			}
			if _, err := os.Stat(filepath.Join(podKey("moattest", p.rt.ContainerID).LinkDir(n.pinRoot), bpf.FromPodLinkPin)); (err == nil) != (wantMode == bpf.ModeTCX) {
				t.Errorf("link pin in mode %s: %v", wantMode, err)
			}
			if (len(rec.Filters) == 2) != (wantMode == bpf.ModeClsact) {
				t.Errorf("clsact filters in the record in mode %s: %v", wantMode, rec.Filters)
			}
			if err := n.inHost(func() error { return n.cni.CheckNetworkList(ctx, list, p.rt) }); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			// CHECK says what is wrong: a missing endpoint entry, then an identity that differs from the record's
			if err := n.dp.DeleteEndpoint(uint32(rec.HostIfindex)); err != nil {
				t.Fatal(err)
			}
			err = n.inHost(func() error { return n.cni.CheckNetworkList(ctx, list, p.rt) })
			if err == nil || !strings.Contains(err.Error(), "no endpoint entry") {
				t.Errorf("CHECK without the endpoint entry: %v", err)
			}
			wrong := ep
			wrong.Identity = testIdentity + 1
			if err := n.dp.SetEndpoint(uint32(rec.HostIfindex), &wrong); err != nil {
				t.Fatal(err)
			}
			err = n.inHost(func() error { return n.cni.CheckNetworkList(ctx, list, p.rt) })
			if err == nil || !strings.Contains(err.Error(), "identity") {
				t.Errorf("CHECK with another identity: %v", err)
			}
			if err := n.dp.SetEndpoint(uint32(rec.HostIfindex), &ep); err != nil {
				t.Fatal(err)
			}

			// traffic follows the maps: 443 out is allowed, 80 and the metadata API are not
			for _, port := range []int{443, 80} {
				testutil.Listen(t, n.host, fmt.Sprintf("%s:%d", worldAddr, port))
			}
			testutil.Listen(t, n.host, metaAddr.String()+":80")
			p.requireVerdicts(t)

			if c.mode == "" {
				// the enforcer's mover: tcx links at the head of both hooks, the filters and qdisc gone
				if err := n.inHost(func() error { _, err := n.mover().Pass(ctx); return err }); err != nil {
					t.Fatalf("move to tcx: %v", err)
				}
				rec, _, err = n.store().Load(podKey("moattest", p.rt.ContainerID))
				if err != nil || rec.AttachMode != bpf.ModeTCX || rec.MoveToTCX || len(rec.Filters) != 0 {
					t.Fatalf("record after the move: %+v %v, want tcx", rec, err)
				}
				if _, err := os.Stat(filepath.Join(podKey("moattest", p.rt.ContainerID).LinkDir(n.pinRoot), bpf.FromPodLinkPin)); err != nil {
					t.Errorf("link pin after the move: %v", err)
				}
				n.requireFirst(t, rec.HostIfindex, bpf.ModeTCX)
				if err := n.inHost(func() error { return n.cni.CheckNetworkList(ctx, list, p.rt) }); err != nil {
					t.Errorf("CHECK after the move: %v", err)
				}
				p.requireVerdicts(t)
			}

			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, list, p.rt) }); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			n.requireClean(t)
			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, list, p.rt) }); err != nil {
				t.Errorf("second DEL: %v", err)
			}
			empty := *p.rt
			empty.NetNS = ""
			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, list, &empty) }); err != nil {
				t.Errorf("DEL with an empty CNI_NETNS: %v", err)
			}
		})
	}
}

// CHECK asks the attachment itself, in both modes: it passes while both hooks run the enforcer's programs, says
// which hook is missing when another hand took Moat's program off (a tcx link detached, a clsact filter deleted),
// and says the programs are other code when a hook runs another build's. DEL still leaves nothing behind.
func TestCheckFindsHooksNotInPlace(t *testing.T) {
	for _, mode := range []bpf.AttachMode{bpf.ModeTCX, bpf.ModeClsact} {
		t.Run(string(mode), func(t *testing.T) {
			n := newNode(t, true)
			n.attachMode = string(mode)
			list := n.conflist("1.1.0", cniconfig.FailClosed)
			p := n.pod("web")
			t.Cleanup(func() { _ = n.inHost(deleteBridge) })
			ctx := context.Background()
			if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, list, p.rt); return err }); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			rec, ok, err := n.store().Load(podKey("moattest", p.rt.ContainerID))
			if err != nil || !ok || rec.AttachMode != mode {
				t.Fatalf("record %+v %v %v, want attach mode %s", rec, ok, err, mode)
			}
			check := func() error { return n.inHost(func() error { return n.cni.CheckNetworkList(ctx, list, p.rt) }) }
			if err := check(); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			// another build's programs on both hooks: swapped in place, as a newer enforcer would find them
			old := testutil.PassProgram(t, "old_build")
			if err := n.inHost(func() error {
				att, err := rec.Attachment(n.pinRoot)
				if err != nil {
					return err
				}
				defer att.Close()
				_, err = att.Upgrade(old, old)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if err := check(); err == nil || !strings.Contains(err.Error(), "other") {
				t.Errorf("CHECK of hooks that run another build's programs: %v", err)
			}
			if err := n.inHost(func() error {
				att, err := rec.Attachment(n.pinRoot)
				if err != nil {
					return err
				}
				defer att.Close()
				_, err = att.Upgrade(n.dp.FromPod, n.dp.ToPod)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if err := check(); err != nil {
				t.Errorf("CHECK after the enforcer's programs are back: %v", err)
			}
			if err := n.inHost(func() error { return takeEgressOff(mode, rec.HostIfindex) }); err != nil {
				t.Fatal(err)
			}
			if err := check(); err == nil || !strings.Contains(err.Error(), "egress") || !strings.Contains(err.Error(), "not attached") {
				t.Errorf("CHECK without the egress hook: %v, want it to say the egress hook is not attached", err)
			}
			if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, list, p.rt) }); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			n.requireClean(t)
		})
	}
}

// takeEgressOff removes Moat's program from a host veth's egress hook as another tool would: the tcx link
// detached by its ID, or the clsact filter deleted.
func takeEgressOff(mode bpf.AttachMode, ifindex int) error {
	if mode == bpf.ModeTCX {
		q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return err
		}
		for _, p := range q.Programs {
			id, ok := p.LinkID()
			if !ok {
				continue
			}
			l, err := link.NewFromID(id)
			if err != nil {
				return err
			}
			err = l.Detach()
			l.Close()
			return err
		}
		return errors.New("no tcx link on egress")
	}
	fs, err := netlink.FilterList(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: ifindex}}, netlink.HANDLE_MIN_EGRESS)
	if err != nil {
		return err
	}
	for _, f := range fs {
		if f.Attrs().Handle == bpf.ClsactHandle {
			return netlink.FilterDel(f)
		}
	}
	return errors.New("no Moat filter on egress")
}

// requireClean fails unless nothing of any pod is left: records, link pins, endpoint and ipcache entries. Links
// a DEL released go with a sweep once their veth is gone; those of a veth that is still there stay (and are
// counted by requireNoLinks where a test keeps its veth).
func (n *node) requireClean(t *testing.T) {
	t.Helper()
	if recs, _ := n.store().List(""); len(recs) != 0 {
		t.Errorf("%d endpoint records left", len(recs))
	}
	if pins, _ := filepath.Glob(filepath.Join(n.pinRoot, "endpoints", "*", "*")); len(pins) != 0 {
		t.Errorf("link pins left: %v", pins)
	}
	if _, err := n.life().SweepReleased(); err != nil {
		t.Errorf("sweep the released links: %v", err)
	}
	released, _ := filepath.Glob(filepath.Join(n.pinRoot, "released", "*", "*"))
	for _, dir := range released {
		att, err := bpf.OpenAttachment(bpf.AttachmentRecord{AttachMode: bpf.ModeTCX}, 0, dir)
		if err != nil {
			t.Errorf("released links %s: %v", dir, err)
			continue
		}
		if !n.hostHasIfindex(att.Ifindex()) {
			t.Errorf("released links %s on ifindex %d, which is gone: the sweep left them", dir, att.Ifindex())
		}
		att.Close()
	}
	if n.dp != nil {
		if eps, _ := n.dp.Endpoints(); len(eps) != 0 {
			t.Errorf("%d endpoint entries left", len(eps))
		}
		if got := n.ipcacheEntries(t); got != 1 { // the metadata entry the enforcer wrote
			t.Errorf("%d ipcache entries, want only the enforcer's 1", got)
		}
	}
}

func (n *node) ipcacheEntries(t *testing.T) int {
	count := 0
	var k bpf.IPCacheKey
	var v bpf.IPCacheValue
	it := n.dp.IPCacheMap().Iterate()
	for it.Next(&k, &v) {
		count++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return count
}

func deleteBridge() error {
	l, err := netlink.LinkByName("moatbr0")
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}

func TestChainStatusAndGC(t *testing.T) {
	ctx := context.Background()
	n := newNode(t, false)
	t.Cleanup(func() { _ = n.inHost(deleteBridge) })
	closed, open := n.conflist("1.1.0", cniconfig.FailClosed), n.conflist("1.1.0", cniconfig.FailOpen)

	err := n.cni.GetStatusNetworkList(ctx, closed)
	if code := cniCode(err); code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS without the enforcer, failPolicy closed: %v (code %d), want code 50", err, code)
	}
	if err := n.cni.GetStatusNetworkList(ctx, open); err != nil {
		t.Errorf("STATUS without the enforcer, failPolicy open: %v", err)
	}
	n.startEnforcer()
	if err := n.cni.GetStatusNetworkList(ctx, closed); err != nil {
		t.Errorf("STATUS with the enforcer: %v", err)
	}

	keep, stale := n.pod("keep"), n.pod("stale")
	for _, p := range []*pod{keep, stale} {
		if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, closed, p.rt); return err }); err != nil {
			t.Fatalf("ADD %s: %v", p.rt.ContainerID, err)
		}
	}
	// another network's record must survive this network's GC
	other := &endpoint.Record{Network: "othernet", ContainerID: "c-other", IfName: "eth0", Namespace: "x"}
	if err := n.store().Save(other); err != nil {
		t.Fatal(err)
	}
	gc := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}}
	if err := n.inHost(func() error { return n.cni.GCNetworkList(ctx, closed, gc) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if _, ok, _ := n.store().Load(podKey("moattest", stale.rt.ContainerID)); ok {
		t.Errorf("GC left the stale pod's record")
	}
	if _, err := os.Stat(podKey("moattest", stale.rt.ContainerID).LinkDir(n.pinRoot)); err == nil {
		t.Errorf("GC left the stale pod's link pins")
	}
	if _, ok, _ := n.store().Load(podKey("moattest", keep.rt.ContainerID)); !ok {
		t.Errorf("GC removed a valid attachment")
	}
	if _, ok, _ := n.store().Load(podKey("othernet", "c-other")); !ok {
		t.Errorf("GC of moattest removed another network's record")
	}
	if eps, _ := n.dp.Endpoints(); len(eps) != 1 {
		t.Errorf("%d endpoint entries after GC, want the kept pod's 1", len(eps))
	}
	_ = n.store().Delete(podKey("othernet", "c-other"))
	if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, closed, keep.rt) }); err != nil {
		t.Fatal(err)
	}
	if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, closed, stale.rt) }); err != nil {
		t.Fatal(err)
	}
	n.requireClean(t)
}

// cniCode is the code of a CNI error result, or 0.
func cniCode(err error) uint {
	if e, ok := err.(*types.Error); ok {
		return e.Code
	}
	return 0
}

// failPolicy open: without the enforcer the pod starts unprotected with its record written (the enforcer adopts
// it later); with the enforcer but no identity for the namespace, it starts under the cluster defaults.
func TestChainFailOpen(t *testing.T) {
	ctx := context.Background()
	n := newNode(t, false)
	t.Cleanup(func() { _ = n.inHost(deleteBridge) })
	list := n.conflist("1.1.0", cniconfig.FailOpen)
	early := n.pod("early")
	if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, list, early.rt); return err }); err != nil {
		t.Fatalf("ADD without the enforcer under failPolicy open: %v", err)
	}
	rec, ok, _ := n.store().Load(podKey("moattest", early.rt.ContainerID))
	if !ok || rec.AttachMode != "" || rec.Namespace != testNamespace {
		t.Fatalf("record of an unprotected pod: %+v (%v)", rec, ok)
	}
	if err := n.inHost(func() error { return n.cni.CheckNetworkList(ctx, list, early.rt) }); err == nil {
		t.Errorf("CHECK of an unprotected pod passed")
	}

	n.startEnforcer()
	stranger := n.podIn("unlabelled", "stranger")
	if err := n.inHost(func() error { _, err := n.cni.AddNetworkList(ctx, list, stranger.rt); return err }); err != nil {
		t.Fatalf("ADD of a namespace without identity under failPolicy open: %v", err)
	}
	rec, ok, _ = n.store().Load(podKey("moattest", stranger.rt.ContainerID))
	if !ok || rec.Identity != 0 || rec.AttachMode != bpf.ModeClsact || !rec.MoveToTCX { // the default mode, staged
		t.Fatalf("record of a pod under cluster defaults: %+v (%v)", rec, ok)
	}
	if ep, ok, _ := n.dp.LookupEndpoint(uint32(rec.HostIfindex)); !ok || ep.Identity != 0 {
		t.Errorf("endpoint of a pod under cluster defaults: %+v (%v)", ep, ok)
	}
	testutil.Listen(t, n.host, metaAddr.String()+":80")
	if err := testutil.Exchange(stranger.net, metaAddr.String()+":80", time.Second); err == nil {
		t.Errorf("a pod under cluster defaults reached the metadata API")
	}
	for _, p := range []*pod{early, stranger} {
		if err := n.inHost(func() error { return n.cni.DelNetworkList(ctx, list, p.rt) }); err != nil {
			t.Fatalf("DEL %s: %v", p.rt.ContainerID, err)
		}
	}
	n.requireClean(t)
}

// life is the node's endpoint lifecycle, as the plugin and the enforcer see it.
func (n *node) life() endpoint.Lifecycle {
	return endpoint.Lifecycle{Store: n.store(), PinRoot: n.pinRoot}
}

// mover is the enforcer's mover of staged attachments on this node.
func (n *node) mover() endpoint.Mover {
	return endpoint.Mover{Life: n.life(), Log: logrus.NewEntry(logrus.New())}
}

// hostHasIfindex reports whether a device of that ifindex is in the node's host namespace.
func (n *node) hostHasIfindex(ifindex int) bool {
	if ifindex == 0 {
		return false
	}
	return n.inHost(func() error { _, err := netlink.LinkByIndex(ifindex); return err }) == nil
}

// requireFirst fails unless Moat's programs run first on both hooks of a host veth: in tcx, Moat's are the first
// tcx programs; in clsact, the device has no tcx program at all and Moat's filter is the first of each hook.
func (n *node) requireFirst(t *testing.T, ifindex int, mode bpf.AttachMode) {
	t.Helper()
	err := n.inHost(func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			q, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return err
			}
			switch {
			case mode == bpf.ModeClsact && len(q.Programs) != 0:
				t.Errorf("%v: %d tcx programs run before Moat's clsact filter", at, len(q.Programs))
			case mode == bpf.ModeTCX && (len(q.Programs) == 0 || !n.isMoats(t, q.Programs[0].ID)):
				t.Errorf("%v: Moat's program is not the first tcx program (%v)", at, q.Programs)
			}
		}
		hasQdisc, filters := false, 0
		l, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		for _, q := range qs {
			hasQdisc = hasQdisc || q.Type() == "clsact"
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			if !hasQdisc {
				break
			}
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				return err
			}
			for i, f := range fs {
				if f.Attrs().Handle == bpf.ClsactHandle && f.Attrs().Priority == bpf.ClsactPriority {
					filters++
					if i != 0 {
						t.Errorf("Moat's clsact filter is filter %d of its hook, want the first", i)
					}
				}
			}
		}
		if mode == bpf.ModeClsact && filters != 2 {
			t.Errorf("%d of Moat's clsact filters, want one on each hook", filters)
		}
		if mode == bpf.ModeTCX && (hasQdisc || filters != 0) {
			t.Errorf("after the move to tcx: clsact qdisc %v, %d of Moat's filters; want none (Moat added the qdisc)", hasQdisc, filters)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// isMoats reports whether program id runs the code of the datapath's programs.
func (n *node) isMoats(t *testing.T, id ebpf.ProgramID) bool {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		t.Errorf("open program %d: %v", id, err)
		return false
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return false
	}
	for _, ours := range []*ebpf.Program{n.dp.FromPod, n.dp.ToPod} {
		if oi, err := ours.Info(); err == nil && oi.Tag == info.Tag {
			return true
		}
	}
	return false
}

// requireVerdicts: from the pod, TCP 443 to the world is allowed, 80 and the metadata API are not (the node's
// policy; the test listens on all three).
func (p *pod) requireVerdicts(t *testing.T) {
	t.Helper()
	for _, c := range []struct {
		addr    string
		allowed bool
	}{{fmt.Sprintf("%s:443", worldAddr), true}, {fmt.Sprintf("%s:80", worldAddr), false}, {metaAddr.String() + ":80", false}} {
		err := testutil.Exchange(p.net, c.addr, time.Second)
		if c.allowed && err != nil {
			t.Errorf("%s: %v, want an echo", c.addr, err)
		}
		if !c.allowed && err == nil {
			t.Errorf("%s went through, want it blocked", c.addr)
		}
	}
}
