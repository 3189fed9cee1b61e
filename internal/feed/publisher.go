package feed

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/debounce"
)

// SlicesResource is the GVR of the feed's objects.
var SlicesResource = v1alpha1.SchemeGroupVersion.WithResource(v1alpha1.ResourceAddressSlices)

// Lease is the Lease whose holder publishes the feed.
const Lease = "moat-address-feed"

// Publisher writes the address feed from its watch of Pods and Nodes. Run it in one process per cluster at a time
// (leader election: Lease). Changes gather for Batch before the slices they touch are written, so a burst of
// pods costs one write per slice; an entry keeps its slice while it lives, so the enforcers never see it move.
type Publisher struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	Log     *logrus.Entry
	// Batch is how long changes gather (zero: 50 ms after the first, at the latest 200 ms).
	Batch debounce.Timing
	// MaxEntries bounds a slice (zero: v1alpha1.AddressSliceMaxEntries).
	MaxEntries int

	mu     sync.Mutex
	want   map[string]entry  // key -> what the cluster has: "pod/ns/name" or "node/name"
	at     map[string]*slice // key -> the slice that holds it
	slices map[string]*slice // by name
	ready  bool              // the caches filled and the existing slices were adopted
	writes int               // slices written (created, updated or deleted), for tests and logs
}

type entry struct {
	pod  *v1alpha1.PodAddresses
	node *v1alpha1.NodeAddresses
}

func (e entry) equal(o entry) bool {
	return equality.Semantic.DeepEqual(e.pod, o.pod) && equality.Semantic.DeepEqual(e.node, o.node)
}

type slice struct {
	name   string
	keys   map[string]bool
	dirty  bool
	exists bool // the API server has it
}

// Run publishes the feed until ctx ends.
func (p *Publisher) Run(ctx context.Context) error {
	if p.Batch == (debounce.Timing{}) {
		p.Batch = debounce.Timing{Quiet: 50 * time.Millisecond, Max: 200 * time.Millisecond}
	}
	if p.MaxEntries == 0 {
		p.MaxEntries = v1alpha1.AddressSliceMaxEntries
	}
	p.want, p.at, p.slices = map[string]entry{}, map[string]*slice{}, map[string]*slice{}
	changes := debounce.New(p.Batch)
	f := informers.NewSharedInformerFactory(p.Client, 0)
	pods, nodes := f.Core().V1().Pods().Informer(), f.Core().V1().Nodes().Informer()
	if err := pods.SetTransform(SlimPod); err != nil {
		return err
	}
	if err := nodes.SetTransform(SlimNode); err != nil {
		return err
	}
	on := func(key func(any) (string, entry, bool)) cache.ResourceEventHandler {
		set := func(obj any, gone bool) {
			k, e, ok := key(obj)
			if k == "" {
				return
			}
			if p.set(k, e, ok && !gone) {
				changes.Notify()
			}
		}
		return cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { set(obj, false) },
			UpdateFunc: func(_, obj any) { set(obj, false) },
			DeleteFunc: func(obj any) { set(obj, true) },
		}
	}
	podsHandled, err := pods.AddEventHandler(on(podKey))
	if err != nil {
		return err
	}
	nodesHandled, err := nodes.AddEventHandler(on(nodeKey))
	if err != nil {
		return err
	}
	f.Start(ctx.Done())
	p.Log.Info("address feed: waiting for the Pod and Node caches")
	// synced once the handlers have seen the initial listing, so that adopt knows every pod and node
	if !cache.WaitForCacheSync(ctx.Done(), podsHandled.HasSynced, nodesHandled.HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("the caches never filled (may the feed's service account list pods and nodes?)")
	}
	// what a previous publisher wrote, read once: from here on this publisher is the only writer
	existing, err := p.Dynamic.Resource(SlicesResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list the address slices (may the feed's service account list addressslices?): %w", err)
	}
	p.adopt(existing.Items)
	go changes.Run(ctx, func() {
		if !p.flush(ctx) {
			time.AfterFunc(time.Second, changes.Notify) // what failed is tried again
		}
	})
	changes.Notify()
	<-ctx.Done()
	return nil
}

func podKey(obj any) (string, entry, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return "", entry{}, false
	}
	e, ok := PodEntry(pod)
	return PodKey(pod.Namespace, pod.Name), entry{pod: &e}, ok
}

func nodeKey(obj any) (string, entry, bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return "", entry{}, false
	}
	e := NodeEntry(n)
	return NodeKey(n.Name), entry{node: &e}, true
}

// set records what the cluster has under key (present false: nothing), and marks the slice it goes to for
// writing; false when nothing changed.
func (p *Publisher) set(key string, e entry, present bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	old, had := p.want[key]
	if !present {
		if !had {
			return false
		}
		delete(p.want, key)
	} else {
		if had && old.equal(e) {
			return false
		}
		p.want[key] = e
	}
	if !p.ready {
		return false // placed when the existing slices are adopted
	}
	p.place(key)
	return true
}

// place puts key where it belongs (its slice, or one with room) and marks that slice for writing; a key no longer
// wanted leaves its slice. Called with mu held.
func (p *Publisher) place(key string) {
	_, wanted := p.want[key]
	s := p.at[key]
	switch {
	case s != nil && !wanted:
		delete(s.keys, key)
		delete(p.at, key)
	case s == nil && wanted:
		s = p.roomy()
		s.keys[key] = true
		p.at[key] = s
	case s == nil:
		return
	}
	s.dirty = true
}

// roomy is the fullest slice that still has room (so slices stay few and full), or a new one.
func (p *Publisher) roomy() *slice {
	var best *slice
	for _, s := range p.slices {
		if len(s.keys) < p.MaxEntries && (best == nil || len(s.keys) > len(best.keys) ||
			len(s.keys) == len(best.keys) && s.name < best.name) {
			best = s
		}
	}
	if best != nil {
		return best
	}
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	s := &slice{name: fmt.Sprintf("addrs-%x", b), keys: map[string]bool{}}
	p.slices[s.name] = s
	return s
}

// adopt takes the slices a previous publisher wrote as they are: each entry still wanted stays where it is (the
// enforcers see no change), entries gone or held twice are dropped, and what is new is placed.
func (p *Publisher) adopt(objs []unstructured.Unstructured) {
	p.mu.Lock()
	defer p.mu.Unlock()
	slices.SortFunc(objs, func(a, b unstructured.Unstructured) int { return strings.Compare(a.GetName(), b.GetName()) })
	for _, u := range objs {
		s := &slice{name: u.GetName(), keys: map[string]bool{}, exists: true}
		p.slices[s.name] = s
		var as v1alpha1.AddressSlice
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &as); err != nil {
			p.Log.WithField("addressSlice", s.name).Warn("address feed: a slice that does not decode is rewritten")
			s.dirty = true
			continue
		}
		have := map[string]entry{}
		for i := range as.Pods {
			have[PodKey(as.Pods[i].Namespace, as.Pods[i].Name)] = entry{pod: &as.Pods[i]}
		}
		for i := range as.Nodes {
			have[NodeKey(as.Nodes[i].Name)] = entry{node: &as.Nodes[i]}
		}
		if len(have) != len(as.Pods)+len(as.Nodes) {
			s.dirty = true // a key twice in one slice
		}
		for key, e := range have {
			want, wanted := p.want[key]
			if !wanted || p.at[key] != nil || len(s.keys) >= p.MaxEntries {
				s.dirty = true
				continue
			}
			s.keys[key] = true
			p.at[key] = s
			if !want.equal(e) {
				s.dirty = true
			}
		}
	}
	for _, key := range slices.Sorted(maps.Keys(p.want)) {
		if p.at[key] == nil {
			p.place(key)
		}
	}
	p.ready = true
	p.Log.WithFields(logrus.Fields{"adopted": len(objs), "entries": len(p.want)}).Info("address feed: publishing")
}

// flush writes every slice marked for writing; one that fails stays marked for the next flush, and flush says
// whether all went.
func (p *Publisher) flush(ctx context.Context) bool {
	type job struct {
		s   *slice
		obj *v1alpha1.AddressSlice
	}
	p.mu.Lock()
	var jobs []job
	for _, s := range p.slices {
		if !s.dirty {
			continue
		}
		s.dirty = false
		obj := &v1alpha1.AddressSlice{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: v1alpha1.KindAddressSlice},
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Labels: map[string]string{"app.kubernetes.io/managed-by": "moat-feed"}}}
		for _, key := range slices.Sorted(maps.Keys(s.keys)) {
			e := p.want[key]
			if e.pod != nil {
				obj.Pods = append(obj.Pods, *e.pod)
			} else if e.node != nil {
				obj.Nodes = append(obj.Nodes, *e.node)
			}
		}
		jobs = append(jobs, job{s, obj})
	}
	p.mu.Unlock()
	var failed atomic.Bool
	var wg sync.WaitGroup
	next := make(chan job)
	for range min(len(jobs), flushWriters) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				err := p.write(ctx, j.s, j.obj)
				p.mu.Lock()
				if err != nil {
					j.s.dirty = true
					failed.Store(true)
				} else {
					p.writes++
					if len(j.s.keys) == 0 && !j.s.exists {
						delete(p.slices, j.s.name)
					}
				}
				p.mu.Unlock()
				if err != nil && ctx.Err() == nil {
					p.Log.WithError(err).WithField("addressSlice", j.s.name).Warn("address feed: writing a slice (retried)")
				}
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	return !failed.Load()
}

// flushWriters is how many slices a flush writes at once: at a start on a big cluster (1,500 slices for 150,000
// pods) one write at a time would wait on every round trip in turn.
const flushWriters = 8

// write makes the API server's copy of one slice what obj says: deleted when empty, else created or replaced.
func (p *Publisher) write(ctx context.Context, s *slice, obj *v1alpha1.AddressSlice) error {
	client := p.Dynamic.Resource(SlicesResource)
	p.mu.Lock()
	exists := s.exists
	p.mu.Unlock()
	if len(obj.Pods)+len(obj.Nodes) == 0 {
		if !exists {
			return nil
		}
		err := client.Delete(ctx, s.name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
		p.mu.Lock()
		s.exists = false
		p.mu.Unlock()
		return nil
	}
	if exists {
		patch, err := json.Marshal(map[string]any{"pods": obj.Pods, "nodes": obj.Nodes})
		if err != nil {
			return err
		}
		_, err = client.Patch(ctx, s.name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "moat-feed"})
		if !apierrors.IsNotFound(err) {
			return err
		}
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		return err
	}
	_, err = client.Create(ctx, &unstructured.Unstructured{Object: u}, metav1.CreateOptions{FieldManager: "moat-feed"})
	if apierrors.IsAlreadyExists(err) {
		p.mu.Lock()
		s.exists = true
		p.mu.Unlock()
		return fmt.Errorf("created meanwhile: %w", err)
	}
	if err == nil {
		p.mu.Lock()
		s.exists = true
		p.mu.Unlock()
	}
	return err
}

// Publishing says whether the publisher has adopted the slices it found and publishes.
func (p *Publisher) Publishing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready
}

// Writes is how many slice writes succeeded so far.
func (p *Publisher) Writes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.writes
}
