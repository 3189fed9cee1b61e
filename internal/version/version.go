// Package version holds the build's version, set with -ldflags "-X github.com/moatfw/moat/internal/version.Version=...".
package version

// Version of this build.
var Version = "dev"
