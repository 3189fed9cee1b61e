package enforcer

import (
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
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
// first by name, and goes only when no slice holds it. It keeps the entries as the feed has them (a few dozen
// bytes of fields each) and makes the slim object only to hand it on: a Pod object, even empty, is 1.2 KB, and at
// 150,000 pods that was the enforcer's biggest heap.
type feedView struct {
	podOn, nodeOn func(old, obj any, gone bool)
	// what the source looks up by key: the pods that have hostPorts (the only ones it reads), every node
	pods, nodes cache.Store

	mu      sync.Mutex
	bySlice map[string]map[string]any // slice -> entry key -> v1alpha1.PodAddresses or v1alpha1.NodeAddresses
	holders map[string][]string       // entry key -> the slices that hold it
	have    map[string]any            // entry key -> the entry last handed on
}

func newFeedView(podOn, nodeOn func(old, obj any, gone bool)) *feedView {
	return &feedView{podOn: podOn, nodeOn: nodeOn, pods: cache.NewStore(cache.MetaNamespaceKeyFunc),
		nodes: cache.NewStore(cache.MetaNamespaceKeyFunc), bySlice: map[string]map[string]any{},
		holders: map[string][]string{}, have: map[string]any{}}
}

// sliceOf is the informer's transform: it keeps of a slice its name and entries, typed, instead of the decoded
// JSON tree (several times their size), so the informer's store of 1,500 slices stays small too. A slice that does
// not decode is kept empty: its entries go until the publisher rewrites it.
func sliceOf(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	var as v1alpha1.AddressSlice
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &as); err != nil {
		as = v1alpha1.AddressSlice{}
	}
	out := &v1alpha1.AddressSlice{Pods: as.Pods, Nodes: as.Nodes}
	out.Name, out.ResourceVersion = u.GetName(), u.GetResourceVersion()
	return out, nil
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
	if _, ok := obj.(*unstructured.Unstructured); ok {
		obj, _ = sliceOf(obj)
	}
	as, ok := obj.(*v1alpha1.AddressSlice)
	if !ok {
		return
	}
	name := as.Name
	now := map[string]any{}
	if !gone {
		for _, e := range as.Pods {
			now[feed.PodKey(e.Namespace, e.Name)] = e
		}
		for _, e := range as.Nodes {
			now[feed.NodeKey(e.Name)] = e
		}
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
		h := slices.DeleteFunc(v.holders[key], func(s string) bool { return s == name })
		if _, ok := now[key]; ok {
			h = append(h, name)
		}
		if len(h) == 0 {
			delete(v.holders, key)
		} else {
			v.holders[key] = h
		}
		v.update(key)
	}
}

// objectOf is the slim object an entry stands for.
func objectOf(entry any) any {
	switch e := entry.(type) {
	case v1alpha1.PodAddresses:
		return feed.PodOf(e)
	case v1alpha1.NodeAddresses:
		return feed.NodeOf(e)
	}
	return nil
}

// update makes the effective entry of key the one its first holder has, and passes the change on.
func (v *feedView) update(key string) {
	var want any
	if h := v.holders[key]; len(h) > 0 {
		want = v.bySlice[slices.Min(h)][key]
	}
	had, exists := v.have[key]
	var old, obj any
	switch {
	case want == nil && exists:
		delete(v.have, key)
		old = objectOf(had)
		v.store(key, old, true)
		v.on(key)(nil, old, true)
	case want != nil && !exists:
		v.have[key] = want
		obj = objectOf(want)
		v.store(key, obj, false)
		v.on(key)(nil, obj, false)
	case want != nil && !equality.Semantic.DeepEqual(had, want):
		v.have[key] = want
		old, obj = objectOf(had), objectOf(want)
		v.store(key, obj, false)
		v.on(key)(old, obj, false)
	}
}

func (v *feedView) on(key string) func(old, obj any, gone bool) {
	if strings.HasPrefix(key, "node/") {
		return v.nodeOn
	}
	return v.podOn
}

// store keeps the lookup stores: a node always, a pod only while it has hostPorts.
func (v *feedView) store(key string, obj any, gone bool) {
	st := v.pods
	if strings.HasPrefix(key, "node/") {
		st = v.nodes
	} else if p, ok := obj.(*corev1.Pod); ok && !gone && len(p.Spec.Containers) == 0 {
		gone = true // no hostPorts: nothing looks it up
	}
	if gone {
		if have, ok, _ := st.Get(obj); ok {
			_ = st.Delete(have)
		}
		return
	}
	_ = st.Update(obj) // adds it when missing
}
