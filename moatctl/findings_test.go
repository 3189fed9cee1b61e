package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/agentapi"
	"github.com/moatfw/moat/internal/endpoint"
	"github.com/moatfw/moat/internal/enforcer"
	"github.com/moatfw/moat/internal/testutil"
)

const labelledObjects = `apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {moat.dev/egress: block}}
---
apiVersion: moat.dev/v1alpha1
kind: FirewallPolicy
metadata: {name: typo}
spec:
  namespaceSelector: {matchLabels: {moat.dev/zone: paymnets}}
  egress: [{action: Deny}]
`

// moatctl status against a real enforcer on a policy folder: a namespace label Moat does not know is a problem
// (listed, exit 1); a policy that selects no namespace is a warning (listed, exit 0), and policies notes it.
func TestStatusProblemsAndWarnings(t *testing.T) {
	root := testutil.PinRoot(t)
	dp, err := bpf.Load(root, bpf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	log := logrus.New()
	log.SetOutput(os.Stderr)
	e, err := enforcer.New(dp, logrus.NewEntry(log))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	apply := func(content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "objects.yaml"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := (&enforcer.Folder{Dir: dir, Log: logrus.NewEntry(log)}).Load()
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Apply(s); err != nil {
			t.Fatal(err)
		}
	}
	apply(labelledObjects)
	socket := filepath.Join(t.TempDir(), "enforcer.sock")
	ln, err := agentapi.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := &enforcer.Server{E: e, Store: endpoint.Store{Dir: t.TempDir()}, Source: "folder " + dir}
	go func() { _ = srv.Serve(ctx, ln) }()
	sock := "--socket=" + socket

	out, err := run(t, sock, "status")
	if ee, ok := err.(exitError); !ok || ee.code != 1 || !strings.Contains(out, `Namespace shop: label moat.dev/egress="block"`) ||
		!containsRow(out, "Warnings:", "-", "FirewallPolicy", "typo:", "selects", "no", "namespace") || !containsRow(out, "Ready:", "yes") {
		t.Errorf("status with a label problem (%v):\n%s", err, out)
	}
	out, err = run(t, sock, "policies")
	if err != nil || !containsRow(out, "typo", "Accepted", "1000", "Enforce", "1", "-", "warning:", "selects", "no", "namespace") {
		t.Errorf("policies (%v):\n%s", err, out)
	}

	// the label fixed, the warning alone: listed, and status exits 0
	apply(strings.Replace(labelledObjects, "moat.dev/egress: block", "moat.dev/egress: deny", 1))
	out, err = run(t, sock, "status")
	if err != nil || !containsRow(out, "Problems:", "none") || !strings.Contains(out, "selects no namespace") {
		t.Errorf("status with only a warning (%v):\n%s", err, out)
	}
}
