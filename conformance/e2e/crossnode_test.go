package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/moatfw/moat/internal/agentapi"
)

// Pod to pod across nodes, over the datacenter network: each connection is decided twice, by the sender's egress
// on its node and by the receiver's ingress on the other, and each enforcer knows the remote pod's namespace only
// from the API server (Moat's address feed). A zone rule allows; a namespace deny denies, at either end; IPv4 and
// IPv6.
func TestZonesAcrossNodes(t *testing.T) {
	a, b := suite.nodes[0], suite.nodes[1]
	for _, zone := range []string{"e2e-x-db", "e2e-x-web", "e2e-x-app", "e2e-x-other"} {
		namespace(t, zone, map[string]string{"moat.dev/zone": zone})
	}
	mustApply(t, `apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-x-db-ingress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-x-db}}
  priority: 100
  ingress:
  - action: Allow
    from: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-x-app}}}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    from: [{namespaceSelector: {}}]
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: e2e-x-app-egress}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: e2e-x-app}}
  priority: 100
  egress:
  - action: Allow
    to: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-x-db}}}]
    ports: [{protocol: TCP, port: 8080}]
  - action: Deny
    to: [{namespaceSelector: {matchLabels: {moat.dev/zone: e2e-x-web}}}]
`)
	// the receivers on node B, the senders on node A
	db := agent(t, "e2e-x-db", "db", onNode(b))
	web := agent(t, "e2e-x-web", "web", onNode(b))
	app := agent(t, "e2e-x-app", "app", onNode(a))
	other := agent(t, "e2e-x-other", "other", onNode(a))
	if db.node == app.node {
		t.Fatalf("%s and %s run on the same node %s", db, app, db.node)
	}
	at := func(p pod, v6 bool) string {
		if v6 {
			return netip.AddrPortFrom(p.v6, 8080).String()
		}
		return netip.AddrPortFrom(p.v4, 8080).String()
	}
	for _, v6 := range []bool{false, true} {
		if v6 && !(db.v6.IsValid() && web.v6.IsValid() && app.v6.IsValid()) {
			t.Errorf("the pods have no IPv6 address: db %s, web %s, app %s", db.v6, web.v6, app.v6)
			break
		}
		settle := applied
		if v6 {
			settle = 0
		}
		// the network across nodes works: no rule stops other -> web
		expect(t, other, "tcp", at(web, v6), true, settle)
		// B's ingress: db takes its zone's peer, denies every other namespace
		expect(t, app, "tcp", at(db, v6), true, settle)
		expect(t, other, "tcp", at(db, v6), false, settle)
		// A's egress: app may not reach the web zone, which itself takes anyone
		expect(t, app, "tcp", at(web, v6), false, settle)
		// and back from B to A: nothing restricts db's egress or app's ingress
		expect(t, db, "tcp", at(app, v6), true, 0)

		// each denial was made where the rule is, knowing the remote pod's namespace
		src, dst := addrOf(other, v6), addrOf(db, v6)
		got := deniedAt(src, dst)
		if !record(t, fmt.Sprintf("where %s -> %s is denied", src, dst), b.Name+" ingress e2e-x-db-ingress remote e2e-x-other", got, 0) {
			t.Errorf("the denial of other -> db: %s", got)
		}
		src, dst = addrOf(app, v6), addrOf(web, v6)
		got = deniedAt(src, dst)
		if !record(t, fmt.Sprintf("where %s -> %s is denied", src, dst), a.Name+" egress e2e-x-app-egress remote e2e-x-web", got, 0) {
			t.Errorf("the denial of app -> web: %s", got)
		}
	}
}

func addrOf(p pod, v6 bool) netip.Addr {
	if v6 {
		return p.v6
	}
	return p.v4
}

// deniedAt says which node's enforcer denied a connection from src to dst, in which direction, by which policy,
// and what it took the remote for: "<node> <direction> <policy> remote <namespace or class>" from the latest
// denied flow event between the two addresses, or "nowhere".
func deniedAt(src, dst netip.Addr) string {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	where := "nowhere"
	for _, n := range suite.nodes {
		out, err := moatctlOn(ctx, n.Name, "flows", "--verdict", "denied", "-o", "json")
		if err != nil {
			return fmt.Sprintf("%s: moatctl flows: %v: %s", n.Name, err, out)
		}
		dec := json.NewDecoder(strings.NewReader(string(out)))
		for dec.More() {
			var f agentapi.Flow
			if err := dec.Decode(&f); err != nil {
				return fmt.Sprintf("%s: moatctl flows: %v", n.Name, err)
			}
			if f.Src == src.String() && f.Dst == dst.String() {
				where = fmt.Sprintf("%s %s %s remote %s", n.Name, f.Direction, f.Policy, f.Remote)
			}
		}
	}
	return where
}
