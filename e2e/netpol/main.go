// Command netpol is the NetworkPolicy implementation of the e2e node (`controlplane --node`):
// the controller of sigs.k8s.io/kube-network-policies (the one kind ships), run as a host
// daemon beside kube-proxy and CoreDNS instead of as a DaemonSet. The controller decides every
// verdict; this main only differs from upstream's cmd/main.go in how packets reach it.
//
// Upstream, the controller's nftables table sends the first packet of each new connection to or
// from a local pod that a NetworkPolicy selects to an NFQUEUE (the nft `queue` statement),
// where the controller accepts or drops it. The e2e machines' kernels lack that statement
// (CONFIG_NFT_QUEUE unset: adding the table fails with "netlink receive: no such file or
// directory") but have the xtables NFQUEUE target (CONFIG_NETFILTER_XT_TARGET_NFQUEUE, used
// from nftables through nft_compat). So this main installs the diversion itself, as iptables
// rules in a chain of its own in the mangle table's POSTROUTING, where the node's egress
// guard also lives, and with the same `iptables` (iptables-nft on Debian: its NFQUEUE is the
// xt target, which this kernel has):
//
//	-p udp --dport 53 -j RETURN                 DNS, as upstream with NetfilterBug1766Fix
//	-m owner --uid-owner 0 -j RETURN            the host's root sockets (kubelet probes), as upstream
//	-m conntrack --ctstate ESTABLISHED,RELATED -j RETURN   first packets only, as upstream
//	-s POD_CIDR -j NFQUEUE --queue-num N --queue-bypass
//	-d POD_CIDR -j NFQUEUE --queue-num N --queue-bypass
//
// POSTROUTING as upstream: after kube-proxy's DNAT (a Service's ClusterIP is judged as the pod
// behind it) and before its SNAT; pod-to-pod packets on the node's bridge pass it too, as the
// node sets net.bridge.bridge-nf-call-iptables. Upstream queues only the IPs of local pods a
// policy selects (a set its table keeps); this queues every new connection to or from the pod
// range, which the controller accepts when no policy selects either end: the same verdicts,
// one round trip through userspace more per connection of an unselected pod. --queue-bypass:
// when nothing reads the queue (before the controller binds it, after a crash) packets pass;
// upstream's default fails closed, but with every pod connection queued a dead controller
// would cut all pods off, and a test of a refusal fails anyway when nothing refuses.
//
// The controller still tries to install its own table on every sync and fails, logging the
// error and retrying with back-off (its configuration has no way to turn that sync off, nor to
// make it use another statement); the failed transaction leaves nothing behind, and the
// verdicts do not depend on it. Where the kernel has nft `queue`, the table would be installed
// and queue the selected pods' packets first: the verdicts would be the same.
//
// Besides, upstream's main only knows the in-cluster configuration (a ServiceAccount token at
// a fixed path, which a host daemon does not have), stops on SIGINT only (the node stops its
// daemons with SIGTERM) and serves metrics on every interface.
//
//	netpol --kubeconfig FILE --hostname-override NODE --pod-cidr CIDR [--nfqueue-id N]
//	       [--chain NAME] [--table NAME] [--ready-file FILE] [--v N]
//	netpol --cleanup [--chain NAME] [--table NAME]
//
// --ready-file is written once the informers have synced, the diversion is in place and the
// controller reads the queue (so NetworkPolicies are enforced from then on), and removed on
// the way out. --cleanup removes the diversion chain and the controller's table, as a killed
// run leaves them (nothing else of it outlives the process), and exits.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/kube-network-policies/pkg/networkpolicy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "netpol:", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server (required unless --cleanup)")
	nodeName := flag.String("hostname-override", "", "the name of the Node whose pods are policed (required unless --cleanup)")
	podCIDR := flag.String("pod-cidr", "", "the node's pod range: new connections to or from it are judged (required unless --cleanup)")
	queueID := flag.Int("nfqueue-id", 100, "the NFQUEUE the first packets of connections go to")
	chain := flag.String("chain", "E2E-NODE-NETPOL", "the iptables chain (mangle table) that diverts packets to the queue")
	table := flag.String("table", "kube-network-policies", "the nftables table (family inet) of the controller")
	readyFile := flag.String("ready-file", "", "written once policies are enforced, removed on exit")
	cleanup := flag.Bool("cleanup", false, "remove the diversion chain and the nftables table, and exit")
	klog.InitFlags(nil)
	flag.Parse()

	if *cleanup {
		return errors.Join(removeDiversion(*chain), deleteTable(*table))
	}
	if *kubeconfig == "" || *nodeName == "" || *podCIDR == "" {
		return errors.New("--kubeconfig, --hostname-override and --pod-cidr are required")
	}
	if _, err := netip.ParsePrefix(*podCIDR); err != nil {
		return fmt.Errorf("--pod-cidr: %w", err)
	}
	if *queueID < 1 || *queueID > 65535 {
		return fmt.Errorf("--nfqueue-id %d: not a queue number", *queueID)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	cfg.UserAgent = "kube-network-policies"
	// Protobuf for the built-in types, as upstream's main asks.
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	factory := informers.NewSharedInformerFactory(cs, 0)
	// No AdminNetworkPolicy APIs (alpha, and their CRDs are not installed): NetworkPolicies
	// only. NRI is left on as upstream's main leaves it: containerd 1.6 has no NRI socket, so
	// the plugin finds none, logs it and the controller uses the API server's pod IPs (with
	// NRIdisabled the controller would look pod IPs up in a nil plugin). FailOpen stays off as
	// upstream's default: a packet the controller cannot parse is dropped.
	controller, err := networkpolicy.NewController(cs,
		factory.Networking().V1().NetworkPolicies(),
		factory.Core().V1().Namespaces(),
		factory.Core().V1().Pods(),
		nil, nil, nil, nil,
		networkpolicy.Config{
			QueueID:             *queueID,
			NodeName:            *nodeName,
			NFTableName:         *table,
			NetfilterBug1766Fix: true,
		})
	if err != nil {
		return err
	}
	// A chain left by a killed run is replaced. With --queue-bypass, packets diverted before
	// the controller binds the queue pass.
	if err := installDiversion(*chain, *podCIDR, *queueID); err != nil {
		return errors.Join(err, removeDiversion(*chain))
	}
	defer func() {
		if err := removeDiversion(*chain); err != nil {
			klog.ErrorS(err, "removing the diversion chain")
		}
	}()

	done := make(chan error, 1)
	go func() { done <- controller.Run(ctx) }()
	factory.Start(ctx.Done())

	if *readyFile != "" {
		defer os.Remove(*readyFile)
		go func() {
			if err := markReady(ctx, factory, *queueID, *readyFile); err != nil && ctx.Err() == nil {
				klog.ErrorS(err, "writing the ready file")
			}
		}()
	}

	select {
	case err = <-done:
		// The controller stopped on its own (nfqueue could not be opened...): an error.
		if err == nil {
			err = errors.New("the controller stopped")
		}
		return err
	case <-ctx.Done():
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		klog.Info("the controller did not stop in time")
	}
	return nil
}

// iptables runs the node's iptables (as its egress guard does) with the xtables lock.
func iptables(args ...string) error {
	out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// installDiversion (re)creates chain in the mangle table, as the package comment shows, and
// jumps to it first thing in POSTROUTING.
func installDiversion(chain, podCIDR string, queueID int) error {
	if err := removeDiversion(chain); err != nil {
		return err
	}
	queue := []string{"-j", "NFQUEUE", "--queue-num", strconv.Itoa(queueID), "--queue-bypass"}
	for _, rule := range [][]string{
		{"-N", chain},
		{"-A", chain, "-p", "udp", "--dport", "53", "-j", "RETURN"},
		{"-A", chain, "-m", "owner", "--uid-owner", "0", "-j", "RETURN"},
		{"-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"},
		append([]string{"-A", chain, "-s", podCIDR}, queue...),
		append([]string{"-A", chain, "-d", podCIDR}, queue...),
		{"-I", "POSTROUTING", "1", "-j", chain},
	} {
		if err := iptables(append([]string{"-t", "mangle"}, rule...)...); err != nil {
			return err
		}
	}
	return nil
}

// removeDiversion removes every jump to chain from POSTROUTING, then the chain, if they exist.
func removeDiversion(chain string) error {
	for iptables("-t", "mangle", "-D", "POSTROUTING", "-j", chain) == nil {
	}
	if iptables("-t", "mangle", "-n", "-L", chain) != nil {
		return nil // no such chain
	}
	return errors.Join(iptables("-t", "mangle", "-F", chain), iptables("-t", "mangle", "-X", chain))
}

// markReady writes file once the informers have synced and the controller reads the queue.
func markReady(ctx context.Context, factory informers.SharedInformerFactory, queueID int, file string) error {
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("informer of %v did not sync", typ)
		}
	}
	for {
		bound, err := queueBound(queueID)
		if err != nil {
			return err
		}
		if bound {
			return os.WriteFile(file, []byte("ok\n"), 0o600)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// queueBound tells whether a process reads NFQUEUE queueID: the kernel lists the bound queues,
// their number first, in /proc/net/netfilter/nfnetlink_queue (of this network namespace).
func queueBound(queueID int) (bool, error) {
	f, err := os.Open("/proc/net/netfilter/nfnetlink_queue")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil // no queue bound yet since boot
	}
	if err != nil {
		return false, err
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		if fields := strings.Fields(lines.Text()); len(fields) > 0 && fields[0] == strconv.Itoa(queueID) {
			return true, nil
		}
	}
	return false, lines.Err()
}

func tableExists(name string) (bool, error) {
	nft, err := nftables.New()
	if err != nil {
		return false, err
	}
	tables, err := nft.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, err
	}
	for _, t := range tables {
		if t.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// deleteTable deletes the controller's table if it exists (it never does where the kernel
// lacks nft `queue`; the controller deletes it itself when it stops).
func deleteTable(name string) error {
	found, err := tableExists(name)
	if err != nil || !found {
		return err
	}
	nft, err := nftables.New()
	if err != nil {
		return err
	}
	nft.DelTable(&nftables.Table{Name: name, Family: nftables.TableFamilyINet})
	return nft.Flush()
}
