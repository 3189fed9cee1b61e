package main

// renderScale points to the API-server scale benchmark, which `make scale` runs and writes to a page of its own
// (it fills an API server for an hour or more), and gives Cilium's published figures beside it.
func renderScale() string {
	return `
## API-server scale

` + "`make scale`" + ` (not part of ` + "`make bench`" + `; an hour or more) runs the real ` + "`moat-enforcer`" + ` against a real API server
with 2,000 namespaces, 1,000 Nodes, 2,000 Services, 500 FirewallPolicies and 5,000 to 150,000 pods: the time to
the first apply, what a pod, a namespace and a policy change cost until the datapath holds them, the remote-pod
learn latency, the enforcer's memory and CPU under pod churn, the kernel's map memory and the bytes a node
receives from the API server. Its page, written by its own run: [benchmarks-scale.md](benchmarks-scale.md).

Cilium's published figures, for comparison ([Cilium's scalability report](https://docs.cilium.io/en/stable/operations/performance/scalability/report/),
CRD mode, 1,000 worker nodes of 2 vCPUs and 4 GB): with 50,000 pods in 5 namespaces (250 identities), 250
policies selecting the 10,000 pods of one namespace were enforced on an endpoint in under 600 ms at most, and
every agent had them within 5 s; 250 cluster-wide policies selecting all 50,000 pods took endpoint regeneration
to a little over 3 s at peak. While the 50,000 pods were created, the agents used 3.38% CPU of a 2-vCPU
machine on average, 438 MiB of memory on average (573 MiB at most, about 10.5 KiB more per pod in the cluster)
and up to 462.7 MiB of eBPF map memory.
`
}
