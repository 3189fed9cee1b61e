package upstream

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"net"
	"strings"
	"text/template"

	"github.com/moatfw/moat/conformance/images"
)

const (
	// ClusterDNSIP is the kube-dns Service's cluster IP: what every kubelet's clusterDNS must name. It lies in
	// the API server's service range of the tests (kubetest.ServiceClusterIPRange, 10.96.0.0/16), at the tenth
	// address as kubeadm chooses it.
	ClusterDNSIP = "10.96.0.10"
	// ClusterDomain is the kubelets' clusterDomain and the e2e framework's --dns-domain.
	ClusterDomain = "cluster.local"
)

//go:embed coredns.yaml
var corednsTemplate string

// CoreDNS is what CoreDNSManifest fills in.
type CoreDNS struct {
	Image     string   // empty: images.CoreDNSRef
	ClusterIP string   // empty: ClusterDNSIP
	Domain    string   // empty: ClusterDomain
	Replicas  int      // 0: 2, as kubeadm runs it (one per node with the anti-affinity)
	Upstreams []string // resolvers for names outside the cluster (IP addresses, or /etc/resolv.conf); none: no forward
}

// CoreDNSManifest is the multi-document YAML that deploys the cluster DNS: CoreDNS's ServiceAccount, ClusterRole
// and binding, its ConfigMap (the Corefile), Deployment and the kube-dns Service, for kubectl apply -f.
func CoreDNSManifest(c CoreDNS) (string, error) {
	if c.Image == "" {
		c.Image = images.CoreDNSRef
	}
	if c.ClusterIP == "" {
		c.ClusterIP = ClusterDNSIP
	}
	if c.Domain == "" {
		c.Domain = ClusterDomain
	}
	if c.Replicas == 0 {
		c.Replicas = 2
	}
	if net.ParseIP(c.ClusterIP) == nil {
		return "", fmt.Errorf("cluster DNS address %q: not an IP address", c.ClusterIP)
	}
	if c.Replicas < 0 || strings.ContainsAny(c.Image+c.Domain, " \n\t\"'{}") || c.Image == "" {
		return "", errors.New("cluster DNS: bad image, domain or replicas")
	}
	for _, u := range c.Upstreams {
		if net.ParseIP(u) == nil && !strings.HasPrefix(u, "/") {
			return "", fmt.Errorf("cluster DNS upstream %q: want an IP address or a resolv.conf path", u)
		}
	}
	t, err := template.New("coredns.yaml").Funcs(template.FuncMap{"join": strings.Join}).
		Option("missingkey=error").Parse(corednsTemplate)
	if err != nil {
		return "", fmt.Errorf("coredns.yaml: %w", err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, c); err != nil {
		return "", fmt.Errorf("coredns.yaml: %w", err)
	}
	return b.String(), nil
}
