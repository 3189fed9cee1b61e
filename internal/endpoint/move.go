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
// paces itself: after an operation that took d it waits d·(1/Duty - 1), holding RTNL at most Duty of the time.
type Mover struct {
	Life        Lifecycle
	Log         *logrus.Entry
	Interval    time.Duration // how often it looks for work (default 250 ms)
	Duty        float64       // the share of time its tcx operations may take (default 0.25)
	SurvivorAge time.Duration // released links still on a veth this long after their DEL are detached (default 10 s)
}

// Run makes a pass every Interval until ctx ends. The records are read again only when a network's folder of
// records changed since the last pass (a record was written or removed), or the last pass left work; otherwise a
// pass only sweeps the released links.
func (m Mover) Run(ctx context.Context) {
	t := time.NewTicker(m.interval())
	defer t.Stop()
	var seen string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if stamp := m.Life.Store.stamp(); stamp != seen || stamp == "" {
			if _, err := m.Pass(ctx); err != nil && ctx.Err() == nil {
				m.Log.WithError(err).Warn("moving staged attachments to tcx")
				continue
			}
			if left, err := m.staged(); err == nil && len(left) == 0 {
				seen = stamp
			}
			continue
		}
		if _, err := m.Life.SweepReleased(); err != nil && ctx.Err() == nil {
			m.Log.WithError(err).Warn("sweeping released links")
		}
	}
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

func (m Mover) interval() time.Duration {
	if m.Interval <= 0 {
		return 250 * time.Millisecond
	}
	return m.Interval
}

// Pass does the work that is due, paced, and reports how many attachments it moved to tcx.
func (m Mover) Pass(ctx context.Context) (int, error) {
	var errs []error
	if _, err := m.Life.SweepReleased(); err != nil {
		errs = append(errs, err)
	}
	records, err := m.staged()
	if err != nil {
		return 0, errors.Join(append(errs, err)...)
	}
	moved := 0
	if len(records) > 0 {
		dp, err := bpf.OpenPinned(m.Life.PinRoot)
		if err != nil {
			return 0, errors.Join(append(errs, err)...)
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
	age := m.SurvivorAge
	if age <= 0 {
		age = 10 * time.Second
	}
	n, err := m.Life.detachSurvivors(age, func(took time.Duration) bool { return m.pace(ctx, took) })
	if n > 0 {
		m.Log.WithField("veths", n).Info("detached released links from veths that outlived their pods")
	}
	return moved, errors.Join(append(errs, err)...)
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
