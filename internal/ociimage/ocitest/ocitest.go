// Package ocitest reads back what internal/ociimage writes, for tests: it unpacks an archive, checks it against
// the OCI image layout spec and go-containerregistry's validation, reads the layer, makes fake ELF binaries, and
// imports an archive into containerd when one runs.
package ocitest

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/moatfw/moat/internal/ociimage"
)

// FakeELF is a minimal 64-bit little-endian ELF executable header for machine, then payload; with interp it also
// has a PT_INTERP program header, as a dynamically linked binary has.
func FakeELF(machine elf.Machine, interp bool, payload string) []byte {
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

// Extract unpacks a tar archive into dir, refusing paths that leave it, and returns its headers in order.
func Extract(t testing.TB, r io.Reader, dir string) []*tar.Header {
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

// CheckLayout checks an unpacked archive against the OCI image layout spec: the oci-layout file, index.json an
// image index, and every file under blobs/ named by the sha256 of its bytes and referenced from index.json
// down, none missing, none extra.
func CheckLayout(t testing.TB, dir string) {
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

// ReadArchive unpacks the archive, checks it as an OCI layout and with go-containerregistry's validation, and
// returns its one index entry and image.
func ReadArchive(t testing.TB, archive string) (v1.Descriptor, v1.Image, []*tar.Header) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dir := t.TempDir()
	hdrs := Extract(t, f, dir)
	CheckLayout(t, dir)
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

// oneLayer is the image's only layer; an image with another number of layers fails the test.
func oneLayer(t testing.TB, img v1.Image) v1.Layer {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	return layers[0]
}

// LayerFiles reads the image's one layer: headers by name, and contents of regular files.
func LayerFiles(t testing.TB, img v1.Image) ([]*tar.Header, map[string][]byte) {
	t.Helper()
	layer := oneLayer(t, img)
	if mt, _ := layer.MediaType(); mt != types.OCILayer {
		t.Errorf("layer media type %s, want %s", mt, types.OCILayer)
	}
	rc, err := layer.Uncompressed()
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

// CheckWithContainerd imports the archive with ctr into a namespace of its own when a containerd answers, and
// checks the image's name and digest; it removes the namespace afterwards.
func CheckWithContainerd(t testing.TB, res ociimage.Result) {
	t.Helper()
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		t.Log("no ctr here: not imported into containerd")
		return
	}
	if err := exec.Command(ctr, "--connect-timeout", "2s", "version").Run(); err != nil {
		t.Logf("ctr finds no containerd (%v): not imported", err)
		return
	}
	ns := fmt.Sprintf("moat-image-test-%d-%s", os.Getpid(), strings.NewReplacer("/", "-", " ", "-").Replace(t.Name()))
	t.Cleanup(func() {
		exec.Command(ctr, "-n", ns, "images", "rm", res.Name).Run()
		exec.Command(ctr, "namespaces", "rm", ns).Run()
	})
	if out, err := exec.Command(ctr, "-n", ns, "images", "import", "--no-unpack", res.Archive).CombinedOutput(); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out)
	}
	out, err := exec.Command(ctr, "-n", ns, "images", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images ls: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[0] == res.Name {
			if f[2] != res.Digest.String() {
				t.Errorf("containerd has %s at %s, want %s", res.Name, f[2], res.Digest)
			}
			return
		}
	}
	t.Errorf("containerd did not name the image %s:\n%s", res.Name, out)
}

// ExtractLayer unpacks the image's one layer into a new folder and returns it: the image's root file system.
func ExtractLayer(t testing.TB, img v1.Image) string {
	t.Helper()
	rc, err := oneLayer(t, img).Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rootfs := t.TempDir()
	Extract(t, rc, rootfs)
	return rootfs
}

// Machine is the ELF machine of arch (a GOARCH) when FakeELF can make binaries for it: 64-bit little-endian ones.
func Machine(arch string) (elf.Machine, bool) {
	m, ok := map[string]elf.Machine{
		"amd64":   elf.EM_X86_64,
		"arm64":   elf.EM_AARCH64,
		"ppc64le": elf.EM_PPC64,
		"riscv64": elf.EM_RISCV,
	}[arch]
	return m, ok
}

// FileSHA256 is the hex SHA-256 of a file's bytes.
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
