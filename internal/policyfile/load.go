// Package policyfile reads Moat's policy objects (FirewallConfig, FirewallPolicy, Namespace) from multi-document
// YAML files, as the enforcer's folder source does. A bad document is reported with its file, position and
// object name, and never stops the good ones from loading.
package policyfile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/moatfw/moat/internal/api/v1alpha1"
)

// Objects are the policy objects read from files, each with where it came from.
type Objects struct {
	Configs    []Sourced[v1alpha1.FirewallConfig]
	Policies   []Sourced[v1alpha1.FirewallPolicy]
	Namespaces []Sourced[v1alpha1.Namespace]
}

// Sourced is an object and its origin.
type Sourced[T any] struct {
	Object T
	Origin Origin
}

// Origin is a document in a file.
type Origin struct {
	File     string
	Document int // 1-based
}

func (o Origin) String() string { return fmt.Sprintf("%s (document %d)", o.File, o.Document) }

// Problem is a document that could not be used, or was used only after a correction the problem names.
type Problem struct {
	Origin Origin
	Kind   string
	Name   string
	Err    error
	// Corrected: the object was loaded all the same, corrected as Err says (a Namespace whose
	// kubernetes.io/metadata.name label names another namespace); the file is not refused for it.
	Corrected bool
}

// Refuses tells whether any of problems refused its document (a file with such a problem is not used as it is).
func Refuses(problems []Problem) bool {
	for _, p := range problems {
		if !p.Corrected {
			return true
		}
	}
	return false
}

func (p Problem) Error() string {
	obj := ""
	if p.Kind != "" || p.Name != "" {
		obj = fmt.Sprintf(" %s %q", p.Kind, p.Name)
	}
	return fmt.Sprintf("%s%s: %v", p.Origin, obj, p.Err)
}

// maxDocument bounds one YAML document, so a hostile file cannot make the enforcer read without end.
const maxDocument = 4 << 20

// Parse reads every document of one file's content. A Namespace gets the label kubernetes.io/metadata.name with
// its own name, as the API server sets it, so a selector by name selects the same namespaces in both modes.
func Parse(file string, r io.Reader) (Objects, []Problem) {
	var objs Objects
	var problems []Problem
	rd := utilyaml.NewYAMLReader(bufio.NewReaderSize(r, 64<<10))
	for doc := 1; ; doc++ {
		raw, err := rd.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		origin := Origin{File: file, Document: doc}
		if err != nil {
			problems = append(problems, Problem{Origin: origin, Err: fmt.Errorf("read YAML: %w", err)})
			break
		}
		if len(raw) > maxDocument {
			problems = append(problems, Problem{Origin: origin, Err: fmt.Errorf("document of %d bytes, more than %d", len(raw), maxDocument)})
			continue
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue // an empty document between separators
		}
		problems = append(problems, objs.add(origin, raw)...)
	}
	return objs, problems
}

func stripComments(raw []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

// add decodes one document by its kind, strictly: unknown fields are errors, not silently dropped.
func (o *Objects) add(origin Origin, raw []byte) []Problem {
	if p := o.decode(origin, raw); p != nil {
		return []Problem{*p}
	}
	if len(o.Namespaces) == 0 || o.Namespaces[len(o.Namespaces)-1].Origin != origin {
		return nil
	}
	n := &o.Namespaces[len(o.Namespaces)-1].Object
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	var problems []Problem
	if v, ok := n.Labels[corev1.LabelMetadataName]; ok && v != n.Name {
		problems = append(problems, Problem{Origin: origin, Kind: "Namespace", Name: n.Name, Corrected: true,
			Err: fmt.Errorf("label %s=%q: the API server sets it to the namespace's own name, and so does Moat: %q",
				corev1.LabelMetadataName, v, n.Name)})
	}
	n.Labels[corev1.LabelMetadataName] = n.Name
	return problems
}

// decode decodes one document into o, or says why it cannot.
func (o *Objects) decode(origin Origin, raw []byte) *Problem {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(raw, &head); err != nil {
		return &Problem{Origin: origin, Err: fmt.Errorf("not a YAML object: %w", err)}
	}
	problem := func(err error) *Problem {
		return &Problem{Origin: origin, Kind: head.Kind, Name: head.Metadata.Name, Err: err}
	}
	switch head.Kind {
	case v1alpha1.KindFirewallConfig, v1alpha1.KindFirewallPolicy:
		if head.APIVersion != v1alpha1.APIVersion {
			return problem(fmt.Errorf("apiVersion %q: want %s", head.APIVersion, v1alpha1.APIVersion))
		}
	case "Namespace":
		if head.APIVersion != "v1" {
			return problem(fmt.Errorf("apiVersion %q: want v1", head.APIVersion))
		}
	case "":
		return problem(errors.New("no kind"))
	default:
		return problem(fmt.Errorf("kind %q: want FirewallConfig, FirewallPolicy or Namespace", head.Kind))
	}
	switch head.Kind {
	case v1alpha1.KindFirewallConfig:
		var c v1alpha1.FirewallConfig
		if err := yaml.UnmarshalStrict(raw, &c); err != nil {
			return problem(err)
		}
		if errs := c.Validate(); len(errs) > 0 {
			return problem(errors.Join(errs...))
		}
		o.Configs = append(o.Configs, Sourced[v1alpha1.FirewallConfig]{c, origin})
	case v1alpha1.KindFirewallPolicy:
		var p v1alpha1.FirewallPolicy
		if err := yaml.UnmarshalStrict(raw, &p); err != nil {
			return problem(err)
		}
		if errs := p.Validate(); len(errs) > 0 {
			return problem(errors.Join(errs...))
		}
		o.Policies = append(o.Policies, Sourced[v1alpha1.FirewallPolicy]{p, origin})
	default:
		var n v1alpha1.Namespace
		if err := yaml.Unmarshal(raw, &n); err != nil { // a Namespace may carry fields Moat does not read
			return problem(err)
		}
		if n.Name == "" {
			return problem(errors.New("metadata.name: missing"))
		}
		o.Namespaces = append(o.Namespaces, Sourced[v1alpha1.Namespace]{n, origin})
	}
	return nil
}

// Files lists the policy files of a folder (not its subfolders): .yaml, .yml and .json, not hidden, in name order.
func Files(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read policy folder %s: %w", dir, err)
	}
	var paths []string
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") && !strings.HasPrefix(e.Name(), ".") {
			paths = append(paths, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(paths)
	return paths, nil
}

// ParseFile reads one file.
func ParseFile(path string) (Objects, []Problem) {
	f, err := os.Open(path)
	if err != nil {
		return Objects{}, []Problem{{Origin: Origin{File: path}, Err: err}}
	}
	defer f.Close()
	return Parse(path, f)
}

// LoadDir reads every policy file of a folder. Objects of the same kind and name in two places are problems, and
// none of them is loaded.
func LoadDir(dir string) (Objects, []Problem, error) {
	paths, err := Files(dir)
	if err != nil {
		return Objects{}, nil, err
	}
	var parts []Objects
	var problems []Problem
	for _, path := range paths {
		objs, ps := ParseFile(path)
		parts = append(parts, objs)
		problems = append(problems, ps...)
	}
	all, dups := Merge(parts...)
	return all, append(problems, dups...), nil
}

// Merge joins the objects of several files, in order. Objects of the same kind and name defined more than once
// (in one file or in several) are all refused, each with a problem that names every definition, since which one
// was meant cannot be told.
func Merge(parts ...Objects) (Objects, []Problem) { return MergeKeeping(Objects{}, parts...) }

// MergeKeeping is Merge that keeps what was in force: when before (what a previous merge kept) has an object of a
// kind and name defined more than once, from a file that still defines it, that version stays in force (a new
// definition elsewhere neither replaces it nor takes it away); the definitions are problems all the same.
func MergeKeeping(before Objects, parts ...Objects) (Objects, []Problem) {
	var all Objects
	for _, o := range parts {
		all.Configs = append(all.Configs, o.Configs...)
		all.Policies = append(all.Policies, o.Policies...)
		all.Namespaces = append(all.Namespaces, o.Namespaces...)
	}
	var problems []Problem
	all.Configs, problems = dedupe(all.Configs, before.Configs, v1alpha1.KindFirewallConfig, func(c v1alpha1.FirewallConfig) string { return c.Name }, problems)
	all.Policies, problems = dedupe(all.Policies, before.Policies, v1alpha1.KindFirewallPolicy, func(p v1alpha1.FirewallPolicy) string { return p.Name }, problems)
	all.Namespaces, problems = dedupe(all.Namespaces, before.Namespaces, "Namespace", func(n v1alpha1.Namespace) string { return n.Name }, problems)
	return all, problems
}

func dedupe[T any](list, before []Sourced[T], kind string, name func(T) string, problems []Problem) ([]Sourced[T], []Problem) {
	defs := map[string][]Origin{}
	for _, s := range list {
		defs[name(s.Object)] = append(defs[name(s.Object)], s.Origin)
	}
	kept := map[string]Sourced[T]{}
	for _, s := range before {
		kept[name(s.Object)] = s
	}
	var out []Sourced[T]
	for _, s := range list {
		n := name(s.Object)
		origins := defs[n]
		if len(origins) == 1 {
			out = append(out, s)
			continue
		}
		places := make([]string, len(origins))
		for i, o := range origins {
			places[i] = o.String()
		}
		problems = append(problems, Problem{Origin: s.Origin, Kind: kind, Name: n,
			Err: fmt.Errorf("defined %d times, in %s: every definition is refused until one is left", len(origins),
				strings.Join(places, ", "))})
		if s.Origin != origins[0] {
			continue // the rest is decided once, at the first definition
		}
		if k, ok := kept[n]; ok && slices.ContainsFunc(origins, func(o Origin) bool { return o.File == k.Origin.File }) {
			out = append(out, k)
		}
	}
	return out, problems
}
