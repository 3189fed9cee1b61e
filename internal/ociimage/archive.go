package ociimage

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ociLayoutFile is the OCI image layout's marker file, and the layout version containerd imports.
const ociLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

// blob is one file of the layout's blobs/sha256/.
type blob struct {
	digest v1.Hash
	size   int64
	open   func() (io.ReadCloser, error)
}

// writeArchive writes img as an OCI image layout in a tar archive: oci-layout, index.json with one manifest
// (described by entry, which brings the platform and the names) and blobs/sha256/ with the manifest, the config
// and the layer. Every entry has mtime and root's ownership, in a fixed order, so the archive is reproducible
// too. It is written to a temporary file in out's folder and renamed to out once complete.
func writeArchive(out string, img v1.Image, layer *gzipLayer, entry v1.Descriptor, mtime time.Time) (size int64, err error) {
	manifest, err := img.RawManifest()
	if err != nil {
		return 0, fmt.Errorf("image manifest: %w", err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return 0, fmt.Errorf("image config: %w", err)
	}
	mdigest, err := img.Digest()
	if err != nil {
		return 0, fmt.Errorf("image digest: %w", err)
	}
	cdigest, err := img.ConfigName()
	if err != nil {
		return 0, fmt.Errorf("config digest: %w", err)
	}
	entry.MediaType = types.OCIManifestSchema1
	entry.Digest = mdigest
	entry.Size = int64(len(manifest))
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests:     []v1.Descriptor{entry},
	})
	if err != nil {
		return 0, fmt.Errorf("index.json: %w", err)
	}
	blobs := []blob{
		{digest: mdigest, size: int64(len(manifest)), open: bytesOpener(manifest)},
		{digest: cdigest, size: int64(len(config)), open: bytesOpener(config)},
		{digest: layer.digest, size: layer.size, open: layer.Compressed},
	}
	sort.Slice(blobs, func(i, j int) bool { return blobs[i].digest.Hex < blobs[j].digest.Hex })

	f, err := os.CreateTemp(filepath.Dir(out), ".moat-image-*.tar")
	if err != nil {
		return 0, fmt.Errorf("output file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if f != nil {
			f.Close()
		}
		if err != nil {
			os.Remove(tmp)
		}
	}()
	tw := tar.NewWriter(f)
	file := func(name string, size int64, r io.Reader) error {
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: mtime, Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("archive entry %s: %w", name, err)
		}
		if _, err := io.Copy(tw, r); err != nil {
			return fmt.Errorf("archive entry %s: %w", name, err)
		}
		return nil
	}
	dir := func(name string) error {
		hdr := &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime, Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("archive entry %s: %w", name, err)
		}
		return nil
	}
	if err := file("oci-layout", int64(len(ociLayoutFile)), bytes.NewReader([]byte(ociLayoutFile))); err != nil {
		return 0, err
	}
	if err := file("index.json", int64(len(index)), bytes.NewReader(index)); err != nil {
		return 0, err
	}
	if err := dir("blobs/"); err != nil {
		return 0, err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return 0, err
	}
	for _, b := range blobs {
		if err := copyBlob(file, b); err != nil {
			return 0, err
		}
	}
	if err := tw.Close(); err != nil {
		return 0, fmt.Errorf("archive: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		return 0, fmt.Errorf("output file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("output file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return 0, fmt.Errorf("output file: %w", err)
	}
	err = f.Close()
	f = nil
	if err != nil {
		return 0, fmt.Errorf("output file: %w", err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return 0, fmt.Errorf("output file: %w", err)
	}
	return st.Size(), nil
}

func copyBlob(file func(string, int64, io.Reader) error, b blob) error {
	rc, err := b.open()
	if err != nil {
		return fmt.Errorf("blob %s: %w", b.digest, err)
	}
	defer rc.Close()
	return file("blobs/"+b.digest.Algorithm+"/"+b.digest.Hex, b.size, rc)
}

func bytesOpener(b []byte) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
}
