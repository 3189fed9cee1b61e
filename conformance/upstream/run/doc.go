package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"strings"

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

// passCounters are what Moat's datapath counted during a pass's tests.
type passCounters struct {
	title string
	counters
}

// countersIntro opens the section of the datapath's counters.
const countersIntro = `What Moat's datapath counted on the two nodes while each pass's tests ran (` + "`moatctl counters`" + `,
summed over the nodes; the difference between before and after the tests), by reason: each packet of a pod is
counted once at each pod veth it crosses. A drop that made no test fail was retried past (a connection's first
tries, or a pod being torn down); the flow events of each node are kept in the pass's report folder
(` + "`flows-<node>.txt`" + `).`

// countersNotes say what the drop reasons seen in a pass mean here, read from the flow events of the runs
// (a reason that the passes did not count is left out of the document).
var countersNotes = map[string]string{
	"not-for-endpoint": "frames to an address no pod on the bridge holds any longer (a pod just deleted, still " +
		"probed by the kubelet from the bridge's address or retransmitted to): the bridge floods a frame whose " +
		"destination it no longer knows to every port, and each other pod's veth drops it. In the flow events all of them come from the bridge's " +
		"address (the kubelet's probes).",
	"no-endpoint": "packets on a veth that carries Moat's programs and has no endpoint record (docs/datapath.md). " +
		"They make no flow event and were not traced to their pods here; a pod's veth between the plugin's " +
		"attach and its record, or after its record is removed at deletion, is where they can come from.",
	"unknown-pod": "the restrictive policy's \"Deny every namespace\" rules (system-zone ingress[1] and " +
		"egress[1], tenant-zone ingress[2] and egress[2]) deny an address of the other node's pod range that no pod " +
		"this node knows holds, since it may be a pod of any namespace (docs/policy.md). In the flow events they " +
		"are DNS queries to CoreDNS on the other node from a pod this node had not heard of yet (just created) " +
		"or no longer knew (just deleted, its processes still sending); the pods' resolvers retried past them.",
	"revoked-by-policy": "an established connection cut when its peer's verdict changed: a DNS connection to " +
		"CoreDNS whose client pod was deleted, its address becoming a pod of unknown namespace (above).",
	"spoofed-source": "a packet from a pod with a source address or MAC that is not the pod's own.",
}

// writeDoc renders the passes run so far to path, with the datapath's counters of the passes with Moat.
func writeDoc(path string, passes []upstream.Pass, counted []passCounters) error {
	var b bytes.Buffer
	text := intro
	if source != "" {
		text += " Moat was built from " + source + "."
	}
	if err := upstream.RenderMarkdown(&b, text, passes); err != nil {
		return err
	}
	if len(counted) > 0 {
		b.WriteString("\n## What Moat counted\n\n" + countersIntro + "\n\n| reason | drop |")
		for _, p := range counted {
			b.WriteString(" " + strings.ReplaceAll(p.title, "|", `\|`) + " |")
		}
		b.WriteString("\n| --- | --- |" + strings.Repeat(" ---: |", len(counted)) + "\n")
		for _, r := range counted[len(counted)-1].order {
			row := fmt.Sprintf("| %s | %v |", r, counted[len(counted)-1].drop[r])
			nonzero := false
			for _, p := range counted {
				n := p.packets[r]
				nonzero = nonzero || n != 0
				row += fmt.Sprintf(" %d |", n)
			}
			if nonzero {
				b.WriteString(row + "\n")
			}
		}
		var notes []string
		for r, note := range countersNotes {
			for _, p := range counted {
				if p.packets[r] != 0 {
					notes = append(notes, fmt.Sprintf("- `%s`: %s", r, note))
					break
				}
			}
		}
		slices.Sort(notes)
		if len(notes) > 0 {
			b.WriteString("\n" + strings.Join(notes, "\n") + "\n")
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}
