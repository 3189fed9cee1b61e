// Package moatimage is Moat's container image: the five binaries of `make build` in /usr/local/bin (plus
// kubectl-moat, a link to moatctl), moat-enforcer the entrypoint, PATH=/usr/local/bin and the OCI labels, on
// scratch. `make image` (install/image) and the e2e suite build it here; install/image/Containerfile describes the
// same image for docker and buildah.
package moatimage

import (
	"context"
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

	"github.com/moatfw/moat/internal/ociimage"
)

const (
	DefaultRef      = "moatfw/moat:v0.1.0"
	DefaultSource   = "https://github.com/moatfw/moat"
	DefaultLicenses = "NOASSERTION" // the repository declares no licence for the whole; SPDX's word for "not stated"
	BinPath         = "/usr/local/bin"
	Entrypoint      = BinPath + "/moat-enforcer"
	Title           = "moat"
	Description     = "Moat, a Kubernetes firewall: moat-enforcer (the node agent, the entrypoint), the moat CNI " +
		"plugin and moat-ipam shim, moat-install and moatctl"
)

// Binaries are the files of `make build` the image carries, in BinPath.
var Binaries = []string{"moat", "moat-ipam", "moat-enforcer", "moatctl", "moat-install"}

// Symlinks are the image's links in BinPath: name -> target (relative, as `make build` makes it).
var Symlinks = map[string]string{"kubectl-moat": "moatctl"}

// Options are what may change from one build of the image to another.
type Options struct {
	BinDir   string    // the folder holding Binaries, as `make build` leaves them
	Ref      string    // the reference the archive names; empty means DefaultRef
	Arch     string    // GOARCH of the binaries; empty means this machine's
	Version  string    // the org.opencontainers.image.version label; empty means the reference's tag
	Licenses string    // the org.opencontainers.image.licenses label (SPDX); empty means DefaultLicenses
	Source   string    // the org.opencontainers.image.source label; empty means DefaultSource
	Created  time.Time // the image's creation time and every file's mtime; zero means 1970-01-01
}

// Labels are the image's OCI labels, the same as the Containerfile's LABEL lines.
func Labels(version, licenses, source string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       Title,
		"org.opencontainers.image.description": Description,
		"org.opencontainers.image.source":      source,
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.licenses":    licenses,
	}
}

// Spec is the image's spec for o.
func Spec(o Options) (ociimage.Spec, error) {
	if o.Ref == "" {
		o.Ref = DefaultRef
	}
	_, tag, err := ociimage.ImageName(o.Ref)
	if err != nil {
		return ociimage.Spec{}, err
	}
	if o.Version == "" {
		o.Version = tag
	}
	if o.Licenses == "" {
		o.Licenses = DefaultLicenses
	}
	if o.Source == "" {
		o.Source = DefaultSource
	}
	spec := ociimage.Spec{
		Ref:        o.Ref,
		Arch:       o.Arch,
		Created:    o.Created,
		Entrypoint: []string{Entrypoint},
		Env:        []string{"PATH=" + BinPath},
		Labels:     Labels(o.Version, o.Licenses, o.Source),
	}
	for _, n := range Binaries {
		spec.Files = append(spec.Files, ociimage.File{Path: path.Join(BinPath, n), Source: filepath.Join(o.BinDir, n),
			Mode: 0o755, Binary: true})
	}
	var links []string
	for _, link := range slices.Sorted(maps.Keys(Symlinks)) {
		spec.Symlinks = append(spec.Symlinks, ociimage.Symlink{Path: path.Join(BinPath, link), Target: Symlinks[link]})
		links = append(links, link+" -> "+Symlinks[link])
	}
	spec.History = fmt.Sprintf("moat image builder: %s/{%s}, %s", BinPath, strings.Join(Binaries, ","), strings.Join(links, ", "))
	return spec, nil
}

// Build checks the binaries in o.BinDir and writes the image's OCI layout archive to out (see ociimage.Build),
// reporting its progress to log. A binary's error names it and, when it is missing, says to run make build.
func Build(ctx context.Context, o Options, out string, log io.Writer) (ociimage.Result, error) {
	spec, err := Spec(o)
	if err != nil {
		return ociimage.Result{}, err
	}
	st, err := os.Stat(o.BinDir)
	if err != nil {
		return ociimage.Result{}, fmt.Errorf("binary folder: %w (run make build first)", err)
	}
	if !st.IsDir() {
		return ociimage.Result{}, fmt.Errorf("binary folder %s is not a folder", o.BinDir)
	}
	res, err := ociimage.Build(ctx, spec, out, log)
	var fe *ociimage.FileError
	if errors.As(err, &fe) {
		if errors.Is(fe.Err, os.ErrNotExist) {
			return res, fmt.Errorf("binary %s: %w (run make build first)", path.Base(fe.Path), fe.Err)
		}
		return res, fmt.Errorf("binary %s: %w", path.Base(fe.Path), fe.Err)
	}
	return res, err
}
