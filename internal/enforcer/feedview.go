package enforcer

import (
	"slices"
	"sync"

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
// first by name, and goes only when no slice holds it. It keeps no copy of an entry: each key points into the
// slice object the informer keeps, and the slim object is made only to hand it on (a Pod object, even empty, is
// 1.2 KB, and at 150,000 pods that was the enforcer's biggest heap).
type feedView struct {
	podOn, nodeOn func(old, obj any, gone bool)
	// what the source looks up by key: the pods that have hostPorts (the only ones it reads), every node
	pods, nodes cache.Store

	mu      sync.Mutex
	slices  map[string]*feedSlice // each slice as last handed in (the informer's own objects)
	entries map[entryKey]viewEntry
}

// entryKey names an entry of the feed, whichever slice holds it: a pod by namespace and name, a node by name.
type entryKey struct {
	node            bool
	namespace, name string
}

// viewEntry is where an entry is read from and what was last handed on of it: 32 bytes, for each of 150,000
// pods.
type viewEntry struct {
	holder *feedSlice // the slice it is read from: the first by name of those that hold it
	others *[]string  // the other slices that hold it (nearly always none)
	pod    *feedPod
	node   *v1alpha1.NodeAddresses
}

func newFeedView(podOn, nodeOn func(old, obj any, gone bool)) *feedView {
	return &feedView{podOn: podOn, nodeOn: nodeOn, pods: cache.NewStore(cache.MetaNamespaceKeyFunc),
		nodes: cache.NewStore(cache.MetaNamespaceKeyFunc), slices: map[string]*feedSlice{},
		entries: map[entryKey]viewEntry{}}
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
	// what the slice holds now, each with its entry
	now := make(map[entryKey]viewEntry, len(as.pods)+len(as.nodes))
	for i := range as.pods {
		now[podEntryKey(&as.pods[i])] = viewEntry{holder: as, pod: &as.pods[i]}
	}
	for i := range as.nodes {
		now[nodeEntryKey(&as.nodes[i])] = viewEntry{holder: as, node: &as.nodes[i]}
	}
	if before != nil { // what the slice no longer holds
		for i := range before.pods {
			if key := podEntryKey(&before.pods[i]); !has(now, key) {
				v.update(key, name, viewEntry{})
			}
		}
		for i := range before.nodes {
			if key := nodeEntryKey(&before.nodes[i]); !has(now, key) {
				v.update(key, name, viewEntry{})
			}
		}
	}
	for key, in := range now {
		v.update(key, name, in)
	}
}

func has[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}

func podEntryKey(e *feedPod) entryKey                 { return entryKey{namespace: e.namespace.Value(), name: e.name} }
func nodeEntryKey(e *v1alpha1.NodeAddresses) entryKey { return entryKey{node: true, name: e.Name} }

// update records whether the slice named holds key now (in: its entry there, or none), makes the entry of key
// the one its first holder has, and passes the change on.
func (v *feedView) update(key entryKey, slice string, in viewEntry) {
	holds := in.holder != nil
	ve, exists := v.entries[key]
	var holders []string
	if ve.others != nil {
		holders = append(holders, *ve.others...)
	}
	if exists {
		holders = append(holders, ve.holder.Name)
	}
	holders = slices.DeleteFunc(holders, func(s string) bool { return s == slice })
	if holds {
		holders = append(holders, slice)
	}
	if len(holders) == 0 {
		if exists {
			delete(v.entries, key)
			old := ve.object()
			v.store(key, old, true)
			v.on(key)(nil, old, true)
		}
		return
	}
	slices.Sort(holders)
	next := viewEntry{holder: v.slices[holders[0]]}
	if len(holders) > 1 {
		others := holders[1:]
		next.others = &others
	}
	if holds && holders[0] == slice {
		next.pod, next.node = in.pod, in.node
	} else {
		next.pod, next.node = v.find(key, next.holder)
	}
	v.entries[key] = next
	switch {
	case !exists:
		obj := next.object()
		v.store(key, obj, false)
		v.on(key)(nil, obj, false)
	case !ve.same(next):
		old, obj := ve.object(), next.object()
		v.store(key, obj, false)
		v.on(key)(old, obj, false)
	}
}

// find is the entry of key in a slice.
func (v *feedView) find(key entryKey, as *feedSlice) (*feedPod, *v1alpha1.NodeAddresses) {
	if as == nil {
		return nil, nil
	}
	if key.node {
		for i := range as.nodes {
			if nodeEntryKey(&as.nodes[i]) == key {
				return nil, &as.nodes[i]
			}
		}
		return nil, nil
	}
	for i := range as.pods {
		if podEntryKey(&as.pods[i]) == key {
			return &as.pods[i], nil
		}
	}
	return nil, nil
}

// object is the slim object the entry stands for.
func (ve viewEntry) object() any {
	switch {
	case ve.pod != nil:
		return ve.pod.pod()
	case ve.node != nil:
		return feed.NodeOf(*ve.node)
	}
	return nil
}

// same: do the two say the same of their entry? (Compared field by field: a slice's update compares each of
// its hundred entries, and reflection made that a good part of the enforcer's time under churn.)
func (ve viewEntry) same(other viewEntry) bool {
	if ve.pod != nil || other.pod != nil {
		return ve.pod != nil && other.pod != nil && ve.pod.same(other.pod)
	}
	m, n := ve.node, other.node
	return m != nil && n != nil && (m == n || m.Name == n.Name && slices.Equal(m.IPs, n.IPs) &&
		slices.Equal(m.PodCIDRs, n.PodCIDRs))
}

func (v *feedView) on(key entryKey) func(old, obj any, gone bool) {
	if key.node {
		return v.nodeOn
	}
	return v.podOn
}

// store keeps the lookup stores: a node always, a pod only while it has hostPorts.
func (v *feedView) store(key entryKey, obj any, gone bool) {
	st := v.pods
	if key.node {
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
