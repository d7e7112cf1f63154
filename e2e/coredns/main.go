// Command coredns is CoreDNS with only the plugins the e2e node's cluster DNS uses, so it builds
// quickly and small. It has no forward plugin on purpose: names outside the cluster domain are
// not resolved, since nothing in the tests may send traffic off this machine.
//
// The Corefile is written by `controlplane --node`: bind, errors, kubernetes and cache; log is
// there to debug a query by hand.
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
