// Package simnode runs Moat on a simulated node, with no cluster: a host network namespace with a bridge
// network whose conflist chains moat (through libcni and the reference CNI plugins, as a kubelet's runtime
// would), the real moat-enforcer reading a folder of policy, pods in network namespaces of their own, and a
// stand-in Internet and metadata API in another namespace behind the node. Nothing it makes can reach the
// machine's own network: the host namespace has no way out but the stand-in Internet.
//
// `make demo` runs it for people; moatctl's tests and the end-to-end checks run it for machines.
package simnode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	cniversion "github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/conflist"
	"github.com/moatfw/moat/internal/testutil"
)

// Addresses of the simulated world.
var (
	PodSubnet   = netip.MustParsePrefix("10.251.0.0/24")
	uplinkHost  = netip.MustParsePrefix("10.99.0.1/30") // the node's side of its link to the Internet
	uplinkWorld = netip.MustParsePrefix("10.99.0.2/30")
	// World holds the stand-in Internet's addresses (documentation ranges) and the metadata API.
	World = []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("169.254.169.254/32")}
	// Metadata is the metadata API's address.
	Metadata = netip.MustParseAddr("169.254.169.254")
	// UplinkHost is the node's address on its link to the Internet (a node address that is not the pods'
	// gateway).
	UplinkHost = uplinkHost.Addr()
)

// The IPv6 side of a node made with Options.DualStack: pods take a second address in PodSubnet6, and the stand-in
// Internet also answers on World6 and on the NAT64 forms (NAT64Prefix) of the World addresses.
var (
	PodSubnet6   = netip.MustParsePrefix("fd00:251::/64")
	uplinkHost6  = netip.MustParsePrefix("fd00:250:99::1/64")
	uplinkWorld6 = netip.MustParsePrefix("fd00:250:99::2/64")
	// World6 holds the stand-in Internet's IPv6 addresses (documentation ranges) and the metadata API's.
	World6 = []netip.Prefix{netip.MustParsePrefix("2001:db8:100::/64"), netip.MustParsePrefix("2001:db8:113::/64"),
		netip.MustParsePrefix("fd00:ec2::254/128")}
	// Metadata6 is the metadata API's IPv6 address.
	Metadata6 = netip.MustParseAddr("fd00:ec2::254")
	// NAT64Prefix is the well-known NAT64 prefix (RFC 6052); the node routes it to the stand-in Internet.
	NAT64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	// UplinkHost6 is the node's IPv6 address on its link to the Internet.
	UplinkHost6 = uplinkHost6.Addr()
)

// Uplink is the name of the node's link to the Internet, in the host and in the Internet namespace.
const Uplink = "uplink"

// NAT64 is an IPv4 address embedded in NAT64Prefix (64:ff9b::a.b.c.d).
func NAT64(a netip.Addr) netip.Addr {
	b := NAT64Prefix.Addr().As16()
	v4 := a.As4()
	copy(b[12:], v4[:])
	return netip.AddrFrom16(b)
}

// Binaries names the programs a node runs: moat, moat-ipam, moat-enforcer, moat-install, moatctl, and the
// reference plugins bridge, host-local, loopback and portmap.
var Binaries = map[string]string{
	"moat":          "github.com/moatfw/moat/plugin",
	"moat-ipam":     "github.com/moatfw/moat/ipam-shim",
	"moat-enforcer": "github.com/moatfw/moat/enforcer",
	"moat-install":  "github.com/moatfw/moat/install",
	"moatctl":       "github.com/moatfw/moat/moatctl",
	"bridge":        "github.com/containernetworking/plugins/plugins/main/bridge",
	"host-local":    "github.com/containernetworking/plugins/plugins/ipam/host-local",
	"loopback":      "github.com/containernetworking/plugins/plugins/main/loopback",
	"portmap":       "github.com/containernetworking/plugins/plugins/meta/portmap",
}

// Build compiles Binaries into dir (the reference plugins at the version go.mod pins), or only the ones named in
// only. It runs from the module's folder or below.
func Build(dir string, progress io.Writer, only ...string) error {
	for name, pkg := range Binaries {
		if len(only) > 0 && !slices.Contains(only, name) {
			continue
		}
		if progress != nil {
			fmt.Fprintf(progress, "building %s\n", name)
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", pkg, err, out)
		}
	}
	return nil
}

// Node is a simulated node.
type Node struct {
	Dir       string // state: policy folder, endpoint records, leases, logs, socket, pinned datapath
	BinDir    string
	Host      ns.NetNS // the node's network namespace
	Internet  ns.NetNS // the stand-in Internet and metadata API
	PolicyDir string
	Socket    string
	FlowLog   string
	PinRoot   string
	ConfDir   string // the CNI configuration folder: the runtime reads its first network at every ADD and DEL
	DualStack bool

	cni      *libcni.CNIConfig
	enforcer *exec.Cmd
	exited   chan error
	closers  []func() error
	mu       sync.Mutex
	pods     []*Pod
}

// Options shape a node.
type Options struct {
	FailPolicy string // the conflist's failPolicy (default closed)
	// Ports the stand-in Internet serves (TCP echo, and UDP echo on the same numbers) on every World address.
	Ports []uint16
	// Unchained leaves the primary network as the "cluster's CNI" wrote it, without moat (moat-install's work).
	Unchained bool
	// AttachMode is the chained entry's attachMode (empty: the plugin's default, tcx).
	AttachMode string
	// DualStack gives pods an IPv6 address too (PodSubnet6) and the stand-in Internet World6 and the NAT64 forms
	// of the World addresses.
	DualStack bool
}

// New makes a node in dir with the binaries of binDir, and starts its enforcer on the policy folder. Close
// removes everything it made.
func New(dir, binDir string, opts Options) (n *Node, err error) {
	if opts.FailPolicy == "" {
		opts.FailPolicy = "closed"
	}
	if len(opts.Ports) == 0 {
		opts.Ports = []uint16{53, 80, 443, 8080, 8443}
	}
	n = &Node{Dir: dir, BinDir: binDir, PolicyDir: filepath.Join(dir, "policy"), Socket: filepath.Join(dir, "enforcer.sock"),
		FlowLog: filepath.Join(dir, "flows.jsonl"), PinRoot: filepath.Join(dir, "bpf"), ConfDir: filepath.Join(dir, "net.d"),
		DualStack: opts.DualStack}
	defer func() {
		if err != nil {
			_ = n.Close()
		}
	}()
	for _, d := range []string{n.PolicyDir, n.PinRoot, n.EndpointDir(), filepath.Join(dir, "ipam"), n.ConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return n, err
		}
	}
	if err := unix.Mount("bpf", n.PinRoot, "bpf", 0, "mode=0700"); err != nil {
		return n, fmt.Errorf("mount a bpf filesystem at %s: %w", n.PinRoot, err)
	}
	n.closers = append(n.closers, func() error { return unix.Unmount(n.PinRoot, unix.MNT_DETACH) })
	if n.Host, err = newNS(n); err != nil {
		return n, err
	}
	if n.Internet, err = newNS(n); err != nil {
		return n, err
	}
	if err := n.wire(); err != nil {
		return n, fmt.Errorf("wire the node to its Internet: %w", err)
	}
	if n.DualStack {
		if err := n.wire6(); err != nil {
			return n, fmt.Errorf("wire the node to its IPv6 Internet: %w", err)
		}
	}
	if err := n.serve(opts.Ports); err != nil {
		return n, err
	}
	// an exec of its own: left nil, libcni sets one at the first call, a data race when pods are added in parallel
	cniExec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: cniversion.PluginDecoder{}}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{binDir}, filepath.Join(dir, "cni-cache"), cniExec)
	if err := os.WriteFile(filepath.Join(n.ConfDir, "10-simnode.conflist"), []byte(n.conflistJSON()), 0o644); err != nil {
		return n, err
	}
	if !opts.Unchained {
		set := n.ChainSettings(opts.FailPolicy)
		set.AttachMode = opts.AttachMode
		if _, err := conflist.Ensure(set.Options()); err != nil {
			return n, fmt.Errorf("chain moat: %w", err)
		}
	}
	return n, nil
}

// EndpointDir is where the plugin keeps the node's endpoint records.
func (n *Node) EndpointDir() string { return filepath.Join(n.Dir, "endpoints") }

// ChainSettings are the settings moat is chained with on this node (its own pin root, records and log).
func (n *Node) ChainSettings(failPolicy string) conflist.Settings {
	return conflist.Settings{Dir: n.ConfDir, IPAMShim: true, FailPolicy: failPolicy, PinRoot: n.PinRoot,
		EndpointDir: n.EndpointDir(), LogFile: filepath.Join(n.Dir, "moat-cni.log")}
}

// network is the chain the runtime runs: the folder's first network, read afresh as a runtime does.
func (n *Node) network() (*libcni.NetworkConfigList, error) {
	path, err := conflist.Primary(n.ConfDir)
	if err != nil {
		return nil, err
	}
	return libcni.ConfListFromFile(path)
}

func newNS(n *Node) (ns.NetNS, error) {
	netns, err := testutils.NewNS()
	if err != nil {
		return nil, fmt.Errorf("create network namespace: %w", err)
	}
	n.mu.Lock()
	n.closers = append(n.closers, func() error {
		netns.Close()
		return testutils.UnmountNS(netns)
	})
	n.mu.Unlock()
	return netns, nil
}

// wire links the host namespace to the Internet namespace, routes the World there and the pods back, and turns
// on forwarding in the host namespace (only there: the machine's own namespace is not touched).
func (n *Node) wire() error {
	if err := n.Host.Do(func(ns.NetNS) error {
		if err := up("lo"); err != nil {
			return err
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "uplink",
			PeerNamespace: netlink.NsFd(int(n.Internet.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		if err := addrUp("uplink", uplinkHost); err != nil {
			return err
		}
		l, _ := netlink.LinkByName("uplink")
		for _, p := range World {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(p), Gw: uplinkWorld.Addr().AsSlice()}); err != nil {
				return err
			}
		}
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	}); err != nil {
		return err
	}
	return n.Internet.Do(func(ns.NetNS) error {
		if err := up("lo"); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		for _, p := range World {
			a := p.Addr().Next()
			if p.Bits() == 32 {
				a = p.Addr()
			}
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(a, 32))}); err != nil {
				return err
			}
		}
		if err := addrUp("uplink", uplinkWorld); err != nil {
			return err
		}
		l, _ := netlink.LinkByName("uplink")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(PodSubnet), Gw: uplinkHost.Addr().AsSlice()})
	})
}

// WorldAddr is the address the stand-in Internet answers on in a World prefix (its first host).
func WorldAddr(i int) netip.Addr {
	p := World[i]
	if p.Bits() == 32 {
		return p.Addr()
	}
	return p.Addr().Next()
}

func up(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func addrUp(name string, p netip.Prefix) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// serve runs TCP and UDP echo servers in the Internet namespace on every World address and port.
func (n *Node) serve(ports []uint16) error {
	var addrs []netip.Addr
	for i := range World {
		addrs = append(addrs, WorldAddr(i))
	}
	if n.DualStack {
		for i := range World6 {
			addrs = append(addrs, WorldAddr6(i))
		}
		for i := range World {
			addrs = append(addrs, NAT64(WorldAddr(i)))
		}
	}
	return n.Internet.Do(func(ns.NetNS) error {
		for _, a := range addrs {
			for _, port := range ports {
				addr := netip.AddrPortFrom(a, port).String()
				ln, err := net.Listen("tcp", addr)
				if err != nil {
					return err
				}
				n.closers = append(n.closers, ln.Close)
				go testutil.Serve(ln, echo)
				pc, err := net.ListenPacket("udp", addr)
				if err != nil {
					return err
				}
				n.closers = append(n.closers, pc.Close)
				go func() {
					buf := make([]byte, 2048)
					for {
						k, from, err := pc.ReadFrom(buf)
						if err != nil {
							return
						}
						_, _ = pc.WriteTo(buf[:k], from)
					}
				}()
			}
		}
		return nil
	})
}

// conflistJSON is the node's network as its primary CNI would write it: a bridge and portmap.
func (n *Node) conflistJSON() string {
	ranges := fmt.Sprintf(`[[{"subnet": %q}]]`, PodSubnet.String())
	routes := `[{"dst": "0.0.0.0/0"}]`
	if n.DualStack {
		ranges = fmt.Sprintf(`[[{"subnet": %q}], [{"subnet": %q}]]`, PodSubnet.String(), PodSubnet6.String())
		routes = `[{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]`
	}
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0", "name": "simnode",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "dataDir": %q, "ranges": %s, "routes": %s}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]}`, filepath.Join(n.Dir, "ipam"), ranges, routes)
}

// WritePolicy writes a file of the policy folder atomically (the enforcer watches it).
func (n *Node) WritePolicy(name, content string) error {
	tmp := filepath.Join(n.PolicyDir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(n.PolicyDir, name))
}

// StartEnforcer starts moat-enforcer in the host namespace and waits until its API says it is ready.
func (n *Node) StartEnforcer(ctx context.Context, extraArgs ...string) error {
	logf, err := os.OpenFile(filepath.Join(n.Dir, "enforcer.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	args := append([]string{"--pin-root", n.PinRoot, "--policy-dir", n.PolicyDir, "--endpoint-dir",
		n.EndpointDir(), "--socket", n.Socket, "--flow-log", n.FlowLog, "--metrics-addr", "",
		"--reconcile-interval", "2s"}, extraArgs...)
	cmd := exec.Command(filepath.Join(n.BinDir, "moat-enforcer"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// started from a thread in the host namespace, the enforcer lives there
	if err := n.Host.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		logf.Close()
		return err
	}
	logf.Close()
	n.enforcer, n.exited = cmd, make(chan error, 1)
	go func() { n.exited <- cmd.Wait() }()
	c := agentapi.NewClient(n.Socket)
	for {
		st, err := c.Status(ctx)
		if err == nil && st.Generation > 0 {
			return nil
		}
		select {
		case err := <-n.exited:
			n.enforcer = nil
			return fmt.Errorf("moat-enforcer exited (%v):\n%s", err, n.EnforcerLog())
		case <-ctx.Done():
			return fmt.Errorf("moat-enforcer never became ready: %v\n%s", err, n.EnforcerLog())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// StopEnforcer stops the enforcer (SIGTERM, then SIGKILL); its pinned state stays.
func (n *Node) StopEnforcer() error {
	if n.enforcer == nil {
		return nil
	}
	_ = n.enforcer.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		_ = n.enforcer.Process.Kill()
		<-n.exited
	}
	n.enforcer = nil
	return nil
}

// EnforcerLog is what the enforcer has logged.
func (n *Node) EnforcerLog() string {
	b, _ := os.ReadFile(filepath.Join(n.Dir, "enforcer.log"))
	return string(b)
}

// Pod is a pod on the node: a network namespace that the CNI chain gave an address.
type Pod struct {
	Namespace, Name string
	Addr            netip.Addr
	Addr6           netip.Addr // on a DualStack node
	Net             ns.NetNS
	rt              *libcni.RuntimeConf
	node            *Node
}

// AddPod runs the CNI chain's ADD for a pod of a Kubernetes namespace, as a runtime would (with the Kubernetes
// CNI_ARGS).
func (n *Node) AddPod(ctx context.Context, namespace, name string) (*Pod, error) {
	netns, err := newNS(n)
	if err != nil {
		return nil, err
	}
	p := &Pod{Namespace: namespace, Name: name, Net: netns, node: n}
	p.rt = &libcni.RuntimeConf{ContainerID: "sim-" + namespace + "-" + name, NetNS: netns.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", namespace}, {"K8S_POD_NAME", name},
			{"K8S_POD_UID", "uid-" + namespace + "-" + name}, {"K8S_POD_INFRA_CONTAINER_ID", "sim-" + name}}}
	var addr, addr6 netip.Addr
	network, err := n.network()
	if err != nil {
		return nil, err
	}
	err = n.Host.Do(func(ns.NetNS) error {
		res, err := n.cni.AddNetworkList(ctx, network, p.rt)
		if err != nil {
			return err
		}
		cur, err := current.NewResultFromResult(res)
		if err != nil {
			return err
		}
		for _, ip := range cur.IPs {
			if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && PodSubnet.Contains(a.Unmap()) {
				addr = a.Unmap()
			} else if ok && PodSubnet6.Contains(a) {
				addr6 = a
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("CNI ADD of pod %s/%s: %w", namespace, name, err)
	}
	if !addr.IsValid() {
		return nil, fmt.Errorf("CNI ADD of pod %s/%s gave no address in %s", namespace, name, PodSubnet)
	}
	if n.DualStack && !addr6.IsValid() {
		return nil, fmt.Errorf("CNI ADD of pod %s/%s gave no address in %s", namespace, name, PodSubnet6)
	}
	p.Addr, p.Addr6 = addr, addr6
	n.mu.Lock()
	n.pods = append(n.pods, p)
	n.mu.Unlock()
	return p, nil
}

// Delete runs the CNI chain's DEL for the pod.
func (p *Pod) Delete(ctx context.Context) error {
	n := p.node
	network, err := n.network()
	if err == nil {
		err = n.Host.Do(func(ns.NetNS) error { return n.cni.DelNetworkList(ctx, network, p.rt) })
	}
	n.mu.Lock()
	for i, q := range n.pods {
		if q == p {
			n.pods = append(n.pods[:i], n.pods[i+1:]...)
			break
		}
	}
	n.mu.Unlock()
	return err
}

// Connect opens a TCP connection from the pod to addr, exchanges a line with the echo server, and closes it.
func (p *Pod) Connect(addr string, timeout time.Duration) error {
	return testutil.Exchange(p.Net, addr, timeout)
}

// Serve runs a TCP echo server in the pod on port, until the node closes.
func (p *Pod) Serve(port uint16) error {
	ln, err := testutil.ListenTCP(p.Net, netip.AddrPortFrom(p.Addr, port).String())
	if err != nil {
		return err
	}
	p.node.closers = append(p.node.closers, ln.Close)
	go testutil.Serve(ln, echo)
	return nil
}

// echo answers a connection with what it reads, until the client closes it.
func echo(c net.Conn) { _, _ = io.Copy(c, c) }

// ConnectFromInternet opens a TCP connection from a World address to addr (a pod's), as a client on the
// Internet would, and exchanges a line.
func (n *Node) ConnectFromInternet(from netip.Addr, addr string, timeout time.Duration) error {
	return testutil.ExchangeFrom(n.Internet, from, addr, timeout)
}

// Close deletes the pods, stops the enforcer and removes every namespace, mount and file the node made. The
// pinned state goes with its private bpf filesystem.
func (n *Node) Close() error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n.mu.Lock()
	pods := append([]*Pod(nil), n.pods...)
	n.mu.Unlock()
	for _, p := range pods {
		if err := p.Delete(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, n.StopEnforcer())
	for i := len(n.closers) - 1; i >= 0; i-- {
		if err := n.closers[i](); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	n.closers = nil
	return errors.Join(errs...)
}
