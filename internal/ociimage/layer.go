package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"sort"
	"strings"

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

// layerEntry is one entry of the layer's tar.
type layerEntry struct {
	hdr  *tar.Header
	file *File    // a regular file's spec
	src  *os.File // a regular file's opened Source, set by openFiles
	dir  bool     // a folder the spec names, not only one above another entry
}

// layerEntries checks the spec's paths and modes and turns them into the layer's entries in path order: the
// folders above every entry (0755), the files, links and folders of the spec, all root's. Their mtime is the
// creation time and they carry no PAX records, so the same spec always gives the same tar.
func layerEntries(spec Spec) ([]layerEntry, error) {
	byPath := map[string]*layerEntry{} // by tar name without a folder's trailing slash
	var order []*layerEntry
	add := func(p string, e *layerEntry) error {
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "/" {
			return fmt.Errorf("path %q: want an absolute, clean path below /", p)
		}
		if e.hdr.Mode < 0 || e.hdr.Mode > 0o7777 {
			return fmt.Errorf("path %s: mode %o: want permission bits, at most 07777", p, e.hdr.Mode)
		}
		key := strings.TrimPrefix(p, "/")
		if _, ok := byPath[key]; ok {
			return fmt.Errorf("path %s is given twice", p)
		}
		e.hdr.Name = key
		if e.hdr.Typeflag == tar.TypeDir {
			e.hdr.Name += "/"
		}
		byPath[key] = e
		order = append(order, e)
		return nil
	}
	for i := range spec.Files {
		f := &spec.Files[i]
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
			if f.Binary {
				mode = 0o755
			}
		}
		if f.Source != "" && f.Data != nil {
			return nil, fmt.Errorf("file %s: both a source and data", f.Path)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(f.Data))}
		if err := add(f.Path, &layerEntry{hdr: hdr, file: f}); err != nil {
			return nil, err
		}
	}
	for _, l := range spec.Symlinks {
		if l.Target == "" {
			return nil, fmt.Errorf("link %s: no target", l.Path)
		}
		hdr := &tar.Header{Typeflag: tar.TypeSymlink, Linkname: l.Target, Mode: 0o777}
		if err := add(l.Path, &layerEntry{hdr: hdr}); err != nil {
			return nil, err
		}
	}
	for _, d := range spec.Dirs {
		mode := d.Mode
		if mode == 0 {
			mode = 0o755
		}
		if err := add(d.Path, &layerEntry{hdr: &tar.Header{Typeflag: tar.TypeDir, Mode: mode}, dir: true}); err != nil {
			return nil, err
		}
	}
	// The folders above every entry: made 0755 unless the spec names them, and never a file or a link.
	for _, e := range append([]*layerEntry(nil), order...) {
		name := strings.TrimSuffix(e.hdr.Name, "/")
		for parent := path.Dir(name); parent != "."; parent = path.Dir(parent) {
			old, ok := byPath[parent]
			if !ok {
				d := &layerEntry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: parent + "/", Mode: 0o755}}
				byPath[parent] = d
				order = append(order, d)
				continue
			}
			if old.hdr.Typeflag != tar.TypeDir {
				return nil, fmt.Errorf("path /%s is a folder of /%s, and not a folder", parent, name)
			}
		}
	}
	entries := make([]layerEntry, 0, len(order))
	for _, e := range order {
		e.hdr.ModTime = spec.Created
		e.hdr.Format = tar.FormatUSTAR // no PAX records: nothing but the fields above goes into the bytes
		entries = append(entries, *e)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })
	return entries, nil
}

// openFiles opens and checks every file with a Source, and checks every Binary, before anything is written: a
// source must be a regular file, a binary a static ELF executable for arch. The entries keep the opened files
// (closeAll closes them) and the sources' sizes.
func openFiles(entries []layerEntry, arch string) error {
	for i := range entries {
		e := &entries[i]
		if e.file == nil {
			continue
		}
		if err := openFile(e, arch); err != nil {
			closeAll(entries)
			return &FileError{Path: e.file.Path, Source: e.file.Source, Err: err}
		}
	}
	return nil
}

func openFile(e *layerEntry, arch string) error {
	if e.file.Source == "" {
		if e.file.Binary {
			return CheckELF(bytes.NewReader(e.file.Data), arch)
		}
		return nil
	}
	f, err := os.Open(e.file.Source)
	if err != nil {
		return err
	}
	e.src = f
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", e.file.Source)
	}
	e.hdr.Size = st.Size()
	if e.file.Binary {
		return CheckELF(f, arch)
	}
	return nil
}

func closeAll(entries []layerEntry) {
	for i := range entries {
		if entries[i].src != nil {
			entries[i].src.Close()
			entries[i].src = nil
		}
	}
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
func writeLayer(ctx context.Context, dir string, entries []layerEntry, log io.Writer) (l *gzipLayer, err error) {
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
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := writeEntry(tw, e, log); err != nil {
			return nil, err
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

func writeEntry(tw *tar.Writer, e layerEntry, log io.Writer) error {
	if err := tw.WriteHeader(e.hdr); err != nil {
		return fmt.Errorf("layer entry %s: %w", e.hdr.Name, err)
	}
	switch {
	case e.file != nil:
		var r io.Reader = bytes.NewReader(e.file.Data)
		if e.src != nil {
			if _, err := e.src.Seek(0, io.SeekStart); err != nil {
				return fmt.Errorf("file %s: %w", e.file.Source, err)
			}
			r = e.src
		}
		n, err := io.Copy(tw, r)
		if err == nil && n != e.hdr.Size {
			err = errors.New("it changed while it was packed")
		}
		if err != nil {
			return fmt.Errorf("pack /%s: %w", e.hdr.Name, err)
		}
		fmt.Fprintf(log, "image: packed /%s (%s, mode %04o)\n", e.hdr.Name, mib(e.hdr.Size), e.hdr.Mode)
	case e.hdr.Typeflag == tar.TypeSymlink:
		fmt.Fprintf(log, "image: linked /%s -> %s\n", e.hdr.Name, e.hdr.Linkname)
	case e.dir:
		fmt.Fprintf(log, "image: folder /%s (mode %04o)\n", strings.TrimSuffix(e.hdr.Name, "/"), e.hdr.Mode)
	}
	return nil
}
