// Command moatctl answers what Moat is doing on a node: is it healthy, which pods does it guard, what happened to
// a connection, what would happen to a packet, and which namespaces can reach the Internet, the metadata API and
// each other. It asks the local enforcer on its socket, or the cluster (--kubeconfig) for policies and the
// report. Installed as kubectl-moat, it is `kubectl moat`.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
)

// exitError carries an exit code without a message of its own (the command printed what it had to say).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

type globals struct {
	socket     string
	kubeconfig string
	output     string
	pinRoot    string
	out        io.Writer
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRoot(os.Stdout).ExecuteContext(ctx)
	stop()
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	default:
		fmt.Fprintln(os.Stderr, "moatctl:", err)
		os.Exit(1)
	}
}

func newRoot(out io.Writer) *cobra.Command {
	g := &globals{out: out}
	name := "moatctl"
	if strings.HasPrefix(filepath.Base(os.Args[0]), "kubectl-") {
		name = "kubectl moat"
	}
	root := &cobra.Command{
		Use:           name,
		Short:         "What Moat is doing on this node, and who can reach what",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if g.kubeconfig != "" && cmd.Annotations[clusterAnnotation] == "" {
				return fmt.Errorf("%s answers about one node from its enforcer's socket, not from the cluster: drop --kubeconfig (only policies and report read the cluster)", cmd.CommandPath())
			}
			return nil
		},
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", agentapi.DefaultSocket, "the enforcer's API socket")
	root.PersistentFlags().StringVar(&g.kubeconfig, "kubeconfig", "", "ask the cluster instead of the local enforcer (policies, report)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "table", "table, json or yaml")
	root.PersistentFlags().StringVar(&g.pinRoot, "pin-root", bpf.DefaultPinRoot, "the pinned datapath (counters)")
	root.AddCommand(statusCmd(g), endpointsCmd(g), policiesCmd(g), traceCmd(g), flowsCmd(g), dnsCmd(g), hostCmd(g), reportCmd(g),
		countersCmd(g), versionCmd(g))
	return root
}

// clusterAnnotation marks the commands that can answer from the cluster (--kubeconfig).
const clusterAnnotation = "moat.dev/cluster"

func (g *globals) client() *agentapi.Client { return agentapi.NewClient(g.socket) }

func (g *globals) checkOutput() error {
	switch g.output {
	case "table", "json", "yaml":
		return nil
	}
	return fmt.Errorf("--output %q: want table, json or yaml", g.output)
}
