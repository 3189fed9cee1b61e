package main

import (
	"bytes"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// ruleChange measures what a rule change costs the tools Moat is compared with: the time from running the
// command to its return (the rule is in force then), in a network namespace of its own holding N rules already.
// Each command runs through nsenter, as an agent execs it; the cost of nsenter running `true` is measured too
// and subtracted.
type ruleChange struct {
	tool  string
	rules int
	p50   float64 // ms, nsenter subtracted
	p99   float64
}

const benchNS = "moat-bench-rules"

func sh(stdin string, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func inBenchNS(stdin string, args ...string) error {
	return sh(stdin, "nsenter", append([]string{"--net=/run/netns/" + benchNS, "--"}, args...)...)
}

// ruleAddr is the i-th distinct destination of the preloaded rules.
func ruleAddr(i int) string { return fmt.Sprintf("10.%d.%d.%d", 100+i/65536, (i/256)%256, i%256) }

func measureRuleChanges(sizes []int, changes int) ([]ruleChange, error) {
	var out []ruleChange
	for _, n := range sizes {
		for _, tool := range []string{"iptables-legacy", "iptables-nft", "nft"} {
			rc, err := measureRuleChange(tool, n, changes)
			if err != nil {
				return out, err
			}
			out = append(out, rc)
		}
	}
	return out, nil
}

func measureRuleChange(tool string, n, changes int) (rc ruleChange, err error) {
	rc = ruleChange{tool: tool, rules: n}
	_ = sh("", "ip", "netns", "del", benchNS)
	if err := sh("", "ip", "netns", "add", benchNS); err != nil {
		return rc, err
	}
	defer func() { _ = sh("", "ip", "netns", "del", benchNS) }()
	var load strings.Builder
	var change func(i int) []string
	switch tool {
	case "iptables-legacy", "iptables-nft":
		load.WriteString("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
		for i := 0; i < n; i++ {
			fmt.Fprintf(&load, "-A FORWARD -s 10.250.0.2 -d %s -p tcp --dport %d -j ACCEPT\n", ruleAddr(i), 1000+i%60000)
		}
		load.WriteString("COMMIT\n")
		if err := inBenchNS(load.String(), tool+"-restore"); err != nil {
			return rc, err
		}
		change = func(i int) []string {
			return []string{tool, "-w", "-A", "FORWARD", "-s", "10.250.0.2", "-d", ruleAddr(n + i), "-p", "tcp",
				"--dport", "443", "-j", "ACCEPT"}
		}
	case "nft":
		load.WriteString("table inet moatbench {\n set allowed { type ipv4_addr . inet_service; flags interval; }\n")
		load.WriteString(" chain forward { type filter hook forward priority 0; ct state established,related accept; ip saddr 10.250.0.2 ip daddr . tcp dport @allowed accept; }\n}\n")
		for i := 0; i < n; i += 1000 {
			var elems []string
			for j := i; j < min(n, i+1000); j++ {
				elems = append(elems, fmt.Sprintf("%s . %d", ruleAddr(j), 1000+j%60000))
			}
			fmt.Fprintf(&load, "add element inet moatbench allowed { %s }\n", strings.Join(elems, ", "))
		}
		if err := inBenchNS(load.String(), "nft", "-f", "-"); err != nil {
			return rc, err
		}
		change = func(i int) []string {
			return []string{"nft", "add", "element", "inet", "moatbench", "allowed", fmt.Sprintf("{ %s . 443 }", ruleAddr(n+i))}
		}
	default:
		return rc, fmt.Errorf("unknown tool %s", tool)
	}
	timed := func(args []string) (time.Duration, error) {
		start := time.Now()
		err := inBenchNS("", args...)
		return time.Since(start), err
	}
	var base, took []time.Duration
	for i := 0; i < changes; i++ {
		d, err := timed([]string{"true"})
		if err != nil {
			return rc, err
		}
		base = append(base, d)
		d, err = timed(change(i))
		if err != nil {
			return rc, err
		}
		took = append(took, d)
	}
	slices.Sort(base)
	slices.Sort(took)
	// nsenter's own cost: its fastest run, a floor that every timed change paid too (the median of a few
	// process starts jitters by more than a small iptables change costs, and made p50 negative)
	floor := base[0]
	ms := func(d time.Duration) float64 { return float64((d - floor).Microseconds()) / 1000 }
	rc.p50 = ms(took[len(took)/2])
	rc.p99 = ms(took[(len(took)*99+99)/100-1])
	return rc, nil
}

func renderRuleChanges(rcs []ruleChange, moat map[int]float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n### Compared: a rule change in iptables and nftables\n\n")
	fmt.Fprintf(&b, "The same change made the way an agent makes it: `iptables -A` (legacy and nft backends) and `nft add\n")
	fmt.Fprintf(&b, "element`, run through nsenter in a network namespace already holding N rules (iptables: N rules after an\n")
	fmt.Fprintf(&b, "ESTABLISHED accept; nft: one rule and a set of N), timed from start to return (the rule is in force then), less\n")
	fmt.Fprintf(&b, "nsenter's own cost. Milliseconds over the changes. Moat's column is the folder source's p50 from the table\n")
	fmt.Fprintf(&b, "above (the change from a file written to the verdict seen in the datapath, the 20 ms settle included).\n\n")
	fmt.Fprintf(&b, "| rules | iptables-legacy p50 / p99 | iptables-nft p50 / p99 | nft set p50 / p99 | Moat (folder) p50 |\n|---|---|---|---|---|\n")
	by := map[string]map[int]ruleChange{}
	var sizes []int
	for _, rc := range rcs {
		if by[rc.tool] == nil {
			by[rc.tool] = map[int]ruleChange{}
		}
		by[rc.tool][rc.rules] = rc
		if !slices.Contains(sizes, rc.rules) {
			sizes = append(sizes, rc.rules)
		}
	}
	slices.Sort(sizes)
	for _, n := range sizes {
		fmt.Fprintf(&b, "| %d ", n)
		for _, tool := range []string{"iptables-legacy", "iptables-nft", "nft"} {
			rc := by[tool][n]
			fmt.Fprintf(&b, "| %.1f / %.1f ", rc.p50, rc.p99)
		}
		if v, ok := moat[n]; ok {
			fmt.Fprintf(&b, "| %.1f |\n", v)
		} else {
			fmt.Fprintf(&b, "| - |\n")
		}
	}
	return b.String()
}

// folderP50 is the folder source's median p50 by rules loaded.
func folderP50(p50 map[changeKey][]float64) map[int]float64 {
	out := map[int]float64{}
	for k, v := range p50 {
		if k.source == "folder" {
			out[k.rules] = summarize(v).median
		}
	}
	return out
}
