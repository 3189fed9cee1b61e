package v1alpha1

//go:generate go tool controller-gen object paths=. crd:crdVersions=v1 output:crd:dir=../../../install/kubernetes/crds

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// SchemeGroupVersion is moat.dev/v1alpha1.
var SchemeGroupVersion = schema.GroupVersion{Group: Group, Version: Version}

// Resources of the API, as the API server names them.
const (
	ResourceFirewallPolicies = "firewallpolicies"
	ResourceFirewallConfigs  = "firewallconfigs"
	ResourceAddressSlices    = "addressslices"
)

var (
	// SchemeBuilder adds the API's kinds to a scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the API's kinds to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(SchemeGroupVersion, &FirewallPolicy{}, &FirewallPolicyList{}, &FirewallConfig{}, &FirewallConfigList{},
		&AddressSlice{}, &AddressSliceList{})
	metav1.AddToGroupVersion(scheme, SchemeGroupVersion)
	return nil
}
