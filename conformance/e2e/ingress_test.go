package e2e

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Ingress from the Internet through a hostPort and through a NodePort with externalTrafficPolicy: Local, both of
// which keep the client's address, so ingress rules by CIDR hold (docs/policy.md says what source NAT does).
func TestIngressFromTheInternet(t *testing.T) {
	namespace(t, "e2e-web", map[string]string{"moat.dev/zone": "e2e-web"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-web-ingress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-web}}
  priority: 100
  ingress:
  - action: Allow
    from: [{cidr: 198.51.100.0/24}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    from: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]
`)
	web := agent(t, "e2e-web", "web", func(p *corev1.Pod) {
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 30080, Protocol: corev1.ProtocolTCP}}
	})
	ctx := context.Background()
	nodePort(t, "e2e-web", "web", "web", corev1.ServiceExternalTrafficPolicyLocal, 30081)
	allowed, denied := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1")
	for _, port := range []string{"30080", "30081"} {
		addr := suite.node.IP.String() + ":" + port
		fromInternet(t, allowed, addr, true, applied)
		fromInternet(t, denied, addr, false, 0)
	}
	// the pod saw the Internet client's own address
	out, _ := suite.cluster.Kubectl(ctx, "-n", "e2e-web", "logs", "web")
	saw := strings.Contains(string(out), allowed.String())
	if !record(t, web.String()+" sees the client address "+allowed.String(), "yes", map[bool]string{true: "yes", false: "no"}[saw], 0) {
		t.Errorf("the pod's log does not name the client %s:\n%s", allowed, out)
	}
}

// nodePort creates a NodePort Service named name in ns for the pods labelled app=app, their port 8080 on the
// node port given, with the externalTrafficPolicy given.
func nodePort(t *testing.T, ns, name, app string, policy corev1.ServiceExternalTrafficPolicy, port int32) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{
			Type:                  corev1.ServiceTypeNodePort,
			ExternalTrafficPolicy: policy,
			Selector:              map[string]string{"app": app},
			Ports: []corev1.ServicePort{{Port: 8080, TargetPort: intstr.FromInt32(8080), NodePort: port,
				Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := suite.client.CoreV1().Services(ns).Create(context.Background(), svc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Service %s/%s: %v", ns, name, err)
	}
}

// A pod reaching another through its hostPort on the node's address is pod to pod: the portmap plugin
// masquerades it, so the receiving pod's hook sees the node, and its ingress rules by namespace are decided at
// the sender's veth (docs/policy.md).
func TestHostPortBetweenPods(t *testing.T) {
	namespace(t, "e2e-hp-web", map[string]string{"moat.dev/zone": "e2e-hp-web"})
	namespace(t, "e2e-hp-shady", map[string]string{"moat.dev/zone": "e2e-hp-shady"})
	namespace(t, "e2e-hp-ok", map[string]string{"moat.dev/zone": "e2e-hp-ok"})
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-hp-web-ingress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-hp-web}}
  ingress:
  - action: Deny
    from: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-hp-shady}}}]
`)
	agent(t, "e2e-hp-web", "web", func(p *corev1.Pod) {
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 30090, Protocol: corev1.ProtocolTCP}}
	})
	shady, ok := agent(t, "e2e-hp-shady", "client"), agent(t, "e2e-hp-ok", "client")
	addr := suite.node.IP.String() + ":30090"
	expect(t, ok, "tcp", addr, true, applied)
	expect(t, shady, "tcp", addr, false, applied)
}
