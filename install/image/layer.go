package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// gzipLayer is the image's one layer, gzipped into a temporary file; its digests were taken while it was written.
type gzipLayer struct {
	file   string
	digest v1.Hash // of the gzipped bytes
	diffID v1.Hash // of the tar
	size   int64   // gzipped
}

var _ v1.Layer = (*gzipLayer)(nil)

func (l *gzipLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *gzipLayer) DiffID() (v1.Hash, error)             { return l.diffID, nil }
func (l *gzipLayer) Size() (int64, error)                 { return l.size, nil }
func (l *gzipLayer) MediaType() (types.MediaType, error)  { return types.OCILayer, nil }
func (l *gzipLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.file) }
func (l *gzipLayer) remove()                              { os.Remove(l.file) }
func (l *gzipLayer) Uncompressed() (io.ReadCloser, error) { return gunzipFile(l.file) }

func gunzipFile(name string) (io.ReadCloser, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{zr, f}, nil
}

// layerEntry is one entry of the layer's tar, before the binary contents.
type layerEntry struct {
	hdr *tar.Header
	bin *binFile
}

// layerEntries are the layer's entries in path order: the folders down to /usr/local/bin, the binaries (0755,
// root's) and the links, all with the same mtime so that the same binaries always give the same tar.
func layerEntries(files []binFile, mtime time.Time) []layerEntry {
	var entries []layerEntry
	dir := ""
	for _, part := range strings.Split(strings.Trim(binPath, "/"), "/") {
		dir = path.Join(dir, part)
		entries = append(entries, layerEntry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}})
	}
	for i := range files {
		b := &files[i]
		entries = append(entries, layerEntry{
			hdr: &tar.Header{Typeflag: tar.TypeReg, Name: layerPath(b.name), Mode: 0o755, Size: b.size},
			bin: b,
		})
	}
	for link, target := range symlinks {
		entries = append(entries, layerEntry{
			hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: layerPath(link), Linkname: target, Mode: 0o777},
		})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })
	for _, e := range entries {
		e.hdr.ModTime = mtime
		e.hdr.Format = tar.FormatUSTAR // no PAX records: nothing but the fields above goes into the bytes
	}
	return entries
}

// countingHash hashes and counts what is written through it.
type countingHash struct {
	hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	n, err := c.Hash.Write(p)
	c.n += int64(n)
	return n, err
}

// writeLayer writes the layer's tar, gzipped, to a temporary file in dir, taking both digests on the way.
func writeLayer(dir string, files []binFile, mtime time.Time, log io.Writer) (l *gzipLayer, err error) {
	f, err := os.CreateTemp(dir, ".moat-image-layer-*.tar.gz")
	if err != nil {
		return nil, fmt.Errorf("layer file: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("layer file: %w", cerr)
		}
		if err != nil {
			os.Remove(f.Name())
		}
	}()
	compressed := &countingHash{Hash: sha256.New()}
	zw, err := gzip.NewWriterLevel(io.MultiWriter(f, compressed), gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	uncompressed := &countingHash{Hash: sha256.New()}
	tw := tar.NewWriter(io.MultiWriter(zw, uncompressed))
	for _, e := range layerEntries(files, mtime) {
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, fmt.Errorf("layer entry %s: %w", e.hdr.Name, err)
		}
		switch {
		case e.bin != nil:
			if _, err := e.bin.f.Seek(0, io.SeekStart); err != nil {
				return nil, fmt.Errorf("binary %s: %w", e.bin.name, err)
			}
			if _, err := io.Copy(tw, e.bin.f); err != nil {
				return nil, fmt.Errorf("pack binary %s: %w", e.bin.name, err)
			}
			fmt.Fprintf(log, "image: packed /%s (%s, mode %04o)\n", e.hdr.Name, mib(e.hdr.Size), e.hdr.Mode)
		case e.hdr.Typeflag == tar.TypeSymlink:
			fmt.Fprintf(log, "image: linked /%s -> %s\n", e.hdr.Name, e.hdr.Linkname)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("layer gzip: %w", err)
	}
	l = &gzipLayer{
		file:   f.Name(),
		digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", compressed.Sum(nil))},
		diffID: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", uncompressed.Sum(nil))},
		size:   compressed.n,
	}
	fmt.Fprintf(log, "image: layer %s: %s gzipped, %s as tar (diff_id %s)\n", l.digest, mib(l.size), mib(uncompressed.n), l.diffID)
	return l, nil
}
