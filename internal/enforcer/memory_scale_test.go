package enforcer

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// TestAddressMemoryAtScale measures the live heap the address path keeps for remote pods: the feed's slices as the
// informer keeps them, the feed view, the address book and the enforcer's own tables after a whole apply into a
// real datapath. MOAT_MEMORY_PODS=150000 runs it at the make scale shape's biggest size (dual-stack, 1,000 nodes,
// 2,000 namespaces); it reports bytes per pod. make scale measures the whole process; this finds where it goes.
func TestAddressMemoryAtScale(t *testing.T) {
	pods, _ := strconv.Atoi(os.Getenv("MOAT_MEMORY_PODS"))
	if pods == 0 {
		t.Skip("MOAT_MEMORY_PODS=N measures the address path's heap at N dual-stack remote pods")
	}
	_, _, e := newTestEnforcer(t)
	e.log.Logger.SetLevel(logrus.WarnLevel)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	base := heap()

	const nodes, namespaces, perSlice = 1000, 2000, 100
	var slices []*v1alpha1.AddressSlice // what the informer's store holds
	var cur *v1alpha1.AddressSlice
	created := metav1.NewTime(time.Now().Truncate(time.Second))
	for j := range pods {
		if j%perSlice == 0 {
			cur = &v1alpha1.AddressSlice{}
			cur.Name = fmt.Sprintf("moat-%05d", j/perSlice)
			cur.ResourceVersion = strconv.Itoa(j)
			slices = append(slices, cur)
		}
		k, m := 1+j%(nodes-1), j/(nodes-1)+2
		cur.Pods = append(cur.Pods, v1alpha1.PodAddresses{Namespace: fmt.Sprintf("ns-%04d", j%namespaces),
			Name: fmt.Sprintf("web-%07d", j), Node: fmt.Sprintf("node-%04d", k), Created: created,
			IPs: []string{netip.AddrFrom4([4]byte{10, byte(128 + k/256), byte(k % 256), byte(m)}).String(),
				fmt.Sprintf("fd00:10:244:%x::%x", k, m)}})
	}
	for k := range nodes {
		if k%perSlice == 0 {
			cur = &v1alpha1.AddressSlice{}
			cur.Name = fmt.Sprintf("moat-node-%05d", k/perSlice)
			slices = append(slices, cur)
		}
		cur.Nodes = append(cur.Nodes, v1alpha1.NodeAddresses{Name: fmt.Sprintf("node-%04d", k),
			IPs:      []string{fmt.Sprintf("172.16.%d.%d", k/256, k%256), fmt.Sprintf("fd00:172:16::%x", k)},
			PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", 128+k/256, k%256), fmt.Sprintf("fd00:10:244:%x::/64", k)}})
	}
	var kept []any // as the informer's transform keeps them
	for _, s := range slices {
		c, _ := sliceOf(s)
		kept = append(kept, c)
	}
	slices = nil
	stored := heap()

	if os.Getenv("MOAT_MEMORY_VIEW_ONLY") != "" {
		nop := func(old, obj any, gone bool) {}
		view := newFeedView(nop, nop)
		for _, s := range kept {
			view.handler().OnAdd(s, true)
		}
		t.Logf("view alone: %d B/pod", (heap()-stored)/uint64(pods))
		runtime.KeepAlive(view)
		runtime.KeepAlive(kept)
		return
	}
	k := &Kubernetes{NodeName: "node-0000", book: newAddressBook()}
	changed := func() {}
	view := newFeedView(k.addressOn(ownerPod, k.podClaims, changed), k.addressOn(ownerNode, nodeClaims(ownerNode), changed))
	h := view.handler()
	for _, s := range kept {
		h.OnAdd(s, true)
	}
	dirty := k.book.dirty // the changes not taken yet are not kept for long: measured apart
	k.book.dirty = prefixMap[struct{}]{}
	viewed := heap()
	k.book.dirty = dirty
	dirty = prefixMap[struct{}]{}

	var s State
	for i := range namespaces {
		s.Namespaces = append(s.Namespaces, v1alpha1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns-%04d", i)}})
	}
	s.AddressChanges, _ = k.book.changes()
	s.allAddresses = k.book.takeAll
	if err := e.Apply(s); err != nil {
		t.Fatal(err)
	}
	s = State{}
	applied := heap()

	if out := os.Getenv("MOAT_MEMORY_PROFILE"); out != "" {
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	mib := func(b uint64) string { return fmt.Sprintf("%.1f MiB (%d B/pod)", float64(b)/(1<<20), b/uint64(pods)) }
	t.Logf("pods=%d: slices as the informer keeps them %s; feed view and address book %s; enforcer's tables %s; "+
		"all %s", pods, mib(stored-base), mib(viewed-stored), mib(applied-viewed), mib(applied-base))
	runtime.KeepAlive(kept)
	runtime.KeepAlive(view)
	runtime.KeepAlive(k)
	runtime.KeepAlive(e)
}
