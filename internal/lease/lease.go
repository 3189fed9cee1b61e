// Package lease is how Moat's components elect one of themselves through a Lease: the policy status writer among
// the enforcers, the address feed's publisher among its replicas.
package lease

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Election is a leader election on the Lease name in namespace, held as identity: a Lease of 15 s, renewed
// within 10 s, tried every 2 s, and released when the election's context ends (so another takes over at once).
func Election(client coordinationv1.CoordinationV1Interface, namespace, name, identity string,
	callbacks leaderelection.LeaderCallbacks) leaderelection.LeaderElectionConfig {
	return leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Name: name, Namespace: namespace},
			Client:     client,
			LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
		},
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		ReleaseOnCancel: true, Name: name, Callbacks: callbacks,
	}
}
