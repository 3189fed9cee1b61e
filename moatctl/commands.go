package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/api/v1alpha1"
	"github.com/moatfw/moat/internal/report"
	"github.com/moatfw/moat/internal/version"
)

// emit writes v as JSON or YAML, or calls table.
func (g *globals) emit(v any, table func(w io.Writer) error) error {
	switch g.output {
	case "json":
		enc := json.NewEncoder(g.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = g.out.Write(b)
		return err
	}
	return table(g.out)
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Is Moat healthy on this node? Exits non-zero when something is wrong",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			st, err := g.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			if err := g.emit(st, func(w io.Writer) error { return statusTable(w, st, time.Now()) }); err != nil {
				return err
			}
			if !st.Ready || len(st.Problems) > 0 {
				return exitError{1}
			}
			return nil
		},
	}
}

func statusTable(w io.Writer, st agentapi.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ready := "yes"
	if !st.Ready {
		ready = "NO"
	}
	fmt.Fprintf(tw, "Enforcer:\t%s (API %s), up %s, source %s\n", st.Version, st.APIVersion, age(now, st.Started), st.Source)
	fmt.Fprintf(tw, "Ready:\t%s\n", ready)
	if st.ServiceRanges != "" {
		fmt.Fprintf(tw, "Services:\tranges from %s\n", st.ServiceRanges)
	}
	var modes []string
	for m, n := range st.AttachModes {
		if m == "" {
			m = "not attached"
		}
		modes = append(modes, fmt.Sprintf("%s %d", m, n))
	}
	sort.Strings(modes)
	fmt.Fprintf(tw, "Endpoints:\t%d (%s)\n", st.Endpoints, dash(strings.Join(modes, ", ")))
	applied := "never"
	if !st.Applied.IsZero() {
		applied = age(now, st.Applied) + " ago"
	}
	fmt.Fprintf(tw, "Policy:\tgeneration %d, applied %s; %d policies (%d invalid), %d namespaces\n", st.Generation, applied,
		st.Policies, st.InvalidPolicies, st.Namespaces)
	fmt.Fprintf(tw, "Lost events:\t%d\n", st.LostEvents)
	names := make([]string, 0, len(st.Maps))
	for n := range st.Maps {
		names = append(names, n)
	}
	sort.Strings(names)
	var fills []string
	for _, n := range names {
		f := st.Maps[n]
		pct := 0.0
		if f.Capacity > 0 {
			pct = 100 * float64(f.Entries) / float64(f.Capacity)
		}
		fills = append(fills, fmt.Sprintf("%s %d/%d (%.0f%%)", n, f.Entries, f.Capacity, pct))
	}
	fmt.Fprintf(tw, "Maps:\t%s\n", strings.Join(fills, ", "))
	if len(st.Problems) == 0 {
		fmt.Fprintf(tw, "Problems:\tnone\n")
	}
	for i, p := range st.Problems {
		label := ""
		if i == 0 {
			label = "Problems:"
		}
		fmt.Fprintf(tw, "%s\t- %s\n", label, p)
	}
	for i, w := range st.Warnings {
		label := ""
		if i == 0 {
			label = "Warnings:"
		}
		fmt.Fprintf(tw, "%s\t- %s\n", label, w)
	}
	for i, l := range st.LastErrors {
		label := ""
		if i == 0 {
			label = "Last errors:"
		}
		fmt.Fprintf(tw, "%s\t%s %s%s\n", label, l.Time.UTC().Format(time.RFC3339), l.Message, fields(l.Fields))
	}
	return tw.Flush()
}

func fields(f map[string]string) string {
	keys := make([]string, 0, len(f))
	for k := range f {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, k+"="+f[k])
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, " ") + ")"
}

func age(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func endpointsCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "endpoints",
		Short: "The pods Moat guards on this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			eps, err := g.client().Endpoints(cmd.Context())
			if err != nil {
				return err
			}
			return g.emit(eps, func(w io.Writer) error { return endpointsTable(w, eps) })
		},
	}
}

func endpointsTable(w io.Writer, eps []agentapi.Endpoint) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tPOD\tIDENTITY\tADDRESSES\tHOST VETH\tMODE\tATTACHED\tPROBLEM")
	for _, ep := range eps {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%v\t%s\n", ep.Namespace, dash(ep.Pod), ep.Identity,
			strings.Join(ep.Addresses, ","), ep.HostVeth, dash(ep.Mode), ep.Attached, dash(ep.Problem))
	}
	return tw.Flush()
}

func policiesCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Annotations: map[string]string{clusterAnnotation: "yes"},
		Use:         "policies",
		Short:       "Every FirewallPolicy: accepted or invalid (and why), priority, mode, the namespaces it selects",
		Args:        cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			var ps []agentapi.Policy
			var err error
			if g.kubeconfig != "" {
				ps, err = clusterPolicies(cmd.Context(), g.kubeconfig)
			} else {
				ps, err = g.client().Policies(cmd.Context())
			}
			if err != nil {
				return err
			}
			return g.emit(ps, func(w io.Writer) error { return policiesTable(w, ps) })
		},
	}
}

func policiesTable(w io.Writer, ps []agentapi.Policy) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tPRIORITY\tMODE\tRULES\tNAMESPACES\tREASON")
	for _, p := range ps {
		notes := []string{}
		if p.Reason != "" {
			notes = append(notes, p.Reason)
		}
		for _, w := range p.Warnings {
			notes = append(notes, "warning: "+w)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%s\t%s\n", p.Name, p.State, p.Priority, dash(p.Mode), p.Rules,
			dash(strings.Join(p.Namespaces, ",")), dash(strings.Join(notes, "; ")))
	}
	return tw.Flush()
}

func traceCmd(g *globals) *cobra.Command {
	var from, to, proto, direction string
	var port uint16
	c := &cobra.Command{
		Use:   "trace --from NAMESPACE[/POD] --to ADDRESS[:PORT]|NAMESPACE/POD[:PORT]|NAME[:PORT]",
		Short: "What would happen to a packet, and which policy and rule decide it",
		Example: "  moatctl trace --from payments/api-0 --to 203.0.113.10:443\n" +
			"  moatctl trace --from payments --to shared-services/db-0:5432\n" +
			"  moatctl trace --from payments --to api.stripe.com:443\n" +
			"  moatctl trace --from web --to 198.51.100.7:8443 --direction ingress",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			req, err := traceRequest(from, to, proto, direction, port)
			if err != nil {
				return err
			}
			res, err := g.client().Trace(cmd.Context(), req)
			if err != nil {
				return err
			}
			return g.emit(res, func(w io.Writer) error { return traceTable(w, res) })
		},
	}
	c.Flags().StringVar(&from, "from", "", "the pod's namespace, or NAMESPACE/POD (required)")
	c.Flags().StringVar(&to, "to", "", "the remote: ADDRESS, ADDRESS:PORT, [IPv6]:PORT, NAMESPACE/POD[:PORT], or a DNS NAME[:PORT] (required)")
	c.Flags().StringVar(&proto, "proto", "tcp", "tcp, udp, sctp, icmp, icmpv6 or a protocol number")
	c.Flags().StringVar(&direction, "direction", "egress", "egress (the pod sends) or ingress (the remote sends to the pod)")
	c.Flags().Uint16Var(&port, "port", 0, "the destination port (or use ADDRESS:PORT); the ICMP type for icmp")
	return c
}

func traceTable(w io.Writer, res agentapi.TraceResult) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Verdict:\t%s\n", strings.ToUpper(res.Verdict))
	fmt.Fprintf(tw, "Reason:\t%s\n", res.Reason)
	if res.Policy != "" {
		fmt.Fprintf(tw, "Decided by:\tFirewallPolicy %s, rule %s\n", res.Policy, res.Rule)
	} else {
		fmt.Fprintf(tw, "Decided by:\tno rule (%s)\n", res.Reason)
	}
	if res.PeerVerdict != "" {
		peer := "no rule"
		if res.PeerPolicy != "" {
			peer = fmt.Sprintf("FirewallPolicy %s, rule %s", res.PeerPolicy, res.PeerRule)
		}
		fmt.Fprintf(tw, "Other side:\t%s by namespace %s (%s)\n", res.PeerVerdict, res.RemoteNamespace, peer)
	}
	if res.AuditPolicy != "" {
		fmt.Fprintf(tw, "Reported by:\tAudit FirewallPolicy %s, rule %s\n", res.AuditPolicy, res.AuditRule)
	}
	remote := res.RemoteClass
	if res.RemoteNamespace != "" {
		remote += ", namespace " + res.RemoteNamespace
	}
	fmt.Fprintf(tw, "Remote:\t%s (%s)\n", res.Remote, remote)
	fmt.Fprintf(tw, "Identity:\t%d\n", res.Identity)
	fmt.Fprintf(tw, "Why:\t%s\n", res.Explanation)
	if res.Name != "" {
		if len(res.Addresses) == 0 {
			fmt.Fprintf(tw, "Learned:\tno address of %s learned by this namespace now\n", res.Name)
		}
		for _, a := range res.Addresses {
			by := "no rule"
			if a.Policy != "" {
				by = fmt.Sprintf("FirewallPolicy %s, rule %s", a.Policy, a.Rule)
			}
			fmt.Fprintf(tw, "Learned:\t%s: %s (%s, %s)\n", a.Remote, strings.ToUpper(a.Verdict), a.Reason, by)
		}
	}
	return tw.Flush()
}

// traceRequest turns the trace flags into a request, refusing what the enforcer would refuse anyway.
func traceRequest(from, to, proto, direction string, port uint16) (agentapi.TraceRequest, error) {
	req := agentapi.TraceRequest{Protocol: proto, Direction: direction, Port: port}
	if from == "" || to == "" {
		return req, fmt.Errorf("trace needs --from NAMESPACE[/POD] and --to ADDRESS[:PORT] or NAMESPACE/POD")
	}
	req.Namespace, req.Pod, _ = strings.Cut(from, "/")
	switch direction {
	case "egress", "ingress":
	default:
		return req, fmt.Errorf("--direction %q: want egress or ingress", direction)
	}
	if ap, err := netip.ParseAddrPort(to); err == nil {
		req.Remote = ap.Addr().String()
		if req.Port == 0 {
			req.Port = ap.Port()
		}
		return req, nil
	}
	if a, err := netip.ParseAddr(to); err == nil {
		req.Remote = a.String()
		return req, nil
	}
	ns, pod, ok := strings.Cut(to, "/")
	if !ok {
		// a name, NAME or NAME:PORT
		name, portStr, hasPort := strings.Cut(to, ":")
		if _, err := v1alpha1.ParseNamePattern(name); err != nil || strings.HasPrefix(name, "*") {
			return req, fmt.Errorf("--to %q: want an address, ADDRESS:PORT, NAMESPACE/POD[:PORT] or NAME[:PORT]", to)
		}
		if hasPort {
			n, err := strconv.ParseUint(portStr, 10, 16)
			if err != nil {
				return req, fmt.Errorf("--to %q: port %q is not a port", to, portStr)
			}
			if req.Port == 0 {
				req.Port = uint16(n)
			}
		}
		req.RemoteName = name
		return req, nil
	}
	if ns == "" || pod == "" {
		return req, fmt.Errorf("--to %q: want an address, ADDRESS:PORT, NAMESPACE/POD[:PORT] or NAME[:PORT]", to)
	}
	if p, portStr, ok := strings.Cut(pod, ":"); ok {
		n, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return req, fmt.Errorf("--to %q: port %q is not a port", to, portStr)
		}
		pod = p
		if req.Port == 0 {
			req.Port = uint16(n)
		}
	}
	req.RemoteNamespace, req.RemotePod = ns, pod
	return req, nil
}

func flowsCmd(g *globals) *cobra.Command {
	var f agentapi.FlowFilter
	c := &cobra.Command{
		Use:   "flows",
		Short: "Recent flow events (denied, audit, and allowed when allow events are on); --follow for new ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			switch f.Verdict {
			case "", "allowed", "denied", "audit":
			default:
				return fmt.Errorf("--verdict %q: want allowed, denied or audit", f.Verdict)
			}
			return printStream(cmd.Context(), g, f.Follow, flowHeader, func(w io.Writer, fl agentapi.Flow) { flowRow(w, fl, time.Local) },
				func(fn func(agentapi.Flow) error) error { return g.client().Flows(cmd.Context(), f, fn) })
		},
	}
	c.Flags().BoolVarP(&f.Follow, "follow", "f", false, "keep printing new flows")
	c.Flags().StringVarP(&f.Namespace, "namespace", "n", "", "only this namespace's flows")
	c.Flags().StringVar(&f.Verdict, "verdict", "", "only allowed, denied or audit flows")
	c.Flags().DurationVar(&f.Since, "since", 0, "only flows of the last duration (5m, 1h)")
	c.Flags().IntVar(&f.Limit, "limit", 0, "at most this many past flows (the latest)")
	return c
}

// printStream prints what run streams, in g's output: a table under header (row by row as they come with follow),
// JSON lines, or YAML documents. Interrupted while following is no error.
func printStream[T any](ctx context.Context, g *globals, follow bool, header string, row func(io.Writer, T),
	run func(func(T) error) error) error {
	var tw *tabwriter.Writer
	if g.output == "table" {
		tw = tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, header)
	}
	enc := json.NewEncoder(g.out)
	err := run(func(v T) error {
		switch g.output {
		case "json":
			return enc.Encode(v)
		case "yaml":
			b, err := yaml.Marshal(v)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(g.out, "---\n%s", b)
			return err
		}
		row(tw, v)
		if follow {
			return tw.Flush() // each line as it comes
		}
		return nil
	})
	if tw != nil {
		_ = tw.Flush()
	}
	if ctx.Err() != nil {
		return nil // interrupted while following
	}
	return err
}

func dnsCmd(g *globals) *cobra.Command {
	var f agentapi.DNSFilter
	c := &cobra.Command{
		Use:   "dns",
		Short: "Recent DNS answers pods got on this node: who asked what, the answer, its latency; --follow for new ones",
		Long: `Recent DNS answers pods got on this node, from the cluster's resolvers or from Moat (NXDOMAIN for a name a
dnsDeny rule denies). Every answer Moat gave and every answer for a name of an fqdn rule is here; of the others,
at most FirewallConfig dns.answerEventsPerSecond a second (every answer is counted in the moat_dns_* metrics).

ANSWER is who answered: resolver, moat, or audit (a dnsDeny name an Audit policy only reports). LATENCY runs
from the query leaving the pod to the answer reaching it, measured on the node. NOTE says what Moat did with the
answer: learned for an fqdn rule (with the patterns), handed to the enforcer to read, truncated, partly read.`,
		Example: `  moatctl dns -n payments --rcode NXDOMAIN
  moatctl dns --name '*.stripe.com' --follow
  moatctl dns --pod web-0 -n shop --since 5m -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			if f.Name != "" {
				if _, err := v1alpha1.ParseNamePattern(f.Name); err != nil {
					return fmt.Errorf("--name %q: %w", f.Name, err)
				}
			}
			return printStream(cmd.Context(), g, f.Follow, dnsHeader, func(w io.Writer, a agentapi.DNSAnswer) { dnsRow(w, a, time.Local) },
				func(fn func(agentapi.DNSAnswer) error) error { return g.client().DNS(cmd.Context(), f, fn) })
		},
	}
	c.Flags().BoolVarP(&f.Follow, "follow", "f", false, "keep printing new answers")
	c.Flags().StringVarP(&f.Namespace, "namespace", "n", "", "only this namespace's answers")
	c.Flags().StringVar(&f.Pod, "pod", "", "only this pod's answers")
	c.Flags().StringVar(&f.Name, "name", "", "only answers for this name or fqdn pattern (*.example.com, **.example.com)")
	c.Flags().StringVar(&f.Rcode, "rcode", "", "only answers with this rcode (NOERROR, NXDOMAIN, SERVFAIL, REFUSED)")
	c.Flags().DurationVar(&f.Since, "since", 0, "only answers of the last duration (5m, 1h)")
	c.Flags().IntVar(&f.Limit, "limit", 0, "at most this many past answers (the latest)")
	return c
}

const dnsHeader = "TIME\tNAMESPACE\tPOD\tNAME\tTYPE\tRCODE\tANSWER\tLATENCY\tADDRESSES\tNOTE"

// dnsRow writes one DNS answer as a row under dnsHeader, its time in loc.
func dnsRow(w io.Writer, a agentapi.DNSAnswer, loc *time.Location) {
	latency, addrs := "-", "-"
	if a.LatencyMicros > 0 {
		latency = (time.Duration(a.LatencyMicros) * time.Microsecond).String()
	}
	if len(a.Addresses) > 0 {
		addrs = strings.Join(a.Addresses, ",")
	}
	answer := a.Answer
	if a.Policy != "" {
		answer += " (" + a.Policy + " " + a.Rule + ")"
	}
	var notes []string
	if len(a.FQDN) > 0 {
		notes = append(notes, "learned for "+strings.Join(a.FQDN, ","))
	}
	for _, n := range []struct {
		on   bool
		what string
	}{{a.ToAgent, "read by the enforcer"}, {a.Truncated, "truncated"}, {a.Partial, "partly read"}, {a.Proto == "tcp", "tcp"}} {
		if n.on {
			notes = append(notes, n.what)
		}
	}
	note := "-"
	if len(notes) > 0 {
		note = strings.Join(notes, "; ")
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Time.In(loc).Format("15:04:05.000"), dash(a.Namespace),
		dash(a.Pod), a.Name, a.Type, a.Rcode, answer, latency, addrs, note)
}

const flowHeader = "TIME\tDIRECTION\tVERDICT\tREASON\tPOD\tPROTO\tSOURCE\tDESTINATION\tREMOTE\tPOLICY"

// flowRow writes one flow as a row under flowHeader, its time in loc.
func flowRow(w io.Writer, fl agentapi.Flow, loc *time.Location) {
	pol := "-"
	if fl.Policy != "" {
		pol = fl.Policy + " " + fl.Rule
	}
	sport, dport := fl.Sport, fl.Dport
	if fl.Proto == "icmp" || fl.Proto == "icmpv6" {
		sport, dport = 0, 0 // an echo's identifier, not a port
	}
	fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s/%s\t%s\t%s\t%s\t%s\t%s\n", fl.Time.In(loc).Format("15:04:05.000"),
		fl.Direction, fl.Verdict, fl.Reason, dash(fl.Namespace), dash(fl.Pod), fl.Proto,
		hostPort(fl.Src, sport), hostPort(fl.Dst, dport), fl.Remote, pol)
}

func hostPort(addr string, port uint16) string {
	if port == 0 {
		return addr
	}
	if strings.Contains(addr, ":") {
		return fmt.Sprintf("[%s]:%d", addr, port)
	}
	return fmt.Sprintf("%s:%d", addr, port)
}

func reportCmd(g *globals) *cobra.Command {
	var format string
	c := &cobra.Command{
		Annotations: map[string]string{clusterAnnotation: "yes"},
		Use:         "report",
		Short:       "Who can reach what: per namespace, the Internet, the metadata API, other namespaces, inbound ports",
		Args:        cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("format") && g.output != "table" {
				format = g.output
			}
			switch format {
			case "table", "json", "yaml", "markdown", "html":
			default:
				return fmt.Errorf("--format %q: want table, json, yaml, markdown or html", format)
			}
			var r report.Report
			var err error
			if g.kubeconfig != "" {
				r, err = clusterReport(cmd.Context(), g.kubeconfig)
			} else {
				err = g.client().Report(cmd.Context(), &r)
			}
			if err != nil {
				return err
			}
			switch format {
			case "markdown":
				return r.Markdown(g.out)
			case "html":
				return r.HTML(g.out, time.Now())
			case "json", "yaml":
				out := *g
				out.output = format
				return out.emit(r, nil)
			}
			return r.Table(g.out)
		},
	}
	c.Flags().StringVar(&format, "format", "table", "table, json, yaml, markdown or html (one self-contained page)")
	return c
}

func hostCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "host",
		Short: "This node's safety set: what its host firewall keeps open whatever the host policy, and to whom",
		Long: `This node's safety set, as derived from the cluster now: the API server (on the port of the kubernetes
Service's endpoints) from nodes and FirewallConfig hostFirewall.adminCIDRs, etcd from the API servers and the
control-plane nodes, the scheduler and the controller manager from the node itself, the kubelet (on the port of its
Node status) from the control plane, the nodes and the pod ranges, SSH, and what a node needs to stay one. Each
source says where it came from. This version does not enforce the host firewall yet: the set is what it will keep
open. Needs the Kubernetes source.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := g.checkOutput(); err != nil {
				return err
			}
			h, err := g.client().Host(cmd.Context())
			if err != nil {
				return err
			}
			return g.emit(h, func(w io.Writer) error {
				state := "enforced"
				if !h.Enforced {
					state = "not enforced by this version (the set it will keep open)"
				}
				fmt.Fprintf(w, "Node:  %s\nState: %s\n", h.Node, state)
				for _, warn := range h.Warnings {
					fmt.Fprintf(w, "warning: %s\n", warn)
				}
				fmt.Fprintln(w)
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ENTRY\tSERVICE\tPORTS\tPORT FROM\tOVERRIDABLE\tSOURCES")
				for _, e := range h.Entries {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", e.Name, e.What, e.Ports, e.Learned, e.Overridable, safetySources(e.Sources))
				}
				return tw.Flush()
			})
		},
	}
}

// safetySources is an entry's sources grouped by where they came from: "node a (10.0.0.1/32); adminCIDRs (...)".
func safetySources(sources []agentapi.SafetySource) string {
	var order []string
	by := map[string][]string{}
	for _, s := range sources {
		if _, ok := by[s.From]; !ok {
			order = append(order, s.From)
		}
		by[s.From] = append(by[s.From], s.Prefix)
	}
	parts := make([]string, 0, len(order))
	for _, from := range order {
		parts = append(parts, from+" ("+strings.Join(by[from], ", ")+")")
	}
	return strings.Join(parts, "; ")
}

func countersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "counters",
		Short: "The datapath's packet counters by reason, read from the pinned maps",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			dp, err := bpf.OpenPinned(g.pinRoot)
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
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REASON\tDROP\tPACKETS\tBYTES")
			for _, r := range reasons {
				fmt.Fprintf(tw, "%s\t%v\t%d\t%d\n", bpf.ReasonName(r), r.IsDrop(), c[r].Packets, c[r].Bytes)
			}
			return tw.Flush()
		},
	}
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:         "version",
		Annotations: map[string]string{clusterAnnotation: "yes"}, // asks nobody
		Short:       "moatctl's version",
		Args:        cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintln(g.out, "moatctl", version.Version, "API", agentapi.Version)
		},
	}
}
