package policy_test

import (
	"net/netip"
	"testing"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/policy/policytest"
)

const (
	podA   uint32 = 7 // identity of the namespace of 10.244.1.5 and fd00:10:244::5
	podB   uint32 = 8 // identity of the namespace of 10.244.1.6
	svcNS  uint32 = 9 // identity of the namespace of the Service 10.96.0.10
	selfNS uint32 = 3 // the identity being decided
)

var (
	allow = bpf.ActionAllow
	deny  = bpf.ActionDeny
)

// testIPCache is a small cluster: pods, a Service, a node network, the metadata API and the cluster ranges.
func testIPCache() *policy.IPCache {
	return policy.NewIPCache([]policy.IPCacheEntry{
		{Prefix: pfx("10.244.0.0/16"), Class: bpf.ClassCluster},
		{Prefix: pfx("10.244.1.5/32"), Class: bpf.ClassPod, Identity: podA},
		{Prefix: pfx("10.244.1.6/32"), Class: bpf.ClassPod, Identity: podB},
		{Prefix: pfx("10.96.0.10/32"), Class: bpf.ClassService, Identity: svcNS},
		{Prefix: pfx("192.168.1.0/24"), Class: bpf.ClassNode},
		{Prefix: pfx("169.254.169.254/32"), Class: bpf.ClassMetadata},
		{Prefix: pfx("fd00:ec2::254/128"), Class: bpf.ClassMetadata},
		{Prefix: pfx("fd00:10:244::/56"), Class: bpf.ClassCluster},
		{Prefix: pfx("fd00:10:244::5/128"), Class: bpf.ClassPod, Identity: podA},
	})
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func cidrP(s string, except ...string) policy.Peer {
	p := policy.Peer{CIDR: pfx(s)}
	for _, e := range except {
		p.Except = append(p.Except, pfx(e))
	}
	return p
}

func portRange(proto uint8, first, last uint16) []policy.PortRange {
	return []policy.PortRange{{Protocol: proto, First: first, Last: last}}
}

func egress(proto uint8, port uint16, remote string) policy.Packet {
	return policy.Packet{Direction: bpf.Egress, Protocol: proto, Port: port, Remote: addr(remote)}
}

func ingress(proto uint8, port uint16, remote string) policy.Packet {
	return policy.Packet{Direction: bpf.Ingress, Protocol: proto, Port: port, Remote: addr(remote)}
}

func withRules(rules ...policy.Rule) *policy.IdentityPolicy {
	return &policy.IdentityPolicy{Identity: selfNS, DefaultEgress: allow, DefaultIngress: allow, Rules: rules}
}

func TestEvaluate(t *testing.T) {
	ipc := testIPCache()
	allowAll := policy.Defaults{DefaultEgress: allow, DefaultIngress: allow}
	denyAll := policy.Defaults{DefaultEgress: deny, DefaultIngress: deny}

	priorities := withRules(
		policy.Rule{ID: 1, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("10.0.0.0/8")}, Ports: portRange(policy.ProtoTCP, 443, 443)},
		policy.Rule{ID: 2, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{cidrP("10.0.0.0/8")}, AllPorts: true},
		policy.Rule{ID: 3, Direction: bpf.Egress, Action: allow, AllPeers: true, AllPorts: true},
	)
	excepts := withRules(
		policy.Rule{ID: 11, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("198.51.100.0/24", "198.51.100.0/28")}, AllPorts: true},
		policy.Rule{ID: 12, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{cidrP("198.51.100.0/24")}, AllPorts: true},
	)
	twoPeers := withRules(
		policy.Rule{ID: 13, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{cidrP("10.0.0.0/9", "10.1.0.0/16"), cidrP("10.0.0.0/9", "10.1.0.0/17")}, AllPorts: true},
		policy.Rule{ID: 14, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("10.0.0.0/8", "10.128.0.0/9", "10.192.0.0/10")}, AllPorts: true},
	)
	ports := withRules(
		policy.Rule{ID: 21, Direction: bpf.Egress, Action: deny, AllPeers: true, Ports: portRange(policy.ProtoUDP, 8000, 8100)},
		policy.Rule{ID: 22, Direction: bpf.Egress, Action: deny, AllPeers: true, Ports: portRange(policy.ProtoICMP, 8, 8)},
		policy.Rule{ID: 23, Direction: bpf.Egress, Action: deny, AllPeers: true, Ports: portRange(47, 0, 65535)},
		policy.Rule{ID: 24, Direction: bpf.Egress, Action: deny, AllPeers: true, Ports: portRange(policy.ProtoICMPv6, 128, 129)},
	)
	identities := withRules(
		policy.Rule{ID: 31, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{{Identities: []uint32{podA, svcNS}}}, Ports: portRange(policy.ProtoTCP, 5432, 5432)},
		policy.Rule{ID: 32, Direction: bpf.Ingress, Action: deny, Peers: []policy.Peer{{Identities: []uint32{podB}}}, AllPorts: true},
	)
	auditBefore := withRules(
		policy.Rule{ID: 41, Direction: bpf.Egress, Action: deny, Audit: true, AllPeers: true, AllPorts: true},
		policy.Rule{ID: 42, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("203.0.113.0/24")}, AllPorts: true},
		policy.Rule{ID: 43, Direction: bpf.Egress, Action: allow, Audit: true, AllPeers: true, AllPorts: true},
	)
	auditAfter := withRules(
		policy.Rule{ID: 42, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("203.0.113.0/24")}, AllPorts: true},
		policy.Rule{ID: 41, Direction: bpf.Egress, Action: deny, Audit: true, AllPeers: true, AllPorts: true},
	)
	auditNS := withRules(policy.Rule{ID: 51, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{cidrP("203.0.113.0/24")}, AllPorts: true})
	auditNS.Audit = true
	closed := withRules(policy.Rule{ID: 61, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("2001:db8::/32")}, Ports: portRange(policy.ProtoTCP, 80, 80)})
	closed.DefaultEgress, closed.DefaultIngress = deny, deny
	metaOpen := withRules(policy.Rule{ID: 71, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{cidrP("169.254.169.254/32")}, Ports: portRange(policy.ProtoTCP, 80, 80)})
	metaOpen.MetadataAllowed, metaOpen.DefaultEgress = true, deny
	metaClosed := withRules(policy.Rule{ID: 72, Direction: bpf.Egress, Action: allow, AllPeers: true, AllPorts: true})
	pods := withRules(policy.Rule{ID: 81, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{cidrP("10.244.0.0/16"), cidrP("192.168.1.0/24")}, AllPorts: true})
	nobody := withRules(policy.Rule{ID: 91, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{}, AllPorts: true},
		policy.Rule{ID: 92, Direction: bpf.Egress, Action: deny, Peers: []policy.Peer{{}}, AllPorts: true})

	type want struct {
		action      bpf.Action
		reason      bpf.Reason
		rule        uint32
		auditRule   uint32
		auditAction bpf.Action
		verdict     bpf.Verdict
	}
	allowedBy := func(rule uint32) want {
		return want{action: allow, reason: bpf.ReasonAllowRule, rule: rule, verdict: bpf.VerdictAllowed}
	}
	deniedBy := func(rule uint32) want {
		return want{action: deny, reason: bpf.ReasonDenyRule, rule: rule, verdict: bpf.VerdictDenied}
	}
	allowedByDefault := want{action: allow, reason: bpf.ReasonAllowDefault, verdict: bpf.VerdictAllowed}
	deniedByDefault := want{action: deny, reason: bpf.ReasonDenyDefault, verdict: bpf.VerdictDenied}
	metadataDenied := want{action: deny, reason: bpf.ReasonMetadata, verdict: bpf.VerdictDenied}
	withAudit := func(w want, rule uint32, action bpf.Action) want {
		w.auditRule, w.auditAction = rule, action
		return w
	}

	tests := []struct {
		name     string
		policy   *policy.IdentityPolicy
		defaults policy.Defaults
		pkt      policy.Packet
		want     want
	}{
		{"no policy: world takes the cluster default (allow)", nil, allowAll, egress(policy.ProtoTCP, 443, "203.0.113.1"), allowedByDefault},
		{"no policy: world takes the cluster default (deny)", nil, denyAll, egress(policy.ProtoTCP, 443, "203.0.113.1"), deniedByDefault},
		{"no policy: ingress default", nil, policy.Defaults{DefaultEgress: allow, DefaultIngress: deny}, ingress(policy.ProtoTCP, 80, "203.0.113.1"), deniedByDefault},
		{"no policy: metadata API denied", nil, allowAll, egress(policy.ProtoTCP, 80, "169.254.169.254"), metadataDenied},
		{"no policy: pods allowed under a deny default", nil, denyAll, egress(policy.ProtoTCP, 80, "10.244.1.5"), allowedByDefault},

		{"metadata denied before any rule", metaClosed, allowAll, egress(policy.ProtoTCP, 80, "169.254.169.254"), metadataDenied},
		{"metadata v6 denied", metaClosed, allowAll, egress(policy.ProtoTCP, 80, "fd00:ec2::254"), metadataDenied},
		{"metadata allowed: a rule decides", metaOpen, allowAll, egress(policy.ProtoTCP, 80, "169.254.169.254"), allowedBy(71)},
		{"metadata allowed: counts as the world", metaOpen, allowAll, egress(policy.ProtoTCP, 443, "169.254.169.254"), deniedByDefault},
		{"metadata allowed: v6 as the world", metaOpen, allowAll, egress(policy.ProtoTCP, 80, "fd00:ec2::254"), deniedByDefault},

		{"first match: the earlier allow", priorities, allowAll, egress(policy.ProtoTCP, 443, "10.1.2.3"), allowedBy(1)},
		{"first match: the later deny", priorities, allowAll, egress(policy.ProtoTCP, 80, "10.1.2.3"), deniedBy(2)},
		{"first match: udp 443 is not tcp 443", priorities, allowAll, egress(policy.ProtoUDP, 443, "10.1.2.3"), deniedBy(2)},
		{"first match: outside the cidr", priorities, allowAll, egress(policy.ProtoTCP, 80, "11.0.0.1"), allowedBy(3)},
		{"first match: v6 only matches AllPeers", priorities, allowAll, egress(policy.ProtoTCP, 443, "2001:db8::1"), allowedBy(3)},
		{"first match: a 4-in-6 address is not IPv4", priorities, allowAll, egress(policy.ProtoTCP, 443, "::ffff:10.1.2.3"), allowedBy(3)},

		{"except: carved out", excepts, allowAll, egress(policy.ProtoTCP, 80, "198.51.100.5"), deniedBy(12)},
		{"except: edge of the except", excepts, allowAll, egress(policy.ProtoTCP, 80, "198.51.100.15"), deniedBy(12)},
		{"except: just after the except", excepts, allowAll, egress(policy.ProtoTCP, 80, "198.51.100.16"), allowedBy(11)},
		{"except: last address of the cidr", excepts, allowAll, egress(policy.ProtoTCP, 80, "198.51.100.255"), allowedBy(11)},
		{"except: outside", excepts, allowAll, egress(policy.ProtoTCP, 80, "198.51.101.0"), allowedByDefault},
		{"except: another peer of the rule covers it", twoPeers, allowAll, egress(policy.ProtoTCP, 80, "10.1.200.1"), deniedBy(13)},
		{"except: in every peer's except", twoPeers, allowAll, egress(policy.ProtoTCP, 80, "10.1.0.1"), allowedBy(14)},
		{"except: nested excepts", twoPeers, allowAll, egress(policy.ProtoTCP, 80, "10.200.0.1"), allowedByDefault},
		{"except: the outer except", twoPeers, allowAll, egress(policy.ProtoTCP, 80, "10.130.0.1"), allowedByDefault},
		{"except: outside the excepts", twoPeers, allowAll, egress(policy.ProtoTCP, 80, "10.127.255.255"), deniedBy(13)},

		{"ports: below the range", ports, allowAll, egress(policy.ProtoUDP, 7999, "203.0.113.1"), allowedByDefault},
		{"ports: first of the range", ports, allowAll, egress(policy.ProtoUDP, 8000, "203.0.113.1"), deniedBy(21)},
		{"ports: last of the range", ports, allowAll, egress(policy.ProtoUDP, 8100, "203.0.113.1"), deniedBy(21)},
		{"ports: after the range", ports, allowAll, egress(policy.ProtoUDP, 8101, "203.0.113.1"), allowedByDefault},
		{"ports: tcp in a udp range", ports, allowAll, egress(policy.ProtoTCP, 8050, "203.0.113.1"), allowedByDefault},
		{"ports: icmp echo request", ports, allowAll, egress(policy.ProtoICMP, 8, "203.0.113.1"), deniedBy(22)},
		{"ports: icmp echo reply", ports, allowAll, egress(policy.ProtoICMP, 0, "203.0.113.1"), allowedByDefault},
		{"ports: icmpv6 type in range", ports, allowAll, egress(policy.ProtoICMPv6, 129, "2001:db8::1"), deniedBy(24)},
		{"ports: icmpv6 type after range", ports, allowAll, egress(policy.ProtoICMPv6, 130, "2001:db8::1"), allowedByDefault},
		{"ports: protocol 47", ports, allowAll, egress(47, 0, "203.0.113.1"), deniedBy(23)},
		{"ports: protocol 50", ports, allowAll, egress(50, 0, "203.0.113.1"), allowedByDefault},
		{"ports: ingress is not egress", ports, allowAll, ingress(policy.ProtoUDP, 8000, "203.0.113.1"), allowedByDefault},

		{"identity: pod of a named namespace", identities, denyAll, egress(policy.ProtoTCP, 5432, "10.244.1.5"), deniedBy(31)},
		{"identity: v6 pod of a named namespace", identities, denyAll, egress(policy.ProtoTCP, 5432, "fd00:10:244::5"), deniedBy(31)},
		{"identity: Service of a named namespace", identities, denyAll, egress(policy.ProtoTCP, 5432, "10.96.0.10"), deniedBy(31)},
		{"identity: pod of another namespace", identities, denyAll, egress(policy.ProtoTCP, 5432, "10.244.1.6"), allowedByDefault},
		{"identity: other port", identities, denyAll, egress(policy.ProtoTCP, 5433, "10.244.1.5"), allowedByDefault},
		{"identity: ingress from a named namespace", identities, denyAll, ingress(policy.ProtoTCP, 80, "10.244.1.6"), deniedBy(32)},
		{"identity: the world has none", identities, denyAll, egress(policy.ProtoTCP, 5432, "203.0.113.1"), allowedByDefault},

		{"audit: reported before the enforce rule", auditBefore, allowAll, egress(policy.ProtoTCP, 80, "203.0.113.1"), withAudit(allowedBy(42), 41, deny)},
		{"audit: reported without enforce rule", auditBefore, allowAll, egress(policy.ProtoTCP, 80, "198.51.100.1"), withAudit(allowedByDefault, 41, deny)},
		{"audit: not reported after the enforce rule", auditAfter, allowAll, egress(policy.ProtoTCP, 80, "203.0.113.1"), allowedBy(42)},
		{"audit: reported when nothing enforces", auditAfter, denyAll, egress(policy.ProtoTCP, 80, "198.51.100.1"), withAudit(allowedByDefault, 41, deny)},
		{"audit namespace: would have been denied", auditNS, allowAll, egress(policy.ProtoTCP, 80, "203.0.113.1"),
			want{action: deny, reason: bpf.ReasonDenyRule, rule: 51, verdict: bpf.VerdictAudit}},
		{"audit namespace: allowed stays allowed", auditNS, allowAll, egress(policy.ProtoTCP, 80, "198.51.100.1"), allowedByDefault},

		{"defaults: world egress", closed, allowAll, egress(policy.ProtoTCP, 443, "2001:db8::1"), deniedByDefault},
		{"defaults: world egress, rule", closed, allowAll, egress(policy.ProtoTCP, 80, "2001:db8::1"), allowedBy(61)},
		{"defaults: world ingress", closed, allowAll, ingress(policy.ProtoTCP, 80, "198.51.100.1"), deniedByDefault},
		{"defaults: node", closed, denyAll, egress(policy.ProtoTCP, 10250, "192.168.1.10"), allowedByDefault},
		{"defaults: pod", closed, denyAll, ingress(policy.ProtoTCP, 8080, "10.244.1.5"), allowedByDefault},
		{"defaults: Service", closed, denyAll, egress(policy.ProtoTCP, 80, "10.96.0.10"), allowedByDefault},
		{"defaults: cluster", closed, denyAll, egress(policy.ProtoTCP, 80, "10.244.9.9"), allowedByDefault},
		{"defaults: v6 cluster", closed, denyAll, egress(policy.ProtoTCP, 80, "fd00:10:244::99"), allowedByDefault},

		{"cidr peers match pods", pods, allowAll, egress(policy.ProtoTCP, 80, "10.244.1.5"), deniedBy(81)},
		{"cidr peers match nodes", pods, allowAll, egress(policy.ProtoTCP, 80, "192.168.1.1"), deniedBy(81)},
		{"empty peers match nothing", nobody, allowAll, egress(policy.ProtoTCP, 80, "10.244.1.5"), allowedByDefault},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := policy.Evaluate(tt.policy, tt.defaults, ipc, tt.pkt)
			w := tt.want
			if got.Action != w.action || got.Reason != w.reason || got.RuleID != w.rule || got.AuditRuleID != w.auditRule ||
				got.AuditAction != w.auditAction || got.Verdict != w.verdict {
				t.Errorf("Evaluate = %s\nwant action %d reason %s rule %d audit rule %d (%d) verdict %s",
					policytest.FormatResult(got), w.action, bpf.ReasonName(w.reason), w.rule, w.auditRule, w.auditAction, w.verdict)
			}
			wantClass, wantID := ipc.Lookup(tt.pkt.Remote)
			if got.RemoteClass != wantClass || got.RemoteIdentity != wantID {
				t.Errorf("remote %s/%d, want %s/%d", got.RemoteClass, got.RemoteIdentity, wantClass, wantID)
			}
			// the compiled datapath agrees on every case
			var entries []policy.Entry
			if tt.policy != nil {
				var err error
				if entries, err = policy.Compile(tt.policy); err != nil {
					t.Fatal(err)
				}
			}
			if dp := simulate(entries, tt.defaults, ipc, tt.policy != nil, tt.pkt); dp != got {
				t.Errorf("datapath = %s\nEvaluate = %s", policytest.FormatResult(dp), policytest.FormatResult(got))
			}
		})
	}
}

func TestIPCacheLookup(t *testing.T) {
	ipc := testIPCache()
	tests := []struct {
		addr     string
		class    bpf.Class
		identity uint32
	}{
		{"10.244.1.5", bpf.ClassPod, podA},
		{"10.244.1.7", bpf.ClassCluster, 0},
		{"10.245.0.1", bpf.ClassWorld, 0},
		{"192.168.1.255", bpf.ClassNode, 0},
		{"169.254.169.254", bpf.ClassMetadata, 0},
		{"169.254.169.253", bpf.ClassWorld, 0},
		{"fd00:10:244::5", bpf.ClassPod, podA},
		{"fd00:10:244:ff::1", bpf.ClassCluster, 0},
		{"fd00:10:245::1", bpf.ClassWorld, 0},
		{"::ffff:10.244.1.5", bpf.ClassWorld, 0}, // 4-in-6 is IPv6 to the datapath
		{"fe80::1%eth0", bpf.ClassWorld, 0},
	}
	for _, tt := range tests {
		class, id := ipc.Lookup(addr(tt.addr))
		if class != tt.class || id != tt.identity {
			t.Errorf("Lookup(%s) = %s/%d, want %s/%d", tt.addr, class, id, tt.class, tt.identity)
		}
	}
	if c, id := (*policy.IPCache)(nil).Lookup(addr("10.244.1.5")); c != bpf.ClassWorld || id != 0 {
		t.Errorf("nil ipcache: %s/%d", c, id)
	}
	if n := len(ipc.Entries()); n != 9 {
		t.Errorf("%d entries, want 9", n)
	}
	later := policy.NewIPCache([]policy.IPCacheEntry{{Prefix: pfx("10.0.0.1/8"), Class: bpf.ClassNode}, {Prefix: pfx("10.0.0.0/8"), Class: bpf.ClassPod, Identity: 4}})
	if c, id := later.Lookup(addr("10.1.1.1")); c != bpf.ClassPod || id != 4 {
		t.Errorf("the later entry of a prefix should win: %s/%d", c, id)
	}
}

// A learned mask opens a world address to the fqdn peers of its slots, for egress only; never a pod, node or
// metadata address (even a metadata API the namespace may reach), whatever the mask.
func TestEvaluateFQDNOnlyWorld(t *testing.T) {
	ipc := testIPCache()
	p := withRules(policy.Rule{ID: 1, Direction: bpf.Egress, Action: allow, Peers: []policy.Peer{{FQDN: "api.example.com"}},
		Ports: portRange(policy.ProtoTCP, 443, 443)})
	p.DefaultEgress, p.DefaultIngress, p.MetadataAllowed = deny, deny, true
	for _, c := range []struct {
		remote string
		fqdn   uint64
		dir    bpf.Direction
		want   bpf.Reason
	}{
		{"198.51.100.7", 1, bpf.Egress, bpf.ReasonAllowRule},
		{"198.51.100.7", 0, bpf.Egress, bpf.ReasonDenyDefault},
		{"198.51.100.7", 2, bpf.Egress, bpf.ReasonDenyDefault},
		{"198.51.100.7", 1, bpf.Ingress, bpf.ReasonDenyDefault},
		{"169.254.169.254", 1, bpf.Egress, bpf.ReasonDenyDefault},
		{"10.244.1.5", 1, bpf.Egress, bpf.ReasonAllowDefault},
		{"192.168.1.7", 1, bpf.Egress, bpf.ReasonAllowDefault},
	} {
		pkt := policy.Packet{Direction: c.dir, Protocol: policy.ProtoTCP, Port: 443, Remote: addr(c.remote), FQDN: c.fqdn}
		if r := policy.Evaluate(p, policy.Defaults{}, ipc, pkt); r.Reason != c.want {
			t.Errorf("%s %s learned %#x: %s, want %s", c.dir, c.remote, c.fqdn, bpf.ReasonName(r.Reason), bpf.ReasonName(c.want))
		}
	}
}
