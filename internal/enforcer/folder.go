package enforcer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/debounce"
	"github.com/moatfw/moat/internal/policyfile"
)

// Folder is the standalone source: multi-document YAML files of FirewallConfig, FirewallPolicy and Namespace
// objects in one folder. A file with a problem keeps its last good objects (an invalid edit never replaces a
// valid policy). An object defined twice (same kind and name, in one file or two) is refused in both places, and
// the version in force before, if its file still defines it, stays in force. Every problem names its file,
// document and object.
type Folder struct {
	Dir string
	Log *logrus.Entry

	lastGood map[string]policyfile.Objects // by file
	parsed   map[string]parsedFile         // by file: what its content parsed to, so an unchanged file is not parsed again
	inForce  policyfile.Objects            // what the last Load kept, for objects defined twice since
}

type parsedFile struct {
	sum      [sha256.Size]byte
	objs     policyfile.Objects
	problems []policyfile.Problem
}

// parse reads a file, parsing it only when its content changed since the last time.
func (f *Folder) parse(path string) (policyfile.Objects, []policyfile.Problem) {
	data, err := os.ReadFile(path)
	if err != nil {
		delete(f.parsed, path)
		return policyfile.Objects{}, []policyfile.Problem{{Origin: policyfile.Origin{File: path}, Err: err}}
	}
	sum := sha256.Sum256(data)
	if c, ok := f.parsed[path]; ok && c.sum == sum {
		return c.objs, c.problems
	}
	objs, problems := policyfile.Parse(path, bytes.NewReader(data))
	f.parsed[path] = parsedFile{sum: sum, objs: objs, problems: problems}
	return objs, problems
}

// Name is "folder DIR".
func (f *Folder) Name() string { return "folder " + f.Dir }

// Load reads the folder into a desired state; its problems name file, document and object.
func (f *Folder) Load() (State, error) {
	if f.lastGood == nil {
		f.lastGood = map[string]policyfile.Objects{}
		f.parsed = map[string]parsedFile{}
	}
	paths, err := policyfile.Files(f.Dir)
	if err != nil {
		return State{}, err
	}
	var parts []policyfile.Objects
	var problems []policyfile.Problem
	seen := map[string]bool{}
	for _, path := range paths {
		seen[path] = true
		objs, ps := f.parse(path)
		problems = append(problems, ps...)
		if policyfile.Refuses(ps) {
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
	for path := range f.parsed {
		if !seen[path] {
			delete(f.parsed, path)
		}
	}
	merged, dups := policyfile.MergeKeeping(f.inForce, parts...)
	f.inForce = merged
	problems = append(problems, dups...)
	s := State{Origins: map[string]string{}}
	for _, p := range problems {
		s.Problems = append(s.Problems, ObjectProblem{Kind: p.Kind, Name: p.Name, Origin: p.Origin.String(), Message: p.Err.Error()})
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
	return s, nil
}

// Burst: an editor writes a file in several steps within milliseconds (a rename is one event); a folder written
// without a pause is read at least every second.
func (f *Folder) Burst() debounce.Timing {
	return debounce.Timing{Quiet: 20 * time.Millisecond, Max: time.Second}
}

// Watch calls changed once the watch on the folder stands, so that a change made before it is not missed, and
// whenever a file of the folder is written, created, renamed or removed, until ctx ends.
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
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0 {
				changed()
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			f.Log.WithError(err).Warn("policy folder watch")
			changed() // events may have been lost: read everything again
		}
	}
}
