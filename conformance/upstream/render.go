package upstream

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Pass is one run of the tests for the document: its column title and its report.
type Pass struct {
	Title  string // "without Moat", "Moat, default configuration", "Moat, restrictive policy"
	About  string // one sentence on the cluster and configuration of the pass
	Report Report
	// Why explains, by test name, a result of this pass that is not a pass: the rule that made it, or what in
	// the cluster did. It follows the test's reason in the notes.
	Why map[string]string
}

// RenderMarkdown writes docs/conformance.md: intro, then a table with a row per test and a column per pass
// (the first pass is the baseline, the cluster without Moat), the reasons for every result that is not a pass,
// the tests that pass in the baseline and not in another pass, and the failures of the suite's own setup.
func RenderMarkdown(w io.Writer, intro string, passes []Pass) error {
	if len(passes) == 0 {
		return fmt.Errorf("conformance document: no pass")
	}
	byName := make([]map[string]Row, len(passes))
	var names []string
	seen := map[string]bool{}
	for i, p := range passes {
		byName[i] = map[string]Row{}
		for _, r := range p.Report.Rows {
			byName[i][r.Name] = r
			if !seen[r.Name] {
				seen[r.Name] = true
				names = append(names, r.Name)
			}
		}
	}
	sort.Strings(names)

	var b strings.Builder
	b.WriteString("# Kubernetes' networking conformance with Moat\n\n")
	if intro = strings.TrimSpace(intro); intro != "" {
		b.WriteString(intro + "\n\n")
	}
	b.WriteString("| pass | passed | failed | skipped | not run | time |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, p := range passes {
		c := p.Report.Counts()
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %s |\n", cell(p.Title), c[Passed], c[Failed], c[Skipped],
			c[NotRun]+c[Pending], p.Report.Elapsed.Round(1e9))
	}
	b.WriteString("\n")
	for _, p := range passes {
		if p.About != "" {
			fmt.Fprintf(&b, "- **%s**: %s\n", p.Title, strings.TrimSpace(p.About))
		}
	}

	// The table: a note number after every result that has a reason.
	type note struct {
		n            int
		test, reason string
		pass         string
		why          string
		alsoBase     bool // it did not pass in the baseline either
	}
	var notes []note
	b.WriteString("\n## Tests\n\n| # | test |")
	for _, p := range passes {
		b.WriteString(" " + cell(p.Title) + " |")
	}
	b.WriteString("\n| ---: | --- |" + strings.Repeat(" --- |", len(passes)) + "\n")
	for i, name := range names {
		fmt.Fprintf(&b, "| %d | %s |", i+1, cell(name))
		for j, p := range passes {
			r, ok := byName[j][name]
			if !ok {
				b.WriteString(" not in this pass |")
				continue
			}
			if r.Reason == "" {
				fmt.Fprintf(&b, " %s |", r.Result)
				continue
			}
			base, inBase := byName[0][name]
			notes = append(notes, note{len(notes) + 1, name, r.Reason, p.Title, p.Why[name],
				j > 0 && inBase && base.Result == r.Result})
			fmt.Fprintf(&b, " %s [%d] |", r.Result, len(notes))
		}
		b.WriteString("\n")
	}
	if len(notes) > 0 {
		b.WriteString("\n## Why a test did not pass\n\n")
		for _, n := range notes {
			fmt.Fprintf(&b, "%d. %s, %s: %s", n.n, n.pass, n.test, inline(n.reason))
			if n.alsoBase {
				fmt.Fprintf(&b, " (%s in %q too)", byName[0][n.test].Result, passes[0].Title)
			}
			if n.why != "" {
				b.WriteString(" **Why:** " + inline(n.why))
			}
			b.WriteString("\n")
		}
	}

	// Every test that passes without Moat must pass with it.
	var regress []string
	for j := 1; j < len(passes); j++ {
		for _, name := range names {
			base, ok := byName[0][name]
			if !ok || base.Result != Passed {
				continue
			}
			if r, ok := byName[j][name]; ok && r.Result != Passed {
				regress = append(regress, fmt.Sprintf("- %s: %s (%s)", passes[j].Title, name, r.Result))
			}
		}
	}
	if len(passes) > 1 {
		fmt.Fprintf(&b, "\n## Passing in %q, not in another pass\n\n", passes[0].Title)
		if len(regress) == 0 {
			b.WriteString("None.\n")
		} else {
			b.WriteString(strings.Join(regress, "\n") + "\n")
		}
	}
	var suite []string
	for _, p := range passes {
		for _, f := range p.Report.SuiteFailures {
			suite = append(suite, fmt.Sprintf("- %s: %s", p.Title, inline(f)))
		}
	}
	if len(suite) > 0 {
		b.WriteString("\n## Failures of the suite's setup or teardown\n\n" + strings.Join(suite, "\n") + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// cell is s safe inside a table cell.
func cell(s string) string {
	return strings.ReplaceAll(inline(s), "|", `\|`)
}

// inline is s on one line, without characters that would start Markdown markup of their own.
func inline(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.NewReplacer("<", "&lt;", ">", "&gt;", "`", "'").Replace(s)
}
