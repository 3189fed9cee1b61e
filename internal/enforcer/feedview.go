package enforcer

import (
	"slices"
	"sync"
	"unique"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/cache"

	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/feed"
)

// feedView turns the address feed's slices back into the slim pods and nodes they stand for, and hands each
// change on as a watch of Pods and Nodes would: the rest of the source cannot tell the two apart. An entry held
// by two slices at once (for a moment, while the publisher moves it after a takeover) is read from the slice
// first by name, and goes only when no slice holds it. It keeps no copy of an entry: each key names the slice
// object the informer keeps that it is read from, and the slim object is made only to hand it on (a Pod object,
// even empty, is 1.2 KB, and at 150,000 pods that was the enforcer's biggest heap).
type feedView struct {
	podOn, nodeOn func(old, obj any, gone bool)
	// what the source looks up by key: the pods that have hostPorts (the only ones it reads), every node
	pods, nodes cache.Store

	mu     sync.Mutex
	slices map[string]*feedSlice // each slice as last handed in (the informer's own objects)
	// the slice each entry is read from: the first by name of those that hold it. 32 bytes a slot: with the
	// entry's pointer and a bool in its key this map took 19 MB at 150,000 pods, 8.6 now
	holders map[entryKey]*feedSlice
	others  map[entryKey][]string // the other slices that hold an entry (nearly always none)
}

// entryKey names an entry of the feed, whichever slice holds it: a pod by namespace and name, a node by name
// (and no namespace: the zero handle).
type entryKey struct {
	namespace unique.Handle[string]
	name      string
}

// entryRef is an entry in a slice: a pod or a node (neither: none).
type entryRef struct {
	pod  *feedPod
	node *v1alpha1.NodeAddresses
}

func newFeedView(podOn, nodeOn func(old, obj any, gone bool)) *feedView {
	return &feedView{podOn: podOn, nodeOn: nodeOn, pods: cache.NewStore(cache.MetaNamespaceKeyFunc),
		nodes: cache.NewStore(cache.MetaNamespaceKeyFunc), slices: map[string]*feedSlice{},
		holders: map[entryKey]*feedSlice{}, others: map[entryKey][]string{}}
}

// sliceOf is the informer's transform: it keeps of a slice its name, version and entries (not its managed fields,
// labels and the rest of its metadata), in their compact form (feedSlice; a slice decoded as JSON is turned into
// its type first). A slice that does not decode is kept empty: its entries go until the publisher rewrites it.
func sliceOf(obj any) (any, error) {
	switch o := obj.(type) {
	case *unstructured.Unstructured:
		var as v1alpha1.AddressSlice
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &as); err != nil {
			as = v1alpha1.AddressSlice{}
		}
		as.Name, as.ResourceVersion = o.GetName(), o.GetResourceVersion()
		return compactSlice(&as), nil
	case *v1alpha1.AddressSlice:
		return compactSlice(o), nil
	}
	return obj, nil // a feedSlice already, or a tombstone
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
	obj, _ = sliceOf(obj)
	as, ok := obj.(*feedSlice)
	if !ok {
		return
	}
	name := as.Name
	v.mu.Lock()
	defer v.mu.Unlock()
	before := v.slices[name]
	if gone {
		delete(v.slices, name)
		as = &feedSlice{}
	} else {
		v.slices[name] = as
	}
	now, was := as.refs(), before.refs() // what the slice holds now, and held before
	// the entry an entry was read from: the slice's own before this update, or another slice's
	old := func(key entryKey, holder *feedSlice) entryRef {
		if holder == before {
			return was[key]
		}
		return holder.find(key)
	}
	for key := range was { // what the slice no longer holds
		if !has(now, key) {
			v.update(key, name, entryRef{}, old)
		}
	}
	for key, in := range now {
		v.update(key, name, in, old)
	}
}

func has[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}

func podEntryKey(e *feedPod) entryKey                 { return entryKey{namespace: e.namespace, name: e.name} }
func nodeEntryKey(e *v1alpha1.NodeAddresses) entryKey { return entryKey{name: e.Name} }

// refs are the slice's entries by key (a slice holds a hundred or so; none for nil).
func (as *feedSlice) refs() map[entryKey]entryRef {
	if as == nil {
		return nil
	}
	out := make(map[entryKey]entryRef, len(as.pods)+len(as.nodes))
	for i := range as.pods {
		out[podEntryKey(&as.pods[i])] = entryRef{pod: &as.pods[i]}
	}
	for i := range as.nodes {
		out[nodeEntryKey(&as.nodes[i])] = entryRef{node: &as.nodes[i]}
	}
	return out
}

// find is the entry of key in the slice.
func (as *feedSlice) find(key entryKey) entryRef {
	if as == nil {
		return entryRef{}
	}
	if key.namespace == (unique.Handle[string]{}) {
		for i := range as.nodes {
			if nodeEntryKey(&as.nodes[i]) == key {
				return entryRef{node: &as.nodes[i]}
			}
		}
		return entryRef{}
	}
	for i := range as.pods {
		if podEntryKey(&as.pods[i]) == key {
			return entryRef{pod: &as.pods[i]}
		}
	}
	return entryRef{}
}

// update records whether the slice named holds key now (in: its entry there, or none), makes the entry of key
// the one its first holder has, and passes the change on; old is the entry of key in the slice it was read from.
func (v *feedView) update(key entryKey, slice string, in entryRef, old func(entryKey, *feedSlice) entryRef) {
	holds := in.pod != nil || in.node != nil
	holder, exists := v.holders[key]
	holders := slices.Clone(v.others[key])
	if exists {
		holders = append(holders, holder.Name)
	}
	holders = slices.DeleteFunc(holders, func(s string) bool { return s == slice })
	if holds {
		holders = append(holders, slice)
	}
	if len(holders) == 0 {
		if exists {
			delete(v.holders, key)
			delete(v.others, key)
			obj := old(key, holder).object()
			v.store(key, obj, true)
			v.on(key)(nil, obj, true)
		}
		return
	}
	slices.Sort(holders)
	next := v.slices[holders[0]]
	v.holders[key] = next
	if len(holders) > 1 {
		v.others[key] = holders[1:]
	} else {
		delete(v.others, key)
	}
	entry := in
	if !holds || holders[0] != slice {
		entry = next.find(key)
	}
	if !exists {
		obj := entry.object()
		v.store(key, obj, false)
		v.on(key)(nil, obj, false)
		return
	}
	if prev := old(key, holder); !prev.same(entry) {
		obj := entry.object()
		v.store(key, obj, false)
		v.on(key)(prev.object(), obj, false)
	}
}

// object is the slim object the entry stands for.
func (r entryRef) object() any {
	switch {
	case r.pod != nil:
		return r.pod.pod()
	case r.node != nil:
		return feed.NodeOf(*r.node)
	}
	return nil
}

// same: do the two say the same of their entry? (Compared field by field: a slice's update compares each of
// its hundred entries, and reflection made that a good part of the enforcer's time under churn.)
func (r entryRef) same(other entryRef) bool {
	if r.pod != nil || other.pod != nil {
		return r.pod != nil && other.pod != nil && r.pod.same(other.pod)
	}
	m, n := r.node, other.node
	return m != nil && n != nil && (m == n || m.Name == n.Name && slices.Equal(m.IPs, n.IPs) &&
		slices.Equal(m.PodCIDRs, n.PodCIDRs))
}

func (v *feedView) on(key entryKey) func(old, obj any, gone bool) {
	if key.namespace == (unique.Handle[string]{}) {
		return v.nodeOn
	}
	return v.podOn
}

// store keeps the lookup stores: a node always, a pod only while it has hostPorts.
func (v *feedView) store(key entryKey, obj any, gone bool) {
	st := v.pods
	if key.namespace == (unique.Handle[string]{}) {
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
