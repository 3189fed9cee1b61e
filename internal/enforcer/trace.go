package enforcer

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/policy"
)

// Errors of a trace request: it names a namespace or a pod this node does not know (ErrNotFound), or it is not
// a question trace can answer (ErrBadTrace). Their messages are the request's problem alone.
var (
	ErrNotFound = errors.New("not found")
	ErrBadTrace = errors.New("bad trace request")
)

// traceError is a message that errors.Is matches with its kind.
type traceError struct {
	kind error
	msg  string
}

func (e traceError) Error() string { return e.msg }
func (e traceError) Unwrap() error { return e.kind }

func notFound(format string, args ...any) error {
	return traceError{ErrNotFound, fmt.Sprintf(format, args...)}
}

func badTrace(format string, args ...any) error {
	return traceError{ErrBadTrace, fmt.Sprintf(format, args...)}
}

// nodeView is what a trace reads from the node besides the enforcer's snapshot.
type nodeView struct {
	pods    []*endpoint.Record      // the pods the plugin recorded
	tags    map[uint32]bpf.Endpoint // host ifindex -> what the datapath tags the pod's veth with
	ipcache []policy.IPCacheEntry   // the live ipcache: the enforcer's entries and this node's pods (the plugin's)
	learned []bpf.LearnedAddr       // the addresses learned from DNS answers
	now     time.Time               // when learned entries count as expired
}

// learnedSlots is what an identity learned of an address and holds now (its mask of fqdn slots).
func (n nodeView) learnedSlots(identity uint32, a netip.Addr) uint64 {
	a = bpf.FQDNAddr(a)
	for _, l := range n.learned {
		if l.Identity == identity && l.Addr == a && !l.Expires.Before(n.now) {
			return l.Slots
		}
	}
	return 0
}

// Trace answers what the datapath would do with a hypothetical packet, from the reference evaluator over the
// policy in force and the live ipcache.
func (e *Enforcer) Trace(store endpoint.Store, req agentapi.TraceRequest) (agentapi.TraceResult, error) {
	var node nodeView
	var err error
	if node.pods, err = store.List(""); err != nil {
		return agentapi.TraceResult{}, err
	}
	if node.tags, err = e.dp.Endpoints(); err != nil {
		return agentapi.TraceResult{}, err
	}
	entries, err := e.dp.IPCacheEntries()
	if err != nil {
		return agentapi.TraceResult{}, err
	}
	node.ipcache = make([]policy.IPCacheEntry, 0, len(entries))
	for prefix, v := range entries {
		node.ipcache = append(node.ipcache, policy.IPCacheEntry{Prefix: prefix, Class: bpf.Class(v.Class), Identity: v.Identity})
	}
	if node.learned, err = e.dp.LearnedFQDN(); err != nil {
		return agentapi.TraceResult{}, err
	}
	node.now = time.Now()
	return trace(e.Snapshot(), node, req)
}

// trace is Trace's answer from a snapshot of the enforcer and a view of the node.
func trace(snap Snapshot, node nodeView, req agentapi.TraceRequest) (agentapi.TraceResult, error) {
	var res agentapi.TraceResult
	pkt := policy.Packet{Direction: bpf.Egress, Protocol: 6, Port: req.Port}
	switch strings.ToLower(req.Direction) {
	case "", "egress":
	case "ingress":
		pkt.Direction = bpf.Ingress
	default:
		return res, badTrace("direction %q: want egress or ingress", req.Direction)
	}
	if req.Protocol != "" {
		p, err := v1alpha1.ProtocolNumber(req.Protocol)
		if err != nil {
			return res, traceError{ErrBadTrace, err.Error()}
		}
		pkt.Protocol = p
	}
	if req.Namespace == "" {
		return res, badTrace("trace needs the pod's namespace")
	}
	identity, known := snap.Identity(req.Namespace) // a gone namespace's pods on this node may still hold one
	if !known {
		return res, notFound("unknown namespace %q: the policy source names no such namespace", req.Namespace)
	}
	var self netip.Addr // the pod's own address, the far end of the peer's check
	if req.Pod != "" {
		rec := findPod(node.pods, req.Namespace, req.Pod)
		if rec == nil {
			return res, notFound("pod %s/%s is not on this node", req.Namespace, req.Pod)
		}
		if len(rec.Addresses) > 0 {
			self, _ = netip.ParseAddr(rec.Addresses[0])
		}
		if ep, ok := node.tags[uint32(rec.HostIfindex)]; ok && ep.Identity != identity {
			identity = ep.Identity // what the datapath tags the pod with decides
		}
	}
	if req.RemoteName != "" {
		return traceName(snap, node, req, pkt, identity)
	}
	switch {
	case req.Remote != "":
		a, err := netip.ParseAddr(req.Remote)
		if err != nil {
			return res, badTrace("remote %q is not an address", req.Remote)
		}
		pkt.Remote = a.Unmap()
	case req.RemotePod != "":
		rec := findPod(node.pods, req.RemoteNamespace, req.RemotePod)
		if rec == nil || len(rec.Addresses) == 0 {
			return res, notFound("pod %s/%s is not on this node: give its address", req.RemoteNamespace, req.RemotePod)
		}
		a, err := netip.ParseAddr(rec.Addresses[0])
		if err != nil {
			return res, fmt.Errorf("record of pod %s/%s: %w", req.RemoteNamespace, req.RemotePod, err)
		}
		pkt.Remote = a
	default:
		return res, badTrace("trace needs a remote: an address, or a namespace and pod")
	}
	if pkt.Port == 0 && (pkt.Protocol == 1 || pkt.Protocol == 58) {
		pkt.Port = 8 // an echo request
		if pkt.Protocol == 58 {
			pkt.Port = 128
		}
	}
	return traceAddress(snap, node, req, pkt, identity, self)
}

// traceAddress is trace's answer for a remote address (pkt.Remote), with what the namespace learned of it.
func traceAddress(snap Snapshot, node nodeView, req agentapi.TraceRequest, pkt policy.Packet, identity uint32,
	self netip.Addr) (agentapi.TraceResult, error) {
	var res agentapi.TraceResult
	resolved := snap.Resolve()
	ipc := node.ipcache
	p := resolved.Policies[identity]
	if pkt.Direction == bpf.Egress {
		pkt.FQDN = node.learnedSlots(identity, pkt.Remote)
	}
	out := policy.Evaluate(p, resolved.Defaults, policy.NewIPCache(ipc), pkt)
	res = agentapi.TraceResult{Verdict: out.Verdict.String(), Reason: bpf.ReasonName(out.Reason), Identity: identity,
		Remote: pkt.Remote.String(), RemoteClass: out.RemoteClass.String(), RemoteNamespace: snap.Namespace(out.RemoteIdentity)}
	if k, ok := snap.Rules[out.RuleID]; ok && out.RuleID != 0 {
		res.Policy, res.Rule = k.Policy, k.Name()
	}
	if k, ok := snap.Rules[out.AuditRuleID]; ok && out.AuditRuleID != 0 {
		res.AuditPolicy, res.AuditRule = k.Policy, k.Name()
	}
	res.Explanation = explain(req, pkt, out, res, p)
	if out.RemoteClass == bpf.ClassPod && out.RemoteIdentity != 0 {
		// between two pods, the other pod's hook judges the packet too, by its namespace's policy
		if !self.IsValid() {
			self = netip.MustParseAddr("240.0.0.1") // stands for the namespace's pods
			ipc = append(ipc[:len(ipc):len(ipc)], policy.IPCacheEntry{Prefix: netip.PrefixFrom(self, 32), Class: bpf.ClassPod, Identity: identity})
		}
		peerPkt := policy.Packet{Direction: bpf.Ingress, Protocol: pkt.Protocol, Port: pkt.Port, Remote: self}
		if pkt.Direction == bpf.Ingress {
			peerPkt.Direction = bpf.Egress
		}
		peer := policy.Evaluate(resolved.Policies[out.RemoteIdentity], resolved.Defaults, policy.NewIPCache(ipc), peerPkt)
		res.PeerVerdict = peer.Verdict.String()
		side := fmt.Sprintf("namespace %s's %s", res.RemoteNamespace, peerPkt.Direction)
		peerWhy := "no rule matches"
		if k, ok := snap.Rules[peer.RuleID]; ok && peer.RuleID != 0 {
			res.PeerPolicy, res.PeerRule = k.Policy, k.Name()
			peerWhy = fmt.Sprintf("rule %s of FirewallPolicy %s decides", res.PeerRule, res.PeerPolicy)
		}
		res.Explanation += fmt.Sprintf("; %s: %s (%s)", side, res.PeerVerdict, peerWhy)
		if peer.Verdict == bpf.VerdictDenied && res.Verdict != res.PeerVerdict {
			res.Verdict, res.Reason = peer.Verdict.String(), bpf.ReasonName(peer.Reason)
		}
	}
	if why, ok := snap.Stale[identity]; ok {
		res.Explanation += "; WARNING: the datapath could not take this namespace's newest policy (" + why +
			") and enforces an older one"
	}
	return res, nil
}

func findPod(records []*endpoint.Record, namespace, pod string) *endpoint.Record {
	for _, r := range records {
		if r.Namespace == namespace && r.Pod == pod {
			return r
		}
	}
	return nil
}

// explain says in a sentence why the verdict is what it is.
func explain(req agentapi.TraceRequest, pkt policy.Packet, out policy.Result, res agentapi.TraceResult, p *policy.IdentityPolicy) string {
	remote := res.RemoteClass
	if res.RemoteNamespace != "" {
		remote = "namespace " + res.RemoteNamespace
	}
	var why string
	switch {
	case out.Reason == bpf.ReasonMetadata:
		why = fmt.Sprintf("the metadata API is closed to namespace %s (label it %s=allow, or list it in "+
			"FirewallConfig's metadataAPI.allowNamespaces)", req.Namespace, v1alpha1.LabelMetadata)
	case res.Rule != "":
		why = fmt.Sprintf("rule %s of FirewallPolicy %s decides", res.Rule, res.Policy)
	case out.RemoteClass != bpf.ClassWorld && out.RemoteClass != bpf.ClassMetadata:
		why = fmt.Sprintf("no rule matches, and traffic to %s that no rule matches is allowed", remote)
	default:
		label := v1alpha1.LabelEgress
		if pkt.Direction == bpf.Ingress {
			label = v1alpha1.LabelIngress
		}
		src := "FirewallConfig's default"
		if p == nil {
			src = "the cluster default (the namespace has no policy)"
		}
		why = fmt.Sprintf("no rule matches, so the world default decides (%s, or the namespace's %s label)", src, label)
	}
	s := fmt.Sprintf("%s %s %s port %d, remote %s (%s): %s; %s", req.Namespace, pkt.Direction,
		v1alpha1.ProtocolName(pkt.Protocol), pkt.Port, res.Remote, remote, res.Verdict, why)
	if res.AuditRule != "" {
		s += fmt.Sprintf("; Audit policy %s rule %s matched first and is reported", res.AuditPolicy, res.AuditRule)
	}
	if p != nil && p.Audit && out.Verdict == bpf.VerdictAudit {
		s += fmt.Sprintf("; the namespace is in Audit mode (%s), so the packet passes and is reported", v1alpha1.LabelMode)
	}
	return s
}

// nameStandIn stands for an address of a name that the namespace has not learned yet: a world address (198.18.0.0/15
// is set aside for benchmarks, in no cluster's ranges).
var nameStandIn = netip.MustParseAddr("198.18.0.1")

// traceName answers for a DNS name: whether the namespace may resolve it (dnsDeny), what a connection to one of
// its addresses gets once a pod of the namespace has resolved it (the name's fqdn patterns learned), and what
// each address the namespace learned for those patterns gets now.
func traceName(snap Snapshot, node nodeView, req agentapi.TraceRequest, pkt policy.Packet, identity uint32) (agentapi.TraceResult, error) {
	name, err := v1alpha1.ParseNamePattern(req.RemoteName)
	if err != nil || name.Form != v1alpha1.NameExact {
		return agentapi.TraceResult{}, badTrace("remote %q is not a DNS name", req.RemoteName)
	}
	if pkt.Direction != bpf.Egress {
		return agentapi.TraceResult{}, badTrace("a name is a remote of egress only")
	}
	resolved := snap.Resolve()
	p := resolved.Policies[identity]
	if p == nil {
		p = &policy.IdentityPolicy{}
	}
	res := agentapi.TraceResult{Name: name.Base, Identity: identity}
	ruleName := func(id uint32) (string, string) {
		k, ok := snap.Rules[id]
		if !ok {
			return "", ""
		}
		return k.Policy, k.Name()
	}
	for _, r := range p.DNSDeny {
		if !slices.ContainsFunc(r.Patterns, func(s string) bool {
			n, err := v1alpha1.ParseNamePattern(s)
			return err == nil && n.Matches(name.Base)
		}) {
			continue
		}
		pol, rule := ruleName(r.ID)
		if r.Audit {
			if res.AuditRule == "" {
				res.AuditPolicy, res.AuditRule = pol, rule
			}
			continue
		}
		res.Verdict, res.Reason = bpf.VerdictDenied.String(), bpf.ReasonName(bpf.ReasonDNSDenied)
		res.Policy, res.Rule = pol, rule
		res.Explanation = fmt.Sprintf("%s may not resolve %s: rule %s of FirewallPolicy %s answers its pods' "+
			"queries for it NXDOMAIN on the node, so they learn no address of it", req.Namespace, name.Base, rule, pol)
		if p.Audit {
			res.Verdict = bpf.VerdictAudit.String()
			res.Explanation += fmt.Sprintf("; the namespace is in Audit mode (%s), so the query goes on and is reported", v1alpha1.LabelMode)
		}
		return res, nil
	}
	var mask uint64
	var patterns []string
	for pattern, slot := range p.Slots() {
		if n, err := v1alpha1.ParseNamePattern(pattern); err == nil && n.Matches(name.Base) {
			mask |= 1 << slot
			patterns = append(patterns, pattern)
		}
	}
	slices.Sort(patterns)
	// an address not learned yet, as if a pod of the namespace had just resolved the name
	standIn := pkt
	standIn.Remote, standIn.FQDN = nameStandIn, mask
	out := policy.Evaluate(p, resolved.Defaults, policy.NewIPCache(node.ipcache), standIn)
	res.Verdict, res.Reason = out.Verdict.String(), bpf.ReasonName(out.Reason)
	res.Remote, res.RemoteClass = "", out.RemoteClass.String()
	if out.RuleID != 0 {
		res.Policy, res.Rule = ruleName(out.RuleID)
	}
	why := "no rule matches, so the world default decides"
	if res.Rule != "" {
		why = fmt.Sprintf("rule %s of FirewallPolicy %s decides", res.Rule, res.Policy)
	}
	if len(patterns) == 0 {
		res.Explanation = fmt.Sprintf("no fqdn peer of %s names %s: its addresses are decided as any address outside "+
			"the cluster: %s port %d %s (%s)", req.Namespace, name.Base, v1alpha1.ProtocolName(pkt.Protocol), pkt.Port, res.Verdict, why)
	} else {
		res.Explanation = fmt.Sprintf("%s is a name of %s's fqdn pattern %s: once a pod of %s resolves it through a "+
			"trusted resolver, %s port %d to its addresses is %s (%s)", name.Base, req.Namespace,
			strings.Join(patterns, ", "), req.Namespace, v1alpha1.ProtocolName(pkt.Protocol), pkt.Port, res.Verdict, why)
	}
	if res.AuditRule != "" {
		res.Explanation += fmt.Sprintf("; Audit policy %s rule %s would deny resolving it and is reported", res.AuditPolicy, res.AuditRule)
	}
	if mask != 0 {
		for _, l := range node.learned {
			if l.Identity != identity || l.Slots&mask == 0 || l.Expires.Before(node.now) {
				continue
			}
			at := pkt
			at.Remote = l.Addr
			r, err := traceAddress(snap, node, req, at, identity, netip.Addr{})
			if err != nil {
				return res, err
			}
			r.Explanation += fmt.Sprintf("; learned until %s", l.Expires.UTC().Format(time.RFC3339))
			res.Addresses = append(res.Addresses, r)
		}
		res.Explanation += fmt.Sprintf("; %d address(es) learned for it now", len(res.Addresses))
	}
	return res, nil
}
