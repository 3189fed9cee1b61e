package main

import (
	"reflect"
	"strings"
	"testing"
)

// The three readers of benchmark lines take the same "value unit" pairs, and pass over a value that is no number.
func TestParseBenchmarkLines(t *testing.T) {
	verdict := "BenchmarkVerdict/rules=10/path=allow-2 200000 168.5 ns/op 26 empty-ns 1.00 entries/rule 96 bytes/rule\n" +
		"BenchmarkVerdict/rules=10000/path=deny 200000 x ns/op 27 empty-ns\n" +
		"PASS\n"
	want := []sample{{rules: 10, path: "allow", ns: 168.5, empty: 26, perRule: 1, bytesPerRule: 96},
		{rules: 10000, path: "deny", empty: 27}}
	if got := parse(strings.NewReader(verdict)); !reflect.DeepEqual(got, want) {
		t.Errorf("parse = %+v, want %+v", got, want)
	}

	change := "BenchmarkChangeEnforced/source=folder/rules=10-2 20 1 ns/op 22.5 p50-ms 23 p99-ms\n" +
		"BenchmarkChangeEnforced/source=folder/rules=10-2 20 1 ns/op 21 p50-ms - p99-ms\n"
	p50, p99 := parseChange(strings.NewReader(change))
	key := changeKey{"folder", 10}
	if !reflect.DeepEqual(p50, map[changeKey][]float64{key: {22.5, 21}}) ||
		!reflect.DeepEqual(p99, map[changeKey][]float64{key: {23}}) {
		t.Errorf("parseChange = %v, %v", p50, p99)
	}

	m := parseMetrics(strings.NewReader("BenchmarkAttach/mode=tcx-2 20 1 ns/op 23.25 p50-ms x p99-ms 47 p99-ms\n"+
		"BenchmarkOther 1 2 ns/op 3 p50-ms\n"), "BenchmarkAttach/")
	if want := map[string][]float64{"ns/op": {1}, "p50-ms": {23.25}, "p99-ms": {47}}; !reflect.DeepEqual(m, want) {
		t.Errorf("parseMetrics = %v, want %v", m, want)
	}
}
