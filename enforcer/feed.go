package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/moatfw/moat/internal/feed"
)

// runFeed publishes the cluster's address feed while this process holds the Lease feed.Lease (one publisher per
// cluster; a standby takes over within the Lease's 15 s). Without a Lease namespace it publishes unconditionally.
func runFeed(log *logrus.Entry, o options) error {
	cfg, err := kubeConfig(o)
	if err != nil {
		return err
	}
	cfg.UserAgent = "moat-feed/" + cfg.UserAgent
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
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: feed.Lease, Namespace: o.leaseNamespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	lease := log.WithField("lease", o.leaseNamespace+"/"+feed.Lease)
	var failed error
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock: lock, LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		ReleaseOnCancel: true, Name: feed.Lease,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				lease.Info("holding the Lease: publishing the address feed")
				if err := publish(ctx); err != nil {
					failed = err
					stop()
				}
			},
			OnStoppedLeading: func() { lease.Info("not holding the Lease (any more)") },
			OnNewLeader: func(who string) {
				if who != id {
					lease.WithField("holder", who).Info("another publisher holds the Lease: standing by")
				}
			},
		},
	})
	if failed != nil {
		return fmt.Errorf("publishing the address feed: %w", failed)
	}
	if ctx.Err() == nil {
		// the Lease was lost while the process lives: leave, and let the pod restart from a clean state
		return fmt.Errorf("lost the Lease %s", feed.Lease)
	}
	return nil
}
