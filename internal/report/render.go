package report

import (
	"fmt"
	"html/template"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// Summary is a Reach in a few words: "none", "all", or the open grants ("tcp/443 198.51.100.0/24").
func (r Reach) Summary() string {
	if r.Open != OpenSome {
		return string(r.Open)
	}
	var parts []string
	for _, g := range r.Grants {
		parts = append(parts, g.Short())
	}
	return strings.Join(parts, ", ")
}

// Short is a grant in a few words: its protocol and ports, and its remote unless that is any IPv4 address.
func (g Grant) Short() string {
	s := g.protocolPorts()
	if !g.Remote.whole() || g.Remote.Prefix.Addr().Is6() {
		s += " " + g.Remote.String()
	}
	return s
}

// Long is a grant with the parts of its remote it leaves out.
func (g Grant) Long() string {
	if len(g.Except) == 0 {
		return g.Short()
	}
	except := make([]string, len(g.Except))
	for i, e := range g.Except {
		except[i] = e.String()
	}
	return g.protocolPorts() + " " + g.Remote.String() + " except " + strings.Join(except, ", ")
}

// protocolPorts is "tcp/443", "udp/8000-8100", "icmp/8", or the protocol alone for all its ports.
func (g Grant) protocolPorts() string {
	s := v1alpha1.ProtocolName(g.Protocol)
	if !g.Ports.all(g.Protocol) {
		s += "/" + g.Ports.text(g.Protocol)
	}
	return s
}

// Decider is what opens the grant: "FirewallPolicy payments-egress, rule egress[0]", or the default.
func (g Grant) Decider() string {
	if g.Rule.Policy != "" {
		return fmt.Sprintf("FirewallPolicy %s, rule %s", g.Rule.Policy, g.Rule.Name())
	}
	return defaultAllows(g.Rule.Direction)
}

func defaultAllows(dir Direction) string {
	return "no rule matches; the " + string(dir) + " default allows it"
}

// text is "443", "8000-8100", or "all" for the whole range of proto.
func (p Ports) text(proto uint8) string {
	switch {
	case p.all(proto):
		return "all"
	case p.First == p.Last:
		return strconv.Itoa(int(p.First))
	}
	return fmt.Sprintf("%d-%d", p.First, p.Last)
}

// String is the namespace, "any" or "any (IPv6)" for a whole family, or the prefix.
func (r Remote) String() string {
	switch {
	case r.Namespace != "":
		return r.Namespace
	case r.whole() && r.Prefix.Addr().Is6():
		return "any (IPv6)"
	case r.whole():
		return "any"
	}
	return r.Prefix.String()
}

// Name is the rule's place in its policy, as flow events write it: "egress[0]".
func (k RuleKey) Name() string { return fmt.Sprintf("%s[%d]", k.Direction, k.Index) }

// Why says, for an answer of none, what denies it: "denied by payments-egress egress[1]".
func (r Reach) Why() string {
	if r.Open != OpenNone {
		return ""
	}
	d := r.Denial
	if len(d.Rules) > 0 {
		rules := make([]string, len(d.Rules))
		for i, k := range d.Rules {
			rules[i] = k.Policy + " " + k.Name()
		}
		s := "denied by " + strings.Join(rules, ", ")
		if d.Default != "" {
			s += "; the rest by the " + string(d.Default.direction()) + " default"
		}
		return s
	}
	switch d.Default {
	case DefaultWorldEgress, DefaultWorldIngress:
		return "denied by the world default, and no rule allows it"
	case DefaultMetadataAPI:
		return fmt.Sprintf("blocked by default (label the namespace %s=allow, or list it in FirewallConfig's metadataAPI)", v1alpha1.LabelMetadata)
	}
	return "denied"
}

// direction is the direction of the packets a default denies.
func (d Default) direction() Direction {
	if d == DefaultWorldIngress {
		return Ingress
	}
	return Egress
}

// peersSummary lists the namespaces a namespace reaches, and how.
func (n Namespace) peersSummary() string {
	var all, some, none []string
	for _, p := range n.Peers {
		switch p.Open {
		case OpenAll:
			all = append(all, p.Namespace)
		case OpenNone:
			none = append(none, p.Namespace)
		default:
			some = append(some, fmt.Sprintf("%s (%s)", p.Namespace, portsOnly(p.Reach)))
		}
	}
	var parts []string
	if len(all) > 0 {
		parts = append(parts, "all: "+strings.Join(all, " "))
	}
	if len(some) > 0 {
		parts = append(parts, "some: "+strings.Join(some, " "))
	}
	if len(none) > 0 {
		parts = append(parts, "none: "+strings.Join(none, " "))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "; ")
}

func portsOnly(r Reach) string {
	var parts []string
	for _, g := range r.Grants {
		parts = append(parts, g.protocolPorts())
	}
	return strings.Join(parts, " ")
}

// Table writes the report as an aligned table, one row a namespace.
func (r Report) Table(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tZONE\tWORLD EGRESS\tMETADATA API\tWORLD INGRESS\tOTHER NAMESPACES\tPOLICIES")
	for _, n := range r.Namespaces {
		name := n.Name
		if n.Audit {
			name += " (audit)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, dash(n.Zone), n.Egress.Summary(), n.Metadata.Summary(),
			n.Ingress.Summary(), n.peersSummary(), dash(strings.Join(n.policies(), ",")))
	}
	return tw.Flush()
}

func (n Namespace) policies() []string {
	seen := map[string]bool{}
	var out []string
	add := func(ps []string) {
		for _, p := range ps {
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	add(n.Egress.Policies)
	add(n.Metadata.Policies)
	add(n.Ingress.Policies)
	for _, p := range n.Peers {
		add(p.Policies)
	}
	return out
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Markdown writes the report as a Markdown document: a summary table, then each namespace's grants.
func (r Report) Markdown(w io.Writer) error {
	var b strings.Builder
	b.WriteString("# Moat reachability report\n\n")
	b.WriteString("| namespace | zone | world egress | metadata API | world ingress | other namespaces |\n|---|---|---|---|---|---|\n")
	for _, n := range r.Namespaces {
		name := n.Name
		if n.Audit {
			name += " (audit)"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", mdEscape(name), mdEscape(dash(n.Zone)), mdEscape(n.Egress.Summary()),
			mdEscape(n.Metadata.Summary()), mdEscape(n.Ingress.Summary()), mdEscape(n.peersSummary()))
	}
	for _, n := range r.Namespaces {
		fmt.Fprintf(&b, "\n## %s\n\n", mdEscape(n.Name))
		for _, part := range []struct {
			title string
			reach Reach
		}{{"World egress", n.Egress}, {"Metadata API", n.Metadata}, {"World ingress", n.Ingress}} {
			fmt.Fprintf(&b, "- **%s: %s**%s\n", part.title, part.reach.Open, why(part.reach))
			if part.reach.Open == OpenSome {
				for _, g := range part.reach.Grants {
					fmt.Fprintf(&b, "  - %s: %s\n", mdEscape(g.Long()), mdEscape(g.Decider()))
				}
			}
		}
		for _, p := range n.Peers {
			fmt.Fprintf(&b, "- **to %s: %s**%s\n", mdEscape(p.Namespace), p.Open, why(p.Reach))
			if p.Open == OpenSome {
				for _, g := range p.Grants {
					fmt.Fprintf(&b, "  - %s: %s\n", mdEscape(g.Long()), mdEscape(g.Decider()))
				}
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func why(r Reach) string {
	if r.Why() == "" {
		return ""
	}
	return " (" + r.Why() + ")"
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "*", `\*`, "_", `\_`, "<", "&lt;", ">", "&gt;").Replace(s)
}

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"badge": func(open Openness) string {
		return map[Openness]string{OpenAll: "open", OpenSome: "partly open", OpenNone: "closed"}[open]
	},
	"pair": func(t string, r Reach) titled { return titled{t, r} },
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Moat reachability report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1200px;color:#1d2430;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} .sub{color:#5b6473;margin-bottom:1.5rem}
table{border-collapse:collapse;width:100%;margin-bottom:2rem} th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid #e3e7ee;vertical-align:top}
th{background:#f4f6fa;font-weight:600;font-size:.85rem;text-transform:uppercase;letter-spacing:.03em;color:#4a5363}
.b{display:inline-block;border-radius:999px;padding:.05rem .55rem;font-size:.8rem;font-weight:600;white-space:nowrap}
.all{background:#fde2e1;color:#a1221b} .some{background:#fff1cf;color:#8a5a00} .none{background:#dcf5e4;color:#17683a}
.in.all{background:#fde2e1} .g{color:#4a5363;font-size:.85rem;margin-top:.2rem} .zone{color:#5b6473}
details{border:1px solid #e3e7ee;border-radius:8px;padding:.6rem 1rem;margin-bottom:.6rem} summary{cursor:pointer;font-weight:600}
code{background:#f4f6fa;padding:0 .25rem;border-radius:4px}
.legend span{margin-right:1rem}
</style></head><body>
<h1>Moat reachability report</h1>
<div class="sub">Generated {{.Generated}}. For every namespace: what it can reach of the Internet and the cloud metadata API,
what the Internet can reach of it, and which other namespaces it reaches. Red is open, amber partly open, green closed.</div>
<table><thead><tr><th>Namespace</th><th>World egress</th><th>Metadata API</th><th>World ingress</th><th>Other namespaces</th></tr></thead><tbody>
{{range .R.Namespaces}}<tr><td><strong>{{.Name}}</strong>{{if .Audit}} <span class="b some">audit</span>{{end}}{{if .Zone}}<div class="zone">zone {{.Zone}}</div>{{end}}</td>
<td><span class="b {{.Egress.Open}}">{{badge .Egress.Open}}</span>{{if eq .Egress.Open "some"}}<div class="g">{{.Egress.Summary}}</div>{{end}}</td>
<td><span class="b {{.Metadata.Open}}">{{badge .Metadata.Open}}</span></td>
<td><span class="b {{.Ingress.Open}}">{{badge .Ingress.Open}}</span>{{if eq .Ingress.Open "some"}}<div class="g">{{.Ingress.Summary}}</div>{{end}}</td>
<td>{{range .Peers}}<div><span class="b {{.Open}}">{{.Namespace}}</span>{{if eq .Open "some"}} <span class="g">{{.Summary}}</span>{{end}}</div>{{end}}</td></tr>
{{end}}</tbody></table>
<h2>Details</h2>
{{range .R.Namespaces}}<details><summary>{{.Name}}</summary>
{{template "reach" (pair "World egress" .Egress)}}{{template "reach" (pair "Metadata API" .Metadata)}}{{template "reach" (pair "World ingress" .Ingress)}}
{{range .Peers}}{{template "reach" (pair (print "To namespace " .Namespace) .Reach)}}{{end}}
</details>
{{end}}
</body></html>
{{define "reach"}}<p><strong>{{.Title}}:</strong> <span class="b {{.Reach.Open}}">{{badge .Reach.Open}}</span>{{if .Reach.Why}} <span class="g">{{.Reach.Why}}</span>{{end}}</p>
{{if eq .Reach.Open "some"}}<ul>{{range .Reach.Grants}}<li><code>{{.Long}}</code>: {{if .Rule.Policy}}FirewallPolicy <code>{{.Rule.Policy}}</code> rule <code>{{.Rule.Name}}</code>{{else}}{{.Decider}}{{end}}</li>{{end}}</ul>{{end}}{{end}}
`))

type titled struct {
	Title string
	Reach Reach
}

// HTML writes the report as one self-contained page.
func (r Report) HTML(w io.Writer, generated time.Time) error {
	return page.Execute(w, struct {
		R         Report
		Generated string
	}{r, generated.UTC().Format("2006-01-02 15:04 MST")})
}
