// Package upstream runs Kubernetes' own networking conformance tests, the [sig-network] [Conformance] specs of the
// e2e test binary that conformance/kube/build.sh builds (e2e.test, `make conformance-bins`), against a cluster,
// and turns their Ginkgo JSON report into rows (test, result, reason) that RenderMarkdown writes to
// docs/conformance.md for several passes side by side: without Moat, with Moat's default configuration, with a
// restrictive policy. The cluster's DNS is CoreDNS as CoreDNSManifest deploys it, at ClusterDNSIP; the tests'
// images are conformance/images.BuildConformance's.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

const (
	// Focus selects the pass's tests: Kubernetes' networking conformance tests.
	Focus = `\[sig-network\].*\[Conformance\]`
	// Skip leaves out what a cluster without a cloud provider cannot run: load balancers. (No [sig-network]
	// conformance test of v1.37.2 needs one; the pattern is there for the tests a later version adds.)
	Skip = `LoadBalancer|\[Feature:`
	// APIFocus selects the [sig-network] conformance tests that need the API server and its controllers only,
	// no node: they run against a bare control plane (with --allowed-not-ready-nodes=-1 --num-nodes=1).
	APIFocus = `\[sig-network\] (IngressClass API|Ingress API|ServiceCIDR and IPAddress API|` +
		`EndpointSlice should support creating EndpointSlice API|Services should delete a collection|` +
		`Services should find a service from listing all namespaces).*\[Conformance\]`
	// SkipReason is what the report says of a test that Skip left out.
	SkipReason = "needs a cloud load balancer or a feature this cluster does not have (not run: --ginkgo.skip)"

	// ReportFile is the Ginkgo JSON report Run has the binary write into Options.ReportDir, LogFile its output.
	ReportFile = "report.json"
	LogFile    = "e2e.log"
)

// SubsetTests are the tests the e2e suite runs with Moat installed (TestUpstreamConformance, so `make test` and
// CI keep the pass working): the API-only ones (APIFocus) and the quick ones that send traffic through Moat on
// both nodes, pod to pod across nodes, node to pod, to a Service's cluster IP over TCP and UDP, through a
// hostPort, and from the API server's proxy. None needs the cluster DNS, which the e2e suite does not deploy:
// not "Services should serve a basic endpoint from pods", which dials the Service by its name too.
var SubsetTests = []string{
	"[sig-network] EndpointSlice should support creating EndpointSlice API operations [Conformance]",
	"[sig-network] Ingress API should support creating Ingress API operations [Conformance]",
	"[sig-network] IngressClass API should support creating IngressClass API operations [Conformance]",
	"[sig-network] ServiceCIDR and IPAddress API should support IPAddress API operations [Conformance]",
	"[sig-network] ServiceCIDR and IPAddress API should support ServiceCIDR API operations [Conformance]",
	"[sig-network] Services should delete a collection of services [Conformance]",
	"[sig-network] Services should find a service from listing all namespaces [Conformance]",
	"[sig-network] HostPort validates that there is no conflict between pods with same hostPort but different " +
		"hostIP and protocol [LinuxOnly] [Conformance]",
	"[sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http " +
		"[Conformance] [NodeConformance]",
	"[sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp [LinuxOnly] " +
		"[Conformance] [NodeConformance]",
	"[sig-network] Proxy version v1 should proxy through a service and a pod [Conformance]",
	"[sig-network] Services should serve endpoints on same port and different protocols [Conformance]",
}

// Options are a run of the e2e binary.
type Options struct {
	E2E        string // the e2e test binary (e2e.test in conformance/kube/build.sh --print-dir)
	Kubeconfig string // the cluster's admin kubeconfig; empty only for a dry run
	Kubectl    string // the kubectl the framework runs for exec and logs; empty: kubectl in E2E's folder
	ReportDir  string // where the JSON report, the JUnit report and the log go; made if missing

	Focus, Skip string        // empty: the package's Focus and Skip
	DNSDomain   string        // empty: ClusterDomain
	Timeout     time.Duration // of the whole suite (--ginkgo.timeout); 0: 3 hours
	DryRun      bool          // list what the focus selects without running it: no cluster needed
	Extra       []string      // more flags for the binary, after the others
	Output      io.Writer     // also gets the binary's output as it runs; nil: only the log file
}

func (o Options) withDefaults() Options {
	if o.Focus == "" {
		o.Focus = Focus
	}
	if o.Skip == "" {
		o.Skip = Skip
	}
	if o.DNSDomain == "" {
		o.DNSDomain = ClusterDomain
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Hour
	}
	if o.Kubectl == "" && o.E2E != "" {
		o.Kubectl = filepath.Join(filepath.Dir(o.E2E), "kubectl")
	}
	return o
}

// Args are the binary's command-line flags for o.
func (o Options) Args() []string {
	o = o.withDefaults()
	args := []string{
		"--provider=local",
		"--ginkgo.focus=" + o.Focus,
		"--ginkgo.skip=" + o.Skip,
		"--ginkgo.no-color",
		"--ginkgo.timeout=" + o.Timeout.String(),
		"--ginkgo.json-report=" + filepath.Join(o.ReportDir, ReportFile),
		"--ginkgo.junit-report=" + filepath.Join(o.ReportDir, "junit.xml"),
		"--report-dir=" + o.ReportDir,
		"--e2e-output-dir=" + o.ReportDir,
		"--dns-domain=" + o.DNSDomain,
		"--kubectl-path=" + o.Kubectl,
		"--disable-log-dump",
	}
	if o.Kubeconfig != "" {
		args = append(args, "--kubeconfig="+o.Kubeconfig)
	}
	if o.DryRun {
		args = append(args, "--ginkgo.dry-run")
	}
	return append(args, o.Extra...)
}

// Env is the binary's environment: this process's, and what the conformance run requires.
func (o Options) Env() []string {
	env := append(os.Environ(), "KUBERNETES_CONFORMANCE_TEST=y")
	if o.Kubeconfig != "" {
		env = append(env, "KUBECONFIG="+o.Kubeconfig)
	}
	return env
}

// Run runs the binary and parses its report. Tests that fail make the binary exit non-zero, which is no error
// here: the report says which failed. It is an error when no report could be read (the binary did not start, the
// suite's setup could not reach the cluster before writing one, the context ended), and then the error names the
// log file.
func Run(ctx context.Context, o Options) (Report, error) {
	o = o.withDefaults()
	if o.E2E == "" || o.ReportDir == "" {
		return Report{}, errors.New("upstream: Options need E2E and ReportDir")
	}
	if o.Kubeconfig == "" && !o.DryRun {
		return Report{}, errors.New("upstream: a run needs the cluster's kubeconfig")
	}
	focus, err := regexp.Compile(o.Focus)
	if err != nil {
		return Report{}, fmt.Errorf("focus %q: %w", o.Focus, err)
	}
	skip, err := regexp.Compile(o.Skip)
	if err != nil {
		return Report{}, fmt.Errorf("skip %q: %w", o.Skip, err)
	}
	if err := os.MkdirAll(o.ReportDir, 0o755); err != nil {
		return Report{}, fmt.Errorf("report folder: %w", err)
	}
	reportPath := filepath.Join(o.ReportDir, ReportFile)
	if err := os.Remove(reportPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Report{}, fmt.Errorf("old report: %w", err)
	}
	logPath := filepath.Join(o.ReportDir, LogFile)
	logFile, err := os.Create(logPath)
	if err != nil {
		return Report{}, fmt.Errorf("log file: %w", err)
	}
	defer logFile.Close()
	var out io.Writer = logFile
	if o.Output != nil {
		out = io.MultiWriter(logFile, o.Output)
	}

	cmd := exec.CommandContext(ctx, o.E2E, o.Args()...)
	cmd.Env = o.Env()
	cmd.Dir = o.ReportDir
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	runErr := cmd.Run()
	elapsed := time.Since(start)

	f, err := os.Open(reportPath)
	if err != nil {
		return Report{}, fmt.Errorf("e2e run (%v) wrote no report: %w; see %s", exitText(runErr), err, logPath)
	}
	defer f.Close()
	rep, err := ParseReport(f, focus, skip)
	if err != nil {
		return Report{}, fmt.Errorf("e2e run (%v): %w; see %s", exitText(runErr), err, logPath)
	}
	rep.Elapsed = elapsed
	rep.ExitStatus = exitStatus(runErr)
	return rep, nil
}

// List is the names of the tests a run with o would run, by a dry run of the binary (it needs no cluster).
func List(ctx context.Context, o Options) ([]string, error) {
	o.DryRun = true
	rep, err := Run(ctx, o)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, r := range rep.Rows {
		if r.Result == Passed { // a dry run reports what it would run as passed
			names = append(names, r.Name)
		}
	}
	return names, nil
}

func exitStatus(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		return -1
	}
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	if s := exitStatus(err); s >= 0 {
		return "exit status " + strconv.Itoa(s)
	}
	return err.Error()
}
