// Command moat-enforcer is Moat's host agent. It loads and pins the datapath under --pin-root, adopts the state a
// previous run pinned and the pods the plugin recorded, and enforces the policy of one source: a folder
// (--policy-dir: FirewallConfig, FirewallPolicy and Namespace objects in multi-document YAML, watched) or the
// cluster (--kubeconfig, or in-cluster). It writes flow events (--flow-log), serves Prometheus metrics
// (--metrics-addr) and moatctl's API (--socket).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/cniconfig"
	"github.com/moatfw/moat/internal/conflist"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/enforcer"
	"github.com/moatfw/moat/internal/version"
)

func main() {
	var o options
	flag.StringVar(&o.pinRoot, "pin-root", bpf.DefaultPinRoot, "bpffs folder for Moat's pinned maps and programs")
	flag.StringVar(&o.policyDir, "policy-dir", "", "folder of FirewallConfig, FirewallPolicy and Namespace YAML (standalone mode)")
	flag.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the cluster (default: in-cluster, when neither this nor --policy-dir is given)")
	flag.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name in the cluster (default $NODE_NAME, else the host name)")
	flag.StringVar(&o.leaseNamespace, "status-lease-namespace", os.Getenv("POD_NAMESPACE"), "the namespace of the Lease whose holder writes the policies' status for the cluster (default $POD_NAMESPACE; empty: this enforcer writes them)")
	flag.StringVar(&o.endpointDir, "endpoint-dir", endpoint.DefaultDir, "where the plugin records the pods it guards")
	flag.StringVar(&o.flowLog, "flow-log", "", "write flow events as JSON lines to this file (- for stdout)")
	flag.StringVar(&o.socket, "socket", agentapi.DefaultSocket, "serve moatctl's API on this unix socket (mode 0600; empty: off)")
	flag.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9464", "serve Prometheus metrics here (empty: off)")
	flag.StringVar(&o.cniConfDir, "cni-conf-dir", "", "keep moat chained into the primary network of this CNI folder (repair loop; empty: off)")
	flag.BoolVar(&o.ipamShim, "cni-ipam-shim", false, "with --cni-conf-dir: wrap the primary plugin's ipam in moat-ipam")
	flag.StringVar(&o.attachMode, "cni-attach-mode", "", "with --cni-conf-dir: the attachMode of moat's entry (tcx or clsact; empty: the plugin's default, clsact filters first then moved to tcx)")
	flag.StringVar(&o.failPolicy, "cni-fail-policy", "", "with --cni-conf-dir: the failPolicy of moat's entry (closed or open; empty: the plugin's default)")
	flag.DurationVar(&o.reconcile, "reconcile-interval", 30*time.Second, "how often recorded endpoints are checked against the host")
	flag.Var(&o.conntrackEntries, "conntrack-entries", fmt.Sprintf("size of the conntrack table when the enforcer creates the maps (default %d; a change needs moat-install --uninstall)", bpf.DefaultConntrackEntries))
	flag.Var(&o.ipcacheEntries, "ipcache-entries", fmt.Sprintf("size of the ipcache (addresses of pods, Services and nodes of the cluster) when the enforcer creates the maps (default %d; a change needs moat-install --uninstall)", bpf.DefaultIPCacheEntries))
	flag.Var(&o.fqdnLearnedEntries, "fqdn-learned-entries", fmt.Sprintf("size of the table of addresses learned from DNS answers for fqdn rules, all namespaces together, when the enforcer creates the maps (default %d; a change needs moat-install --uninstall)", bpf.DefaultFQDNLearnedEntries))
	flag.BoolVar(&o.pprof, "debug-pprof", false, "with --metrics-addr: serve Go's CPU, heap and goroutine profiles under /debug/pprof/ there")
	flag.BoolVar(&o.addressFeed, "address-feed", false, "learn the cluster's pods and nodes from the address feed (AddressSlices) instead of watching every Pod and Node")
	flag.BoolVar(&o.publishFeed, "publish-address-feed", false, "run as the cluster's address feed publisher (no datapath): write AddressSlices from a watch of Pods and Nodes, while holding the Lease moat-address-feed in --status-lease-namespace")
	flag.IntVar(&o.feedQPS, "feed-api-qps", 100, "with --publish-address-feed: requests a second the publisher may make to the API server (burst: twice that)")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	logger := logrus.New()
	lvl, err := logrus.ParseLevel(*logLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "moat-enforcer: --log-level %q: want debug, info, warn or error\n", *logLevel)
		os.Exit(2)
	}
	logger.SetLevel(lvl)
	log := logrus.NewEntry(logger).WithField("component", "enforcer")
	if o.publishFeed {
		log = log.WithField("component", "feed")
	}
	log.WithField("gcPercent", setGCPercent()).Debug("the Go runtime collects once its heap grew by this percent")
	keepMemoryLimit(log)
	if o.publishFeed {
		if err := runFeed(log, o); err != nil {
			log.WithError(err).Error("moat-enforcer --publish-address-feed stops")
			os.Exit(1)
		}
		return
	}
	if err := run(log, o); err != nil {
		log.WithError(err).Error("moat-enforcer stops")
		os.Exit(1)
	}
}

// keepMemoryLimit keeps the Go runtime's memory limit at a share of what the container's memory limit leaves it
// (memoryLimiter), read again every 30 seconds as the datapath's maps grow; it logs the limit when it moves.
func keepMemoryLimit(log *logrus.Entry) {
	m, err := newMemoryLimiter("/sys/fs/cgroup", "/proc/self/cgroup")
	if err != nil {
		log.WithError(err).Warn("cannot read the container's memory limit; the Go runtime collects at its own pace")
		return
	}
	if m == nil {
		return // no limit, or GOMEMLIMIT
	}
	refresh := func() {
		set, kernel, changed, err := m.refresh()
		switch {
		case err != nil:
			log.WithError(err).Warn("cannot read the kernel memory charged to the container; the Go runtime's memory limit stays")
		case changed:
			log.WithFields(logrus.Fields{"cgroup": m.dir, "cgroupLimitMiB": m.limit >> 20, "kernelMiB": kernel >> 20,
				"goMemoryLimitMiB": set >> 20}).Info("the Go runtime keeps its memory under a share of what the container's memory limit leaves it")
		}
	}
	refresh()
	go func() {
		for range time.Tick(30 * time.Second) {
			refresh()
		}
	}()
}

type options struct {
	pinRoot, policyDir, kubeconfig, nodeName, endpointDir, flowLog, metricsAddr, socket string
	leaseNamespace                                                                      string
	cniConfDir, failPolicy, attachMode                                                  string
	ipamShim, addressFeed, publishFeed, pprof                                           bool
	reconcile                                                                           time.Duration
	feedQPS                                                                             int
	conntrackEntries, ipcacheEntries, fqdnLearnedEntries                                entries
}

// entries is a map size flag: a positive count.
type entries uint32

func (n *entries) String() string { return strconv.FormatUint(uint64(*n), 10) }

func (n *entries) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 0 {
		return fmt.Errorf("%q: want a positive number of entries", s)
	}
	*n = entries(v)
	return nil
}

func pickSource(log *logrus.Entry, o options) (enforcer.Source, error) {
	switch {
	case o.policyDir != "" && o.kubeconfig != "":
		return nil, fmt.Errorf("--policy-dir and --kubeconfig: pick one source")
	case o.policyDir != "":
		return &enforcer.Folder{Dir: o.policyDir, Log: log.WithField("source", o.policyDir)}, nil
	}
	cfg, err := kubeConfig(o)
	if err != nil {
		return nil, err
	}
	node := o.nodeName
	if node == "" {
		if node, err = os.Hostname(); err != nil {
			return nil, err
		}
	}
	return &enforcer.Kubernetes{Config: cfg, NodeName: node, LeaseNamespace: o.leaseNamespace, AddressFeed: o.addressFeed,
		Log: log.WithFields(logrus.Fields{"source": "kubernetes", "node": node})}, nil
}

// kubeConfig is the cluster's client config: --kubeconfig, else in-cluster.
func kubeConfig(o options) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if o.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, fmt.Errorf("no policy source: give --policy-dir DIR (standalone) or --kubeconfig FILE, or run in a pod")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w", err)
	}
	cfg.UserAgent = "moat-enforcer/" + version.Version
	return cfg, nil
}

func run(log *logrus.Entry, o options) error {
	src, err := pickSource(log, o)
	if err != nil {
		return err
	}
	if err := cniconfig.CheckFailPolicy(o.failPolicy); err != nil {
		return fmt.Errorf("--cni-fail-policy: %w", err)
	}
	if err := bpf.CheckAttachMode(bpf.AttachMode(o.attachMode)); err != nil {
		return fmt.Errorf("--cni-attach-mode: %w", err)
	}
	dp, err := bpf.Load(o.pinRoot, bpf.Options{ConntrackEntries: uint32(o.conntrackEntries), IPCacheEntries: uint32(o.ipcacheEntries),
		FQDNLearnedEntries: uint32(o.fqdnLearnedEntries)})
	if err != nil {
		return fmt.Errorf("load the datapath: %w", err)
	}
	defer dp.Close()
	log.WithFields(logrus.Fields{"pinRoot": o.pinRoot, "createdMaps": dp.Created, "version": version.Version}).
		Info("datapath loaded and pinned")
	if from, ok := dp.Migrating(); ok {
		log.WithFields(logrus.Fields{"fromLayout": from, "toLayout": bpf.LayoutVersion}).
			Info("datapath migrated from an older layout: the pods' programs are swapped after the first apply, then the old maps go")
	}

	e, err := enforcer.New(dp, log)
	if err != nil {
		return err
	}
	store := endpoint.Store{Dir: o.endpointDir}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	srv := &enforcer.Server{E: e, Store: store, Source: src.Name()}
	if k, ok := src.(*enforcer.Kubernetes); ok {
		srv.Host = k.HostInput
	}
	if o.cniConfDir != "" {
		srv.Checks = append(srv.Checks, func() error { return conflist.Check(o.cniConfDir) })
	}

	if o.metricsAddr != "" {
		reg := prometheus.NewRegistry()
		if _, err := e.NewMetrics(reg); err != nil {
			return err
		}
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics on %s: %w", o.metricsAddr, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		mux.HandleFunc("/readyz", srv.Readyz)
		if o.pprof {
			// Go's profiles of the enforcer, for whoever reaches the listener (keep it on 127.0.0.1)
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = hs.Serve(ln) }()
		defer hs.Close()
		log.WithField("addr", ln.Addr().String()).Info("serving metrics")
	}

	var flowOut io.Writer // nil: flows are kept for the API only
	switch o.flowLog {
	case "":
	case "-":
		flowOut = os.Stdout
	default:
		f, err := os.OpenFile(o.flowLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open the flow log: %w", err)
		}
		defer f.Close()
		flowOut = f
	}
	go func() {
		if err := e.RunFlows(ctx, store, flowOut); err != nil {
			log.WithError(err).Error("flow events stopped")
		}
	}()
	go func() {
		if err := e.RunDNS(ctx, store); err != nil {
			log.WithError(err).Error("DNS events stopped: moatctl dns shows no new answers")
		}
	}()
	if o.socket != "" {
		ln, err := agentapi.Listen(o.socket)
		if err != nil {
			return fmt.Errorf("API socket: %w", err)
		}
		defer os.Remove(o.socket)
		go func() {
			if err := srv.Serve(ctx, ln); err != nil {
				log.WithError(err).Error("API socket stopped")
			}
		}()
		log.WithField("socket", o.socket).Info("serving moatctl's API")
	}

	if o.cniConfDir != "" {
		opts := conflist.Settings{Dir: o.cniConfDir, IPAMShim: o.ipamShim, FailPolicy: o.failPolicy, AttachMode: o.attachMode, PinRoot: o.pinRoot,
			EndpointDir: o.endpointDir}.Options()
		go func() {
			if err := conflist.Repair(ctx, opts, 5*time.Second, log.WithField("component", "cni-repair")); err != nil {
				log.WithError(err).Error("conflist repair loop stopped: moat may fall out of the CNI chain")
			}
		}()
	}
	// pods recorded before now, tagged before their namespace was known, or whose veth went while nobody
	// watched, are put right after every apply and every reconcile interval
	// Before the first apply the maps may hold an older build's policy (a migration): no pod is moved to this
	// build's programs until this build's policy is in them.
	var applied atomic.Bool
	reconcile := func() {
		if !applied.Load() {
			return
		}
		if err := e.Reconcile(store, o.pinRoot); err != nil {
			log.WithError(err).Error("reconciling recorded endpoints")
		}
	}
	go e.RunConntrackRecount(ctx, store, enforcer.RecountInterval)
	// DNS answers the datapath cannot read in place, learned here and given back to their pods
	go func() {
		if err := e.RunLearner(ctx); err != nil {
			log.WithError(err).Error("learning from DNS answers stopped: answers the datapath hands over are lost")
		}
	}()
	// the host's own addresses are the node's, its bridge's gateway inside the pod range included
	go func() {
		if err := e.WatchHostAddresses(ctx); err != nil {
			log.WithError(err).Error("watching this host's addresses stopped")
		}
	}()
	// the default attach mode's second half: staged pods move to tcx, released links go, off the pods' ADD and DEL
	go endpoint.Mover{Life: endpoint.Lifecycle{Store: store, PinRoot: o.pinRoot}, Log: log.WithField("component", "tcx-mover")}.Run(ctx)
	if o.reconcile > 0 {
		go enforcer.Every(ctx, o.reconcile, reconcile)
	}
	var freed time.Time
	var freeing atomic.Bool
	err = e.Run(ctx, src, func() {
		applied.Store(true)
		reconcile()
		// parsing and compiling a large policy leaves pages the heap no longer needs; handing them back costs a
		// scavenge of the whole heap, so at most twice a minute (applies come many a second under churn)
		// It runs beside the apply loop: a forced collection of a heap of hundreds of megabytes (150,000 pods)
		// takes seconds on a busy node, and the next apply must not wait on it.
		if time.Since(freed) > 30*time.Second && freeing.CompareAndSwap(false, true) {
			freed = time.Now()
			go func() {
				defer freeing.Store(false)
				debug.FreeOSMemory()
			}()
		}
	})
	log.Info("stopping; pinned state stays for the next start")
	return err
}
