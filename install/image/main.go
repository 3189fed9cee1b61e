// Command image builds Moat's container image without a daemon: one layer with the five binaries of `make build`
// in /usr/local/bin (plus kubectl-moat, a symlink to moatctl), written as an OCI image layout archive that
// `ctr -n k8s.io images import` reads. The same binaries, tag, version and time always give the same image digest.
//
//	go run ./install/image -bin bin -tag moatfw/moat:v0.1.0 -out bin/moat-image.tar
//
// install/image/Containerfile describes the same image for docker and buildah. The image is internal/ociimage/moatimage's,
// built with internal/ociimage.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/moatfw/moat/internal/ociimage"
	"github.com/moatfw/moat/internal/ociimage/moatimage"
)

func main() {
	o, err := parseFlags(os.Args[1:], os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(2)
	}
	if _, err := build(o, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

// parseFlags turns the command line into options; getenv supplies GOARCH and SOURCE_DATE_EPOCH defaults.
func parseFlags(args []string, getenv func(string) string) (options, error) {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	var o options
	var epoch string
	arch := getenv("GOARCH")
	if arch == "" {
		arch = runtime.GOARCH
	}
	fs.StringVar(&o.binDir, "bin", "bin", "the folder holding "+fmt.Sprint(moatimage.Binaries))
	fs.StringVar(&o.ref, "tag", moatimage.DefaultRef, "the image reference the archive names")
	fs.StringVar(&o.out, "out", "bin/moat-image.tar", "the OCI image layout archive to write")
	fs.StringVar(&o.arch, "arch", arch, "the binaries' architecture (GOARCH); checked against their ELF headers")
	fs.StringVar(&o.version, "version", "", "the org.opencontainers.image.version label (default: the reference's tag)")
	fs.StringVar(&epoch, "source-date-epoch", getenv("SOURCE_DATE_EPOCH"),
		"the image's creation time and every file's mtime, in seconds since 1970 (default $SOURCE_DATE_EPOCH, else 0)")
	fs.StringVar(&o.licenses, "licenses", moatimage.DefaultLicenses, "the org.opencontainers.image.licenses label (SPDX)")
	fs.StringVar(&o.source, "source", moatimage.DefaultSource, "the org.opencontainers.image.source label")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	o.created = time.Unix(0, 0).UTC()
	if epoch != "" {
		secs, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil || secs < 0 {
			return options{}, fmt.Errorf("source date epoch %q: want seconds since 1970", epoch)
		}
		o.created = time.Unix(secs, 0).UTC()
	}
	return o, nil
}

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

// build writes the image's archive to o.out, reporting its progress to log.
func build(o options, log io.Writer) (ociimage.Result, error) {
	return moatimage.Build(context.Background(), moatimage.Options{
		BinDir:   o.binDir,
		Ref:      o.ref,
		Arch:     o.arch,
		Version:  o.version,
		Licenses: o.licenses,
		Source:   o.source,
		Created:  o.created,
	}, o.out, log)
}
