package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"

	"github.com/moatfw/moat/internal/feed"
	"github.com/moatfw/moat/internal/lease"
)

// runFeed publishes the cluster's address feed while this process holds the Lease feed.Lease (one publisher per
// cluster; a standby takes over within the Lease's 15 s). Without a Lease namespace it publishes unconditionally.
func runFeed(log *logrus.Entry, o options) error {
	if o.feedQPS <= 0 {
		return fmt.Errorf("--feed-api-qps %d: want a positive number of requests a second", o.feedQPS)
	}
	cfg, err := kubeConfig(o)
	if err != nil {
		return err
	}
	cfg.UserAgent = "moat-feed/" + cfg.UserAgent
	// one publisher per cluster: client-go's default of 5 requests a second would take 5 minutes to write the
	// 1,500 slices of 150,000 pods at a start, and fall behind a churn of more than 5 slices a second
	cfg.QPS, cfg.Burst = float32(o.feedQPS), 2*o.feedQPS
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	publish := func(ctx context.Context) error {
		return (&feed.Publisher{Client: client, Dynamic: dyn, Log: log}).Run(ctx)
	}
	if o.leaseNamespace == "" {
		log.Info("no Lease namespace: publishing the address feed without leader election")
		return publish(ctx)
	}
	id, err := os.Hostname()
	if err != nil {
		return err
	}
	if pod := os.Getenv("POD_NAME"); pod != "" {
		id = pod
	}
	held := log.WithField("lease", o.leaseNamespace+"/"+feed.Lease)
	var failed error
	leaderelection.RunOrDie(ctx, lease.Election(client.CoordinationV1(), o.leaseNamespace, feed.Lease, id,
		leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				held.Info("holding the Lease: publishing the address feed")
				if err := publish(ctx); err != nil {
					failed = err
					stop()
				}
			},
			OnStoppedLeading: func() { held.Info("not holding the Lease (any more)") },
			OnNewLeader: func(who string) {
				if who != id {
					held.WithField("holder", who).Info("another publisher holds the Lease: standing by")
				}
			},
		}))
	if failed != nil {
		return fmt.Errorf("publishing the address feed: %w", failed)
	}
	if ctx.Err() == nil {
		// the Lease was lost while the process lives: leave, and let the pod restart from a clean state
		return fmt.Errorf("lost the Lease %s", feed.Lease)
	}
	return nil
}
