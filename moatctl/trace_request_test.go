package main

import (
	"strings"
	"testing"

	"github.com/moatfw/moat/internal/agentapi"
)

// --to takes an address, a pod or a DNS name, each with an optional port; anything else is refused with what it
// may be.
func TestTraceRequestTargets(t *testing.T) {
	for _, c := range []struct {
		to   string
		want agentapi.TraceRequest
		err  string
	}{
		{to: "203.0.113.10:443", want: agentapi.TraceRequest{Remote: "203.0.113.10", Port: 443}},
		{to: "[2001:db8::1]:80", want: agentapi.TraceRequest{Remote: "2001:db8::1", Port: 80}},
		{to: "shared/db-0:5432", want: agentapi.TraceRequest{RemoteNamespace: "shared", RemotePod: "db-0", Port: 5432}},
		{to: "api.stripe.com:443", want: agentapi.TraceRequest{RemoteName: "api.stripe.com", Port: 443}},
		{to: "API.Stripe.com", want: agentapi.TraceRequest{RemoteName: "API.Stripe.com"}},
		{to: "*.stripe.com:443", err: "NAME[:PORT]"},
		{to: "bad_name.example:443", err: "NAME[:PORT]"},
		{to: "api.stripe.com:https", err: "not a port"},
		{to: "/db-0", err: "NAMESPACE/POD"},
	} {
		req, err := traceRequest("payments", c.to, "tcp", "egress", 0)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("--to %s: %v, want an error saying %q", c.to, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("--to %s: %v", c.to, err)
			continue
		}
		c.want.Namespace, c.want.Protocol, c.want.Direction = "payments", "tcp", "egress"
		if req != c.want {
			t.Errorf("--to %s: %+v, want %+v", c.to, req, c.want)
		}
	}
}
