package conflist

import (
	"context"
	"fmt"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/internal/debounce"
)

// Repair keeps Moat chained into the primary network until ctx ends: at once, whenever a file of the folder
// changes (a burst of events is handled once, 100 ms after the last, or a second after the first should the
// writes never pause), and every interval in case an event was lost. Problems are logged and retried; they never
// stop the loop.
func Repair(ctx context.Context, opts Options, interval time.Duration, log *logrus.Entry) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch CNI folder: %w", err)
	}
	defer w.Close()
	if err := w.Add(opts.Dir); err != nil {
		return fmt.Errorf("watch CNI folder %s: %w", opts.Dir, err)
	}
	lastErr := ""
	ensure := func() {
		res, err := Ensure(opts)
		switch {
		case err != nil:
			if err.Error() != lastErr { // a standing problem is logged once
				log.WithError(err).WithField("dir", opts.Dir).Error("cannot chain moat into the primary network")
				lastErr = err.Error()
			}
		case res.Changed:
			lastErr = ""
			f := log.WithField("conflist", res.Path)
			if res.Removed != "" {
				f = f.WithField("replaced", res.Removed)
			}
			f.Info("moat chained into the primary network")
		default:
			lastErr = ""
		}
	}
	ensure()
	changes := debounce.New(debounce.Timing{Quiet: 100 * time.Millisecond, Max: time.Second})
	fed := make(chan struct{})
	go func() { // the folder's events and the timer, until ctx ends
		defer close(fed)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				changes.Notify()
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.WithError(err).Warn("CNI folder watch")
				changes.Notify()
			case <-tick.C:
				changes.Notify()
			}
		}
	}()
	changes.Run(ctx, ensure)
	<-fed
	return nil
}
