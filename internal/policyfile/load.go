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
	"sort"
	"strings"

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

// Problem is a document that could not be used.
type Problem struct {
	Origin Origin
	Kind   string
	Name   string
	Err    error
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

// Parse reads every document of one file's content.
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
		if p := objs.add(origin, raw); p != nil {
			problems = append(problems, *p)
		}
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
func (o *Objects) add(origin Origin, raw []byte) *Problem {
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

// LoadDir reads every policy file of a folder. Objects of the same kind and name in two places are a problem;
// the first one stays.
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

// Merge joins the objects of several files, in order; an object whose kind and name came before is a problem.
func Merge(parts ...Objects) (Objects, []Problem) {
	var all Objects
	for _, o := range parts {
		all.Configs = append(all.Configs, o.Configs...)
		all.Policies = append(all.Policies, o.Policies...)
		all.Namespaces = append(all.Namespaces, o.Namespaces...)
	}
	return dedupe(all)
}

func dedupe(o Objects) (Objects, []Problem) {
	var problems []Problem
	o.Configs, problems = dedupeKind(o.Configs, v1alpha1.KindFirewallConfig, func(c v1alpha1.FirewallConfig) string { return c.Name }, problems)
	o.Policies, problems = dedupeKind(o.Policies, v1alpha1.KindFirewallPolicy, func(p v1alpha1.FirewallPolicy) string { return p.Name }, problems)
	o.Namespaces, problems = dedupeKind(o.Namespaces, "Namespace", func(n v1alpha1.Namespace) string { return n.Name }, problems)
	return o, problems
}

func dedupeKind[T any](list []Sourced[T], kind string, name func(T) string, problems []Problem) ([]Sourced[T], []Problem) {
	first := map[string]Origin{}
	var out []Sourced[T]
	for _, s := range list {
		n := name(s.Object)
		if o, seen := first[n]; seen {
			problems = append(problems, Problem{Origin: s.Origin, Kind: kind, Name: n,
				Err: fmt.Errorf("already defined in %s; this one is ignored", o)})
			continue
		}
		first[n] = s.Origin
		out = append(out, s)
	}
	return out, problems
}
