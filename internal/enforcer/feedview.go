package enforcer

import (
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/feed"
)

// feedView turns the address feed's slices back into the slim pods and nodes they stand for, and hands each
// change on as a watch of Pods and Nodes would: the rest of the source cannot tell the two apart. An entry held
// by two slices at once (for a moment, while the publisher moves it after a takeover) is read from the slice
// first by name, and goes only when no slice holds it.
type feedView struct {
	podOn, nodeOn func(old, obj any, gone bool)
	pods, nodes   cache.Store // the effective objects, keyed as informers key them

	mu      sync.Mutex
	bySlice map[string]map[string]any  // slice -> entry key -> slim object
	holders map[string]map[string]bool // entry key -> the slices that hold it
}

func newFeedView(podOn, nodeOn func(old, obj any, gone bool)) *feedView {
	return &feedView{podOn: podOn, nodeOn: nodeOn, pods: cache.NewStore(cache.MetaNamespaceKeyFunc),
		nodes: cache.NewStore(cache.MetaNamespaceKeyFunc), bySlice: map[string]map[string]any{},
		holders: map[string]map[string]bool{}}
}

func (v *feedView) handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { v.slice(obj, false) },
		UpdateFunc: func(_, obj any) { v.slice(obj, false) },
		DeleteFunc: func(obj any) { v.slice(obj, true) },
	}
}

// slice takes in one slice as it is now (or that it is gone), and passes on what changed of its entries.
func (v *feedView) slice(obj any, gone bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return
	}
	name := u.GetName()
	now := map[string]any{}
	if !gone {
		var as v1alpha1.AddressSlice
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &as); err == nil {
			for _, e := range as.Pods {
				now[feed.PodKey(e.Namespace, e.Name)] = feed.PodOf(e)
			}
			for _, e := range as.Nodes {
				now[feed.NodeKey(e.Name)] = feed.NodeOf(e)
			}
		}
		// a slice that does not decode holds nothing: its entries go until the publisher rewrites it
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	keys := map[string]bool{}
	for key := range v.bySlice[name] {
		keys[key] = true
	}
	for key := range now {
		keys[key] = true
	}
	if len(now) == 0 {
		delete(v.bySlice, name)
	} else {
		v.bySlice[name] = now
	}
	for key := range keys {
		if _, ok := now[key]; ok {
			if v.holders[key] == nil {
				v.holders[key] = map[string]bool{}
			}
			v.holders[key][name] = true
		} else if h := v.holders[key]; h != nil {
			delete(h, name)
			if len(h) == 0 {
				delete(v.holders, key)
			}
		}
		v.update(key)
	}
}

// update makes the effective object of key the one its first holder has, and passes the change on.
func (v *feedView) update(key string) {
	var want any
	first := ""
	for s := range v.holders[key] {
		if first == "" || s < first {
			first = s
		}
	}
	if first != "" {
		want = v.bySlice[first][key]
	}
	store, on, storeKey := v.pods, v.podOn, strings.TrimPrefix(key, "pod/")
	if rest, ok := strings.CutPrefix(key, "node/"); ok {
		store, on, storeKey = v.nodes, v.nodeOn, rest
	}
	had, exists, _ := store.GetByKey(storeKey)
	switch {
	case want == nil && exists:
		_ = store.Delete(had)
		on(nil, had, true)
	case want != nil && !exists:
		_ = store.Add(want)
		on(nil, want, false)
	case want != nil && !equality.Semantic.DeepEqual(had, want):
		_ = store.Update(want)
		on(had, want, false)
	}
}
