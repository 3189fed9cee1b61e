package resolve

import (
	"fmt"
	"sort"
	"strings"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// Finding is something about one object that its author should know: a problem (Moat could not do what the
// object says and took the closed side) or a warning (Moat does what it says, which is probably not what was
// meant).
type Finding struct {
	Kind    string // Namespace or FirewallPolicy
	Name    string
	Message string
}

func (f Finding) String() string { return fmt.Sprintf("%s %s: %s", f.Kind, f.Name, f.Message) }

// SelectsNothing is the warning about a policy whose namespaceSelector matches no namespace.
const SelectsNothing = "selects no namespace: its rules apply nowhere"

// labelWants is what a namespace's moat.dev labels ask for.
type labelWants struct {
	egress, ingress *bpf.Action // nil: FirewallConfig's default
	audit           bool
}

// namespaceLabels reads a namespace's moat.dev labels. Values are read without regard to case, except
// moat.dev/metadata, which only a label selector reads (see metadataLabel). A value Moat does not know never
// opens anything: an unknown world default is Deny, an unknown mode is Enforce. Each is a problem.
func namespaceLabels(ns *v1alpha1.Namespace) (labelWants, []Finding) {
	var out labelWants
	var problems []Finding
	problem := func(label, value, want string) {
		problems = append(problems, Finding{Kind: "Namespace", Name: ns.Name,
			Message: fmt.Sprintf("label %s=%q: want %s; %s", label, value, want, failsTo(label))})
	}
	for _, l := range []struct {
		label string
		def   **bpf.Action
	}{{v1alpha1.LabelEgress, &out.egress}, {v1alpha1.LabelIngress, &out.ingress}} {
		v, ok := ns.Labels[l.label]
		if !ok {
			continue
		}
		a := bpf.ActionDeny
		switch {
		case strings.EqualFold(v, string(v1alpha1.ActionAllow)):
			a = bpf.ActionAllow
		case strings.EqualFold(v, string(v1alpha1.ActionDeny)):
		default:
			problem(l.label, v, "Allow or Deny")
		}
		*l.def = &a
	}
	if v, ok := ns.Labels[v1alpha1.LabelMode]; ok {
		switch {
		case strings.EqualFold(v, string(v1alpha1.ModeAudit)):
			out.audit = true
		case strings.EqualFold(v, string(v1alpha1.ModeEnforce)):
		default:
			problem(v1alpha1.LabelMode, v, "Audit or Enforce")
		}
	}
	if v, ok := ns.Labels[v1alpha1.LabelMetadata]; ok && !metadataLabel(v) {
		problem(v1alpha1.LabelMetadata, v, `allow (exactly: label selectors match exactly) or deny`)
	}
	return out, problems
}

// metadataLabel tells whether Moat knows a value of moat.dev/metadata. The label opens the metadata API through a
// label selector (FirewallConfig's allowNamespaces, by default {matchLabels: {moat.dev/metadata: allow}}), and
// selectors compare exactly: "Allow" matches nothing, so it is reported rather than read as allow. "deny", in any
// case, says what the absence of the label says.
func metadataLabel(v string) bool {
	return v == "allow" || strings.EqualFold(v, "deny")
}

// failsTo says what Moat does instead of an unknown value of a label.
func failsTo(label string) string {
	switch label {
	case v1alpha1.LabelEgress:
		return "world egress of the namespace is denied until it is fixed"
	case v1alpha1.LabelIngress:
		return "world ingress of the namespace is denied until it is fixed"
	case v1alpha1.LabelMode:
		return "the namespace stays in Enforce mode"
	}
	return "the label opens nothing"
}

func sortFindings(fs []Finding) {
	sort.SliceStable(fs, func(i, j int) bool {
		if fs[i].Kind != fs[j].Kind {
			return fs[i].Kind < fs[j].Kind
		}
		return fs[i].Name < fs[j].Name
	})
}
