package enforcer

import (
	"context"
	"fmt"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/policyfile"
)

// Folder is the standalone source: multi-document YAML files of FirewallConfig, FirewallPolicy and Namespace
// objects in one folder. A file with a problem keeps its last good objects (an invalid edit never replaces a
// valid policy); every problem is logged naming its file, document and object.
type Folder struct {
	Dir string
	Log *logrus.Entry

	lastGood map[string]policyfile.Objects // by file
}

// Load reads the folder into a desired state, and lists its problems.
func (f *Folder) Load() (State, []policyfile.Problem, error) {
	if f.lastGood == nil {
		f.lastGood = map[string]policyfile.Objects{}
	}
	paths, err := policyfile.Files(f.Dir)
	if err != nil {
		return State{}, nil, err
	}
	var parts []policyfile.Objects
	var problems []policyfile.Problem
	seen := map[string]bool{}
	for _, path := range paths {
		seen[path] = true
		objs, ps := policyfile.ParseFile(path)
		if len(ps) > 0 {
			problems = append(problems, ps...)
			if good, ok := f.lastGood[path]; ok {
				objs = good
				f.Log.WithField("file", path).Warn("file has problems: its last good objects stay in force")
			}
		} else {
			f.lastGood[path] = objs
		}
		parts = append(parts, objs)
	}
	for path := range f.lastGood {
		if !seen[path] {
			delete(f.lastGood, path) // a removed file takes its objects with it
		}
	}
	merged, dups := policyfile.Merge(parts...)
	problems = append(problems, dups...)
	for _, p := range problems {
		f.Log.WithFields(logrus.Fields{"file": p.Origin.File, "document": p.Origin.Document, "kind": p.Kind,
			"object": p.Name}).Error(p.Err)
	}
	s := State{Origins: map[string]string{}}
	for _, p := range problems {
		s.Problems = append(s.Problems, Problem{Kind: p.Kind, Name: p.Name, Origin: p.Origin.String(), Message: p.Err.Error()})
	}
	for _, c := range merged.Configs {
		if c.Object.Name == v1alpha1.DefaultConfigName {
			cfg := c.Object
			s.Config = &cfg
		}
	}
	for _, p := range merged.Policies {
		s.Policies = append(s.Policies, p.Object)
		s.Origins[p.Object.Name] = p.Origin.String()
	}
	for _, n := range merged.Namespaces {
		s.Namespaces = append(s.Namespaces, n.Object)
	}
	return s, problems, nil
}

// Watch calls changed whenever a file of the folder is written, created, renamed or removed, a little after the
// last of a burst of events (editors write in several steps), and once as soon as the watch stands, so that a
// change made between the first Load and the watch is not missed. It returns when ctx ends.
func (f *Folder) Watch(ctx context.Context, changed func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch policy folder: %w", err)
	}
	defer w.Close()
	if err := w.Add(f.Dir); err != nil {
		return fmt.Errorf("watch policy folder %s: %w", f.Dir, err)
	}
	changed()
	const settle = 50 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 {
				timer.Reset(settle)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			f.Log.WithError(err).Warn("policy folder watch")
			timer.Reset(settle) // events may have been lost: read everything again
		case <-timer.C:
			changed()
		}
	}
}
