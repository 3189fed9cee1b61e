package enforcer

import (
	"slices"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/resolve"
)

// findings are what the last apply found about the objects it was given, whatever their source: problems
// (namespace labels with values Moat does not know, each read on the closed side) and warnings (policies that
// select no namespace). The status lists both, the metrics count them, and each is logged once while it lasts.
type findings struct {
	problems, warnings []resolve.Finding
	logged             once[resolve.Finding]
}

// noteFindings keeps what a resolve found, and logs what was not found before. The caller holds mu.
func (e *Enforcer) noteFindings(out resolve.Output) {
	f := &e.findings
	for _, x := range f.logged.fresh(slices.Concat(out.Problems, out.Warnings)) {
		log := e.log.WithField("kind", x.Kind).WithField("object", x.Name)
		if slices.Contains(out.Problems, x) {
			log.Error(x.Message)
		} else {
			log.Warn(x.Message)
		}
	}
	f.problems, f.warnings = out.Problems, out.Warnings
}

// once remembers what was logged last, so that each problem is logged once while it lasts, not at every load and
// apply (the Kubernetes source loads and applies at every pod event).
type once[T comparable] map[T]bool

// fresh is what of now was not there last time; now is remembered for the next time.
func (o *once[T]) fresh(now []T) []T {
	var out []T
	seen := make(once[T], len(now))
	for _, x := range now {
		if !(*o)[x] && !seen[x] {
			out = append(out, x)
		}
		seen[x] = true
	}
	*o = seen
	return out
}

// problemCounts counts the problems and warnings about objects by kind, for the metrics: the source's problems
// (objects it could not use) and the namespace labels read on the closed side.
func problemCounts(snap Snapshot) (problems, warnings map[string]int) {
	problems, warnings = map[string]int{}, map[string]int{}
	for _, p := range snap.State.Problems {
		kind := p.Kind
		if kind == "" {
			kind = "File" // a file that could not be read, or a document that is not an object
		}
		problems[kind]++
	}
	for _, p := range snap.Problems {
		problems[p.Kind]++
	}
	for _, w := range snap.Warnings {
		warnings[w.Kind]++
	}
	// zeros are exported too, so an alert has a series to compare against
	for _, kind := range []string{v1alpha1.KindFirewallConfig, v1alpha1.KindFirewallPolicy, kindNamespace} {
		if _, ok := problems[kind]; !ok {
			problems[kind] = 0
		}
	}
	if _, ok := warnings[v1alpha1.KindFirewallPolicy]; !ok {
		warnings[v1alpha1.KindFirewallPolicy] = 0
	}
	return problems, warnings
}
