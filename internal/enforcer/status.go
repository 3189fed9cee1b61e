package enforcer

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/version"
)

// Status is what the status call answers: the enforcer's snapshot, the datapath's fill levels, the recorded
// pods, and the problems of all of them. The node is ready when no problem is Degraded (see Ready).
func (s *Server) Status() agentapi.Status {
	e := s.E
	snap := e.Snapshot()
	st := agentapi.Status{Version: version.Version, APIVersion: agentapi.Version, Started: snap.Started, Source: s.Source,
		Generation: snap.Generation, Applied: snap.Applied, Namespaces: len(snap.Identities),
		Policies: len(snap.State.Policies), AttachModes: map[string]int{}, ServiceRanges: snap.State.ServiceRanges,
		LastErrors: e.errors.lines()}
	for _, p := range snap.State.Problems {
		if p.Kind == v1alpha1.KindFirewallPolicy {
			st.InvalidPolicies++
		}
	}
	for _, w := range snap.Warnings {
		st.Warnings = append(st.Warnings, w.String())
	}
	problems := append(objectProblems(snap.State.Problems), labelProblems(snap.Problems)...)
	if snap.Generation == 0 {
		problems = append(problems, Problem{Kind: ProblemPending, Severity: Degraded, Message: "no policy applied yet"})
	}
	if !snap.ContactLost.IsZero() {
		// contained: the node goes on enforcing what it knew; only what changed since is not known
		problems = append(problems, Problem{Kind: ProblemSource, Severity: Contained, Message: fmt.Sprintf(
			"cut off from the policy source since %s (%s): the last known state stays enforced; a pod address "+
				"reused meanwhile keeps its former namespace until contact returns",
			snap.ContactLost.UTC().Format(time.RFC3339), snap.ContactWhy)})
	}
	if snap.SourceStale != "" {
		problems = append(problems, Problem{Kind: ProblemSource, Severity: Contained, Message: snap.SourceStale})
	}
	if snap.IPCacheRefused > 0 {
		problems = append(problems, Problem{Kind: ProblemMap, Severity: Degraded, Message: fmt.Sprintf(
			"the ipcache is full: %d addresses of the cluster have no entry of their own and are decided by the "+
				"ranges that hold them (a pod range: as pods of unknown namespace); raise --ipcache-entries", snap.IPCacheRefused)})
	}
	if fills, err := e.dp.MapFillsCounted(map[string]int{"ipcache": snap.IPCacheEntries}); err != nil {
		problems = append(problems, Problem{Kind: ProblemMap, Severity: Degraded, Message: err.Error()})
	} else {
		st.Maps = map[string]agentapi.MapFill{}
		for name, f := range fills {
			st.Maps[name] = agentapi.MapFill{Entries: f.Entries, Capacity: f.Capacity}
		}
		problems = append(problems, mapProblems(fills)...)
	}
	if lost, err := e.dp.Stat(bpf.StatEventsLost); err == nil {
		st.LostEvents = lost
	}
	eps := s.endpointList()
	st.Endpoints = len(eps)
	for _, ep := range eps {
		st.AttachModes[ep.Mode]++
	}
	problems = append(problems, podProblems(eps)...)
	for _, check := range s.Checks {
		if err := check(); err != nil {
			problems = append(problems, Problem{Kind: ProblemCheck, Severity: Degraded, Message: err.Error()})
		}
	}
	st.Ready = Ready(problems)
	for _, p := range problems {
		st.Problems = append(st.Problems, p.Message)
	}
	sort.Strings(st.Problems)
	return st
}

// errorLog is a logrus hook that keeps the last errors for the status call.
type errorLog struct {
	mu     sync.Mutex
	max    int
	recent []agentapi.LogLine
}

func newErrorLog(max int) *errorLog { return &errorLog{max: max} }

func (l *errorLog) Levels() []logrus.Level {
	return []logrus.Level{logrus.PanicLevel, logrus.FatalLevel, logrus.ErrorLevel}
}

func (l *errorLog) Fire(en *logrus.Entry) error {
	line := agentapi.LogLine{Time: en.Time, Message: en.Message, Fields: map[string]string{}}
	for k, v := range en.Data {
		line.Fields[k] = fmt.Sprint(v)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recent = append(l.recent, line)
	if len(l.recent) > l.max {
		l.recent = l.recent[len(l.recent)-l.max:]
	}
	return nil
}

func (l *errorLog) lines() []agentapi.LogLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.recent)
}
