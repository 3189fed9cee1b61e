package enforcer

import (
	"context"
	"errors"
	"runtime/debug"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/moatfw/moat/internal/debounce"
)

// Source is where the desired state comes from: a folder of YAML (Folder) or the Kubernetes API (Kubernetes).
type Source interface {
	// Name is what the status calls the source: "folder DIR" or "kubernetes".
	Name() string
	// Watch calls changed, from any goroutine, once the watch stands and the source can give its whole state
	// (never before: a partial state would withdraw identities), and whenever the state may have changed since,
	// until ctx ends. Its error means the source cannot be watched at all.
	Watch(ctx context.Context, changed func()) error
	// Load is the desired state now. An object the source cannot use is one of the state's Problems (its last good
	// version, if any, stays in the state); an error means there is no state to apply.
	Load() (State, error)
	// Burst is how the source's changes come together: the state is loaded once per burst.
	Burst() debounce.Timing
}

// contactSource is a source that can lose contact with where its state comes from (the Kubernetes API server).
type contactSource interface {
	// Contact says since when the source cannot be reached, and why (zero time: it can).
	Contact() (lostAt time.Time, why string)
	// Stale says what part of what the source reads is known to be out of date, and why ("": none).
	Stale() string
}

// addressFeed is a source that tells which addresses changed, so that a burst in which only addresses changed
// (pods, Services and nodes elsewhere in the cluster) costs what it changed, not a whole apply.
type addressFeed interface {
	// AddressChanges takes the address changes since the state was last loaded; ok is false when anything else
	// changed too.
	AddressChanges() (u AddressUpdate, ok bool)
}

// Run keeps the datapath enforcing src until ctx ends: once the watch stands and after every burst of changes it
// loads the state and applies it, then calls afterApply (nil: nothing). Each of the source's problems is logged
// once while it lasts, whichever the source. A state that cannot be loaded or applied is logged and the one in
// force stays. Run returns when ctx ends, or with the error that ends the watch.
func (e *Enforcer) Run(ctx context.Context, src Source, afterApply func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if c, ok := src.(contactSource); ok {
		e.contact.Store(c)
	}
	log := e.log.WithField("source", src.Name())
	changes := debounce.New(src.Burst())
	watched := make(chan error, 1)
	go func() {
		defer cancel()
		watched <- src.Watch(ctx, changes.Notify)
	}()
	var logged once[ObjectProblem]
	var retry retrier // the whole state again, while an apply of it fails
	defer retry.stop()
	changes.Run(ctx, func() {
		if f, ok := src.(addressFeed); ok && !retry.pending() {
			if u, ok := f.AddressChanges(); ok {
				err := e.ApplyAddresses(u)
				if err == nil {
					return
				}
				if !errors.Is(err, errNeedsState) {
					log.WithError(err).Error("cannot apply the address changes; the whole state is applied instead")
				}
			}
		}
		s, err := src.Load()
		if err != nil {
			log.WithError(err).WithField("retryIn", retry.after(changes.Notify)).
				Error("cannot load the policy source; the policy in force stays")
			return
		}
		for _, p := range logged.fresh(s.Problems) {
			log.WithFields(logrus.Fields{"kind": p.Kind, "object": p.Name, "origin": p.Origin}).Error(p.Message)
		}
		if err := e.Apply(s); err != nil {
			if errors.Is(err, unix.ENOMEM) {
				// the kernel could not charge a map's memory to this cgroup: hand the pages the Go runtime
				// keeps free back to it first (it cannot reclaim them), so that the retry finds room
				debug.FreeOSMemory()
			}
			log.WithError(err).WithField("retryIn", retry.after(changes.Notify)).
				Error("cannot apply the policy source's state; the policy in force stays until a retry succeeds")
			return
		}
		if retry.pending() {
			log.Info("the policy source's state applied after a failed apply")
		}
		retry.reset()
		log.WithFields(logrus.Fields{"policies": len(s.Policies), "namespaces": len(s.Namespaces),
			"problems": len(s.Problems)}).Debug("policy source applied")
		if w, ok := src.(statusPublisher); ok {
			w.PublishStatus(s)
		}
		if afterApply != nil {
			afterApply()
		}
	})
	return <-watched
}

// retrier loads and applies the whole state again after an apply that failed (a change that came meanwhile is
// not waited for: the failed one may be the last), waiting longer each time, up to maxRetryWait. Until one
// succeeds, a burst applies the whole state, not only its address changes: a failed apply's namespaces and
// policies would otherwise wait for the next change of one of them. Run's action alone uses it.
type retrier struct {
	wait  time.Duration // the last wait; 0: no apply failed since the last that succeeded
	timer *time.Timer
}

const (
	firstRetryWait = time.Second
	maxRetryWait   = 30 * time.Second
)

// after calls notify once the next wait is over, and returns the wait.
func (r *retrier) after(notify func()) time.Duration {
	r.stop()
	r.wait = min(max(2*r.wait, firstRetryWait), maxRetryWait)
	r.timer = time.AfterFunc(r.wait, notify)
	return r.wait
}

// pending: did the last apply fail?
func (r *retrier) pending() bool { return r.wait > 0 }

// reset: an apply succeeded.
func (r *retrier) reset() {
	r.stop()
	r.wait = 0
}

func (r *retrier) stop() {
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
}
