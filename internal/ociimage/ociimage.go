// Package ociimage builds a container image without a daemon: one layer of files, links and folders on scratch,
// written as an OCI image layout archive that `ctr images import` names from its index.json. The same spec always
// gives the same image digest and the same archive, byte for byte: every entry is root's, has the spec's creation
// time as its mtime, and comes in path order.
package ociimage

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// AnnotationImageName is containerd's index.json annotation: the full name `ctr images import` stores the
	// image under. AnnotationRefName carries only the tag, as containerd's own export writes it.
	AnnotationImageName = "io.containerd.image.name"
	// AnnotationRefName is the OCI image layout's name of an index.json entry.
	AnnotationRefName = "org.opencontainers.image.ref.name"

	// containerdDomain is the registry domain containerd (and the CRI) gives a reference written without one: the
	// kubelet asks for moatfw/moat:v0.1.0 and the CRI looks the image up under this domain, so the archive must
	// name it that way.
	containerdDomain = "docker.io"
)

// File is a regular file of the image.
type File struct {
	Path   string // in the image, absolute: /usr/local/bin/moat
	Source string // the file on disk to copy; empty: the contents are Data
	Data   []byte // the contents when there is no Source
	// Mode is the permission bits as chmod takes them (0o644, 0o4755); 0 means 0o755 for a Binary, else 0o644.
	Mode int64
	// Binary marks a program: it must be a static ELF executable for the image's architecture, which is checked
	// before anything is written (the image has no dynamic loader).
	Binary bool
}

// Symlink is a symbolic link of the image.
type Symlink struct {
	Path   string // in the image, absolute
	Target string // as ln -s takes it: relative to the link's folder, or absolute
}

// Dir is a folder of the image. The folders above every file, link and folder are made anyway (0755); a Dir is
// only needed for an empty folder or another mode.
type Dir struct {
	Path string // in the image, absolute
	Mode int64  // 0 means 0o755; 0o1777 makes a /tmp
}

// Spec is what an image holds.
type Spec struct {
	Ref      string    // a tag reference: moatfw/moat:v0.1.0, moat.test/agent:1
	Arch     string    // GOARCH of the binaries and the image; empty means this machine's
	Created  time.Time // the image's creation time and every entry's mtime; zero means 1970-01-01
	Files    []File
	Symlinks []Symlink
	Dirs     []Dir

	Entrypoint []string
	Cmd        []string
	Env        []string // KEY=value
	Labels     map[string]string
	WorkingDir string
	// History is the layer's created_by; empty means a list of its paths.
	History string
}

// Result is what Build wrote.
type Result struct {
	Name     string  // the full reference containerd stores the image under: docker.io/moatfw/moat:v0.1.0
	Tag      string  // the index entry's org.opencontainers.image.ref.name: v0.1.0
	Digest   v1.Hash // the image manifest's digest: the image's identity
	Config   v1.Hash // the config's digest: the image ID containerd and docker show
	Platform v1.Platform
	Archive  string // the archive written
	Size     int64  // of the archive
}

// FileError is a file of the spec that cannot go into the image: missing, not a regular file, not a static
// executable for the architecture.
type FileError struct {
	Path   string // in the image
	Source string // on disk; empty for a file given as Data
	Err    error
}

func (e *FileError) Error() string {
	var pe *os.PathError
	if e.Source == "" || errors.As(e.Err, &pe) {
		return fmt.Sprintf("file %s: %v", e.Path, e.Err)
	}
	return fmt.Sprintf("file %s (%s): %v", e.Path, e.Source, e.Err)
}

func (e *FileError) Unwrap() error { return e.Err }

// ImageName is ref's full name as containerd spells it, and its tag.
func ImageName(ref string) (full, tag string, err error) {
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

// Build checks the spec and its files, packs them into one layer and writes the OCI image layout archive to out
// through a temporary file beside it: a failed build leaves nothing behind, and an earlier archive as it was. It
// reports its progress to log.
func Build(ctx context.Context, spec Spec, out string, log io.Writer) (Result, error) {
	full, tag, err := ImageName(spec.Ref)
	if err != nil {
		return Result{}, err
	}
	if spec.Arch == "" {
		spec.Arch = runtime.GOARCH
	}
	if spec.Created.IsZero() {
		spec.Created = time.Unix(0, 0)
	}
	spec.Created = spec.Created.UTC()
	platform := v1.Platform{OS: "linux", Architecture: spec.Arch}
	if _, err := elfMachine(spec.Arch); err != nil {
		return Result{}, err
	}
	if out == "" {
		return Result{}, errors.New("no output file")
	}
	entries, err := layerEntries(spec)
	if err != nil {
		return Result{}, err
	}
	if err := openFiles(entries, spec.Arch); err != nil {
		return Result{}, err
	}
	defer closeAll(entries)

	dir := filepath.Dir(out)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Result{}, fmt.Errorf("output folder: %w", err)
	}
	layer, err := writeLayer(ctx, dir, entries, log)
	if err != nil {
		return Result{}, err
	}
	defer layer.remove()

	img, err := assemble(layer, spec, entries, platform)
	if err != nil {
		return Result{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return Result{}, fmt.Errorf("image digest: %w", err)
	}
	config, err := img.ConfigName()
	if err != nil {
		return Result{}, fmt.Errorf("config digest: %w", err)
	}
	what := "entrypoint " + strings.Join(spec.Entrypoint, " ")
	if len(spec.Cmd) > 0 {
		what += ", cmd " + strings.Join(spec.Cmd, " ")
	}
	fmt.Fprintf(log, "image: config %s (%s, %s/%s, created %s), manifest %s\n",
		config, what, platform.OS, platform.Architecture, spec.Created.Format(time.RFC3339), digest)
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	size, err := writeArchive(out, img, layer, v1.Descriptor{
		Platform:    &platform,
		Annotations: map[string]string{AnnotationImageName: full, AnnotationRefName: tag},
	}, spec.Created)
	if err != nil {
		return Result{}, err
	}
	fmt.Fprintf(log, "image: wrote %s (%s): %s %s/%s %s\n", out, mib(size), full, platform.OS, platform.Architecture, digest)
	return Result{Name: full, Tag: tag, Digest: digest, Config: config, Platform: platform, Archive: out, Size: size}, nil
}

// assemble makes the image: the layer on scratch, with the spec's config, in OCI media types.
func assemble(layer *gzipLayer, spec Spec, entries []layerEntry, platform v1.Platform) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	createdBy := spec.History
	if createdBy == "" {
		var paths []string
		for _, e := range entries {
			if e.file != nil || e.dir || e.hdr.Typeflag == tar.TypeSymlink {
				paths = append(paths, "/"+strings.TrimSuffix(e.hdr.Name, "/"))
			}
		}
		createdBy = "moat image builder: " + strings.Join(paths, ", ")
	}
	img, err := mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: spec.Created}, CreatedBy: createdBy},
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
	cfg.Created = v1.Time{Time: spec.Created}
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Cmd = spec.Cmd
	cfg.Config.Env = spec.Env
	cfg.Config.WorkingDir = spec.WorkingDir
	if len(spec.Labels) > 0 {
		cfg.Config.Labels = spec.Labels
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set the image config: %w", err)
	}
	return img, nil
}

func mib(n int64) string {
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
