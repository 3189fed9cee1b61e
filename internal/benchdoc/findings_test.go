package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The generated page prints what its run measured: no finding of an earlier day. Those are written by hand in the
// findings page, under the headings the generated page links to.
func TestGeneratedPagePrintsOnlyItsRun(t *testing.T) {
	plugin := "BenchmarkPluginAddDel/mode=tcx-2 1 11885571547 ns/op 27.71 add-p50-ms 55.71 add-p99-ms 28.71 del-p50-ms 52.67 del-p99-ms 50 pods\n" +
		"BenchmarkAttach/mode=tcx-2 20 1 ns/op 23.27 p50-ms 47.27 p99-ms\n"
	churn := "BenchmarkPodChurn/mode=tcx-2 1 1 ns/op 33.81 add-p50-ms 58.91 add-p99-ms 1685 burst-add-p50-ms 2008 burst-add-p99-ms " +
		"0 burst-failures 49.24 burst-pods/s 41.26 del-p50-ms 70.27 del-p99-ms 0 leaks 100 sustained-pods 0 sustained-failures " +
		"19.93 sustained-pods/s\n"
	key := changeKey{"folder", 10}
	doc := render([]sample{{rules: 10, path: "allow", ns: 168, empty: 26}, {rules: 10000, path: "allow", ns: 232, empty: 26}}) +
		renderPlugin(strings.NewReader(plugin)) + renderChurn(strings.NewReader(churn)) +
		renderChange(map[changeKey][]float64{key: {22}}, map[changeKey][]float64{key: {23}}) +
		renderRSS(map[string][]float64{"rss-MiB": {45.6}, "peak-rss-MiB": {112.4}}, nil)

	today := time.Now().UTC().Format("2006-01-02")
	for _, date := range regexp.MustCompile(`\b20\d\d-\d\d-\d\d\b`).FindAllString(doc, -1) {
		if date != today {
			t.Errorf("the generated page prints a date other than its run's: %s", date)
		}
	}
	for _, hand := range []string{"by hand (", "Measured by", "profiled with", "Fixed,"} {
		if strings.Contains(doc, hand) {
			t.Errorf("the generated page prints a finding by hand (%q)", hand)
		}
	}

	page, err := os.ReadFile(filepath.Join("..", "..", "docs", findings))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, h := range regexp.MustCompile(`(?m)^#+ (.*)$`).FindAllStringSubmatch(string(page), -1) {
		anchors[anchor(h[1])] = true
	}
	links := regexp.MustCompile(`\]\(`+regexp.QuoteMeta(findings)+`#([^)]*)\)`).FindAllStringSubmatch(doc, -1)
	if len(links) < 4 {
		t.Errorf("%d links to the findings, want one from each section that has some:\n%s", len(links), doc)
	}
	for _, l := range links {
		if !anchors[l[1]] {
			t.Errorf("a link to #%s, which %s has no heading for (it has %v)", l[1], findings, anchors)
		}
	}
}

// anchor is the fragment a Markdown renderer (GitHub's) gives a heading.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}
