package enforcer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/debounce"
	"github.com/moatfw/moat/internal/policyfile"
)

// folderContent is what the policy files of a folder hold now.
func folderContent(t testing.TB, dir string) string {
	paths, err := policyfile.Files(dir)
	if err != nil {
		t.Errorf("policy folder: %v", err)
		return ""
	}
	var b strings.Builder
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("policy file: %v", err)
		}
		fmt.Fprintf(&b, "%s\x00%s\x00", p, data)
	}
	return b.String()
}

// problemText is a source's problem as a line: where, which object, what.
func problemText(p ObjectProblem) string {
	obj := ""
	if p.Kind != "" || p.Name != "" {
		obj = fmt.Sprintf(" %s %q", p.Kind, p.Name)
	}
	return fmt.Sprintf("%s%s: %s", p.Origin, obj, p.Message)
}

// folderRun is an enforcer running on a real policy folder (Enforcer.Run with a Folder) until the test ends;
// settle tells when the folder as it is now is in force.
type folderRun struct {
	t   testing.TB
	dir string

	mu       sync.Mutex
	loading  string   // what the policy files held when the load in progress began
	applied  string   // what they held for the last load applied
	problems []string // the problems of the last load applied
	loads    int      // loads applied
	changed  chan struct{}
}

// contentFolder is a Folder that notes what the files hold before each load.
type contentFolder struct {
	*Folder
	r *folderRun
}

func (c contentFolder) Load() (State, error) {
	content := folderContent(c.r.t, c.Dir)
	c.r.mu.Lock()
	c.r.loading = content
	c.r.mu.Unlock()
	return c.Folder.Load()
}

// runFolder runs e on the folder dir; afterApply (nil: none) runs after each apply, as in moat-enforcer.
func runFolder(t testing.TB, e *Enforcer, dir string, afterApply func()) *folderRun {
	r := &folderRun{t: t, dir: dir, changed: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := e.Run(ctx, contentFolder{&Folder{Dir: dir, Log: e.log}, r}, func() {
			var problems []string
			for _, p := range e.Snapshot().State.Problems {
				problems = append(problems, problemText(p))
			}
			r.mu.Lock()
			r.applied, r.problems = r.loading, problems
			r.loads++
			r.mu.Unlock()
			select {
			case r.changed <- struct{}{}:
			default:
			}
			if afterApply != nil {
				afterApply()
			}
		})
		if err != nil {
			t.Errorf("run on the policy folder: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done }) // the source applies no more once the datapath closes
	return r
}

// settle waits until what the folder holds now is applied, and returns the problems of that load.
func (r *folderRun) settle() []string {
	r.t.Helper()
	want := folderContent(r.t, r.dir)
	limit := time.After(30 * time.Second) // a liveness bound, far above any real wait
	for {
		r.mu.Lock()
		done, problems := r.loads > 0 && r.applied == want, r.problems
		r.mu.Unlock()
		if done {
			return problems
		}
		select {
		case <-r.changed:
		case <-limit:
			r.t.Fatalf("the policy folder as it is now was never applied")
		}
	}
}

// fakeSource is a source whose state, problems and watch the test sets.
type fakeSource struct {
	mu        sync.Mutex
	state     State
	watchErr  error
	failLoads int // the first loads that fail
	changed   func()
	watching  chan struct{}
}

func (f *fakeSource) Name() string           { return "fake" }
func (f *fakeSource) Burst() debounce.Timing { return debounce.Timing{Quiet: time.Millisecond} }

func (f *fakeSource) Load() (State, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failLoads > 0 {
		f.failLoads--
		return State{}, errors.New("the source cannot answer")
	}
	return f.state, nil
}

func (f *fakeSource) Watch(ctx context.Context, changed func()) error {
	if f.watchErr != nil {
		return f.watchErr
	}
	f.mu.Lock()
	f.changed = changed
	f.mu.Unlock()
	close(f.watching)
	changed()
	<-ctx.Done()
	return nil
}

// set makes s the source's state and tells the run loop.
func (f *fakeSource) set(s State) {
	f.mu.Lock()
	f.state = s
	changed := f.changed
	f.mu.Unlock()
	changed()
}

// Each of a source's problems is logged once while it lasts, however often the state is loaded, and again when it
// comes back.
func TestRunLogsEachProblemOnce(t *testing.T) {
	_, _, e := newTestEnforcer(t)
	logger, logs := logtest.NewNullLogger()
	e.log = logrus.NewEntry(logger)
	broken := ObjectProblem{Kind: "FirewallPolicy", Name: "broken", Origin: "fake", Message: "egress[0].action: \"Perhaps\""}
	other := ObjectProblem{Kind: "FirewallPolicy", Name: "other", Origin: "fake", Message: "no namespaceSelector"}
	src := &fakeSource{watching: make(chan struct{}), state: State{Problems: []ObjectProblem{broken}}}
	applied := make(chan State, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := e.Run(ctx, src, func() {
			select {
			case applied <- e.Snapshot().State:
			case <-ctx.Done():
			}
		})
		if err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	defer func() { cancel(); <-done }()
	<-src.watching
	// wait waits for the apply of a state with these problems
	wait := func(want ...ObjectProblem) {
		t.Helper()
		for {
			select {
			case s := <-applied:
				if fmt.Sprint(s.Problems) == fmt.Sprint(want) {
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("no apply with problems %v", want)
			}
		}
	}
	wait(broken)
	for range 3 {
		src.set(State{Problems: []ObjectProblem{broken, other}})
		wait(broken, other)
	}
	src.set(State{})
	wait()
	src.set(State{Problems: []ObjectProblem{broken}})
	wait(broken)
	count := map[string]int{}
	for _, en := range logs.AllEntries() {
		if en.Level == logrus.ErrorLevel {
			count[fmt.Sprint(en.Data["object"])]++
		}
	}
	if count["broken"] != 2 || count["other"] != 1 {
		t.Errorf("problems logged %v times, want broken twice (it came back) and other once", count)
	}
}

// A source that cannot be watched ends the run with its error.
func TestRunReturnsTheWatchError(t *testing.T) {
	_, _, e := newTestEnforcer(t)
	want := errors.New("no such folder")
	done := make(chan error, 1)
	go func() { done <- e.Run(context.Background(), &fakeSource{watchErr: want}, nil) }()
	select {
	case err := <-done:
		if !errors.Is(err, want) {
			t.Errorf("run ended with %v, want %v", err, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the run went on without its source")
	}
}

// A state that cannot be loaded or applied is tried again, later each time, with no change to wait for: the
// failed one may be the last (at 150,000 pods under a tight memory limit, the kernel refused a new namespace's
// policy trie once, and the namespace was left without an identity).
func TestRunRetriesAFailedApply(t *testing.T) {
	_, dp, e := newTestEnforcer(t)
	logger, logs := logtest.NewNullLogger()
	e.log = logrus.NewEntry(logger)
	src := &fakeSource{watching: make(chan struct{}), failLoads: 2, state: State{Namespaces: []v1alpha1.Namespace{namespace("late")}}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := e.Run(ctx, src, nil); err != nil {
			t.Errorf("run: %v", err)
		}
	}()
	defer func() { cancel(); <-done }()
	<-src.watching
	limit := time.Now().Add(30 * time.Second) // a liveness bound, far above the retries' 1 + 2 s
	for {
		if _, ok, err := dp.NamespaceIdentity("late"); err != nil {
			t.Fatal(err)
		} else if ok {
			break
		}
		if time.Now().After(limit) {
			t.Fatal("the state was never applied after its loads failed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var waits []any
	for _, en := range logs.AllEntries() {
		if en.Level == logrus.ErrorLevel {
			waits = append(waits, en.Data["retryIn"])
		}
	}
	if fmt.Sprint(waits) != fmt.Sprint([]any{time.Second, 2 * time.Second}) {
		t.Errorf("failures logged with retries in %v, want 1s then 2s", waits)
	}
}
