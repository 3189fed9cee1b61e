package enforcer

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/internal/endpoint"
)

// RecountInterval is how often the enforcer recounts each endpoint's conntrack entries.
const RecountInterval = 10 * time.Second

// RecountConntrack sets each endpoint's count of conntrack entries to what the table holds. The datapath counts
// the entries it inserts and deletes, but not LRU evictions or entries that expire unseen; without a recount a
// pod that once opened many short flows would meet its bound (FirewallConfig conntrack.maxPerEndpoint) long
// after they ended. Endpoints at their bound are logged by pod.
func (e *Enforcer) RecountConntrack(store endpoint.Store) error {
	counts, err := e.dp.RecountConntrack()
	if err != nil {
		return err
	}
	cfg, err := e.dp.Config()
	if err != nil || cfg.CtMaxPerEndpoint == 0 {
		return err
	}
	var records []*endpoint.Record
	for ifindex, n := range counts {
		if n < uint64(cfg.CtMaxPerEndpoint) {
			continue
		}
		if records == nil {
			if records, err = store.List(""); err != nil {
				return err
			}
		}
		fields := logrus.Fields{"ifindex": ifindex, "flows": n, "bound": cfg.CtMaxPerEndpoint}
		for _, r := range records {
			if uint32(r.HostIfindex) == ifindex {
				fields["pod"] = r.Namespace + "/" + r.Pod
				fields["hostVeth"] = r.HostIfname
			}
		}
		e.log.WithFields(fields).Warn("endpoint at its conntrack bound: its new flows are dropped (conntrack-limit)")
	}
	return nil
}

// RunConntrackRecount recounts every interval until ctx ends.
func (e *Enforcer) RunConntrackRecount(ctx context.Context, store endpoint.Store, interval time.Duration) {
	Every(ctx, interval, func() {
		if err := e.RecountConntrack(store); err != nil {
			e.log.WithError(err).Error("recounting conntrack entries per endpoint")
		}
	})
}

// Every calls fn every interval until ctx ends (the enforcer's periodic work: reconcile, recount).
func Every(ctx context.Context, interval time.Duration, fn func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}
