package endpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/moatfw/moat/bpf"
)

// MoveToTCX moves a pod's staged attachment (the default mode's clsact filters, recorded with MoveToTCX) to tcx
// links at the head of both hooks: the links are attached first (the kernel's grace periods are waited here, off
// the pod's ADD), then pinned and recorded, then the filters go, so at no moment does a hook hold none of Moat's
// programs. A record that is no longer staged, or a host veth that is no longer the pod's, is left alone. When the
// pod is deleted meanwhile, the links are detached again and the record stays gone.
func (l Lifecycle) MoveToTCX(dp *bpf.Datapath, r *Record) error {
	if r.AttachMode != bpf.ModeClsact || !r.MoveToTCX {
		return nil
	}
	if link, err := netlink.LinkByIndex(r.HostIfindex); err != nil || link.Attrs().Name != r.HostIfname {
		return nil // the veth is gone: DEL or the reconcile removes the pod
	}
	staged, err := r.Attachment(l.PinRoot)
	if err != nil {
		return err
	}
	defer staged.Close()
	links, err := bpf.MoveToTCX(staged, dp.FromPod, dp.ToPod)
	if err != nil {
		return fmt.Errorf("move %s to tcx: %w", r.HostIfname, err)
	}
	moved, err := l.commitMove(r, links)
	if !moved {
		_ = links.Detach()
		return err
	}
	if err := staged.Detach(); err != nil { // the filters, and the qdisc when Moat added it and nothing else hangs under it
		return fmt.Errorf("remove the clsact filters of %s after the move to tcx: %w", r.HostIfname, err)
	}
	return nil
}

// commitMove pins the new links and records them, while no DEL, GC or reconcile of the network's pods runs; moved
// is false when the pod's record changed or went meanwhile (the caller detaches the links).
func (l Lifecycle) commitMove(r *Record, links bpf.Attachment) (moved bool, err error) {
	unlock, err := l.Store.lock(r.Network, true)
	if err != nil {
		return false, err
	}
	defer unlock()
	cur, ok, err := l.Store.Load(r.Key())
	if err != nil || !ok || !cur.Created.Equal(r.Created) || cur.HostIfindex != r.HostIfindex || !cur.MoveToTCX {
		return false, err
	}
	linkDir := r.Key().LinkDir(l.PinRoot)
	if err := links.Pin(linkDir); err != nil {
		_ = os.RemoveAll(linkDir)
		return false, err
	}
	cur.AttachmentRecord = links.Record()
	if err := l.Store.Save(cur); err != nil {
		_ = os.RemoveAll(linkDir)
		return false, err
	}
	*r = *cur
	return true, links.Close() // the pins hold the links now
}

// Mover finishes the default attach mode's work off the pods' critical path, in the enforcer: it moves staged
// attachments to tcx (MoveToTCX), oldest first; removes released links whose veth is gone (SweepReleased); and
// detaches released links still on a veth SurvivorAge after their pod's DEL. A tcx attach or detach holds the
// RTNL lock for the kernel's grace periods, which every pod's network setup on the node also needs, so the mover
// keeps out of the way of pods that are coming and going: it moves a staged pod once the node's records have been
// still for Quiet (no pod added or deleted), or once the pod has been staged for MaxStaged, churn or not; and it
// paces itself: after an operation that took d it waits d·(1/Duty - 1), holding RTNL at most Duty of the time. A
// pod deleted while staged never pays for tcx at all.
type Mover struct {
	Life        Lifecycle
	Log         *logrus.Entry
	Interval    time.Duration // how often it looks for work (default 250 ms)
	Duty        float64       // the share of time its tcx operations may take (default 0.25)
	Quiet       time.Duration // staged pods move once no record changed for this long (default 1 s)
	MaxStaged   time.Duration // a staged pod moves after this long even while pods keep coming (default 10 s)
	SurvivorAge time.Duration // released links still on a veth this long after their DEL are detached (default 10 s)
}

// Run makes a pass every Interval until ctx ends. The records are read only while staged pods are left or when
// a network's folder of records changed (a record was written or removed); otherwise a pass only sweeps the
// released links.
func (m Mover) Run(ctx context.Context) {
	t := time.NewTicker(or(m.Interval, 250*time.Millisecond))
	defer t.Stop()
	seen, changed, pending := "", time.Now(), true
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if stamp := m.Life.Store.stamp(); stamp != seen || stamp == "" {
			seen, changed, pending = stamp, time.Now(), true
		}
		if !pending {
			if err := m.sweep(ctx); err != nil && ctx.Err() == nil {
				m.Log.WithError(err).Warn("sweeping released links")
			}
			continue
		}
		quiet := time.Since(changed) >= or(m.Quiet, time.Second)
		_, err := m.pass(ctx, func(r *Record) bool { return quiet || time.Since(r.Created) >= or(m.MaxStaged, 10*time.Second) })
		if err != nil && ctx.Err() == nil {
			m.Log.WithError(err).Warn("moving staged attachments to tcx")
		}
		seen = m.Life.Store.stamp() // the moves' own record writes are no news; a write after this is
		left, err := m.staged()
		pending = err != nil || len(left) > 0
	}
}

// or is d, or def when d is not set.
func or(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// staged lists the records whose attachment waits for the move, oldest first.
func (m Mover) staged() ([]*Record, error) {
	records, err := m.Life.Store.List("")
	if err != nil {
		return nil, err
	}
	records = slices.DeleteFunc(records, func(r *Record) bool { return r.AttachMode != bpf.ModeClsact || !r.MoveToTCX })
	slices.SortFunc(records, func(a, b *Record) int { return a.Created.Compare(b.Created) })
	return records, nil
}

// Pass moves every staged pod now, paced, does the sweeps, and reports how many attachments it moved to tcx.
func (m Mover) Pass(ctx context.Context) (int, error) {
	return m.pass(ctx, func(*Record) bool { return true })
}

// pass moves the staged pods that are due, paced, then sweeps.
func (m Mover) pass(ctx context.Context, due func(*Record) bool) (int, error) {
	records, err := m.staged()
	if err != nil {
		return 0, err
	}
	records = slices.DeleteFunc(records, func(r *Record) bool { return !due(r) })
	moved := 0
	var errs []error
	if len(records) > 0 {
		dp, err := bpf.OpenPinned(m.Life.PinRoot)
		if err != nil {
			return 0, err
		}
		defer dp.Close()
		for _, r := range records {
			start := time.Now()
			if err := m.Life.MoveToTCX(dp, r); err != nil {
				errs = append(errs, fmt.Errorf("pod %s/%s: %w", r.Namespace, r.Pod, err))
			} else if r.AttachMode == bpf.ModeTCX {
				moved++
				m.Log.WithFields(logrus.Fields{"pod": r.Namespace + "/" + r.Pod, "hostVeth": r.HostIfname,
					"took":   time.Since(start).Round(time.Microsecond),     // the kernel's grace periods, mostly
					"staged": time.Since(r.Created).Round(time.Microsecond), // how long the pod ran in clsact
				}).Info("attachment moved to tcx")
			}
			if !m.pace(ctx, time.Since(start)) {
				return moved, errors.Join(errs...)
			}
		}
	}
	return moved, errors.Join(append(errs, m.sweep(ctx))...)
}

// sweep removes released links whose veth is gone, and detaches those whose veth outlived its pod.
func (m Mover) sweep(ctx context.Context) error {
	_, err := m.Life.SweepReleased()
	n, derr := m.Life.detachSurvivors(or(m.SurvivorAge, 10*time.Second), func(took time.Duration) bool { return m.pace(ctx, took) })
	if n > 0 {
		m.Log.WithField("veths", n).Info("detached released links from veths that outlived their pods")
	}
	return errors.Join(err, derr)
}

// pace waits after an operation that took took; false when ctx ended.
func (m Mover) pace(ctx context.Context, took time.Duration) bool {
	duty := m.Duty
	if duty <= 0 || duty > 1 {
		duty = 0.25
	}
	t := time.NewTimer(time.Duration(float64(took) * (1/duty - 1)))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
