// Package debounce turns bursts of change notices into one run of an action each: a watched folder that an
// editor writes in several steps, or informers that deliver related events together, cause one reload, not one
// per event.
package debounce

import (
	"context"
	"time"
)

// Timing says when a burst of notices is over.
type Timing struct {
	// Quiet: the burst is over once this long has passed without a notice.
	Quiet time.Duration
	// Max bounds the wait from the first notice of a burst, so that notices that never pause still get the action
	// run; 0: no bound.
	Max time.Duration
}

// Debouncer collects notices and runs an action once per burst. Notify may be called from any goroutine; the
// action runs on the goroutine that calls Run, never twice at once. A notice that comes while the action runs
// starts a new burst, so a change is never left unhandled.
type Debouncer struct {
	timing  Timing
	notices chan struct{}
}

// New is a Debouncer that waits as timing says.
func New(timing Timing) *Debouncer {
	return &Debouncer{timing: timing, notices: make(chan struct{}, 1)}
}

// Notify says that something changed. It never blocks.
func (d *Debouncer) Notify() {
	select {
	case d.notices <- struct{}{}:
	default: // one is pending already: it covers this one
	}
}

// Run calls action once after each burst of notices until ctx ends.
func (d *Debouncer) Run(ctx context.Context, action func()) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var deadline time.Time // the latest the pending burst may wait; zero: no burst pending
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.notices:
			now := time.Now()
			if deadline.IsZero() {
				deadline = now.Add(d.timing.Max)
			}
			wait := d.timing.Quiet
			if left := deadline.Sub(now); d.timing.Max > 0 && left < wait {
				wait = left
			}
			timer.Reset(wait)
		case <-timer.C:
			deadline = time.Time{}
			action()
		}
	}
}
