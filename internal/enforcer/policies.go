package enforcer

import (
	"sort"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/resolve"
)

// Policies is every FirewallPolicy of the state in force and what became of it: Accepted, or Invalid with why
// (and whether a last good version stays in force), the namespaces it selects, and its warnings.
func (s Snapshot) Policies() []agentapi.Policy {
	st := s.State
	invalid := map[string]ObjectProblem{}
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
	return out
}
