package sidebyside

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/policy/policytest"
)

// The configurations compared.
const (
	ConfigNone           = "none"
	ConfigMoat           = "moat"
	ConfigIptablesLegacy = "iptables-legacy"
	// ConfigIptablesLegacyStateless is iptables-legacy without conntrack: no ESTABLISHED accept, so every packet
	// in both directions walks the rules.
	ConfigIptablesLegacyStateless = "iptables-legacy-stateless"
	ConfigIptablesNft             = "iptables-nft"
	ConfigNftables                = "nftables"
)

// Configs are the configurations in the order they run and print.
var Configs = []string{ConfigNone, ConfigMoat, ConfigIptablesLegacy, ConfigIptablesLegacyStateless,
	ConfigIptablesNft, ConfigNftables}

// podIdentity is the client's identity in Moat's datapath, published for namespace podNamespace.
const (
	podIdentity  = 5
	podNamespace = "sidebyside"
)

// installFilter puts configuration cfg with n rules on the topology: n-1 rules that do not match the flows under
// test, then (unless withoutMatch) the one that allows them (iptables-legacy-stateless: the two, one per
// direction); everything else from the client is dropped.
// The returned function removes what the namespaces' removal does not (Moat's links, maps and bpffs mount).
func installFilter(ctx context.Context, t *topology, cfg string, n int, withoutMatch bool) (func(), error) {
	switch cfg {
	case ConfigNone:
		return func() {}, nil
	case ConfigMoat:
		return installMoat(t, n, withoutMatch)
	case ConfigIptablesLegacy:
		return func() {}, restoreIptables(ctx, t, "iptables-legacy-restore", iptablesRules(n, true, withoutMatch))
	case ConfigIptablesLegacyStateless:
		return func() {}, restoreIptables(ctx, t, "iptables-legacy-restore", iptablesRules(n, false, withoutMatch))
	case ConfigIptablesNft:
		return func() {}, restoreIptables(ctx, t, "iptables-nft-restore", iptablesRules(n, true, withoutMatch))
	case ConfigNftables:
		return func() {}, loadNft(ctx, t, n, withoutMatch)
	}
	return nil, fmt.Errorf("unknown configuration %q", cfg)
}

// iptablesRules is an iptables-restore input for the router's FORWARD chain. Stateful: established first, as
// CNIs do, then n-1 non-matching ACCEPTs, then the matching one (client to server). Stateless: no conntrack, so
// the n-1 non-matching ACCEPTs, the matching one, and after them the one for the replies (server to client),
// which every reply reaches after walking the n rules before it. withoutMatch leaves out the matching rules;
// the chain's policy drops the rest.
func iptablesRules(n int, stateful, withoutMatch bool) []byte {
	var b strings.Builder
	b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n")
	if stateful {
		b.WriteString("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
	}
	for i := 0; i < n-1; i++ {
		fmt.Fprintf(&b, "-A FORWARD -s %s/32 -d %s -p tcp -m tcp --dport %d -j ACCEPT\n", clientAddr,
			policytest.NRulesCIDR(i), policytest.NRulesFirstPort+i)
	}
	if !withoutMatch {
		fmt.Fprintf(&b, "-A FORWARD -s %s/32 -d %s -p tcp -m tcp --dport %d:%d -j ACCEPT\n", clientAddr, serverNet,
			iperfPort, lastPort)
		if !stateful {
			fmt.Fprintf(&b, "-A FORWARD -s %s -d %s/32 -p tcp -m tcp --sport %d:%d -j ACCEPT\n", serverNet, clientAddr,
				iperfPort, lastPort)
		}
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String())
}

// restoreIptables loads rules, an iptables-restore input, with bin into the router namespace.
func restoreIptables(ctx context.Context, t *topology, bin string, rules []byte) error {
	argv := inNS(t.router, "", bin)
	if _, err := output(ctx, rules, argv[0], argv[1:]...); err != nil {
		return fmt.Errorf("load %d rules: %w", strings.Count(string(rules), "-A FORWARD"), err)
	}
	return nil
}

// nftRules is one table with a forward chain: established first, then one rule matching a set of n elements
// (n-1 that do not match, then the one that does).
func nftRules(n int, withoutMatch bool) []byte {
	var elems []string
	for i := 0; i < n-1; i++ {
		elems = append(elems, fmt.Sprintf("%s . %d", policytest.NRulesCIDR(i), policytest.NRulesFirstPort+i))
	}
	if !withoutMatch {
		elems = append(elems, fmt.Sprintf("%s . %d-%d", serverNet, iperfPort, lastPort))
	}
	var b strings.Builder
	b.WriteString("table ip sidebyside {\n")
	b.WriteString("\tset allowed {\n\t\ttype ipv4_addr . inet_service\n\t\tflags interval\n")
	if len(elems) > 0 {
		fmt.Fprintf(&b, "\t\telements = { %s }\n", strings.Join(elems, ",\n\t\t\t"))
	}
	b.WriteString("\t}\n")
	b.WriteString("\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n")
	b.WriteString("\t\tct state established,related accept\n")
	fmt.Fprintf(&b, "\t\tip saddr %s ip daddr . tcp dport @allowed accept\n", clientAddr)
	b.WriteString("\t}\n}\n")
	return []byte(b.String())
}

func loadNft(ctx context.Context, t *topology, n int, withoutMatch bool) error {
	argv := inNS(t.router, "", "nft", "-f", "-")
	if _, err := output(ctx, nftRules(n, withoutMatch), argv[0], argv[1:]...); err != nil {
		return fmt.Errorf("load a set of %d: %w", n, err)
	}
	return nil
}

// installMoat loads Moat's datapath on a private bpffs, makes the client an endpoint of its own namespace
// identity with a policy of n rules (allow-list: egress not allowed is denied), and attaches it with tcx to the
// client veth's host end in the router namespace.
func installMoat(t *topology, n int, withoutMatch bool) (cleanup func(), err error) {
	var undo []func()
	cleanup = func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	dir, err := os.MkdirTemp("", "moat-sidebyside-bpffs-")
	if err != nil {
		return cleanup, err
	}
	undo = append(undo, func() { os.Remove(dir) })
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return cleanup, fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	undo = append(undo, func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	dp, err := bpf.Load(filepath.Join(dir, "moat"), bpf.Options{})
	if err != nil {
		return cleanup, fmt.Errorf("load datapath: %w", err)
	}
	undo = append(undo, func() { dp.Close() })

	router, err := ns.GetNS("/run/netns/" + t.router)
	if err != nil {
		return cleanup, err
	}
	undo = append(undo, func() { router.Close() })
	var ifindex int
	if err := router.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(podIfname)
		if err != nil {
			return err
		}
		ifindex = l.Attrs().Index
		return nil
	}); err != nil {
		return cleanup, fmt.Errorf("find %s: %w", podIfname, err)
	}

	if err := dp.SetNamespaceIdentity(podNamespace, podIdentity); err != nil {
		return cleanup, err
	}
	ep, err := bpf.NewEndpoint(podIdentity, bpf.ModeEnforce, []netip.Addr{netip.MustParseAddr(clientAddr)})
	if err != nil {
		return cleanup, err
	}
	if err := dp.SetEndpoint(uint32(ifindex), &ep); err != nil {
		return cleanup, err
	}
	p := moatPolicy(n, withoutMatch)
	entries, err := policy.Compile(p)
	if err != nil {
		return cleanup, fmt.Errorf("compile %d rules: %w", n, err)
	}
	if err := dp.ReplacePolicy(p.Identity, entries); err != nil {
		return cleanup, err
	}
	if _, err := dp.BumpGeneration(); err != nil {
		return cleanup, err
	}
	attacher, err := bpf.NewAttacher(bpf.ModeTCX)
	if err != nil {
		return cleanup, err
	}
	var att bpf.Attachment
	if err := router.Do(func(ns.NetNS) error {
		att, err = attacher.Attach(ifindex, dp.FromPod, dp.ToPod)
		return err
	}); err != nil {
		return cleanup, fmt.Errorf("attach tcx to %s: %w", podIfname, err)
	}
	undo = append(undo, func() { _ = router.Do(func(ns.NetNS) error { return att.Detach() }) })
	return cleanup, nil
}

// moatPolicy is the allow-list of n rules Moat enforces for the client; withoutMatch leaves out the last rule,
// the one that allows the flows under test.
func moatPolicy(n int, withoutMatch bool) *policy.IdentityPolicy {
	p := policytest.NRules(podIdentity, n, bpf.ActionAllow, bpf.ActionAllow, bpf.ActionDeny,
		netip.MustParsePrefix(serverNet), iperfPort, lastPort)
	if withoutMatch {
		p.Rules = p.Rules[:len(p.Rules)-1]
	}
	return p
}
