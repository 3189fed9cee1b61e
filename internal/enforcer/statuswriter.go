package enforcer

import (
	"context"
	"sync"

	"k8s.io/client-go/tools/leaderelection"

	"github.com/moatfw/moat/internal/lease"
)

// StatusLease is the Lease whose holder writes the policies' status for the whole cluster.
const StatusLease = "moat-policy-status"

// statusPublisher is a source that tells its objects' authors what became of them (the Kubernetes source writes
// each policy's Accepted condition). PublishStatus hands over the state just applied and returns at once: the
// writes happen off the apply path, and only the latest state is written.
type statusPublisher interface {
	PublishStatus(s State)
}

// latestState holds the newest state to write the status of, and wakes the writer.
type latestState struct {
	mu    sync.Mutex
	state *State
	ready chan struct{}
}

func newLatestState() *latestState { return &latestState{ready: make(chan struct{}, 1)} }

func (l *latestState) put(s State) {
	l.mu.Lock()
	l.state = &s
	l.mu.Unlock()
	select {
	case l.ready <- struct{}{}:
	default:
	}
}

// take waits for a state newer than the last one taken (nil when ctx ends).
func (l *latestState) take(ctx context.Context) *State {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.ready:
		}
		l.mu.Lock()
		s := l.state
		l.mu.Unlock()
		if s != nil {
			return s
		}
	}
}

// PublishStatus hands the state just applied to the status writer.
func (k *Kubernetes) PublishStatus(s State) { k.statuses.put(s) }

// writeStatuses writes the policies' status until ctx ends: from this enforcer alone when it holds the status
// Lease in LeaseNamespace (one writer for the cluster, not one per node), or unconditionally when LeaseNamespace
// is empty (a single enforcer, or tests). A new leader writes the latest state at once.
func (k *Kubernetes) writeStatuses(ctx context.Context) {
	write := func(ctx context.Context) {
		for {
			s := k.statuses.take(ctx)
			if s == nil {
				return
			}
			if err := k.WriteStatus(ctx, *s); err != nil && ctx.Err() == nil {
				k.Log.WithError(err).Warn("writing policy status")
			}
		}
	}
	if k.LeaseNamespace == "" {
		write(ctx)
		return
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, lease.Election(k.client.CoordinationV1(), k.LeaseNamespace, StatusLease, k.NodeName,
			leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					k.Log.WithField("lease", k.LeaseNamespace+"/"+StatusLease).Info("writing policy status for the cluster")
					k.statuses.wake()
					write(ctx)
				},
				OnStoppedLeading: func() {
					k.Log.WithField("lease", k.LeaseNamespace+"/"+StatusLease).Info("another node writes policy status now")
				},
			}))
	}
}

// wake makes the writer take the latest state again (a new leader writes it at once).
func (l *latestState) wake() {
	select {
	case l.ready <- struct{}{}:
	default:
	}
}
