package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moatfw/moat/conformance/node"
)

// counters are the datapath's packet counters by reason (`moatctl counters`), summed over the nodes' enforcers,
// and which reasons are drops.
type counters struct {
	packets map[string]int64
	drop    map[string]bool
	order   []string // the reasons in moatctl's order
}

// enforcerPods are the Moat DaemonSet's pods.
func enforcerPods(ctx context.Context, c *node.Cluster) ([]string, error) {
	out, err := c.Kubectl(ctx, "-n", "moat-system", "get", "pods", "-l",
		"app.kubernetes.io/name=moat,app.kubernetes.io/component=enforcer", "-o", "jsonpath={.items[*].metadata.name}")
	if err != nil {
		return nil, fmt.Errorf("list the moat pods: %v: %s", err, out)
	}
	return strings.Fields(string(out)), nil
}

// readCounters reads every enforcer's counters.
func readCounters(ctx context.Context, c *node.Cluster) (counters, error) {
	cs := counters{packets: map[string]int64{}, drop: map[string]bool{}}
	pods, err := enforcerPods(ctx, c)
	if err != nil {
		return cs, err
	}
	for _, pod := range pods {
		out, err := c.Kubectl(ctx, "-n", "moat-system", "exec", pod, "-c", "enforcer", "--", "moatctl", "counters")
		if err != nil {
			return cs, fmt.Errorf("moatctl counters in %s: %v: %s", pod, err, out)
		}
		if err := cs.add(string(out)); err != nil {
			return cs, fmt.Errorf("moatctl counters in %s: %w", pod, err)
		}
	}
	return cs, nil
}

// add adds the packets of one enforcer's `moatctl counters` table (REASON DROP PACKETS BYTES).
func (cs *counters) add(table string) error {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "REASON" {
			continue
		}
		if len(f) != 4 {
			return fmt.Errorf("line %q: want a reason, drop, packets and bytes", line)
		}
		n, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return fmt.Errorf("line %q: %w", line, err)
		}
		if !slices.Contains(cs.order, f[0]) {
			cs.order = append(cs.order, f[0])
		}
		cs.packets[f[0]] += n
		cs.drop[f[0]] = f[1] == "true"
	}
	return nil
}

// since is what the counters counted after before.
func (cs counters) since(before counters) counters {
	d := counters{packets: map[string]int64{}, drop: cs.drop, order: cs.order}
	for r, n := range cs.packets {
		d.packets[r] = n - before.packets[r]
	}
	return d
}

// saveFlows writes each enforcer's last flow events (`moatctl flows`: denials, and audits) into dir, a file a
// node, for reading a pass's drops afterwards.
func saveFlows(ctx context.Context, c *node.Cluster, dir string) error {
	pods, err := enforcerPods(ctx, c)
	if err != nil {
		return err
	}
	for _, pod := range pods {
		out, err := c.Kubectl(ctx, "-n", "moat-system", "exec", pod, "-c", "enforcer", "--", "moatctl", "flows",
			"--limit", "1000")
		if err != nil {
			return fmt.Errorf("moatctl flows in %s: %v: %s", pod, err, out)
		}
		nodeName, _ := c.Kubectl(ctx, "-n", "moat-system", "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}")
		if err := os.WriteFile(filepath.Join(dir, "flows-"+strings.TrimSpace(string(nodeName))+".txt"), out, 0o644); err != nil {
			return err
		}
	}
	return nil
}
