package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/moatfw/moat/internal/agentapi"
)

// moatctl host on each node of the cluster: the kubelet's entry is on the port the node's own Node status gives,
// learned from it, and open to the other node by name; SSH and what a node needs to stay one are there; the set
// says it is not enforced by this version.
func TestHostSafetySet(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i, n := range suite.nodes {
		other := suite.nodes[1-i]
		node, err := suite.client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out, err := moatctlOn(ctx, n.Name, "host", "-o", "json")
		if err != nil {
			t.Fatalf("moatctl host on %s: %v\n%s", n.Name, err, out)
		}
		var h agentapi.HostSafety
		if err := json.Unmarshal(out, &h); err != nil {
			t.Fatalf("moatctl host on %s: %v\n%s", n.Name, err, out)
		}
		var kubelet, ssh, kinds []string
		for _, e := range h.Entries {
			kinds = append(kinds, e.Name)
			var from []string
			for _, s := range e.Sources {
				from = append(from, s.From)
			}
			switch e.Name {
			case "kubelet":
				kubelet = append(kubelet, e.Ports, e.Learned, fmt.Sprint(strings.Contains(strings.Join(from, ","), "node "+other.Name)))
			case "ssh":
				ssh = append(ssh, e.Ports)
			}
		}
		want := fmt.Sprintf("tcp/%d Node status true", node.Status.DaemonEndpoints.KubeletEndpoint.Port)
		if !record(t, n.Name+": moatctl host, the kubelet's entry (port, learned from, the other node a source)", want, strings.Join(kubelet, " "), 0) {
			t.Errorf("moatctl host on %s:\n%s", n.Name, out)
		}
		got := fmt.Sprintf("node %s, enforced %t, ssh %s, node entries %t", h.Node, h.Enforced, strings.Join(ssh, ","),
			strings.Contains(strings.Join(kinds, ","), "node"))
		if !record(t, n.Name+": moatctl host", fmt.Sprintf("node %s, enforced false, ssh tcp/22, node entries true", n.Name), got, 0) {
			t.Errorf("moatctl host on %s:\n%s", n.Name, out)
		}
	}
}
