package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moatfw/moat/conformance/upstream"
)

// Two enforcers' tables, as moatctl counters prints them.
const tableA = `REASON                      DROP   PACKETS  BYTES
allowed-by-rule             false  10       1000
no-endpoint                 true   2        120
unknown-pod                 true   0        0
`
const tableB = `REASON                      DROP   PACKETS  BYTES
allowed-by-rule             false  5        500
no-endpoint                 true   1        60
unknown-pod                 true   3        300
`

func TestCounters(t *testing.T) {
	before := counters{packets: map[string]int64{}, drop: map[string]bool{}}
	if err := before.add(tableA); err != nil {
		t.Fatal(err)
	}
	after := counters{packets: map[string]int64{}, drop: map[string]bool{}}
	for _, tb := range []string{tableA, tableB, tableB} {
		if err := after.add(tb); err != nil {
			t.Fatal(err)
		}
	}
	d := after.since(before)
	if d.packets["allowed-by-rule"] != 10 || d.packets["no-endpoint"] != 2 || d.packets["unknown-pod"] != 6 ||
		!d.drop["unknown-pod"] || d.drop["allowed-by-rule"] || strings.Join(d.order, " ") != "allowed-by-rule no-endpoint unknown-pod" {
		t.Errorf("since: %+v", d)
	}
	for _, bad := range []string{"REASON DROP PACKETS BYTES\nno-endpoint true x 1\n", "no-endpoint true 1\n"} {
		c := counters{packets: map[string]int64{}, drop: map[string]bool{}}
		if err := c.add(bad); err == nil {
			t.Errorf("add(%q) took it", bad)
		}
	}

	// the document lists the reasons some pass counted, with the note of each drop reason seen
	path := filepath.Join(t.TempDir(), "conformance.md")
	pass := upstream.Pass{Title: "Moat", Report: upstream.Report{Rows: []upstream.Row{{Name: "[sig-network] x", Result: upstream.Passed}}}}
	zero := after.since(after)
	if err := writeDoc(path, []upstream.Pass{pass, pass}, []passCounters{{"Moat | a", zero}, {"Moat, b", d}}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, s := range []string{"| reason | drop | Moat \\| a | Moat, b |\n", "| unknown-pod | true | 0 | 6 |\n",
		"| allowed-by-rule | false | 0 | 10 |\n", "- `unknown-pod`: " + countersNotes["unknown-pod"][:20]} {
		if !strings.Contains(doc, s) {
			t.Errorf("the document lacks %q:\n%s", s, doc)
		}
	}
	if strings.Contains(doc, "not-for-endpoint") {
		t.Errorf("the document names a reason no pass counted:\n%s", doc)
	}
}
