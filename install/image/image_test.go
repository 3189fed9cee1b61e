package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
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

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/moatfw/moat/internal/ociimage"
	"github.com/moatfw/moat/internal/ociimage/moatimage"
	"github.com/moatfw/moat/internal/ociimage/ocitest"
	"github.com/moatfw/moat/internal/testutil"
)

// fakeBinaries writes the five binaries as small amd64 ELF files into a new folder and returns it with their
// contents by name.
func fakeBinaries(t *testing.T) (string, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	contents := map[string][]byte{}
	for _, n := range moatimage.Binaries {
		contents[n] = ocitest.FakeELF(elf.EM_X86_64, false, "the "+n+" binary\n")
		if err := os.WriteFile(filepath.Join(dir, n), contents[n], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir, contents
}

var testEpoch = time.Unix(1700000000, 0).UTC()

func testOptions(binDir, out string) options {
	return options{binDir: binDir, ref: moatimage.DefaultRef, out: out, arch: "amd64", licenses: moatimage.DefaultLicenses,
		source: moatimage.DefaultSource, created: testEpoch}
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
		"gzipped", "wrote " + out, res.Digest.String()} {
		if !strings.Contains(log.String(), s) {
			t.Errorf("progress lacks %q:\n%s", s, log.String())
		}
	}
	entry, img, archiveHdrs := ocitest.ReadArchive(t, out)

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
	if entry.MediaType != types.OCIManifestSchema1 || entry.Digest != res.Digest {
		t.Errorf("index entry %s %s, want %s %s", entry.MediaType, entry.Digest, types.OCIManifestSchema1, res.Digest)
	}
	wantAnn := map[string]string{ociimage.AnnotationImageName: "docker.io/moatfw/moat:v0.1.0", ociimage.AnnotationRefName: "v0.1.0"}
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
		"org.opencontainers.image.description": moatimage.Description,
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
	hdrs, contents := ocitest.LayerFiles(t, img)
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
	entry, img, _ := ocitest.ReadArchive(t, out)
	if got := entry.Annotations[ociimage.AnnotationImageName]; got != "registry.example:5000/team/moat:dev" {
		t.Errorf("image name %q", got)
	}
	if got := entry.Annotations[ociimage.AnnotationRefName]; got != "dev" {
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
	if r1.Digest != r2.Digest || ocitest.FileSHA256(t, first) != ocitest.FileSHA256(t, second) {
		t.Errorf("two builds of the same binaries differ: %s and %s", r1.Digest, r2.Digest)
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
	if r3.Digest == r1.Digest {
		t.Error("a changed binary kept the image digest")
	}
	o := testOptions(binDir, filepath.Join(outDir, "fourth.tar"))
	o.created = testEpoch.Add(time.Second)
	r4, err := build(o, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if r4.Digest == r1.Digest {
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
			write(t, filepath.Join(binDir, "moat-enforcer"), ocitest.FakeELF(elf.EM_AARCH64, false, "arm64"))
		}, "binary moat-enforcer: built for EM_AARCH64"},
		{"dynamically linked", func(t *testing.T, binDir string, o *options) {
			write(t, filepath.Join(binDir, "moat-install"), ocitest.FakeELF(elf.EM_X86_64, true, "dynamic"))
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
			before := testutil.ListDir(t, outDir)
			_, err := build(o, io.Discard)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("build: error %v, want one with %q", err, c.wantErr)
			}
			if err.Error() != strings.ToLower(err.Error()[:1])+err.Error()[1:] {
				t.Errorf("error %q does not start in lower case", err)
			}
			if after := testutil.ListDir(t, outDir); !slices.Equal(before, after) {
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
	for _, n := range moatimage.Binaries {
		copies = append(copies, "bin/"+n)
	}
	has("COPY " + strings.Join(copies, " ") + " /out" + moatimage.BinPath + "/")
	var links []string
	for link, target := range moatimage.Symlinks {
		links = append(links, fmt.Sprintf("ln -s %s /out%s/%s", target, moatimage.BinPath, link))
	}
	has("RUN chmod 0755 /out" + moatimage.BinPath + "/* && " + strings.Join(links, " && "))
	has("COPY --from=stage /out/ /")
	has("ENV PATH=" + moatimage.BinPath)
	has(fmt.Sprintf("ENTRYPOINT [%q]", moatimage.Entrypoint))
	_, tag, _ := ociimage.ImageName(moatimage.DefaultRef)
	has("ARG VERSION=" + tag)
	has("ARG LICENSES=" + moatimage.DefaultLicenses)
	var label string
	for _, s := range instrs[final:] {
		if strings.HasPrefix(s, "LABEL ") {
			label = s
		}
	}
	want := moatimage.Labels("${VERSION}", "${LICENSES}", moatimage.DefaultSource)
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
	machine, ok := ocitest.Machine(runtime.GOARCH)
	if !ok {
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
	for _, n := range moatimage.Binaries {
		if n != "moatctl" {
			write(t, filepath.Join(binDir, n), ocitest.FakeELF(machine, false, n))
		}
	}
	out := filepath.Join(t.TempDir(), "moat-image.tar")
	o := testOptions(binDir, out)
	o.arch = runtime.GOARCH
	res, err := build(o, io.Discard)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	_, img, _ := ocitest.ReadArchive(t, out)
	rootfs := ocitest.ExtractLayer(t, img)
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
		if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != res.Digest.String() {
			t.Errorf("skopeo reads a manifest of digest %x, want %s", sum, res.Digest)
		}
	} else {
		t.Log("no skopeo here: not checked with it")
	}
	ocitest.CheckWithContainerd(t, res)
}

// TestBuildSameAsBefore pins what the builder made before it moved into internal/ociimage (commit ab270fd): the
// same fake binaries and options give the same config, layer, manifest, archive and progress. The config digest
// and diff_id depend on the tar alone; the layer and manifest digests and the archive also on Go's gzip, which a
// new Go release could in principle change (then only those move, and docs/image.md says so).
func TestBuildSameAsBefore(t *testing.T) {
	binDir, _ := fakeBinaries(t)
	for _, c := range []struct {
		name                                     string
		mutate                                   func(*options)
		config, diffID, layer, manifest, archive string
	}{
		{"defaults", func(*options) {},
			"10c84f61c34e9c270c7d7426d761518adc986e0daa4185058128c6a6709a8a4a",
			"29ea40242b8db633e96f41238083a794e47c96482956abd0beca4a68dfe0baff",
			"f04f2617ed5df2094038ab8493ca24d07f104cd04b60d955f588da0c488886d0",
			"995c54f4ed1d1d5f78922ebd7a18b68872af8320362d40ed955cede62952876a",
			"ce57e7796e4b3823c1ca432d964b6149ac4769744821f00cf561f8669cdd13f6"},
		{"options", func(o *options) {
			o.ref = "registry.example:5000/team/moat:dev"
			o.version = "0.1.0-12-gabcdef"
			o.licenses = "Apache-2.0"
		}, "", "", "",
			"3bb3114bd7110886d1337f81314dba7dcc5bfded84b9f985196a52e6ccfa19bf",
			"169d47ce70adb5c6c18f2d90a4174fbd4de8b7f5706b8f77b23394f538e89516"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "moat-image.tar")
			o := testOptions(binDir, out)
			c.mutate(&o)
			var log bytes.Buffer
			res, err := build(o, &log)
			if err != nil {
				t.Fatal(err)
			}
			if c.config != "" && res.Config.Hex != c.config {
				t.Errorf("config %s, want sha256:%s", res.Config, c.config)
			}
			if res.Digest.Hex != c.manifest {
				t.Errorf("manifest %s, want sha256:%s", res.Digest, c.manifest)
			}
			if got := ocitest.FileSHA256(t, out); got != c.archive {
				t.Errorf("archive sha256 %s, want %s", got, c.archive)
			}
			if c.name != "defaults" {
				return
			}
			want := "image: linked /usr/local/bin/kubectl-moat -> moatctl\n" +
				"image: packed /usr/local/bin/moat (0.0 MiB, mode 0755)\n" +
				"image: packed /usr/local/bin/moat-enforcer (0.0 MiB, mode 0755)\n" +
				"image: packed /usr/local/bin/moat-install (0.0 MiB, mode 0755)\n" +
				"image: packed /usr/local/bin/moat-ipam (0.0 MiB, mode 0755)\n" +
				"image: packed /usr/local/bin/moatctl (0.0 MiB, mode 0755)\n" +
				"image: layer sha256:" + c.layer + ": 0.0 MiB gzipped, 0.0 MiB as tar (diff_id sha256:" + c.diffID + ")\n" +
				"image: config sha256:" + c.config + " (entrypoint /usr/local/bin/moat-enforcer, linux/amd64, created 2023-11-14T22:13:20Z), manifest sha256:" + c.manifest + "\n" +
				"image: wrote " + out + " (0.0 MiB): docker.io/moatfw/moat:v0.1.0 linux/amd64 sha256:" + c.manifest + "\n"
			if log.String() != want {
				t.Errorf("progress\n%s\nwant\n%s", log.String(), want)
			}
		})
	}
}
