package kubetest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// A namespace goes through its whole life: created with a label, read back (through Config and through the
// kubeconfig file), given its ServiceAccount by the controller manager, deleted, and finally gone, which
// needs the namespace controller.
func TestNamespaceLifecycle(t *testing.T) {
	begin := time.Now()
	c := Start(t)
	t.Logf("cluster started in %v (state in %s)", time.Since(begin).Round(time.Millisecond), c.Dir)

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cs := c.Client()
	const name = "kubetest-ns"
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"moat.test/kubetest": "yes"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	got, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get namespace: %v", err)
	}
	if got.Labels["moat.test/kubetest"] != "yes" {
		t.Fatalf("namespace labels %v, want moat.test/kubetest=yes", got.Labels)
	}

	// The kubeconfig file works on its own, for client-go and for kubectl.
	fromFile, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatalf("load %s: %v", c.Kubeconfig, err)
	}
	cs2, err := kubernetes.NewForConfig(fromFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs2.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}); err != nil {
		t.Fatalf("get namespace through %s: %v", c.Kubeconfig, err)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(BinDir(), "kubectl"), "--kubeconfig", c.Kubeconfig,
		"get", "namespace", name, "-o", "jsonpath={.metadata.labels.moat\\.test/kubetest}").CombinedOutput()
	if err != nil || string(out) != "yes" {
		t.Fatalf("kubectl get namespace: %v: %q", err, out)
	}

	// The ServiceAccount controller gives the namespace its "default" ServiceAccount: something for the
	// namespace controller to delete.
	for {
		_, err := cs.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) {
			t.Fatalf("get default ServiceAccount: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no default ServiceAccount in %s: %v", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}

	deleted := time.Now()
	if err := cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete namespace: %v", err)
	}
	for {
		ns, err := cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if err != nil {
			t.Fatalf("get namespace: %v", err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("namespace still there after deletion (phase %s, conditions %v): %v",
				ns.Status.Phase, ns.Status.Conditions, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Logf("namespace gone %v after its deletion", time.Since(deleted).Round(time.Millisecond))
}

// New in an existing directory keeps it, with the logs, after Stop; Stop ends every process.
func TestNewStop(t *testing.T) {
	dir := t.TempDir()
	c, err := New(dir, WithControllers("namespace-controller"))
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			c.Stop()
		}
	}()
	if c.Dir != dir {
		t.Errorf("Dir %q, want %q", c.Dir, dir)
	}
	if len(c.procs) != 3 {
		t.Fatalf("%d processes, want 3", len(c.procs))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := c.Client().CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{}); err != nil {
		t.Fatalf("get namespace default: %v", err)
	}
	// Admin through RBAC: system:masters may do anything.
	if _, err := c.Client().RbacV1().ClusterRoles().List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		t.Fatalf("list clusterroles: %v", err)
	}

	begin := time.Now()
	stopped = true
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("stopped in %v", time.Since(begin).Round(time.Millisecond))
	for _, p := range c.procs {
		if err := p.Cmd.Process.Signal(syscall.Signal(0)); !errors.Is(err, os.ErrProcessDone) {
			t.Errorf("%s (pid %d) still there after Stop: %v", p.Name, p.Cmd.Process.Pid, err)
		}
	}
	for _, log := range []string{"etcd.log", "kube-apiserver.log", "kube-controller-manager.log"} {
		if _, err := os.Stat(filepath.Join(dir, log)); err != nil {
			t.Errorf("log kept after Stop: %v", err)
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// Without the binaries, New says how to build them.
func TestMissingBinaries(t *testing.T) {
	t.Setenv("MOAT_KUBE_BIN", t.TempDir())
	_, err := New("")
	if err == nil || !strings.Contains(err.Error(), "make kube-bins") {
		t.Fatalf("New without binaries: %v, want an error naming make kube-bins", err)
	}
}

// A component that cannot start makes New fail with the tail of its log, and leaves nothing running.
func TestStartFailureShowsLog(t *testing.T) {
	_, err := New("", WithAPIServerFlags(map[string]string{"no-such-flag": "1"}))
	if err == nil {
		t.Fatal("New with a bad apiserver flag succeeded")
	}
	if !strings.Contains(err.Error(), "kube-apiserver exited") || !strings.Contains(err.Error(), "unknown flag: --no-such-flag") {
		t.Fatalf("error without the apiserver's log: %v", err)
	}
	t.Logf("error, as expected:\n%v", err)
}
