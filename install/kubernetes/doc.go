// Package kubernetes holds Moat's manifests for a cluster: moat.yaml (everything but custom resources, for one
// kubectl apply), firewallconfig.yaml (the default FirewallConfig, applied after moat.yaml: kubectl cannot create a
// custom resource in the same apply as its CRD), uninstall.yaml (removing Moat from every node), and the CRDs that
// controller-gen writes into crds/. The Helm chart lives in ../helm/moat.
//
// The CRDs are copied into moat.yaml and into the chart's crds/ folder; Generated says what those copies must hold,
// `go generate` writes them, and the tests fail while a copy differs.
package kubernetes

//go:generate go run gen.go
