// Command moat-enforcer is Moat's host agent. This build loads and pins the datapath under --pin-root and keeps
// it until it is stopped; namespaces, policy sources, flows and the API come with the enforcer issue.
package main

import (
	"flag"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/moatfw/moat/bpf"
	"github.com/moatfw/moat/internal/version"
)

func main() {
	pinRoot := flag.String("pin-root", bpf.DefaultPinRoot, "bpffs folder for Moat's pinned maps and programs")
	flag.Parse()
	log := logrus.NewEntry(logrus.StandardLogger()).WithField("component", "enforcer")

	dp, err := bpf.Load(*pinRoot, bpf.Options{})
	if err != nil {
		log.WithError(err).Fatal("cannot load the datapath")
	}
	defer dp.Close()
	log.WithFields(logrus.Fields{"pinRoot": *pinRoot, "createdMaps": dp.Created, "version": version.Version}).
		Info("datapath loaded and pinned")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	log.Info("stopping; pinned state stays for the next start")
}
