package feed

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// A pod's entry keeps what decides its address and survives the trip through a slice unchanged.
func TestPodEntryRoundTrip(t *testing.T) {
	created := metav1.NewTime(time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC))
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "api", Namespace: "web", CreationTimestamp: created,
		Labels: map[string]string{"app": "api"}},
		Spec: corev1.PodSpec{NodeName: "node-b", Containers: []corev1.Container{{Name: "c", Image: "x",
			Ports: []corev1.ContainerPort{{ContainerPort: 8080, HostPort: 80, Protocol: corev1.ProtocolTCP}, {ContainerPort: 9090}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.2.1.7"}, {IP: "fd00:250:1::7"}}}}
	e, ok := PodEntry(pod)
	if !ok {
		t.Fatal("a running pod with addresses has no entry")
	}
	back, _ := SlimPod(PodOf(e))
	want, _ := SlimPod(pod)
	w := want.(*corev1.Pod)
	w.UID, w.ResourceVersion = "", ""
	if !equality.Semantic.DeepEqual(back, w) {
		t.Errorf("through the feed:\n%+v\nwant\n%+v", back, w)
	}
	for _, p := range []*corev1.Pod{
		{Spec: corev1.PodSpec{HostNetwork: true}, Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}}},
		{Status: corev1.PodStatus{Phase: corev1.PodSucceeded, PodIPs: []corev1.PodIP{{IP: "10.2.1.8"}}}},
		{Status: corev1.PodStatus{Phase: corev1.PodPending}},
	} {
		if _, ok := PodEntry(p); ok {
			t.Errorf("pod %+v has an entry", p)
		}
	}
}

// The feed's size: what a full slice of pods costs every node that watches it. docs/operations.md quotes it.
func TestSliceSize(t *testing.T) {
	s := v1alpha1.AddressSlice{TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.APIVersion, Kind: v1alpha1.KindAddressSlice},
		ObjectMeta: metav1.ObjectMeta{Name: "addrs-0123456789", UID: "5f0c2f4e-7b7c-4a43-9f3e-2f1f7a8e1c11",
			ResourceVersion: "123456789", Generation: 12, CreationTimestamp: metav1.Now(),
			Labels: map[string]string{"app.kubernetes.io/managed-by": "moat-feed"}}}
	for i := range v1alpha1.AddressSliceMaxEntries {
		s.Pods = append(s.Pods, v1alpha1.PodAddresses{Namespace: fmt.Sprintf("team-payments-%04d", i),
			Name: fmt.Sprintf("checkout-7d9f8b6c5d-%05d", i), Node: fmt.Sprintf("ip-10-0-%d-%d.ec2.internal", i/250, i%250),
			IPs: []string{fmt.Sprintf("10.244.%d.%d", i/250, i%250)}, Created: metav1.Now()})
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	per := float64(len(b)) / float64(len(s.Pods))
	t.Logf("a full slice: %d bytes, %.0f bytes a pod", len(b), per)
	if per > 200 {
		t.Errorf("%.0f bytes a pod: the entry grew past 200 bytes", per)
	}
}
