// Package scale is the API-server scale benchmark of the enforcer (`make scale`, not part of `make test`).
//
// Its test, TestScale, runs only with MOAT_SCALE=1. For each cluster size it starts a real etcd and
// kube-apiserver (internal/testutil/kubetest), fills them with 2,000 namespaces, 1,000 Nodes, 2,000 Services, 500
// FirewallPolicies and N pods on other nodes than the enforcer's (written to etcd in bulk in the API server's
// storage format, with the addresses a kubelet would report; the pods it times are created through the API and
// their addresses set through the status subresource: there is no kubelet), then runs the moat-enforcer binary as a child process
// against it through a byte-counting proxy and watches the datapath it pins through the bpf package's exported
// API. It measures the time to the first apply, what a pod, a namespace and a policy change cost until the
// datapath holds them, the remote-pod learn latency at a steady rate, the enforcer's memory and CPU under pod
// churn, the kernel's map memory and the bytes the API server sends the enforcer, and writes them to
// docs/benchmarks-scale.md.
package scale
