package hostile

import (
	"net/netip"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/simnode"
)

const nat64YAML = `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: nat64-deny}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: nat64}}
  egress:
  - action: Deny
    to: [{cidr: 203.0.113.0/24}]
`

// nat64: an IPv4 address embedded in the NAT64 prefix (64:ff9b::/96) is that IPv4 address once a NAT64 gateway
// translates it, so the metadata API's block and IPv4 rules must hold for it too. The stand-in Internet answers
// on those addresses, as a NAT64 gateway would for the real ones.
func nat64(t *testing.T, e *env) {
	e.apply(t, "nat64.yaml", nat64YAML)
	a := e.pods["nat64-a"]
	from, gw, inet := eth0(t, a), e.gateway(t), e.internet(t)
	if !e.moat {
		// the whole way there: a TCP exchange with the "metadata API" through its NAT64 address
		if err := a.Connect(netip.AddrPortFrom(simnode.NAT64(simnode.Metadata), 80).String(), 3*time.Second); err != nil {
			t.Errorf("without Moat the pod cannot reach the metadata API's NAT64 address: %v", err)
		}
	}
	for _, c := range []struct {
		name    string
		dst     netip.Addr
		reason  string
		blocked bool
	}{
		{"the metadata API", simnode.NAT64(simnode.Metadata), "metadata-api", true},
		{"a denied IPv4 range", simnode.NAT64(simnode.WorldAddr(1)), "denied-by-rule", true},
		{"an allowed IPv4 address", simnode.NAT64(simnode.WorldAddr(0)), "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			id, m := tag("nat64"), tag("marker")
			hostile := udpFrame(t, from.MAC, gw.MAC, netip.AddrPortFrom(a.Addr6, 4000), netip.AddrPortFrom(c.dst, 80), id)
			marker := udpFrame(t, from.MAC, gw.MAC, netip.AddrPortFrom(a.Addr6, 4000), netip.AddrPortFrom(simnode.WorldAddr6(0), 80), m)
			at := listen(t, inet, false)
			e.verdict(t, c.dst.String()+" ("+c.name+")", through(t, from, at, hostile, has(id), marker, has(m)), c.blocked)
			if e.moat && c.reason != "" {
				if _, ok := e.waitFlow(t, func(f agentapi.Flow) bool {
					return f.Dst == c.dst.String() && f.Verdict == "denied" && f.Reason == c.reason
				}); !ok {
					t.Errorf("no flow event denying %s with reason %s", c.dst, c.reason)
				}
			}
		})
	}
}
