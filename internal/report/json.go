package report

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// The JSON form, which the enforcer's API serves and moatctl reads back, writes each value in its text form
// ("tcp", "8000-8100", "203.0.113.0/24", "any", "egress[0]"). Beside the values it writes, for people, the
// English of a default that opens a grant ("default") and of what denies an answer of none ("why"); reading
// the JSON back takes the values and leaves the English.

type reachJSON struct {
	Open     Openness `json:"open"`
	Grants   []Grant  `json:"grants,omitempty"`
	Policies []string `json:"policies,omitempty"`
	Why      string   `json:"why,omitempty"`
	Denial   *Denial  `json:"denial,omitempty"`
}

func (r Reach) toJSON() reachJSON {
	w := reachJSON{Open: r.Open, Grants: r.Grants, Policies: r.Policies, Why: r.Why()}
	if r.Open == OpenNone {
		w.Denial = &r.Denial
	}
	return w
}

func (w reachJSON) reach() Reach {
	r := Reach{Open: w.Open, Grants: w.Grants, Policies: w.Policies}
	if w.Denial != nil {
		r.Denial = *w.Denial
	}
	return r
}

// MarshalJSON writes the reach with the English of what denies it.
func (r Reach) MarshalJSON() ([]byte, error) { return json.Marshal(r.toJSON()) }

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Reach) UnmarshalJSON(b []byte) error {
	var w reachJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*r = w.reach()
	return nil
}

type peerJSON struct {
	Namespace string `json:"namespace"`
	Zone      string `json:"zone,omitempty"`
	reachJSON
}

// MarshalJSON writes the namespace and its reach in one object.
func (p Peer) MarshalJSON() ([]byte, error) {
	return json.Marshal(peerJSON{Namespace: p.Namespace, Zone: p.Zone, reachJSON: p.Reach.toJSON()})
}

// UnmarshalJSON reads what MarshalJSON writes. Every grant's remote is the peer's pods, whatever its name.
func (p *Peer) UnmarshalJSON(b []byte) error {
	var w peerJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*p = Peer{Namespace: w.Namespace, Zone: w.Zone, Reach: w.reach()}
	for i := range p.Grants {
		p.Grants[i].Remote = Remote{Namespace: p.Namespace}
	}
	return nil
}

type ruleJSON struct {
	Policy string `json:"policy,omitempty"`
	Rule   string `json:"rule,omitempty"`
}

type grantJSON struct {
	Protocol string         `json:"protocol"`
	Ports    string         `json:"ports"`
	Remote   string         `json:"remote"`
	Except   []netip.Prefix `json:"except,omitempty"`
	ruleJSON
	Default string `json:"default,omitempty"` // the English of the default that opens it, when no rule does
}

// MarshalJSON writes the grant's values as text, and its default in English.
func (g Grant) MarshalJSON() ([]byte, error) {
	w := grantJSON{Protocol: v1alpha1.ProtocolName(g.Protocol), Ports: g.Ports.text(g.Protocol), Remote: g.Remote.String(),
		Except: g.Except}
	if g.Rule.Policy != "" {
		w.ruleJSON = g.Rule.toJSON()
	} else {
		w.Default = defaultAllows(g.Rule.Direction)
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (g *Grant) UnmarshalJSON(b []byte) error {
	var w grantJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	proto, err := v1alpha1.ProtocolNumber(w.Protocol)
	if err != nil {
		return err
	}
	ports, err := parsePorts(w.Ports, proto)
	if err != nil {
		return err
	}
	*g = Grant{Protocol: proto, Ports: ports, Remote: parseRemote(w.Remote), Except: w.Except}
	if w.Policy != "" {
		g.Rule, err = w.ruleJSON.key()
		return err
	}
	for _, dir := range []Direction{Egress, Ingress} {
		if w.Default == defaultAllows(dir) {
			g.Rule.Direction = dir
			return nil
		}
	}
	return fmt.Errorf("grant opened by neither a rule nor a default: %q", w.Default)
}

func (k RuleKey) toJSON() ruleJSON { return ruleJSON{Policy: k.Policy, Rule: k.Name()} }

func (w ruleJSON) key() (RuleKey, error) {
	dir, index, ok := strings.Cut(strings.TrimSuffix(w.Rule, "]"), "[")
	i, err := strconv.Atoi(index)
	if !ok || err != nil || i < 0 || Direction(dir) != Egress && Direction(dir) != Ingress {
		return RuleKey{}, fmt.Errorf("rule %q of policy %s: want egress[N] or ingress[N]", w.Rule, w.Policy)
	}
	return RuleKey{Policy: w.Policy, Direction: Direction(dir), Index: i}, nil
}

// MarshalJSON writes the rule as its policy and its place ("egress[0]").
func (k RuleKey) MarshalJSON() ([]byte, error) { return json.Marshal(k.toJSON()) }

// UnmarshalJSON reads what MarshalJSON writes.
func (k *RuleKey) UnmarshalJSON(b []byte) error {
	var w ruleJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	var err error
	*k, err = w.key()
	return err
}

// parsePorts reads Ports.text.
func parsePorts(s string, proto uint8) (Ports, error) {
	if s == "all" {
		first, last := portRange(proto)
		return Ports{first, last}, nil
	}
	first, last, found := strings.Cut(s, "-")
	if !found {
		last = first
	}
	lo, err1 := strconv.ParseUint(first, 10, 16)
	hi, err2 := strconv.ParseUint(last, 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return Ports{}, fmt.Errorf("ports %q: want all, N or N-M", s)
	}
	return Ports{uint16(lo), uint16(hi)}, nil
}

// parseRemote reads Remote.String: what is not an address range is a namespace.
func parseRemote(s string) Remote {
	switch s {
	case "any":
		return Remote{Prefix: netip.PrefixFrom(netip.IPv4Unspecified(), 0)}
	case "any (IPv6)":
		return Remote{Prefix: netip.PrefixFrom(netip.IPv6Unspecified(), 0)}
	}
	if p, err := netip.ParsePrefix(s); err == nil {
		return Remote{Prefix: p}
	}
	return Remote{Namespace: s}
}
