package kubernetes_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	manifests "github.com/moatfw/moat/install/kubernetes"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/resolve"
)

const (
	uninstallFile = "uninstall.yaml"
	chartDir      = "../helm/moat"
	namespace     = "moat-system"
	image         = "moatfw/moat:v0.1.0"
)

// TestCRDCopies fails while moat.yaml or the chart's crds/ folder holds anything but a copy of crds/*.yaml.
func TestCRDCopies(t *testing.T) {
	want, err := manifests.Generated(".")
	if err != nil {
		t.Fatal(err)
	}
	for path, data := range want {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("%v (run go generate ./install/kubernetes/)", err)
			continue
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s is not a copy of the CRDs in %s: run go generate ./install/kubernetes/", path, manifests.CRDDir)
		}
	}
	stale, err := manifests.StaleChartCRDs(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(stale) > 0 {
		t.Errorf("the chart holds CRDs that %s does not: %v (run go generate ./install/kubernetes/)", manifests.CRDDir, stale)
	}

	// and the CRD documents of moat.yaml, decoded, are those of the files
	var crds []*unstructured.Unstructured
	for _, u := range decodeFile(t, manifests.ManifestFile) {
		if u.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, u)
		}
	}
	names, err := manifests.CRDFiles(".")
	if err != nil {
		t.Fatal(err)
	}
	if len(crds) != len(names) {
		t.Fatalf("%s holds %d CRDs, %s %d", manifests.ManifestFile, len(crds), manifests.CRDDir, len(names))
	}
	for i, name := range names {
		from := decodeFile(t, filepath.Join(manifests.CRDDir, name))
		if len(from) != 1 {
			t.Fatalf("%s: want one object, got %d", name, len(from))
		}
		if diff := cmp.Diff(from[0].Object, crds[i].Object); diff != "" {
			t.Errorf("CRD %d of %s differs from %s (-file +manifest):\n%s", i, manifests.ManifestFile, name, diff)
		}
	}
}

func TestSpliceCRDs(t *testing.T) {
	in := "# head\n# BEGIN CRDs: x\nold\n# END CRDs\n---\nrest\n"
	got, err := manifests.SpliceCRDs([]byte(in), []byte("---\nnew\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "# head\n# BEGIN CRDs: x\n---\nnew\n# END CRDs\n---\nrest\n"; string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"no markers\n", "# END CRDs\n# BEGIN CRDs\n", "# BEGIN CRDs\n"} {
		if _, err := manifests.SpliceCRDs([]byte(bad), nil); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

// TestChartRendersManifest: with its default values the chart renders the objects of moat.yaml and
// firewallconfig.yaml, all but the Namespace (helm install --create-namespace makes that one).
func TestChartRendersManifest(t *testing.T) {
	want := byKey(t, append(decodeFile(t, manifests.ManifestFile), decodeFile(t, manifests.ConfigFile)...))
	got, _, err := renderChart("")
	if err != nil {
		t.Fatal(err)
	}
	gotByKey := byKey(t, got)

	nsKey := "v1 Namespace " + namespace
	if _, ok := want[nsKey]; !ok {
		t.Errorf("%s has no Namespace %s", manifests.ManifestFile, namespace)
	}
	delete(want, nsKey)
	for k, w := range want {
		g, ok := gotByKey[k]
		if !ok {
			t.Errorf("the chart does not render %s", k)
			continue
		}
		if diff := cmp.Diff(normalise(w).Object, normalise(g).Object); diff != "" {
			t.Errorf("%s differs (-manifests +chart):\n%s", k, diff)
		}
	}
	for k := range gotByKey {
		if _, ok := want[k]; !ok {
			t.Errorf("the chart renders %s, which %s and %s lack", k, manifests.ManifestFile, manifests.ConfigFile)
		}
	}
	// what the rest of the tests rely on
	for _, kind := range []string{"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "FirewallConfig", "DaemonSet"} {
		if !slices.ContainsFunc(got, func(u *unstructured.Unstructured) bool { return u.GetKind() == kind }) {
			t.Errorf("no %s rendered", kind)
		}
	}
}

// TestManifestHoldsNoCustomResource: moat.yaml must succeed in one kubectl apply on a cluster that has never seen
// Moat, and kubectl looks up every object's kind before it creates the CRDs of the same file, so moat.yaml holds
// no object of a kind its CRDs define. The default FirewallConfig lives in firewallconfig.yaml, alone.
func TestManifestHoldsNoCustomResource(t *testing.T) {
	objs := decodeFile(t, manifests.ManifestFile)
	groups := map[string]bool{}
	for _, u := range objs {
		if u.GetKind() == "CustomResourceDefinition" {
			groups[nested[string](t, u.Object, "spec", "group")] = true
		}
	}
	if len(groups) == 0 {
		t.Fatalf("%s holds no CRD", manifests.ManifestFile)
	}
	for _, u := range objs {
		if gvk := u.GroupVersionKind(); groups[gvk.Group] {
			t.Errorf("%s holds %s, a kind of its own CRDs: a first kubectl apply fails with no matches for kind %q "+
				"(move it to %s)", manifests.ManifestFile, key(u), gvk.Kind, manifests.ConfigFile)
		}
	}

	cfg := decodeFile(t, manifests.ConfigFile)
	if len(cfg) != 1 {
		t.Fatalf("%s: want one object, the FirewallConfig, got %d", manifests.ConfigFile, len(cfg))
	}
	if got, want := key(cfg[0]), "moat.dev/v1alpha1 FirewallConfig "+v1alpha1.DefaultConfigName; got != want {
		t.Errorf("%s holds %s, want %s", manifests.ConfigFile, got, want)
	}
}

// TestConfigFileIsTheDefaults: firewallconfig.yaml spells out the defaults, so the enforcer resolves it exactly as
// it resolves no FirewallConfig at all.
func TestConfigFileIsTheDefaults(t *testing.T) {
	data, err := os.ReadFile(manifests.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	var cfg v1alpha1.FirewallConfig
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		t.Fatalf("%s: %v", manifests.ConfigFile, err)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("%s: %v", manifests.ConfigFile, errs)
	}
	if cfg.Spec.DefaultIngress == "" || cfg.Spec.DefaultEgress == "" || cfg.Spec.MetadataAPI == nil ||
		cfg.Spec.MetadataAPI.Action == "" || len(cfg.Spec.MetadataAPI.Addresses) == 0 || cfg.Spec.MetadataAPI.AllowNamespaces == nil {
		t.Errorf("%s leaves a default out: %+v", manifests.ConfigFile, cfg.Spec)
	}
	ns := func(name string, labels map[string]string) v1alpha1.Namespace {
		return v1alpha1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	}
	in := resolve.Input{
		Namespaces: []v1alpha1.Namespace{
			ns("plain", nil),
			ns("opened", map[string]string{v1alpha1.LabelMetadata: "allow"}),
			ns("closed", map[string]string{v1alpha1.LabelMetadata: "deny"}),
			ns("denying", map[string]string{v1alpha1.LabelEgress: "Deny", v1alpha1.LabelIngress: "Deny"}),
		},
		Identities: map[string]uint32{"plain": 1, "opened": 2, "closed": 3, "denying": 4},
		RuleID:     func(resolve.RuleKey) uint32 { return 1 },
	}
	absent := resolve.Resolve(in)
	in.Config = &cfg
	spelled := resolve.Resolve(in)
	if !reflect.DeepEqual(absent, spelled) {
		t.Errorf("%s resolves otherwise than no FirewallConfig:\n absent: %+v\n  %s: %+v", manifests.ConfigFile, absent,
			manifests.ConfigFile, spelled)
	}
	if len(absent.Policies) != 4 || !absent.Policies[2].MetadataAllowed || absent.Policies[1].MetadataAllowed {
		t.Errorf("the namespaces did not resolve as expected: %+v", absent.Policies)
	}
}

// TestManifestDaemonSet checks moat.yaml's DaemonSet for what the brief of each container asks.
func TestManifestDaemonSet(t *testing.T) {
	ds := find(t, decodeFile(t, manifests.ManifestFile), "DaemonSet", "moat")
	spec := nested[map[string]any](t, ds.Object, "spec", "template", "spec")
	for field, want := range map[string]any{
		"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "priorityClassName": "system-node-critical",
		"serviceAccountName": "moat-enforcer", "terminationGracePeriodSeconds": float64(30),
	} {
		if spec[field] != want {
			t.Errorf("pod %s = %v, want %v", field, spec[field], want)
		}
	}
	if diff := cmp.Diff([]any{map[string]any{"operator": "Exists"}}, spec["tolerations"]); diff != "" {
		t.Errorf("tolerations (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]any{"type": "RollingUpdate", "rollingUpdate": map[string]any{"maxUnavailable": "10%"}},
		nested[map[string]any](t, ds.Object, "spec", "updateStrategy")); diff != "" {
		t.Errorf("updateStrategy (-want +got):\n%s", diff)
	}

	install := container(t, ds, "initContainers", "install")
	if diff := cmp.Diff([]string{"--cni-bin-dir=/host/opt/cni/bin", "--cni-conf-dir=/host/etc/cni/net.d", "--fail-policy=closed"},
		args(t, install)); diff != "" {
		t.Errorf("install args (-want +got):\n%s", diff)
	}
	enforcer := container(t, ds, "containers", "enforcer")
	if diff := cmp.Diff([]string{"--node-name=$(NODE_NAME)", "--cni-conf-dir=/host/etc/cni/net.d", "--cni-fail-policy=closed",
		"--metrics-addr=127.0.0.1:9464", "--address-feed", "--log-level=info"}, args(t, enforcer)); diff != "" {
		t.Errorf("enforcer args (-want +got):\n%s", diff)
	}
	for _, c := range []map[string]any{install, enforcer} {
		if c["image"] != image || c["imagePullPolicy"] != "IfNotPresent" {
			t.Errorf("%s: image %v (%v), want %s (IfNotPresent)", c["name"], c["image"], c["imagePullPolicy"], image)
		}
		if nested[bool](t, c, "securityContext", "privileged") != true {
			t.Errorf("%s is not privileged", c["name"])
		}
		for _, m := range nested[[]any](t, c, "volumeMounts") {
			m := m.(map[string]any)
			if m["mountPath"] == "/sys/fs/bpf" && m["mountPropagation"] != "HostToContainer" {
				t.Errorf("%s: bpffs mountPropagation %v, want HostToContainer", c["name"], m["mountPropagation"])
			}
		}
	}
	if got := nested[string](t, enforcer, "env", "0", "valueFrom", "fieldRef", "fieldPath"); got != "spec.nodeName" {
		t.Errorf("NODE_NAME from %q", got)
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		get := nested[map[string]any](t, enforcer, probe, "httpGet")
		if get["host"] != "127.0.0.1" || get["port"] != float64(9464) || get["path"] != path {
			t.Errorf("%s: %v, want 127.0.0.1:9464%s", probe, get, path)
		}
	}
	if got := nested[float64](t, enforcer, "livenessProbe", "failureThreshold"); got < 6 {
		t.Errorf("liveness failureThreshold %v, want at least 6", got)
	}
	if diff := cmp.Diff(map[string]any{"requests": map[string]any{"cpu": "100m", "memory": "128Mi"}, "limits": map[string]any{"memory": "1Gi"}},
		enforcer["resources"]); diff != "" {
		t.Errorf("resources (-want +got):\n%s", diff)
	}
	hostPaths := map[string]string{}
	for _, v := range nested[[]any](t, spec, "volumes") {
		v := v.(map[string]any)
		hostPaths[v["name"].(string)] = nested[string](t, v, "hostPath", "path")
	}
	if diff := cmp.Diff(map[string]string{"cni-bin": "/opt/cni/bin", "cni-conf": "/etc/cni/net.d", "bpffs": "/sys/fs/bpf", "run-moat": "/run/moat"},
		hostPaths); diff != "" {
		t.Errorf("hostPath volumes (-want +got):\n%s", diff)
	}
}

// TestChartValues: values other than the defaults reach the objects.
func TestChartValues(t *testing.T) {
	for _, tc := range []struct {
		name, values string
		check        func(t *testing.T, objs []*unstructured.Unstructured)
	}{
		{"failPolicy open", "cni: {failPolicy: open}", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			wantArg(t, container(t, ds, "initContainers", "install"), "--fail-policy=open", true)
			wantArg(t, container(t, ds, "containers", "enforcer"), "--cni-fail-policy=open", true)
			wantArg(t, container(t, ds, "initContainers", "install"), "--fail-policy=closed", false)
			wantArg(t, container(t, ds, "containers", "enforcer"), "--cni-fail-policy=closed", false)
		}},
		{"ipam shim", "cni: {ipamShim: true}", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			wantArg(t, container(t, ds, "initContainers", "install"), "--ipam-shim", true)
			wantArg(t, container(t, ds, "containers", "enforcer"), "--cni-ipam-shim", true)
		}},
		{"attach mode", "cni: {attachMode: clsact}", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			wantArg(t, container(t, ds, "initContainers", "install"), "--attach-mode=clsact", true)
			wantArg(t, container(t, ds, "containers", "enforcer"), "--cni-attach-mode=clsact", true)
		}},
		{"no ipam shim by default", "", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			wantArg(t, container(t, ds, "initContainers", "install"), "--attach-mode", false)
			wantArg(t, container(t, ds, "containers", "enforcer"), "--cni-attach-mode", false)
			wantArg(t, container(t, ds, "initContainers", "install"), "--ipam-shim", false)
			wantArg(t, container(t, ds, "containers", "enforcer"), "--cni-ipam-shim", false)
			wantArg(t, container(t, ds, "containers", "enforcer"), "--flow-log", false)
			if hasVolume(t, ds, "flow-log") {
				t.Error("a flow-log volume while the flow log is off")
			}
		}},
		{"CNI folders", "cni: {binDir: /home/kubernetes/bin, confDir: /etc/cni/custom.d}", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			if got := hostPath(t, ds, "cni-bin"); got != "/home/kubernetes/bin" {
				t.Errorf("cni-bin on the host: %q", got)
			}
			if got := hostPath(t, ds, "cni-conf"); got != "/etc/cni/custom.d" {
				t.Errorf("cni-conf on the host: %q", got)
			}
		}},
		{"flow log file", "flowLog: {enabled: true}", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			enforcer := container(t, ds, "containers", "enforcer")
			wantArg(t, enforcer, "--flow-log=/var/log/moat/flows.log", true)
			if got := hostPath(t, ds, "flow-log"); got != "/var/log/moat" {
				t.Errorf("flow-log volume on the host: %q, want /var/log/moat", got)
			}
			if !slices.ContainsFunc(nested[[]any](t, enforcer, "volumeMounts"), func(m any) bool {
				return m.(map[string]any)["name"] == "flow-log" && m.(map[string]any)["mountPath"] == "/var/log/moat"
			}) {
				t.Error("flow-log not mounted at /var/log/moat")
			}
		}},
		{"flow log to stdout", "flowLog: {enabled: true, path: '-'}", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			wantArg(t, container(t, ds, "containers", "enforcer"), "--flow-log=-", true)
			if hasVolume(t, ds, "flow-log") {
				t.Error("a flow-log volume for stdout")
			}
		}},
		{"metrics off", "metrics: {enabled: false}", func(t *testing.T, objs []*unstructured.Unstructured) {
			enforcer := container(t, find(t, objs, "DaemonSet", "moat"), "containers", "enforcer")
			wantArg(t, enforcer, "--metrics-addr=", true)
			for _, p := range []string{"readinessProbe", "livenessProbe"} {
				if _, ok := enforcer[p]; ok {
					t.Errorf("%s without the listener that serves it", p)
				}
			}
		}},
		{"metrics on every address", "metrics: {address: '0.0.0.0:9500'}", func(t *testing.T, objs []*unstructured.Unstructured) {
			enforcer := container(t, find(t, objs, "DaemonSet", "moat"), "containers", "enforcer")
			wantArg(t, enforcer, "--metrics-addr=0.0.0.0:9500", true)
			wantProbes(t, enforcer, "127.0.0.1", 9500)
		}},
		{"metrics on IPv6 loopback", "metrics: {address: '[::1]:9600'}", func(t *testing.T, objs []*unstructured.Unstructured) {
			enforcer := container(t, find(t, objs, "DaemonSet", "moat"), "containers", "enforcer")
			wantArg(t, enforcer, "--metrics-addr=[::1]:9600", true)
			wantProbes(t, enforcer, "::1", 9600)
		}},
		{"image and log level", "image: {repository: registry.example/moat, tag: dev, pullPolicy: Always}\nlogLevel: debug",
			func(t *testing.T, objs []*unstructured.Unstructured) {
				ds := find(t, objs, "DaemonSet", "moat")
				for _, c := range []map[string]any{container(t, ds, "initContainers", "install"), container(t, ds, "containers", "enforcer")} {
					if c["image"] != "registry.example/moat:dev" || c["imagePullPolicy"] != "Always" {
						t.Errorf("%s: image %v (%v)", c["name"], c["image"], c["imagePullPolicy"])
					}
				}
				wantArg(t, container(t, ds, "containers", "enforcer"), "--log-level=debug", true)
			}},
		{"scheduling", "tolerations: [{key: dedicated, operator: Equal, value: infra, effect: NoSchedule}]\npriorityClassName: ''\n" +
			"resources: {requests: {cpu: 10m}}\nupdateStrategy: {maxUnavailable: 50}", func(t *testing.T, objs []*unstructured.Unstructured) {
			ds := find(t, objs, "DaemonSet", "moat")
			if got := nested[any](t, ds.Object, "spec", "updateStrategy", "rollingUpdate", "maxUnavailable"); got != float64(50) {
				t.Errorf("maxUnavailable %v, want 50", got)
			}
			spec := nested[map[string]any](t, ds.Object, "spec", "template", "spec")
			if _, ok := spec["priorityClassName"]; ok {
				t.Error("an empty priorityClassName is rendered")
			}
			if diff := cmp.Diff([]any{map[string]any{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}},
				spec["tolerations"]); diff != "" {
				t.Errorf("tolerations (-want +got):\n%s", diff)
			}
			// Helm merges maps: the default memory request and limit stay
			if diff := cmp.Diff(map[string]any{"requests": map[string]any{"cpu": "10m", "memory": "128Mi"}, "limits": map[string]any{"memory": "1Gi"}},
				container(t, ds, "containers", "enforcer")["resources"]); diff != "" {
				t.Errorf("resources (-want +got):\n%s", diff)
			}
		}},
		{"config", "config: {defaultEgress: Deny, clusterCIDRs: [10.244.0.0/16, 'fd00:10:244::/56'], metadataAPI: {action: Allow}, conntrack: {maxPerEndpoint: 0}, sourceValidation: Disabled}",
			func(t *testing.T, objs []*unstructured.Unstructured) {
				spec := nested[map[string]any](t, find(t, objs, "FirewallConfig", "default").Object, "spec")
				want := map[string]any{
					"clusterCIDRs":   []any{"10.244.0.0/16", "fd00:10:244::/56"},
					"defaultIngress": "Allow",
					"defaultEgress":  "Deny",
					"metadataAPI": map[string]any{
						"action": "Allow",
						"addresses": []any{"169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32",
							"fd20:ce::254/128", "169.254.170.23/32", "fd00:ec2::23/128"},
						"allowNamespaces": map[string]any{"matchLabels": map[string]any{"moat.dev/metadata": "allow"}},
					},
					"conntrack":        map[string]any{"maxPerEndpoint": float64(0)}, // 0 is a value (no bound), not absent
					"sourceValidation": "Disabled",
				}
				if diff := cmp.Diff(want, spec); diff != "" {
					t.Errorf("FirewallConfig spec (-want +got):\n%s", diff)
				}
			}},
		{"config all absent", "config: {defaultIngress: null, defaultEgress: null, metadataAPI: null, clusterCIDRs: null, conntrack: null, sourceValidation: null}",
			func(t *testing.T, objs []*unstructured.Unstructured) {
				spec := nested[map[string]any](t, find(t, objs, "FirewallConfig", "default").Object, "spec")
				if len(spec) != 0 {
					t.Errorf("FirewallConfig spec %v, want {}", spec)
				}
			}},
		{"release namespace", "", func(t *testing.T, objs []*unstructured.Unstructured) {
			for _, u := range objs {
				if u.GetNamespace() != "" && u.GetNamespace() != namespace {
					t.Errorf("%s %s in namespace %s", u.GetKind(), u.GetName(), u.GetNamespace())
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, _, err := renderChart(tc.values)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, objs)
		})
	}
}

// TestChartRejectsBadValues: values.schema.json turns away what would render a broken DaemonSet or config.
func TestChartRejectsBadValues(t *testing.T) {
	for _, values := range []string{
		"cni: {failPolicy: Closed}",
		"cni: {ipamShim: 'yes'}",
		"cni: {attachMode: xdp}",
		"cni: {binDir: opt/cni/bin}",
		"logLevel: loud",
		"metrics: {address: '9464'}",
		"flowLog: {path: flows.log}",
		"config: {defaultEgress: deny}",
		"config: {metadataAPI: {action: Block}}",
		"config: {defaultEgres: Deny}",
		"image: {pullPolicy: Sometimes}",
	} {
		if _, _, err := renderChart(values); err == nil {
			t.Errorf("%s: rendered, want a schema error", values)
		}
	}
}

// TestChartLint: helm lint finds nothing worse than information.
func TestChartLint(t *testing.T) {
	l := lint.All(chartDir, nil, namespace, false)
	for _, m := range l.Messages {
		if m.Severity >= support.WarningSev {
			t.Error(m)
		}
	}
}

func TestChartNotes(t *testing.T) {
	_, notes, err := renderChart("cni: {failPolicy: open}")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(notes, "rollout status daemonset/moat") || !strings.Contains(notes, "failPolicy open") {
		t.Errorf("NOTES.txt:\n%s", notes)
	}
	if strings.Contains(notes, "failing closed") {
		t.Error("NOTES.txt warns of failing closed while the policy is open")
	}
	if _, notes, err = renderChart(""); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(notes, "failing closed") {
		t.Errorf("NOTES.txt does not warn of failing closed:\n%s", notes)
	}
}

// renderChart renders the chart as `helm install moat -n moat-system` would, with valuesYAML over the defaults:
// the CRDs of crds/, then the templates by name. It also returns NOTES.txt.
func renderChart(valuesYAML string) ([]*unstructured.Unstructured, string, error) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		return nil, "", err
	}
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(valuesYAML), &vals); err != nil {
		return nil, "", err
	}
	top, err := chartutil.ToRenderValues(chrt, vals,
		chartutil.ReleaseOptions{Name: "moat", Namespace: namespace, Revision: 1, IsInstall: true}, chartutil.DefaultCapabilities)
	if err != nil {
		return nil, "", err
	}
	files, err := engine.Render(chrt, top)
	if err != nil {
		return nil, "", err
	}
	var objs []*unstructured.Unstructured
	for _, crd := range chrt.CRDObjects() {
		o, err := decode(crd.File.Data)
		if err != nil {
			return nil, "", err
		}
		objs = append(objs, o...)
	}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	slices.Sort(names)
	var notes string
	for _, name := range names {
		switch {
		case strings.HasSuffix(name, "/NOTES.txt"):
			notes = files[name]
		case strings.HasSuffix(name, ".yaml"):
			o, err := decode([]byte(files[name]))
			if err != nil {
				return nil, "", errors.Join(errors.New(name), err)
			}
			objs = append(objs, o...)
		}
	}
	return objs, notes, nil
}

// decode splits multi-document YAML into objects, leaving out empty documents (comments only).
func decode(data []byte) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		var obj map[string]any
		if err := yaml.UnmarshalStrict(doc, &obj); err != nil {
			return nil, err
		}
		if obj == nil {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetAPIVersion() == "" || u.GetKind() == "" || u.GetName() == "" {
			return nil, errors.New("a document without apiVersion, kind or name:\n" + string(doc))
		}
		out = append(out, u)
	}
}

func decodeFile(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decode(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return objs
}

func key(u *unstructured.Unstructured) string {
	k := u.GetAPIVersion() + " " + u.GetKind() + " "
	if u.GetNamespace() != "" {
		k += u.GetNamespace() + "/"
	}
	return k + u.GetName()
}

func byKey(t *testing.T, objs []*unstructured.Unstructured) map[string]*unstructured.Unstructured {
	t.Helper()
	m := map[string]*unstructured.Unstructured{}
	for _, u := range objs {
		if _, dup := m[key(u)]; dup {
			t.Errorf("%s twice", key(u))
		}
		m[key(u)] = u
	}
	return m
}

// normalise drops the labels Helm's conventions add (the chart adds none today).
func normalise(u *unstructured.Unstructured) *unstructured.Unstructured {
	u = u.DeepCopy()
	if labels := u.GetLabels(); labels != nil {
		delete(labels, "helm.sh/chart")
		delete(labels, "app.kubernetes.io/managed-by")
		u.SetLabels(labels)
	}
	return u
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	t.Fatalf("no %s %s", kind, name)
	return nil
}

// nested returns the value at path (map keys, or list indexes as decimal strings), failing the test if there is
// none or it is not a T.
func nested[T any](t *testing.T, obj any, path ...string) T {
	t.Helper()
	cur := obj
	for i, p := range path {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[p]
			if !ok {
				t.Fatalf("no %s", strings.Join(path[:i+1], "."))
			}
			cur = v
		case []any:
			n, err := strconv.Atoi(p)
			if err != nil || n < 0 || n >= len(c) {
				t.Fatalf("no %s", strings.Join(path[:i+1], "."))
			}
			cur = c[n]
		default:
			t.Fatalf("%s is a %T", strings.Join(path[:i], "."), cur)
		}
	}
	v, ok := cur.(T)
	if !ok {
		t.Fatalf("%s is a %T", strings.Join(path, "."), cur)
	}
	return v
}

func container(t *testing.T, ds *unstructured.Unstructured, list, name string) map[string]any {
	t.Helper()
	for _, c := range nested[[]any](t, ds.Object, "spec", "template", "spec", list) {
		if c := c.(map[string]any); c["name"] == name {
			return c
		}
	}
	t.Fatalf("%s has no %s %s", ds.GetName(), list, name)
	return nil
}

func args(t *testing.T, c map[string]any) []string {
	t.Helper()
	var out []string
	for _, a := range nested[[]any](t, c, "args") {
		out = append(out, a.(string))
	}
	return out
}

func wantArg(t *testing.T, c map[string]any, arg string, want bool) {
	t.Helper()
	got := slices.ContainsFunc(args(t, c), func(a string) bool { return a == arg || strings.HasPrefix(a, arg+"=") })
	if got != want {
		t.Errorf("%s: argument %s present %v, want %v (args %q)", c["name"], arg, got, want, args(t, c))
	}
}

func wantProbes(t *testing.T, c map[string]any, host string, port float64) {
	t.Helper()
	for _, p := range []string{"readinessProbe", "livenessProbe"} {
		get := nested[map[string]any](t, c, p, "httpGet")
		if get["host"] != host || get["port"] != port {
			t.Errorf("%s on %v:%v, want %s:%v", p, get["host"], get["port"], host, port)
		}
	}
}

func hasVolume(t *testing.T, ds *unstructured.Unstructured, name string) bool {
	t.Helper()
	return slices.ContainsFunc(nested[[]any](t, ds.Object, "spec", "template", "spec", "volumes"), func(v any) bool {
		return v.(map[string]any)["name"] == name
	})
}

func hostPath(t *testing.T, ds *unstructured.Unstructured, volume string) string {
	t.Helper()
	for _, v := range nested[[]any](t, ds.Object, "spec", "template", "spec", "volumes") {
		if v := v.(map[string]any); v["name"] == volume {
			return nested[string](t, v, "hostPath", "path")
		}
	}
	t.Fatalf("no volume %s", volume)
	return ""
}
