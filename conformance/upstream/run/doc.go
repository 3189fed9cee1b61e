package main

import (
	"bytes"
	"os"

	"github.com/moatfw/moat/conformance/upstream"
)

// intro opens docs/conformance.md.
const intro = `Kubernetes' own networking conformance tests, the ` + "`[sig-network]` `[Conformance]`" + ` tests of the
Kubernetes v1.37.2 e2e binary, run against the end-to-end suite's cluster of two nodes ([e2e.md](e2e.md)): each
node's kubelet, containerd and kube-proxy in a network and mount namespace of its own, the control plane on the
host, CoreDNS v1.15.0 as the cluster DNS, the tests' images (agnhost of the same Kubernetes version and the others,
conformance/images) imported into each node. ` + "`make conformance`" + ` builds what it needs (` + "`make conformance-bins`" + `),
starts the cluster once and runs the tests three times on it, Moat's state changing between the passes, then
writes this page (conformance/upstream/run). No test of this version needs a cloud load balancer, so none is left
out.

Each pass runs its tests in three e2e processes at once (a shard each, conformance/upstream.RunSharded); the
tests are in namespaces of their own and none of them is [Serial]. The time is the pass's wall time on a machine
of 2 cores.`

// why explains, pass by pass, each result that is not a pass: the rule that made it, or what in the cluster
// did. Filled in from the runs' logs (make conformance keeps them in -reports).
var why = map[string]map[string]string{}

// writeDoc renders the passes run so far to path.
func writeDoc(path string, passes []upstream.Pass) error {
	var b bytes.Buffer
	if err := upstream.RenderMarkdown(&b, intro, passes); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}
