package upstream

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/moatfw/moat/internal/testutil/kubetest"
)

// TestCoreDNSServesTheCluster runs the CoreDNS that `make conformance-bins` built with the Corefile of
// CoreDNSManifest against a real API server (the kubernetes plugin reads it through a kubeconfig here, in place
// of the in-cluster account) and resolves a Service and the API server's own by UDP, TCP, SRV and PTR.
func TestCoreDNSServesTheCluster(t *testing.T) {
	coredns := filepath.Join(kubetest.BinDir(), "coredns")
	if _, err := os.Stat(coredns); err != nil {
		t.Skipf("no CoreDNS (make conformance-bins): %v", err)
	}
	if testing.Short() {
		t.Skip("starts an API server")
	}
	const addr = "127.0.0.98" // CoreDNS's address: loopback, but not 127.0.0.1, where other tests serve
	c := kubetest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	svc, err := c.Client().CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	doc, err := CoreDNSManifest(CoreDNS{})
	if err != nil {
		t.Fatal(err)
	}
	var corefile string
	for _, part := range strings.Split(doc, "\n---\n") {
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(part), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			corefile = cm.Data["Corefile"]
		}
	}
	for old, replacement := range map[string]string{
		".:53 {\n":                ".:53 {\n    bind " + addr + "\n",
		"        pods insecure\n": "        pods insecure\n        kubeconfig " + c.Kubeconfig + "\n",
		"    health {\n":          "    health " + addr + ":8080 {\n",
		"    ready\n":             "    ready " + addr + ":8181\n",
		"    prometheus :9153\n":  "    prometheus " + addr + ":9153\n",
	} {
		if !strings.Contains(corefile, old) {
			t.Fatalf("the Corefile lacks %q:\n%s", old, corefile)
		}
		corefile = strings.Replace(corefile, old, replacement, 1)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Corefile"), []byte(corefile), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "coredns.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(coredns, "-conf", filepath.Join(dir, "Corefile"))
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	resolver := func(network string) *net.Resolver {
		return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, net.JoinHostPort(addr, "53"))
		}}
	}
	name := "web.default.svc." + ClusterDomain
	var addrs []string
	for ctx.Err() == nil {
		if addrs, err = resolver("udp").LookupHost(ctx, name); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !slices.Equal(addrs, []string{svc.Spec.ClusterIP}) {
		b, _ := os.ReadFile(log.Name())
		t.Fatalf("%s over UDP: %q (%v), want %s; CoreDNS said:\n%s", name, addrs, err, svc.Spec.ClusterIP, b)
	}
	if addrs, err := resolver("tcp").LookupHost(ctx, "kubernetes.default.svc."+ClusterDomain); err != nil ||
		!slices.Equal(addrs, []string{"10.96.0.1"}) {
		t.Errorf("kubernetes.default over TCP: %q (%v), want 10.96.0.1", addrs, err)
	}
	if _, srvs, err := resolver("udp").LookupSRV(ctx, "http", "tcp", name); err != nil || len(srvs) != 1 ||
		srvs[0].Port != 80 {
		t.Errorf("SRV of %s: %v (%v)", name, srvs, err)
	}
	if names, err := resolver("udp").LookupAddr(ctx, svc.Spec.ClusterIP); err != nil || !slices.Equal(names, []string{name + "."}) {
		t.Errorf("PTR of %s: %q (%v)", svc.Spec.ClusterIP, names, err)
	}
}
