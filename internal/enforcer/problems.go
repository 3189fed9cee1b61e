package enforcer

import (
	"fmt"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/resolve"
)

// ProblemKind says what a problem is about.
type ProblemKind string

const (
	ProblemObject  ProblemKind = "object"  // an object the policy source could not use
	ProblemLabel   ProblemKind = "label"   // a namespace label Moat does not know, read on the closed side
	ProblemPending ProblemKind = "pending" // no policy applied yet
	ProblemMap     ProblemKind = "map"     // a datapath map nearly full, or unreadable
	ProblemPod     ProblemKind = "pod"     // one pod's endpoint is not as it should be
	ProblemCheck   ProblemKind = "check"   // a part the enforcer does not own (the CNI chain)
	ProblemSource  ProblemKind = "source"  // the policy source cannot be reached: what changed since is not known
)

// Severity says what a problem does to the node's readiness.
type Severity int

const (
	// Degraded: the node does not enforce what it should, or cannot tell; it is not ready.
	Degraded Severity = iota
	// Contained: Moat took the safe side and the node stays ready. An invalid policy or namespace keeps its last
	// good version, a label Moat does not know is read on the closed side, and one pod is not the node.
	Contained
)

// Problem is something wrong on this node, as the status lists it.
type Problem struct {
	Kind     ProblemKind
	Severity Severity
	Message  string
}

// Ready tells whether a node with these problems is ready: when none of them is Degraded.
func Ready(problems []Problem) bool {
	for _, p := range problems {
		if p.Severity == Degraded {
			return false
		}
	}
	return true
}

// objectProblems are the problems of the objects a source could not use. An invalid FirewallPolicy or Namespace
// is contained (its last good version stays, or it is not there); any other (an invalid FirewallConfig, whose
// defaults are cluster-wide, or a file that cannot be read at all) degrades the node.
func objectProblems(ps []ObjectProblem) []Problem {
	out := make([]Problem, 0, len(ps))
	for _, p := range ps {
		sev := Degraded
		if p.Kind == v1alpha1.KindFirewallPolicy || p.Kind == kindNamespace {
			sev = Contained
		}
		out = append(out, Problem{Kind: ProblemObject, Severity: sev,
			Message: fmt.Sprintf("%s %s (%s): %s", p.Kind, p.Name, p.Origin, p.Message)})
	}
	return out
}

// kindNamespace is the kind of a Namespace object.
const kindNamespace = "Namespace"

// labelProblems are the namespace labels the last apply read on the closed side.
func labelProblems(fs []resolve.Finding) []Problem {
	out := make([]Problem, 0, len(fs))
	for _, f := range fs {
		out = append(out, Problem{Kind: ProblemLabel, Severity: Contained, Message: f.String()})
	}
	return out
}

// mapProblems are the maps at 90% of their capacity or more; the conntrack table is left out: a full one evicts
// its least recently used entries rather than refuse new ones.
func mapProblems(fills map[string]bpf.MapFill) []Problem {
	var out []Problem
	for name, f := range fills {
		if f.Capacity > 0 && float64(f.Entries) >= 0.9*float64(f.Capacity) && name != "conntrack" {
			out = append(out, Problem{Kind: ProblemMap, Severity: Degraded, Message: fmt.Sprintf(
				"map %s is %d%% full (%d of %d)", name, 100*f.Entries/int(f.Capacity), f.Entries, f.Capacity)})
		}
	}
	return out
}

// podProblems are the endpoints with a problem.
func podProblems(eps []agentapi.Endpoint) []Problem {
	var out []Problem
	for _, ep := range eps {
		if ep.Problem != "" {
			out = append(out, Problem{Kind: ProblemPod, Severity: Contained,
				Message: fmt.Sprintf("pod %s/%s: %s", ep.Namespace, ep.Pod, ep.Problem)})
		}
	}
	return out
}
