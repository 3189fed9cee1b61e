package enforcer

import (
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/resolve"
)

// findings are what the last apply found about the objects it was given, whatever their source: problems
// (namespace labels with values Moat does not know, each read on the closed side) and warnings (policies that
// select no namespace). The status lists both, the metrics count them, and each is logged once while it lasts,
// not at every apply (the Kubernetes source applies at every pod event).
type findings struct {
	problems, warnings []resolve.Finding
	logged             map[resolve.Finding]bool
}

// noteFindings keeps what a resolve found, and logs what was not found before. The caller holds mu.
func (e *Enforcer) noteFindings(out resolve.Output) {
	f := &e.findings
	now := map[resolve.Finding]bool{}
	for _, p := range out.Problems {
		now[p] = true
		if !f.logged[p] {
			e.log.WithField("kind", p.Kind).WithField("object", p.Name).Error(p.Message)
		}
	}
	for _, w := range out.Warnings {
		now[w] = true
		if !f.logged[w] {
			e.log.WithField("kind", w.Kind).WithField("object", w.Name).Warn(w.Message)
		}
	}
	f.problems, f.warnings, f.logged = out.Problems, out.Warnings, now
}

// problemCounts counts the problems and warnings about objects by kind, for the metrics: the source's problems
// (objects it could not use) and the namespace labels read on the closed side. The caller holds mu.
func (e *Enforcer) problemCounts() (problems, warnings map[string]int) {
	problems, warnings = map[string]int{}, map[string]int{}
	for _, p := range e.state.Problems {
		kind := p.Kind
		if kind == "" {
			kind = "File" // a file that could not be read, or a document that is not an object
		}
		problems[kind]++
	}
	for _, p := range e.findings.problems {
		problems[p.Kind]++
	}
	for _, w := range e.findings.warnings {
		warnings[w.Kind]++
	}
	// zeros are exported too, so an alert has a series to compare against
	for _, kind := range []string{v1alpha1.KindFirewallConfig, v1alpha1.KindFirewallPolicy, "Namespace"} {
		if _, ok := problems[kind]; !ok {
			problems[kind] = 0
		}
	}
	if _, ok := warnings[v1alpha1.KindFirewallPolicy]; !ok {
		warnings[v1alpha1.KindFirewallPolicy] = 0
	}
	return problems, warnings
}
