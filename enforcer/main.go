// Command moat-enforcer is Moat's host agent. It loads and pins the datapath under --pin-root, adopts the state a
// previous run pinned and the pods the plugin recorded, and enforces the policy of a folder (--policy-dir):
// FirewallConfig, FirewallPolicy and Namespace objects in multi-document YAML, watched, so adding, editing or
// removing a file takes effect. The Kubernetes source, flows, metrics and the API socket come with the rest of the
// enforcer issue.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/enforcer"
	"github.com/moatfw/moat/internal/version"
)

func main() {
	pinRoot := flag.String("pin-root", bpf.DefaultPinRoot, "bpffs folder for Moat's pinned maps and programs")
	policyDir := flag.String("policy-dir", "", "folder of FirewallConfig, FirewallPolicy and Namespace YAML (standalone mode)")
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster (not in this build)")
	endpointDir := flag.String("endpoint-dir", endpoint.DefaultDir, "where the plugin records the pods it guards")
	flowLog := flag.String("flow-log", "", "write flow events as JSON lines to this file (- for stdout)")
	socket := flag.String("socket", agentapi.DefaultSocket, "serve moatctl's API on this unix socket (mode 0600; empty: off)")
	metricsAddr := flag.String("metrics-addr", "127.0.0.1:9464", "serve Prometheus metrics here (empty: off)")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	logger := logrus.New()
	if lvl, err := logrus.ParseLevel(*logLevel); err == nil {
		logger.SetLevel(lvl)
	}
	log := logrus.NewEntry(logger).WithField("component", "enforcer")
	if err := run(log, options{pinRoot: *pinRoot, policyDir: *policyDir, kubeconfig: *kubeconfig,
		endpointDir: *endpointDir, flowLog: *flowLog, metricsAddr: *metricsAddr, socket: *socket}); err != nil {
		log.WithError(err).Error("moat-enforcer stops")
		os.Exit(1)
	}
}

type options struct {
	pinRoot, policyDir, kubeconfig, endpointDir, flowLog, metricsAddr, socket string
}

func run(log *logrus.Entry, o options) error {
	pinRoot, policyDir, kubeconfig, endpointDir, flowLog := o.pinRoot, o.policyDir, o.kubeconfig, o.endpointDir, o.flowLog
	if kubeconfig != "" {
		return fmt.Errorf("--kubeconfig: the Kubernetes source is not in this build; use --policy-dir")
	}
	if policyDir == "" {
		return fmt.Errorf("--policy-dir is required in this build")
	}
	dp, err := bpf.Load(pinRoot, bpf.Options{})
	if err != nil {
		return fmt.Errorf("load the datapath: %w", err)
	}
	defer dp.Close()
	log.WithFields(logrus.Fields{"pinRoot": pinRoot, "createdMaps": dp.Created, "version": version.Version}).
		Info("datapath loaded and pinned")

	e, err := enforcer.New(dp, log)
	if err != nil {
		return err
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
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		defer srv.Close()
		log.WithField("addr", ln.Addr().String()).Info("serving metrics")
	}
	folder := &enforcer.Folder{Dir: policyDir, Log: log.WithField("source", policyDir)}
	apply := func() {
		s, problems, err := folder.Load()
		if err != nil {
			log.WithError(err).Error("cannot read the policy folder; the policy in force stays")
			return
		}
		if err := e.Apply(s); err != nil {
			log.WithError(err).Error("cannot apply the policy")
			return
		}
		log.WithFields(logrus.Fields{"policies": len(s.Policies), "namespaces": len(s.Namespaces),
			"problems": len(problems)}).Info("policy folder applied")
		// pods recorded before now (or tagged before their namespace was known) are adopted and re-tagged
		if err := e.Reconcile(endpoint.Store{Dir: endpointDir}, pinRoot); err != nil {
			log.WithError(err).Error("reconciling recorded endpoints")
		}
	}
	apply()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var flowOut io.Writer // nil: flows are kept for the API only
	switch flowLog {
	case "":
	case "-":
		flowOut = os.Stdout
	default:
		f, err := os.OpenFile(flowLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("open the flow log: %w", err)
		}
		defer f.Close()
		flowOut = f
	}
	go func() {
		if err := e.RunFlows(ctx, endpoint.Store{Dir: endpointDir}, flowOut); err != nil {
			log.WithError(err).Error("flow events stopped")
		}
	}()
	if o.socket != "" {
		ln, err := agentapi.Listen(o.socket)
		if err != nil {
			return fmt.Errorf("API socket: %w", err)
		}
		defer os.Remove(o.socket)
		srv := &enforcer.Server{E: e, Store: endpoint.Store{Dir: endpointDir}, Source: "folder " + policyDir}
		go func() {
			if err := srv.Serve(ctx, ln); err != nil {
				log.WithError(err).Error("API socket stopped")
			}
		}()
		log.WithField("socket", o.socket).Info("serving moatctl's API")
	}
	err = folder.Watch(ctx, apply)
	log.Info("stopping; pinned state stays for the next start")
	return err
}
