package enforcer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/policy"
	"github.com/moatfw/moat/internal/report"
	"github.com/moatfw/moat/internal/resolve"
	"github.com/moatfw/moat/internal/version"
)

// Server answers moatctl on the enforcer's socket (package agentapi describes the API).
type Server struct {
	E      *Enforcer
	Store  endpoint.Store
	Source string // what the status names as the policy source
	// Links looks up the host veths; nil: in the enforcer's own network namespace (the host's).
	Links *netlink.Handle
	// Checks add problems of parts the enforcer does not own (the conflist repair loop); nil: none.
	Checks []func() []string
}

// Serve answers on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	v := "/" + agentapi.Version
	mux.HandleFunc("GET "+v+"/status", s.status)
	mux.HandleFunc("GET "+v+"/endpoints", s.endpoints)
	mux.HandleFunc("GET "+v+"/policies", s.policies)
	mux.HandleFunc("POST "+v+"/trace", s.trace)
	mux.HandleFunc("GET "+v+"/flows", s.flows)
	mux.HandleFunc("GET "+v+"/report", s.report)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fail(w, http.StatusNotFound, fmt.Errorf("%s %s: not in this API (this enforcer speaks %s)", r.Method, r.URL.Path, agentapi.Version))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(agentapi.Error{Error: err.Error()})
}

// Status is what the status call answers; the enforcer's readiness is Status().Ready.
func (s *Server) Status() agentapi.Status {
	e := s.E
	e.mu.Lock()
	st := agentapi.Status{Version: version.Version, APIVersion: agentapi.Version, Started: e.started, Source: s.Source,
		Generation: e.generation, Applied: e.appliedAt, Namespaces: len(e.identities), Policies: len(e.state.Policies),
		AttachModes: map[string]int{}, ServiceRanges: e.state.ServiceRanges}
	for _, p := range e.state.Problems {
		if p.Kind == v1alpha1.KindFirewallPolicy {
			st.InvalidPolicies++
		}
		st.Problems = append(st.Problems, fmt.Sprintf("%s %s (%s): %s", p.Kind, p.Name, p.Origin, p.Message))
	}
	for _, f := range e.findings.problems { // namespace labels read on the closed side
		st.Problems = append(st.Problems, f.String())
	}
	for _, f := range e.findings.warnings {
		st.Warnings = append(st.Warnings, f.String())
	}
	e.mu.Unlock()
	st.LastErrors = e.errors.lines()
	if st.Generation == 0 {
		st.Problems = append(st.Problems, "no policy applied yet")
	}
	if fills, err := e.dp.MapFills(); err != nil {
		st.Problems = append(st.Problems, err.Error())
	} else {
		st.Maps = fills
		for name, f := range fills {
			if f.Capacity > 0 && float64(f.Entries) >= 0.9*float64(f.Capacity) && name != "conntrack" {
				st.Problems = append(st.Problems, fmt.Sprintf("map %s is %d%% full (%d of %d)", name,
					100*f.Entries/int(f.Capacity), f.Entries, f.Capacity))
			}
		}
	}
	if lost, err := e.dp.Stat(bpf.StatEventsLost); err == nil {
		st.LostEvents = lost
	}
	eps := s.endpointList()
	st.Endpoints = len(eps)
	for _, ep := range eps {
		st.AttachModes[ep.Mode]++
		if ep.Problem != "" {
			st.Problems = append(st.Problems, fmt.Sprintf("pod %s/%s: %s", ep.Namespace, ep.Pod, ep.Problem))
		}
	}
	for _, check := range s.Checks {
		st.Problems = append(st.Problems, check()...)
	}
	st.Ready = st.Generation != 0
	for _, p := range st.Problems {
		if !strings.HasPrefix(p, v1alpha1.KindFirewallPolicy+" ") && !strings.HasPrefix(p, "Namespace ") && !strings.HasPrefix(p, "pod ") {
			// an invalid policy or namespace keeps the last good one (a label Moat does not know is read on the
			// closed side), and one pod is not the node
			st.Ready = false
		}
	}
	sort.Strings(st.Problems)
	return st
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) { reply(w, s.Status()) }

// Readyz answers a readiness probe: 200 when the status is Ready, else 503 with the problems, one a line.
func (s *Server) Readyz(w http.ResponseWriter, _ *http.Request) {
	st := s.Status()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !st.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
	} else {
		fmt.Fprintln(w, "ready")
	}
	for _, p := range st.Problems {
		fmt.Fprintln(w, "-", p)
	}
}

func (s *Server) endpoints(w http.ResponseWriter, _ *http.Request) { reply(w, s.endpointList()) }

// endpointList is every recorded pod, checked against the datapath and the host's links.
func (s *Server) endpointList() []agentapi.Endpoint {
	records, err := s.Store.List("")
	if err != nil {
		return nil
	}
	tagged, _ := s.E.dp.Endpoints()
	out := make([]agentapi.Endpoint, 0, len(records))
	for _, r := range records {
		ep := agentapi.Endpoint{Pod: r.Pod, Namespace: r.Namespace, Identity: r.Identity, Addresses: r.Addresses,
			HostVeth: r.HostIfname, Ifindex: r.HostIfindex, ContainerID: r.ContainerID, Mode: string(r.AttachMode)}
		dpEp, inMap := tagged[uint32(r.HostIfindex)]
		if inMap {
			ep.Identity = dpEp.Identity
		}
		l, lerr := s.links().LinkByIndex(r.HostIfindex)
		switch {
		case lerr != nil || l.Attrs().Name != r.HostIfname:
			ep.Problem = "host veth gone (the next reconcile removes it)"
		case r.AttachMode == "":
			ep.Problem = "started without the datapath (failPolicy open): not enforced until adopted"
		case !inMap:
			ep.Problem = "attached but not in the endpoint map: every packet is dropped"
		default: // the attachment's own check, the one CHECK and reconcile make
			err := r.CheckAttachment(s.E.dp)
			ep.Attached = err == nil || errors.Is(err, bpf.ErrOtherPrograms)
			if err != nil {
				ep.Problem = "programs not as this enforcer's: " + err.Error()
			}
		}
		out = append(out, ep)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Pod < out[j].Pod
	})
	return out
}

func (s *Server) links() *netlink.Handle {
	if s.Links == nil {
		return &netlink.Handle{}
	}
	return s.Links
}

func (s *Server) policies(w http.ResponseWriter, _ *http.Request) {
	e := s.E
	e.mu.Lock()
	st := e.state
	e.mu.Unlock()
	invalid := map[string]Problem{}
	for _, p := range st.Problems {
		if p.Kind == v1alpha1.KindFirewallPolicy {
			invalid[p.Name] = p
		}
	}
	out := []agentapi.Policy{}
	for _, p := range st.Policies {
		ap := agentapi.Policy{Name: p.Name, State: "Accepted", Origin: st.Origins[p.Name], Priority: resolve.Priority(&p),
			Mode: string(v1alpha1.ModeEnforce), Namespaces: resolve.Selected(&p, st.Namespaces),
			Rules: len(p.Spec.Egress) + len(p.Spec.Ingress)}
		if p.Spec.Mode != "" {
			ap.Mode = string(p.Spec.Mode)
		}
		if bad, ok := invalid[p.Name]; ok {
			ap.State, ap.Reason = "Invalid", bad.Message+" (the last good version stays in force)"
			delete(invalid, p.Name)
		}
		if len(ap.Namespaces) == 0 {
			ap.Warnings = []string{resolve.SelectsNothing}
		}
		out = append(out, ap)
	}
	for _, bad := range invalid {
		out = append(out, agentapi.Policy{Name: bad.Name, State: "Invalid", Reason: bad.Message, Origin: bad.Origin,
			Namespaces: []string{}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	reply(w, out)
}

// report answers who can reach what, from the state in force.
func (s *Server) report(w http.ResponseWriter, _ *http.Request) {
	e := s.E
	e.mu.Lock()
	in := report.Input{Config: e.state.Config, Policies: e.state.Policies, Namespaces: e.state.Namespaces}
	e.mu.Unlock()
	reply(w, report.Build(in))
}

func (s *Server) trace(w http.ResponseWriter, r *http.Request) {
	var req agentapi.TraceRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("trace request: %w", err))
		return
	}
	res, code, err := s.Trace(req)
	if err != nil {
		fail(w, code, err)
		return
	}
	reply(w, res)
}

// Trace answers what the datapath would do with a hypothetical packet, from the reference evaluator over the
// policy in force and the live ipcache. The error comes with an HTTP status.
func (s *Server) Trace(req agentapi.TraceRequest) (agentapi.TraceResult, int, error) {
	var res agentapi.TraceResult
	pkt := policy.Packet{Direction: bpf.Egress, Protocol: 6, Port: req.Port}
	switch strings.ToLower(req.Direction) {
	case "", "egress":
	case "ingress":
		pkt.Direction = bpf.Ingress
	default:
		return res, http.StatusBadRequest, fmt.Errorf("direction %q: want egress or ingress", req.Direction)
	}
	if req.Protocol != "" {
		p, err := v1alpha1.ProtocolNumber(req.Protocol)
		if err != nil {
			return res, http.StatusBadRequest, err
		}
		pkt.Protocol = p
	}
	if req.Namespace == "" {
		return res, http.StatusBadRequest, errors.New("trace needs the pod's namespace")
	}
	records, err := s.Store.List("")
	if err != nil {
		return res, http.StatusInternalServerError, err
	}
	e := s.E
	e.mu.Lock()
	identity, known := e.identities[req.Namespace]
	resolved := e.resolved()
	stale := e.stale
	names := map[uint32]string{}
	for n, id := range e.identities {
		names[id] = n
	}
	for id, l := range e.lingering {
		if l.namespace != nil {
			names[id] = l.namespace.Name
			if l.namespace.Name == req.Namespace && !known {
				identity, known = id, true // gone, but its pods on this node still hold the identity
			}
		}
	}
	e.mu.Unlock()
	if !known {
		return res, http.StatusNotFound, fmt.Errorf("unknown namespace %q: the policy source names no such namespace", req.Namespace)
	}
	var self netip.Addr // the pod's own address, the far end of the peer's check
	if req.Pod != "" {
		rec := findPod(records, req.Namespace, req.Pod)
		if rec == nil {
			return res, http.StatusNotFound, fmt.Errorf("pod %s/%s is not on this node", req.Namespace, req.Pod)
		}
		if len(rec.Addresses) > 0 {
			self, _ = netip.ParseAddr(rec.Addresses[0])
		}
		if ep, ok, _ := e.dp.LookupEndpoint(uint32(rec.HostIfindex)); ok && ep.Identity != identity {
			identity = ep.Identity // what the datapath tags the pod with decides
		}
	}
	switch {
	case req.Remote != "":
		a, err := netip.ParseAddr(req.Remote)
		if err != nil {
			return res, http.StatusBadRequest, fmt.Errorf("remote %q is not an address", req.Remote)
		}
		pkt.Remote = a.Unmap()
	case req.RemotePod != "":
		rec := findPod(records, req.RemoteNamespace, req.RemotePod)
		if rec == nil || len(rec.Addresses) == 0 {
			return res, http.StatusNotFound, fmt.Errorf("pod %s/%s is not on this node: give its address", req.RemoteNamespace, req.RemotePod)
		}
		a, err := netip.ParseAddr(rec.Addresses[0])
		if err != nil {
			return res, http.StatusInternalServerError, err
		}
		pkt.Remote = a
	default:
		return res, http.StatusBadRequest, errors.New("trace needs a remote: an address, or a namespace and pod")
	}
	if pkt.Port == 0 && (pkt.Protocol == 1 || pkt.Protocol == 58) {
		pkt.Port = 8 // an echo request
		if pkt.Protocol == 58 {
			pkt.Port = 128
		}
	}
	entries, err := e.dp.IPCacheEntries()
	if err != nil {
		return res, http.StatusInternalServerError, err
	}
	ipc := make([]policy.IPCacheEntry, 0, len(entries))
	for prefix, v := range entries {
		ipc = append(ipc, policy.IPCacheEntry{Prefix: prefix, Class: bpf.Class(v.Class), Identity: v.Identity})
	}
	p := resolved.Policies[identity]
	out := policy.Evaluate(p, resolved.Defaults, policy.NewIPCache(ipc), pkt)
	res = agentapi.TraceResult{Verdict: out.Verdict.String(), Reason: bpf.ReasonName(out.Reason), Identity: identity,
		Remote: pkt.Remote.String(), RemoteClass: out.RemoteClass.String(), RemoteNamespace: names[out.RemoteIdentity]}
	if out.RemoteIdentity == 0 {
		res.RemoteNamespace = ""
	}
	if k, ok := e.RuleKey(out.RuleID); ok && out.RuleID != 0 {
		res.Policy, res.Rule = k.Policy, k.Name()
	}
	if k, ok := e.RuleKey(out.AuditRuleID); ok && out.AuditRuleID != 0 {
		res.AuditPolicy, res.AuditRule = k.Policy, k.Name()
	}
	res.Explanation = explain(req, pkt, out, res, p)
	if out.RemoteClass == bpf.ClassPod && out.RemoteIdentity != 0 {
		// between two pods, the other pod's hook judges the packet too, by its namespace's policy
		if !self.IsValid() {
			self = netip.MustParseAddr("240.0.0.1") // stands for the namespace's pods
			ipc = append(ipc, policy.IPCacheEntry{Prefix: netip.PrefixFrom(self, 32), Class: bpf.ClassPod, Identity: identity})
		}
		peerPkt := policy.Packet{Direction: bpf.Ingress, Protocol: pkt.Protocol, Port: pkt.Port, Remote: self}
		if pkt.Direction == bpf.Ingress {
			peerPkt.Direction = bpf.Egress
		}
		peer := policy.Evaluate(resolved.Policies[out.RemoteIdentity], resolved.Defaults, policy.NewIPCache(ipc), peerPkt)
		res.PeerVerdict = peer.Verdict.String()
		side := fmt.Sprintf("namespace %s's %s", res.RemoteNamespace, peerPkt.Direction)
		peerWhy := "no rule matches"
		if k, ok := e.RuleKey(peer.RuleID); ok && peer.RuleID != 0 {
			res.PeerPolicy, res.PeerRule = k.Policy, k.Name()
			peerWhy = fmt.Sprintf("rule %s of FirewallPolicy %s decides", res.PeerRule, res.PeerPolicy)
		}
		res.Explanation += fmt.Sprintf("; %s: %s (%s)", side, res.PeerVerdict, peerWhy)
		if peer.Verdict == bpf.VerdictDenied && res.Verdict != res.PeerVerdict {
			res.Verdict, res.Reason = peer.Verdict.String(), bpf.ReasonName(peer.Reason)
		}
	}
	if why, ok := stale[identity]; ok {
		res.Explanation += "; WARNING: the datapath could not take this namespace's newest policy (" + why +
			") and enforces an older one"
	}
	return res, http.StatusOK, nil
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

func (s *Server) flows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var since time.Duration
	if v := q.Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			fail(w, http.StatusBadRequest, fmt.Errorf("since %q: want a duration like 5m", v))
			return
		}
		since = d
	}
	limit := 0
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fail(w, http.StatusBadRequest, fmt.Errorf("limit %q: want a count", v))
			return
		}
		limit = n
	}
	verdict := q.Get("verdict")
	if verdict != "" && !slices.Contains([]string{"allowed", "denied", "audit"}, verdict) {
		fail(w, http.StatusBadRequest, fmt.Errorf("verdict %q: want allowed, denied or audit", verdict))
		return
	}
	ns := q.Get("namespace")
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	match := func(f FlowRecord) bool {
		return (ns == "" || f.Namespace == ns) && (verdict == "" || f.Verdict == verdict)
	}
	past, ch := s.E.flows.recent(follow)
	if ch != nil {
		defer s.E.flows.unfollow(ch)
	}
	var selected []FlowRecord
	cutoff := time.Now().Add(-since)
	for _, f := range past {
		if match(f) && (since == 0 || f.Time.After(cutoff)) {
			selected = append(selected, f)
		}
	}
	if limit > 0 && len(selected) > limit {
		selected = selected[len(selected)-limit:]
	}
	w.Header().Set("Content-Type", "application/jsonl")
	enc := json.NewEncoder(w)
	for _, f := range selected {
		if enc.Encode(f) != nil {
			return
		}
	}
	flusher, _ := w.(http.Flusher)
	if flusher != nil {
		flusher.Flush()
	}
	if ch == nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case f := <-ch:
			if !match(f) {
				continue
			}
			if enc.Encode(f) != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}
	}
}

// errorLog is a logrus hook that keeps the last errors for the status call.
type errorLog struct {
	mu     sync.Mutex
	max    int
	recent []agentapi.LogLine
}

func newErrorLog(max int) *errorLog { return &errorLog{max: max} }

func (l *errorLog) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel}
}

func (l *errorLog) Fire(en *logrus.Entry) error {
	line := agentapi.LogLine{Time: en.Time, Message: en.Message, Fields: map[string]string{}}
	for k, v := range en.Data {
		line.Fields[k] = fmt.Sprint(v)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recent = append(l.recent, line)
	if len(l.recent) > l.max {
		l.recent = l.recent[len(l.recent)-l.max:]
	}
	return nil
}

func (l *errorLog) lines() []agentapi.LogLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recent)
}
