package debounce

import (
	"context"
	"testing"
	"time"
)

// run starts d.Run with an action that reports each call on the returned channel; it stops when the test ends.
func run(t *testing.T, d *Debouncer, action func()) <-chan struct{} {
	t.Helper()
	calls := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx, func() {
			if action != nil {
				action()
			}
			calls <- struct{}{}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return calls
}

// wait fails the test when no call comes: a liveness bound, far above any real wait.
func wait(t *testing.T, calls <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-calls:
	case <-time.After(30 * time.Second):
		t.Fatalf("no call %s", what)
	}
}

func TestBurstRunsOnce(t *testing.T) {
	d := New(Timing{Quiet: time.Millisecond})
	for range 100 {
		d.Notify() // before Run: one pending notice stands for all of them
	}
	calls := run(t, d, nil)
	wait(t, calls, "after a burst")
	d.Notify()
	wait(t, calls, "after the next notice")
	if n := len(calls); n != 0 {
		t.Errorf("%d calls more than the two bursts", n)
	}
}

func TestNoticeWhileRunningRunsAgain(t *testing.T) {
	d := New(Timing{Quiet: time.Millisecond})
	release := make(chan struct{})
	first := true
	calls := run(t, d, func() {
		if first {
			first = false
			d.Notify() // the state changed while the action read it
			<-release
		}
	})
	d.Notify()
	close(release)
	wait(t, calls, "for the first burst")
	wait(t, calls, "for the notice that came while the action ran")
}

func TestMaxBoundsNoticesThatNeverPause(t *testing.T) {
	d := New(Timing{Quiet: time.Hour, Max: 10 * time.Millisecond})
	calls := run(t, d, nil)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	limit := time.After(30 * time.Second)
	for {
		select {
		case <-calls:
			return
		case <-tick.C:
			d.Notify()
		case <-limit:
			t.Fatal("notices that never pause kept the action from running")
		}
	}
}

func TestRunReturnsWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); New(Timing{Quiet: time.Hour}).Run(ctx, func() {}) }()
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run went on after its context ended")
	}
}
