// Command demo runs Moat on a simulated node, with real pods in network namespaces and no cluster: `make demo`.
// It builds what it needs, prints what it does, cleans up on exit and on Ctrl-C, and exits 1 when a verdict
// differs from the expected one.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/moatfw/moat/internal/demo"
	"github.com/moatfw/moat/internal/simnode"
)

func main() {
	examples := flag.String("examples", "examples/demo", "the policy folder the node starts with")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: run as root (sudo make demo): it creates network namespaces, veths, a bridge and a bpf filesystem")
		os.Exit(2)
	}
	// SIGPIPE too: with the output piped into head, the demo must still clean up rather than die
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	code := run(ctx, *examples)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, examples string) int {
	dir, err := os.MkdirTemp("", "moat-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "bin")
	fmt.Println("==> building Moat and the reference CNI plugins")
	if err := simnode.Build(bin, prefixed{}); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	bad, err := demo.Run(ctx, demo.Options{BinDir: bin, Examples: examples, Dir: dir, Out: os.Stdout})
	switch {
	case ctx.Err() != nil:
		fmt.Println("interrupted: everything the demo made is removed")
		return 130
	case err != nil:
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	case bad > 0:
		return 1
	}
	return 0
}

// prefixed indents the build's progress lines.
type prefixed struct{}

func (prefixed) Write(p []byte) (int, error) {
	fmt.Print("    ", string(p))
	return len(p), nil
}
