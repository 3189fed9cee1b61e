package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// fakeELF is a minimal 64-bit little-endian ELF executable header for machine, then payload; with interp it also
// has a PT_INTERP program header, as a dynamically linked binary has.
func fakeELF(machine elf.Machine, interp bool, payload string) []byte {
	var buf bytes.Buffer
	hdr := elf.Header64{
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(machine),
		Version:   uint32(elf.EV_CURRENT),
		Ehsize:    64,
		Phentsize: 56,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	interpPath := "/lib64/ld-linux-x86-64.so.2\x00"
	if interp {
		hdr.Phoff = 64
		hdr.Phnum = 1
	}
	binary.Write(&buf, binary.LittleEndian, hdr)
	if interp {
		binary.Write(&buf, binary.LittleEndian, elf.Prog64{
			Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: 120,
			Filesz: uint64(len(interpPath)), Memsz: uint64(len(interpPath)), Align: 1,
		})
		buf.WriteString(interpPath)
	}
	buf.WriteString(payload)
	return buf.Bytes()
}

// fakeBinaries writes the five binaries as small amd64 ELF files into a new folder and returns it with their
// contents by name.
func fakeBinaries(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	contents := map[string][]byte{}
	for _, n := range binaries {
		contents[n] = fakeELF(elf.EM_X86_64, false, "the "+n+" binary\n")
		if err := os.WriteFile(filepath.Join(dir, n), contents[n], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir, contents
}

var testEpoch = time.Unix(1700000000, 0).UTC()

func testOptions(binDir, out string) options {
	return options{binDir: binDir, ref: defaultRef, out: out, arch: "amd64", licenses: defaultLicenses,
		source: defaultSource, created: testEpoch}
}

// extract unpacks a tar archive into dir, refusing paths that leave it, and returns its headers in order.
func extract(t *testing.T, r io.Reader, dir string) []*tar.Header {
	t.Helper()
	var hdrs []*tar.Header
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return hdrs
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		hdrs = append(hdrs, hdr)
		clean := filepath.Clean(hdr.Name)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
			t.Fatalf("tar entry %q leaves its folder", hdr.Name)
		}
		p := filepath.Join(dir, clean)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_EXCL, os.FileMode(hdr.Mode)&0o777)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("tar entry %q: unexpected type %c", hdr.Name, hdr.Typeflag)
		}
	}
}

// checkLayout checks an unpacked archive against the OCI image layout spec: the oci-layout file, index.json an
// image index, and every file under blobs/ named by the sha256 of its bytes and referenced from index.json
// down, none missing, none extra.
func checkLayout(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "oci-layout"))
	if err != nil {
		t.Fatalf("oci-layout: %v", err)
	}
	var lay struct {
		ImageLayoutVersion string `json:"imageLayoutVersion"`
	}
	if err := json.Unmarshal(b, &lay); err != nil || lay.ImageLayoutVersion != "1.0.0" {
		t.Fatalf("oci-layout %s: want imageLayoutVersion 1.0.0 (%v)", b, err)
	}
	blobs := map[string]bool{}
	entries, err := os.ReadDir(filepath.Join(dir, "blobs", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, "blobs", "sha256", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.Name() {
			t.Errorf("blobs/sha256/%s holds bytes whose sha256 is %x", e.Name(), sum)
		}
		blobs[e.Name()] = false
	}
	var walk func(d v1.Descriptor)
	walk = func(d v1.Descriptor) {
		if d.Digest.Algorithm != "sha256" {
			t.Fatalf("descriptor %v: want a sha256 digest", d)
		}
		if _, ok := blobs[d.Digest.Hex]; !ok {
			t.Fatalf("descriptor %s (%s) has no blob", d.Digest, d.MediaType)
		}
		blobs[d.Digest.Hex] = true
		b, _ := os.ReadFile(filepath.Join(dir, "blobs", "sha256", d.Digest.Hex))
		if int64(len(b)) != d.Size {
			t.Errorf("descriptor %s: size %d, blob has %d bytes", d.Digest, d.Size, len(b))
		}
		if d.MediaType == types.OCIManifestSchema1 {
			m, err := v1.ParseManifest(bytes.NewReader(b))
			if err != nil {
				t.Fatal(err)
			}
			if m.SchemaVersion != 2 || m.MediaType != types.OCIManifestSchema1 {
				t.Errorf("manifest: schemaVersion %d mediaType %q", m.SchemaVersion, m.MediaType)
			}
			walk(m.Config)
			for _, l := range m.Layers {
				walk(l)
			}
		}
	}
	b, err = os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatalf("index.json: %v", err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != types.OCIImageIndex {
		t.Errorf("index.json: schemaVersion %d mediaType %q, want 2 and %s", idx.SchemaVersion, idx.MediaType, types.OCIImageIndex)
	}
	for _, m := range idx.Manifests {
		walk(m)
	}
	for h, used := range blobs {
		if !used {
			t.Errorf("blob %s is referenced from nowhere", h)
		}
	}
}

// readArchive unpacks the archive, checks it as an OCI layout and with go-containerregistry's validation, and
// returns its one index entry and image.
func readArchive(t *testing.T, archive string) (v1.Descriptor, v1.Image, []*tar.Header) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	hdrs := extract(t, f, dir)
	checkLayout(t, dir)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("read the layout: %v", err)
	}
	if err := validate.Index(idx); err != nil {
		t.Fatalf("the image does not validate: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json has %d manifests, want 1", len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return im.Manifests[0], img, hdrs
}

// layerFiles reads the image's one layer: headers by name, and contents of regular files.
func layerFiles(t *testing.T, img v1.Image) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", mt, types.OCILayer)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var hdrs []*tar.Header
	contents := map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return hdrs, contents
		}
		if err != nil {
			t.Fatal(err)
		}
		hdrs = append(hdrs, hdr)
		if hdr.Typeflag == tar.TypeReg {
			if contents[hdr.Name], err = io.ReadAll(tr); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestBuildFromFakeBinaries(t *testing.T) {
	binDir, want := fakeBinaries(t)
	// bin/kubectl-moat from `make build` is not read: the builder makes the link itself.
	if err := os.Symlink("moatctl", filepath.Join(binDir, "kubectl-moat")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "moat-image.tar")
	var log bytes.Buffer
	res, err := build(testOptions(binDir, out), &log)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	for _, s := range []string{"packed /usr/local/bin/moat-enforcer", "linked /usr/local/bin/kubectl-moat -> moatctl",
		"gzipped", "wrote " + out, res.digest.String()} {
		if !strings.Contains(log.String(), s) {
			t.Errorf("progress lacks %q:\n%s", s, log.String())
		}
	}
	entry, img, archiveHdrs := readArchive(t, out)

	// The archive: an OCI layout, entries in a fixed order, root's, with the build's mtime.
	var names []string
	for _, h := range archiveHdrs {
		names = append(names, h.Name)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(testEpoch) {
			t.Errorf("archive entry %s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
	}
	if len(names) != 7 || !slices.Equal(names[:4], []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/"}) ||
		!slices.IsSorted(names[4:]) {
		t.Errorf("archive entries %q", names)
	}

	// index.json: one linux/amd64 OCI manifest under the names containerd and the OCI layout use.
	if entry.MediaType != types.OCIManifestSchema1 || entry.Digest != res.digest {
		t.Errorf("index entry %s %s, want %s %s", entry.MediaType, entry.Digest, types.OCIManifestSchema1, res.digest)
	}
	wantAnn := map[string]string{annotationImageName: "docker.io/moatfw/moat:v0.1.0", annotationRefName: "v0.1.0"}
	if fmt.Sprint(entry.Annotations) != fmt.Sprint(wantAnn) {
		t.Errorf("index entry annotations %v, want %v", entry.Annotations, wantAnn)
	}
	if entry.Platform == nil || entry.Platform.OS != "linux" || entry.Platform.Architecture != "amd64" {
		t.Errorf("index entry platform %v, want linux/amd64", entry.Platform)
	}

	// The manifest and config.
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s", mt)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.Config.MediaType != types.OCIConfigJSON {
		t.Errorf("config media type %s", m.Config.MediaType)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || !cfg.Created.Equal(testEpoch) {
		t.Errorf("config: os %q architecture %q created %v", cfg.OS, cfg.Architecture, cfg.Created)
	}
	if !slices.Equal(cfg.Config.Entrypoint, []string{"/usr/local/bin/moat-enforcer"}) || len(cfg.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	if !slices.Equal(cfg.Config.Env, []string{"PATH=/usr/local/bin"}) {
		t.Errorf("env %q", cfg.Config.Env)
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.title":       "moat",
		"org.opencontainers.image.description": description,
		"org.opencontainers.image.source":      "https://github.com/moatfw/moat",
		"org.opencontainers.image.version":     "v0.1.0",
		"org.opencontainers.image.licenses":    "NOASSERTION",
	}
	if fmt.Sprint(cfg.Config.Labels) != fmt.Sprint(wantLabels) {
		t.Errorf("labels %v, want %v", cfg.Config.Labels, wantLabels)
	}
	if cfg.Config.User != "" || cfg.Config.WorkingDir != "" || len(cfg.Config.ExposedPorts) != 0 {
		t.Errorf("unexpected config: user %q workdir %q ports %v", cfg.Config.User, cfg.Config.WorkingDir, cfg.Config.ExposedPorts)
	}
	if len(cfg.History) != 1 || !cfg.History[0].Created.Equal(testEpoch) {
		t.Errorf("history %+v", cfg.History)
	}

	// The layer: the folders, the five binaries (0755, root's, the build's mtime, their bytes), the link.
	hdrs, contents := layerFiles(t, img)
	type layerEntryWant struct {
		name     string
		typ      byte
		mode     int64
		linkname string
	}
	var got []layerEntryWant
	for _, h := range hdrs {
		got = append(got, layerEntryWant{h.Name, h.Typeflag, h.Mode, h.Linkname})
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(testEpoch) || h.Uname != "" || h.Gname != "" {
			t.Errorf("layer entry %s: uid %d gid %d (%q %q) mtime %v", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime)
		}
	}
	wantEntries := []layerEntryWant{
		{"usr/", tar.TypeDir, 0o755, ""},
		{"usr/local/", tar.TypeDir, 0o755, ""},
		{"usr/local/bin/", tar.TypeDir, 0o755, ""},
		{"usr/local/bin/kubectl-moat", tar.TypeSymlink, 0o777, "moatctl"},
		{"usr/local/bin/moat", tar.TypeReg, 0o755, ""},
		{"usr/local/bin/moat-enforcer", tar.TypeReg, 0o755, ""},
		{"usr/local/bin/moat-install", tar.TypeReg, 0o755, ""},
		{"usr/local/bin/moat-ipam", tar.TypeReg, 0o755, ""},
		{"usr/local/bin/moatctl", tar.TypeReg, 0o755, ""},
	}
	if !slices.Equal(got, wantEntries) {
		t.Errorf("layer entries\n got %v\nwant %v", got, wantEntries)
	}
	for n, b := range want {
		if !bytes.Equal(contents["usr/local/bin/"+n], b) {
			t.Errorf("layer's %s differs from the binary", n)
		}
	}
}

func TestBuildOptions(t *testing.T) {
	binDir, _ := fakeBinaries(t)
	out := filepath.Join(t.TempDir(), "custom.tar")
	o := testOptions(binDir, out)
	o.ref = "registry.example:5000/team/moat:dev"
	o.version = "0.1.0-12-gabcdef"
	o.licenses = "Apache-2.0"
	if _, err := build(o, io.Discard); err != nil {
		t.Fatal(err)
	}
	entry, img, _ := readArchive(t, out)
	if got := entry.Annotations[annotationImageName]; got != "registry.example:5000/team/moat:dev" {
		t.Errorf("image name %q", got)
	}
	if got := entry.Annotations[annotationRefName]; got != "dev" {
		t.Errorf("ref name %q", got)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if v, l := cfg.Config.Labels["org.opencontainers.image.version"], cfg.Config.Labels["org.opencontainers.image.licenses"]; v != o.version || l != o.licenses {
		t.Errorf("version label %q licenses label %q", v, l)
	}
}

func TestImageName(t *testing.T) {
	for _, c := range []struct{ ref, full, tag string }{
		{"moatfw/moat:v0.1.0", "docker.io/moatfw/moat:v0.1.0", "v0.1.0"},
		{"docker.io/moatfw/moat:v0.1.0", "docker.io/moatfw/moat:v0.1.0", "v0.1.0"},
		{"index.docker.io/moatfw/moat:v1", "docker.io/moatfw/moat:v1", "v1"},
		{"moat", "docker.io/library/moat:latest", "latest"},
		{"localhost:5000/moat:dev", "localhost:5000/moat:dev", "dev"},
		{"registry.example/a/b/moat:1.2", "registry.example/a/b/moat:1.2", "1.2"},
	} {
		full, tag, err := imageName(c.ref)
		if err != nil || full != c.full || tag != c.tag {
			t.Errorf("imageName(%q) = %q, %q, %v; want %q, %q", c.ref, full, tag, err, c.full, c.tag)
		}
	}
	for _, ref := range []string{"", "Moatfw/Moat:v1", "moatfw/moat:bad tag", "moatfw/moat@sha256:" + strings.Repeat("a", 64)} {
		if _, _, err := imageName(ref); err == nil {
			t.Errorf("imageName(%q): no error", ref)
		}
	}
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestBuildReproducible(t *testing.T) {
	binDir, contents := fakeBinaries(t)
	outDir := t.TempDir()
	first := filepath.Join(outDir, "first.tar")
	r1, err := build(testOptions(binDir, first), io.Discard)
	if err != nil {
		t.Fatal(err)
	}

	// The same bytes in another folder, with other modes and mtimes: the same image, byte for byte.
	other := t.TempDir()
	for n, b := range contents {
		p := filepath.Join(other, n)
		if err := os.WriteFile(p, b, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, time.Now(), time.Now().Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	second := filepath.Join(outDir, "second.tar")
	r2, err := build(testOptions(other, second), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r1.digest != r2.digest || fileSHA(t, first) != fileSHA(t, second) {
		t.Errorf("two builds of the same binaries differ: %s and %s", r1.digest, r2.digest)
	}

	// One byte of one binary, or the time, changes the image.
	changed := append(bytes.Clone(contents["moat-ipam"]), '!')
	if err := os.WriteFile(filepath.Join(other, "moat-ipam"), changed, 0o755); err != nil {
		t.Fatal(err)
	}
	r3, err := build(testOptions(other, filepath.Join(outDir, "third.tar")), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r3.digest == r1.digest {
		t.Error("a changed binary kept the image digest")
	}
	o := testOptions(binDir, filepath.Join(outDir, "fourth.tar"))
	o.created = testEpoch.Add(time.Second)
	r4, err := build(o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r4.digest == r1.digest {
		t.Error("another creation time kept the image digest")
	}
}

func TestBuildBadInput(t *testing.T) {
	for _, c := range []struct {
		name    string
		prepare func(t *testing.T, binDir string, o *options)
		wantErr string
	}{
		{"missing binary folder", func(t *testing.T, binDir string, o *options) {
			o.binDir = filepath.Join(binDir, "nowhere")
		}, "binary folder"},
		{"binary folder is a file", func(t *testing.T, binDir string, o *options) {
			o.binDir = filepath.Join(binDir, "moat")
		}, "is not a folder"},
		{"missing binary", func(t *testing.T, binDir string, o *options) {
			remove(t, filepath.Join(binDir, "moat-ipam"))
		}, "binary moat-ipam"},
		{"binary is a folder", func(t *testing.T, binDir string, o *options) {
			remove(t, filepath.Join(binDir, "moatctl"))
			if err := os.Mkdir(filepath.Join(binDir, "moatctl"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, "moatctl is not a regular file"},
		{"not an ELF file", func(t *testing.T, binDir string, o *options) {
			write(t, filepath.Join(binDir, "moat"), []byte("#!/bin/sh\necho moat\n"))
		}, "binary moat: not an ELF executable"},
		{"another architecture", func(t *testing.T, binDir string, o *options) {
			write(t, filepath.Join(binDir, "moat-enforcer"), fakeELF(elf.EM_AARCH64, false, "arm64"))
		}, "binary moat-enforcer: built for EM_AARCH64"},
		{"dynamically linked", func(t *testing.T, binDir string, o *options) {
			write(t, filepath.Join(binDir, "moat-install"), fakeELF(elf.EM_X86_64, true, "dynamic"))
		}, "binary moat-install: dynamically linked"},
		{"unknown architecture", func(t *testing.T, binDir string, o *options) {
			o.arch = "mips"
		}, `architecture "mips"`},
		{"digest reference", func(t *testing.T, binDir string, o *options) {
			o.ref = "moatfw/moat@sha256:" + strings.Repeat("0", 64)
		}, "want a tag"},
		{"bad reference", func(t *testing.T, binDir string, o *options) {
			o.ref = "moatfw/Moat:v1"
		}, "image reference"},
		{"output is a folder", func(t *testing.T, binDir string, o *options) {
			if err := os.Mkdir(o.out, 0o755); err != nil {
				t.Fatal(err)
			}
		}, "output file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			binDir, _ := fakeBinaries(t)
			outDir := t.TempDir()
			o := testOptions(binDir, filepath.Join(outDir, "moat-image.tar"))
			c.prepare(t, binDir, &o)
			before := listDir(t, outDir)
			_, err := build(o, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("build: error %v, want one with %q", err, c.wantErr)
			}
			if err.Error() != strings.ToLower(err.Error()[:1])+err.Error()[1:] {
				t.Errorf("error %q does not start in lower case", err)
			}
			if after := listDir(t, outDir); !slices.Equal(before, after) {
				t.Errorf("a failed build left %q behind (before: %q)", after, before)
			}
		})
	}

	// A failed build leaves an earlier archive as it was.
	binDir, _ := fakeBinaries(t)
	out := filepath.Join(t.TempDir(), "moat-image.tar")
	write(t, out, []byte("the previous archive"))
	remove(t, filepath.Join(binDir, "moat"))
	if _, err := build(testOptions(binDir, out), io.Discard); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("build without moat: %v, want a not-exist error", err)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "the previous archive" {
		t.Errorf("the previous archive became %q (%v)", b, err)
	}
}

func remove(t *testing.T, p string) {
	t.Helper()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestParseFlags(t *testing.T) {
	env := map[string]string{"GOARCH": "arm64", "SOURCE_DATE_EPOCH": "1700000000"}
	o, err := parseFlags(nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if o.arch != "arm64" || !o.created.Equal(testEpoch) || o.ref != "moatfw/moat:v0.1.0" || o.out != "bin/moat-image.tar" ||
		o.binDir != "bin" || o.version != "" {
		t.Errorf("defaults from the environment: %+v", o)
	}
	o, err = parseFlags([]string{"-arch", "amd64", "-source-date-epoch", "5", "-tag", "x/y:z", "-version", "v9"},
		func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if o.arch != "amd64" || o.created.Unix() != 5 || o.created.Location() != time.UTC || o.ref != "x/y:z" || o.version != "v9" {
		t.Errorf("flags: %+v", o)
	}
	o, err = parseFlags(nil, func(string) string { return "" })
	if err != nil || o.arch != runtime.GOARCH || o.created.Unix() != 0 {
		t.Errorf("no environment: arch %q created %v (%v)", o.arch, o.created, err)
	}
	for _, args := range [][]string{{"-source-date-epoch", "yesterday"}, {"-source-date-epoch", "-1"}, {"extra"}} {
		if _, err := parseFlags(args, func(string) string { return "" }); err == nil {
			t.Errorf("parseFlags(%q): no error", args)
		}
	}
}

// TestContainerfileMatchesBuilder reads install/image/Containerfile and checks it describes what build makes.
func TestContainerfileMatchesBuilder(t *testing.T) {
	b, err := os.ReadFile("Containerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Instructions, with continuation lines joined and comments dropped.
	var instrs []string
	var cur string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur += strings.TrimSpace(strings.TrimSuffix(line, "\\")) + " "
			continue
		}
		if s := strings.TrimSpace(cur + line); s != "" {
			instrs = append(instrs, s)
		}
		cur = ""
	}
	final := -1
	for i, s := range instrs {
		if s == "FROM scratch" {
			final = i
		}
	}
	if final < 0 {
		t.Fatalf("no FROM scratch stage in %q", instrs)
	}
	has := func(want string) {
		t.Helper()
		if !slices.Contains(instrs, want) {
			t.Errorf("Containerfile lacks %q", want)
		}
	}
	var copies []string
	for _, n := range binaries {
		copies = append(copies, "bin/"+n)
	}
	has("COPY " + strings.Join(copies, " ") + " /out" + binPath + "/")
	var links []string
	for link, target := range symlinks {
		links = append(links, fmt.Sprintf("ln -s %s /out%s/%s", target, binPath, link))
	}
	has("RUN chmod 0755 /out" + binPath + "/* && " + strings.Join(links, " && "))
	has("COPY --from=stage /out/ /")
	has("ENV PATH=" + binPath)
	has(fmt.Sprintf("ENTRYPOINT [%q]", entrypoint))
	_, tag, _ := imageName(defaultRef)
	has("ARG VERSION=" + tag)
	has("ARG LICENSES=" + defaultLicenses)
	var label string
	for _, s := range instrs[final:] {
		if strings.HasPrefix(s, "LABEL ") {
			label = s
		}
	}
	want := labels(options{version: "${VERSION}", licenses: "${LICENSES}", source: defaultSource})
	got := map[string]string{}
	rest := strings.TrimPrefix(label, "LABEL ")
	for rest != "" {
		k, v, ok := strings.Cut(rest, `="`)
		if !ok {
			t.Fatalf("LABEL %q: want key=\"value\" pairs", label)
		}
		v, rest, ok = strings.Cut(v, `"`)
		if !ok {
			t.Fatalf("LABEL %q: unterminated value", label)
		}
		got[strings.TrimSpace(k)] = v
		rest = strings.TrimSpace(rest)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Containerfile labels\n got %v\nwant %v", got, want)
	}
}

// TestBuildRealBinary packs a real moatctl (a static Go binary) and runs it from the unpacked image through the
// kubectl-moat link. With skopeo or a running containerd on the machine, it also has them read the archive.
func TestBuildRealBinary(t *testing.T) {
	want, ok := elfTargets[runtime.GOARCH]
	if !ok || want.class != elf.ELFCLASS64 || want.order != binary.LittleEndian {
		t.Skipf("fake binaries for %s are not made here", runtime.GOARCH)
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go build needs the go command: %v", err)
	}
	binDir := t.TempDir()
	cmd := exec.Command(goCmd, "build", "-trimpath", "-o", filepath.Join(binDir, "moatctl"), "github.com/moatfw/moat/moatctl")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build moatctl: %v\n%s", err, out)
	}
	for _, n := range binaries {
		if n != "moatctl" {
			write(t, filepath.Join(binDir, n), fakeELF(want.machine, false, n))
		}
	}
	out := filepath.Join(t.TempDir(), "moat-image.tar")
	o := testOptions(binDir, out)
	o.arch = runtime.GOARCH
	res, err := build(o, io.Discard)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	_, img, _ := readArchive(t, out)
	if err := checkELF(bytes.NewReader(nil), runtime.GOARCH); err == nil {
		t.Error("checkELF accepts an empty file")
	}
	if ls, err := os.Open("/bin/ls"); err == nil {
		// A distribution's ls is dynamically linked: the check must see it.
		err := checkELF(ls, runtime.GOARCH)
		ls.Close()
		if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
			t.Errorf("checkELF(/bin/ls): %v, want dynamically linked", err)
		}
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	rootfs := t.TempDir()
	extract(t, rc, rootfs)
	rc.Close()
	run := exec.Command(filepath.Join(rootfs, "usr/local/bin/kubectl-moat"), "--help")
	run.Env = []string{"PATH=/usr/local/bin"}
	help, err := run.CombinedOutput()
	if err != nil || !strings.Contains(string(help), "Usage:") {
		t.Fatalf("moatctl from the image, through kubectl-moat: %v\n%s", err, help)
	}

	if skopeo, err := exec.LookPath("skopeo"); err == nil {
		raw, err := exec.Command(skopeo, "inspect", "--raw", "oci-archive:"+out+":v0.1.0").Output()
		if err != nil {
			t.Fatalf("skopeo inspect: %v", err)
		}
		if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != res.digest.String() {
			t.Errorf("skopeo reads a manifest of digest %x, want %s", sum, res.digest)
		}
	} else {
		t.Log("no skopeo here: not checked with it")
	}
	checkWithContainerd(t, out, res)
}

// checkWithContainerd imports the archive with ctr into a namespace of its own when a containerd answers, and
// checks the image's name and digest; it removes the namespace afterwards.
func checkWithContainerd(t *testing.T, archive string, res result) {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		t.Log("no ctr here: not imported into containerd")
		return
	}
	if err := exec.Command(ctr, "version").Run(); err != nil {
		t.Logf("ctr finds no containerd (%v): not imported", err)
		return
	}
	ns := fmt.Sprintf("moat-image-test-%d", os.Getpid())
	t.Cleanup(func() {
		exec.Command(ctr, "-n", ns, "images", "rm", res.name).Run()
		exec.Command(ctr, "namespaces", "rm", ns).Run()
	})
	if out, err := exec.Command(ctr, "-n", ns, "images", "import", "--no-unpack", archive).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err := exec.Command(ctr, "-n", ns, "images", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == res.name {
			if f[2] != res.digest.String() {
				t.Errorf("containerd has %s at %s, want %s", res.name, f[2], res.digest)
			}
			return
		}
	}
	t.Errorf("containerd did not name the image %s:\n%s", res.name, out)
}
