package upstream

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"text/template"
)

//go:embed restrictive.yaml
var restrictiveTemplate string

// SystemZone is the zone label the restrictive pass gives kube-system (moat.dev/zone), where the cluster DNS runs.
const SystemZone = "system"

// RestrictivePolicy is the restrictive pass's FirewallConfig and FirewallPolicies (restrictive.yaml) for a
// cluster whose API server reaches pods from controlPlane: for kubectl apply -f, after Moat's manifests, with
// kube-system labelled moat.dev/zone=SystemZone.
func RestrictivePolicy(controlPlane netip.Addr) (string, error) {
	if !controlPlane.Is4() {
		return "", fmt.Errorf("control plane address %s: want IPv4", controlPlane)
	}
	t, err := template.New("restrictive.yaml").Option("missingkey=error").Parse(restrictiveTemplate)
	if err != nil {
		return "", fmt.Errorf("restrictive.yaml: %w", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, map[string]string{"ControlPlane": controlPlane.String()}); err != nil {
		return "", fmt.Errorf("restrictive.yaml: %w", err)
	}
	return b.String(), nil
}
