package ociimage_test

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/moatfw/moat/internal/ociimage"
	"github.com/moatfw/moat/internal/ociimage/ocitest"
	"github.com/moatfw/moat/internal/testutil"
)

var testEpoch = time.Unix(1700000000, 0).UTC()

// testSpec is an agent-like image: a binary from disk, one from bytes, a config file, a link, a /tmp and an
// empty folder, with every config field set. It returns the spec and the files' contents by layer path.
func testSpec(t *testing.T) (ociimage.Spec, map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	agent := ocitest.FakeELF(elf.EM_X86_64, false, "the agent\n")
	if err := os.WriteFile(filepath.Join(dir, "agent"), agent, 0o700); err != nil {
		t.Fatal(err)
	}
	pause := ocitest.FakeELF(elf.EM_X86_64, false, "pause\n")
	conf := []byte("answer = 42\n")
	spec := ociimage.Spec{
		Ref:     "moat.test/agent:1",
		Arch:    "amd64",
		Created: testEpoch,
		Files: []ociimage.File{
			{Path: "/agent", Source: filepath.Join(dir, "agent"), Binary: true},
			{Path: "/usr/bin/pause", Data: pause, Mode: 0o4750, Binary: true},
			{Path: "/etc/agent/agent.conf", Data: conf},
		},
		Symlinks:   []ociimage.Symlink{{Path: "/bin/agent", Target: "../agent"}},
		Dirs:       []ociimage.Dir{{Path: "/tmp", Mode: 0o1777}, {Path: "/var/empty"}, {Path: "/etc"}},
		Entrypoint: []string{"/agent", "serve"},
		Cmd:        []string{"--tcp", "8080"},
		Env:        []string{"PATH=/bin", "AGENT=1"},
		Labels:     map[string]string{"org.opencontainers.image.title": "agent"},
		WorkingDir: "/tmp",
	}
	return spec, map[string][]byte{"agent": agent, "usr/bin/pause": pause, "etc/agent/agent.conf": conf}
}

func TestBuild(t *testing.T) {
	spec, contents := testSpec(t)
	out := filepath.Join(t.TempDir(), "sub", "agent.tar")
	var log bytes.Buffer
	res, err := ociimage.Build(context.Background(), spec, out, &log)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if res.Name != "moat.test/agent:1" || res.Tag != "1" || res.Archive != out ||
		res.Platform.OS != "linux" || res.Platform.Architecture != "amd64" {
		t.Errorf("result %+v", res)
	}
	for _, s := range []string{"packed /agent (0.0 MiB, mode 0755)", "packed /usr/bin/pause (0.0 MiB, mode 4750)",
		"packed /etc/agent/agent.conf (0.0 MiB, mode 0644)", "linked /bin/agent -> ../agent", "folder /tmp (mode 1777)",
		"folder /var/empty (mode 0755)", "entrypoint /agent serve, cmd --tcp 8080", "wrote " + out, res.Digest.String()} {
		if !strings.Contains(log.String(), s) {
			t.Errorf("progress lacks %q:\n%s", s, log.String())
		}
	}
	st, err := os.Stat(out)
	if err != nil || st.Size() != res.Size || st.Mode().Perm() != 0o644 {
		t.Errorf("archive %v (%v), want %d bytes, 0644", st, err, res.Size)
	}

	entry, img, _ := ocitest.ReadArchive(t, out)
	wantAnn := map[string]string{ociimage.AnnotationImageName: "moat.test/agent:1", ociimage.AnnotationRefName: "1"}
	if fmt.Sprint(entry.Annotations) != fmt.Sprint(wantAnn) {
		t.Errorf("index entry annotations %v, want %v", entry.Annotations, wantAnn)
	}
	if entry.Digest != res.Digest || entry.Platform == nil || entry.Platform.Architecture != "amd64" {
		t.Errorf("index entry %+v, want %s for amd64", entry, res.Digest)
	}
	if cn, _ := img.ConfigName(); cn != res.Config {
		t.Errorf("config %s, result says %s", cn, res.Config)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.Config
	if !slices.Equal(c.Entrypoint, spec.Entrypoint) || !slices.Equal(c.Cmd, spec.Cmd) || !slices.Equal(c.Env, spec.Env) ||
		c.WorkingDir != "/tmp" || fmt.Sprint(c.Labels) != fmt.Sprint(spec.Labels) || c.User != "" {
		t.Errorf("config %+v", c)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || !cfg.Created.Equal(testEpoch) ||
		len(cfg.History) != 1 || !cfg.History[0].Created.Equal(testEpoch) {
		t.Errorf("config: os %q architecture %q created %v history %+v", cfg.OS, cfg.Architecture, cfg.Created, cfg.History)
	}
	if want := "moat image builder: /agent, /bin/agent, /etc, /etc/agent/agent.conf, /tmp, /usr/bin/pause, /var/empty"; cfg.History[0].CreatedBy != want {
		t.Errorf("created_by %q, want %q", cfg.History[0].CreatedBy, want)
	}

	type entryWant struct {
		name     string
		typ      byte
		mode     int64
		linkname string
	}
	hdrs, got := ocitest.LayerFiles(t, img)
	var entries []entryWant
	for _, h := range hdrs {
		entries = append(entries, entryWant{h.Name, h.Typeflag, h.Mode, h.Linkname})
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(testEpoch) || h.Uname != "" || h.Gname != "" || len(h.PAXRecords) > 0 {
			t.Errorf("layer entry %s: uid %d gid %d (%q %q) mtime %v pax %v", h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime, h.PAXRecords)
		}
	}
	want := []entryWant{
		{"agent", tar.TypeReg, 0o755, ""},
		{"bin/", tar.TypeDir, 0o755, ""},
		{"bin/agent", tar.TypeSymlink, 0o777, "../agent"},
		{"etc/", tar.TypeDir, 0o755, ""},
		{"etc/agent/", tar.TypeDir, 0o755, ""},
		{"etc/agent/agent.conf", tar.TypeReg, 0o644, ""},
		{"tmp/", tar.TypeDir, 0o1777, ""},
		{"usr/", tar.TypeDir, 0o755, ""},
		{"usr/bin/", tar.TypeDir, 0o755, ""},
		{"usr/bin/pause", tar.TypeReg, 0o4750, ""},
		{"var/", tar.TypeDir, 0o755, ""},
		{"var/empty/", tar.TypeDir, 0o755, ""},
	}
	if !slices.Equal(entries, want) {
		t.Errorf("layer entries\n got %v\nwant %v", entries, want)
	}
	for p, b := range contents {
		if !bytes.Equal(got[p], b) {
			t.Errorf("layer's %s differs from its source", p)
		}
	}
}

// TestBuildMinimal: no config beyond the reference, a reference without a registry, the zero time.
func TestBuildMinimal(t *testing.T) {
	out := filepath.Join(t.TempDir(), "x.tar")
	res, err := ociimage.Build(context.Background(), ociimage.Spec{Ref: "example/x:v1", Arch: "arm64",
		Files: []ociimage.File{{Path: "/x", Data: []byte{}}}}, out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if res.Name != "docker.io/example/x:v1" || res.Tag != "v1" {
		t.Errorf("name %q tag %q", res.Name, res.Tag)
	}
	_, img, _ := ocitest.ReadArchive(t, out)
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != "arm64" || cfg.Created.Unix() != 0 || cfg.Config.Entrypoint != nil || cfg.Config.Cmd != nil ||
		cfg.Config.Env != nil || cfg.Config.Labels != nil || cfg.Config.WorkingDir != "" {
		t.Errorf("config %+v", cfg)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("media type %s", mt)
	}
	hdrs, _ := ocitest.LayerFiles(t, img)
	if len(hdrs) != 1 || hdrs[0].Name != "x" || hdrs[0].Size != 0 || hdrs[0].Mode != 0o644 {
		t.Errorf("layer %+v", hdrs)
	}
}

func TestBuildReproducible(t *testing.T) {
	spec, _ := testSpec(t)
	dir := t.TempDir()
	first, err := ociimage.Build(context.Background(), spec, filepath.Join(dir, "first.tar"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// The same entries in another order, the source with another mtime: the same archive, byte for byte.
	again, _ := testSpec(t)
	slices.Reverse(again.Files)
	slices.Reverse(again.Dirs)
	if err := os.Chtimes(again.Files[2].Source, time.Now(), time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	second, err := ociimage.Build(context.Background(), again, filepath.Join(dir, "second.tar"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if first.Digest != second.Digest || ocitest.FileSHA256(t, first.Archive) != ocitest.FileSHA256(t, second.Archive) {
		t.Errorf("two builds of the same spec differ: %s and %s", first.Digest, second.Digest)
	}
	for name, change := range map[string]func(*ociimage.Spec){
		"time":       func(s *ociimage.Spec) { s.Created = s.Created.Add(time.Second) },
		"data":       func(s *ociimage.Spec) { s.Files[2].Data = []byte("answer = 43\n") },
		"mode":       func(s *ociimage.Spec) { s.Dirs[0].Mode = 0o777 },
		"entrypoint": func(s *ociimage.Spec) { s.Entrypoint = []string{"/agent"} },
		"ref":        func(s *ociimage.Spec) { s.Ref = "moat.test/agent:2" },
	} {
		s, _ := testSpec(t)
		change(&s)
		res, err := ociimage.Build(context.Background(), s, filepath.Join(dir, name+".tar"), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		if ocitest.FileSHA256(t, res.Archive) == ocitest.FileSHA256(t, first.Archive) {
			t.Errorf("another %s kept the archive", name)
		}
		if name != "ref" && res.Digest == first.Digest {
			t.Errorf("another %s kept the image digest", name)
		}
	}
}

func TestBuildBadSpec(t *testing.T) {
	elfFor := func(m elf.Machine, interp bool) []byte { return ocitest.FakeELF(m, interp, "x") }
	for _, c := range []struct {
		name    string
		change  func(t *testing.T, s *ociimage.Spec, out string) string // returns the output file
		wantErr string
	}{
		{"relative path", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Files[0].Path = "agent"
			return out
		}, `path "agent": want an absolute, clean path`},
		{"unclean path", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Symlinks[0].Path = "/bin/../agent"
			return out
		}, `path "/bin/../agent"`},
		{"root", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Dirs[0].Path = "/"
			return out
		}, `path "/"`},
		{"twice", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Dirs[0].Path = "/agent"
			return out
		}, "path /agent is given twice"},
		{"below a file", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Dirs[0].Path = "/agent/tmp"
			return out
		}, "path /agent is a folder of /agent/tmp, and not a folder"},
		{"below a link", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Files[2].Path = "/bin/agent/conf"
			return out
		}, "path /bin/agent is a folder of /bin/agent/conf"},
		{"mode", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Dirs[0].Mode = 0o10777
			return out
		}, "mode 10777: want permission bits"},
		{"source and data", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Files[0].Data = []byte("x")
			return out
		}, "file /agent: both a source and data"},
		{"link without target", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Symlinks[0].Target = ""
			return out
		}, "link /bin/agent: no target"},
		{"missing source", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Files[0].Source += ".missing"
			return out
		}, "file /agent: open "},
		{"source is a folder", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Files[0].Source = filepath.Dir(s.Files[0].Source)
			return out
		}, "is not a regular file"},
		{"not ELF", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Files[2].Binary = true
			return out
		}, "file /etc/agent/agent.conf: not an ELF executable"},
		{"another architecture", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Files[1].Data = elfFor(elf.EM_AARCH64, false)
			return out
		}, "file /usr/bin/pause: built for EM_AARCH64"},
		{"dynamically linked", func(t *testing.T, s *ociimage.Spec, out string) string {
			if err := os.WriteFile(s.Files[0].Source, elfFor(elf.EM_X86_64, true), 0o755); err != nil {
				t.Fatal(err)
			}
			return out
		}, ": dynamically linked"},
		{"unknown architecture", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Arch = "mips"
			return out
		}, `architecture "mips"`},
		{"digest reference", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Ref = "moat.test/agent@sha256:" + strings.Repeat("0", 64)
			return out
		}, "want a tag"},
		{"bad reference", func(t *testing.T, s *ociimage.Spec, out string) string {
			s.Ref = "moat.test/Agent:1"
			return out
		}, "image reference"},
		{"no output", func(t *testing.T, s *ociimage.Spec, out string) string {
			return ""
		}, "no output file"},
		{"output is a folder", func(t *testing.T, s *ociimage.Spec, out string) string {
			if err := os.Mkdir(out, 0o755); err != nil {
				t.Fatal(err)
			}
			return out
		}, "output file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			spec, _ := testSpec(t)
			outDir := t.TempDir()
			out := c.change(t, &spec, filepath.Join(outDir, "agent.tar"))
			before := testutil.ListDir(t, outDir)
			_, err := ociimage.Build(context.Background(), spec, out, io.Discard)
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
}

// TestBuildFailureKeepsArchive: a failed build, or a cancelled one, leaves an earlier archive as it was and no
// temporary file; a missing source is a FileError that errors.Is finds as not existing.
func TestBuildFailureKeepsArchive(t *testing.T) {
	spec, _ := testSpec(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "agent.tar")
	if err := os.WriteFile(out, []byte("the previous archive"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := spec
	missing.Files = slices.Clone(spec.Files)
	missing.Files[0].Source += ".missing"
	_, err := ociimage.Build(context.Background(), missing, out, io.Discard)
	var fe *ociimage.FileError
	if !errors.Is(err, os.ErrNotExist) || !errors.As(err, &fe) || fe.Path != "/agent" || fe.Source != missing.Files[0].Source {
		t.Errorf("build without the agent: %v, want a FileError for /agent that is not-exist", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := ociimage.Build(ctx, spec, out, io.Discard); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled build: %v, want context.Canceled", err)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "the previous archive" {
		t.Errorf("the previous archive became %q (%v)", b, err)
	}
	if names := testutil.ListDir(t, dir); !slices.Equal(names, []string{"agent.tar"}) {
		t.Errorf("failed builds left %q", names)
	}
}

func TestFileError(t *testing.T) {
	inner := errors.New("not an ELF executable")
	for _, c := range []struct {
		err  ociimage.FileError
		want string
	}{
		{ociimage.FileError{Path: "/agent", Source: "bin/agent", Err: inner}, "file /agent (bin/agent): not an ELF executable"},
		{ociimage.FileError{Path: "/agent", Err: inner}, "file /agent: not an ELF executable"},
		{ociimage.FileError{Path: "/agent", Source: "bin/agent", Err: &os.PathError{Op: "open", Path: "bin/agent", Err: os.ErrNotExist}},
			"file /agent: open bin/agent: file does not exist"},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("%q, want %q", got, c.want)
		}
	}
}

func TestCheckELF(t *testing.T) {
	for _, c := range []struct {
		name    string
		b       []byte
		arch    string
		wantErr string
	}{
		{"static amd64", ocitest.FakeELF(elf.EM_X86_64, false, "x"), "amd64", ""},
		{"static arm64", ocitest.FakeELF(elf.EM_AARCH64, false, "x"), "arm64", ""},
		{"empty", nil, "amd64", "not an ELF executable"},
		{"script", []byte("#!/bin/sh\n"), "amd64", "not an ELF executable"},
		{"dynamic", ocitest.FakeELF(elf.EM_X86_64, true, "x"), "amd64", "dynamically linked"},
		{"other machine", ocitest.FakeELF(elf.EM_X86_64, false, "x"), "arm64", "built for EM_X86_64"},
		{"unknown arch", ocitest.FakeELF(elf.EM_X86_64, false, "x"), "vax", `architecture "vax"`},
	} {
		err := ociimage.CheckELF(bytes.NewReader(c.b), c.arch)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.wantErr)
		}
	}
	// A distribution's ls is dynamically linked: the check must see it.
	if ls, err := os.Open("/bin/ls"); err == nil {
		defer ls.Close()
		if err := ociimage.CheckELF(ls, "amd64"); err == nil || !strings.Contains(err.Error(), "dynamically linked") &&
			!strings.Contains(err.Error(), "built for") {
			t.Errorf("CheckELF(/bin/ls): %v, want dynamically linked", err)
		}
	}
}

func TestImageName(t *testing.T) {
	for _, c := range []struct{ ref, full, tag string }{
		{"moatfw/moat:v0.1.0", "docker.io/moatfw/moat:v0.1.0", "v0.1.0"},
		{"moat.test/agent:1", "moat.test/agent:1", "1"},
		{"moat.test/pause:1", "moat.test/pause:1", "1"},
		{"localhost:5000/moat:dev", "localhost:5000/moat:dev", "dev"},
		{"moat", "docker.io/library/moat:latest", "latest"},
		{"docker.io/moatfw/moat:v0.1.0", "docker.io/moatfw/moat:v0.1.0", "v0.1.0"},
		{"index.docker.io/moatfw/moat:v1", "docker.io/moatfw/moat:v1", "v1"},
		{"registry.example/a/b/moat:1.2", "registry.example/a/b/moat:1.2", "1.2"},
	} {
		full, tag, err := ociimage.ImageName(c.ref)
		if err != nil || full != c.full || tag != c.tag {
			t.Errorf("ImageName(%q) = %q, %q, %v; want %q, %q", c.ref, full, tag, err, c.full, c.tag)
		}
	}
	for _, ref := range []string{"", "moat.test/Agent:1", "moat.test/agent@sha256:" + strings.Repeat("a", 64),
		"Moatfw/Moat:v1", "moatfw/moat:bad tag", "moatfw/moat@sha256:" + strings.Repeat("a", 64)} {
		if _, _, err := ociimage.ImageName(ref); err == nil {
			t.Errorf("ImageName(%q): no error", ref)
		}
	}
}
