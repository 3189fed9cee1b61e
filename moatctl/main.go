// Command moatctl answers what Moat is doing on a node. This build knows `version` and reads the pinned
// datapath's counters with `counters`; the rest comes with the moatctl issue.
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/version"
)

func main() {
	pinRoot := flag.String("pin-root", bpf.DefaultPinRoot, "bpffs folder of Moat's pinned datapath")
	flag.Parse()
	switch flag.Arg(0) {
	case "version":
		fmt.Println("moatctl", version.Version)
	case "counters":
		if err := counters(*pinRoot); err != nil {
			fmt.Fprintln(os.Stderr, "moatctl:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: moatctl [--pin-root DIR] version|counters")
		os.Exit(2)
	}
}

func counters(root string) error {
	dp, err := bpf.OpenPinned(root)
	if err != nil {
		return err
	}
	defer dp.Close()
	c, err := dp.ReasonCounters()
	if err != nil {
		return err
	}
	reasons := make([]bpf.Reason, 0, len(c))
	for r := range c {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool { return reasons[i] < reasons[j] })
	fmt.Printf("%-28s %-5s %12s %14s\n", "REASON", "DROP", "PACKETS", "BYTES")
	for _, r := range reasons {
		fmt.Printf("%-28s %-5v %12d %14d\n", bpf.ReasonName(r), r.IsDrop(), c[r].Packets, c[r].Bytes)
	}
	return nil
}
