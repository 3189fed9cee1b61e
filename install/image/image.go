package main

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	defaultRef      = "moatfw/moat:v0.1.0"
	defaultSource   = "https://github.com/moatfw/moat"
	defaultLicenses = "NOASSERTION" // the repository declares no licence for the whole; SPDX's word for "not stated"
	binPath         = "/usr/local/bin"
	entrypoint      = binPath + "/moat-enforcer"
	title           = "moat"
	description     = "Moat, a Kubernetes firewall: moat-enforcer (the node agent, the entrypoint), the moat CNI " +
		"plugin and moat-ipam shim, moat-install and moatctl"

	// containerdDomain is the registry domain containerd (and the CRI) gives a reference written without one:
	// the kubelet asks for moatfw/moat:v0.1.0 and the CRI looks up the image under this domain, so the archive
	// must name it that way.
	containerdDomain = "docker.io"
	// annotationImageName is containerd's index.json annotation: the full name `ctr images import` stores the image
	// under. org.opencontainers.image.ref.name carries only the tag, as containerd's own export writes it.
	annotationImageName = "io.containerd.image.name"
	// annotationRefName is the OCI image layout's name of an index.json entry.
	annotationRefName = "org.opencontainers.image.ref.name"
)

// binaries are the files of `make build` the image carries, in /usr/local/bin.
var binaries = []string{"moat", "moat-ipam", "moat-enforcer", "moatctl", "moat-install"}

// symlinks are the image's links in /usr/local/bin: name -> target (relative, as `make build` makes it).
var symlinks = map[string]string{"kubectl-moat": "moatctl"}

type options struct {
	binDir   string
	ref      string
	out      string
	arch     string
	version  string
	licenses string
	source   string
	created  time.Time
}

// result is what build wrote.
type result struct {
	name     string  // the full reference, e.g. docker.io/moatfw/moat:v0.1.0
	tag      string  // the org.opencontainers.image.ref.name, e.g. v0.1.0
	digest   v1.Hash // the image manifest's digest: the image's identity
	platform v1.Platform
	size     int64 // of the archive
}

// imageName is the reference's full name as containerd spells it, and its tag.
func imageName(ref string) (full, tag string, err error) {
	if strings.Contains(ref, "@") {
		return "", "", fmt.Errorf("image reference %q: want a tag, not a digest", ref)
	}
	t, err := name.NewTag(ref)
	if err != nil {
		return "", "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	registry := t.RegistryStr()
	if registry == name.DefaultRegistry {
		registry = containerdDomain
	}
	return registry + "/" + t.RepositoryStr() + ":" + t.TagStr(), t.TagStr(), nil
}

// build checks the binaries, packs them into one layer, writes the OCI image layout archive to o.out (through a
// temporary file: a failed build leaves nothing behind) and reports its progress to log.
func build(o options, log io.Writer) (result, error) {
	full, tag, err := imageName(o.ref)
	if err != nil {
		return result{}, err
	}
	if o.version == "" {
		o.version = tag
	}
	if o.created.IsZero() {
		o.created = time.Unix(0, 0)
	}
	o.created = o.created.UTC()
	platform := v1.Platform{OS: "linux", Architecture: o.arch}
	if _, err := elfMachine(o.arch); err != nil {
		return result{}, err
	}
	if o.out == "" {
		return result{}, errors.New("no output file")
	}
	files, err := openBinaries(o.binDir, o.arch)
	if err != nil {
		return result{}, err
	}
	defer closeAll(files)

	dir := filepath.Dir(o.out)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return result{}, fmt.Errorf("output folder: %w", err)
	}
	layer, err := writeLayer(dir, files, o.created, log)
	if err != nil {
		return result{}, err
	}
	defer layer.remove()

	img, err := assemble(layer, o, platform)
	if err != nil {
		return result{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return result{}, fmt.Errorf("image digest: %w", err)
	}
	config, err := img.ConfigName()
	if err != nil {
		return result{}, fmt.Errorf("config digest: %w", err)
	}
	fmt.Fprintf(log, "image: config %s (entrypoint %s, %s/%s, created %s), manifest %s\n",
		config, entrypoint, platform.OS, platform.Architecture, o.created.Format(time.RFC3339), digest)
	size, err := writeArchive(o.out, img, layer, v1.Descriptor{
		Platform:    &platform,
		Annotations: map[string]string{annotationImageName: full, annotationRefName: tag},
	}, o.created)
	if err != nil {
		return result{}, err
	}
	fmt.Fprintf(log, "image: wrote %s (%s): %s %s/%s %s\n", o.out, mib(size), full, platform.OS, platform.Architecture, digest)
	return result{name: full, tag: tag, digest: digest, platform: platform, size: size}, nil
}

// assemble makes the image: the layer on scratch, with the entrypoint, PATH and labels, in OCI media types.
func assemble(layer *gzipLayer, o options, platform v1.Platform) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var links []string
	for _, link := range slices.Sorted(maps.Keys(symlinks)) {
		links = append(links, link+" -> "+symlinks[link])
	}
	img, err := mutate.Append(img, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: o.created},
			CreatedBy: fmt.Sprintf("moat image builder: %s/{%s}, %s", binPath, strings.Join(binaries, ","), strings.Join(links, ", ")),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("append the layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS = platform.OS
	cfg.Architecture = platform.Architecture
	cfg.Created = v1.Time{Time: o.created}
	cfg.Config.Entrypoint = []string{entrypoint}
	cfg.Config.Env = []string{"PATH=" + binPath}
	cfg.Config.Labels = labels(o)
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set the image config: %w", err)
	}
	return img, nil
}

// labels are the image's OCI labels, the same as the Containerfile's LABEL lines.
func labels(o options) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       title,
		"org.opencontainers.image.description": description,
		"org.opencontainers.image.source":      o.source,
		"org.opencontainers.image.version":     o.version,
		"org.opencontainers.image.licenses":    o.licenses,
	}
}

// binFile is one opened, checked file of the image.
type binFile struct {
	name string
	f    *os.File
	size int64
}

// openBinaries opens and checks every binary before anything is written: each must be a regular, statically
// linked ELF executable for arch.
func openBinaries(dir, arch string) ([]binFile, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("binary folder: %w (run make build first)", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("binary folder %s is not a folder", dir)
	}
	var files []binFile
	for _, n := range binaries {
		p := filepath.Join(dir, n)
		f, err := os.Open(p)
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("binary %s: %w (run make build first)", n, err)
		}
		files = append(files, binFile{name: n, f: f})
		b := &files[len(files)-1]
		st, err := f.Stat()
		if err == nil && !st.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file", p)
		}
		if err == nil {
			b.size = st.Size()
			err = checkELF(f, arch)
		}
		if err != nil {
			closeAll(files)
			return nil, fmt.Errorf("binary %s: %w", n, err)
		}
	}
	return files, nil
}

func closeAll(files []binFile) {
	for _, b := range files {
		b.f.Close()
	}
}

// layerPath is where a binary or link lives in the layer's tar (no leading slash).
func layerPath(name string) string {
	return path.Join(strings.TrimPrefix(binPath, "/"), name)
}

func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
