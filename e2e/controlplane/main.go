// Command controlplane runs a small but real Kubernetes control plane in one process, for tests:
// embedded etcd, kube-apiserver and kube-controller-manager, all on the loopback interface.
//
// Everything it needs or makes lives under --dir: etcd data, certificates and keys, the admin
// kubeconfig (DIR/kubeconfig), the audit log (DIR/audit.log). Running it again on the same
// directory reuses the data, the keys and the ports, so a test can kill the process and start it
// again to simulate an API server that goes away for a while.
//
// Once /readyz answers ok it prints READY on stdout and writes DIR/ready. SIGTERM or SIGINT shuts
// everything down and the process exits 0.
//
// With --node it also runs a real node (see node.go): READY then also means the node is Ready
// and the cluster DNS answers.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, " ") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var (
		dir          string
		readyTimeout time.Duration
		apiArgs      stringList
		kcmArgs      stringList
		noKCM        bool
		withParent   bool
		withNode     bool
		nodeBinDir   string
	)
	flag.StringVar(&dir, "dir", "", "directory for all state: etcd data, certs, kubeconfig, audit.log (required)")
	flag.DurationVar(&readyTimeout, "ready-timeout", 3*time.Minute, "give up if the API server (and node) is not ready within this time")
	flag.Var(&apiArgs, "apiserver-arg", "extra kube-apiserver flag, e.g. --apiserver-arg=--v=2 (repeatable)")
	flag.Var(&kcmArgs, "kcm-arg", "extra kube-controller-manager flag (repeatable)")
	flag.BoolVar(&noKCM, "no-controller-manager", false, "do not run kube-controller-manager")
	flag.BoolVar(&withParent, "exit-with-parent", false, "shut down when the parent process goes away")
	flag.BoolVar(&withNode, "node", false, "also run a real node: containerd, kubelet, kube-proxy, CoreDNS, the NetworkPolicy controller and the scheduler (root, one per machine)")
	flag.StringVar(&nodeBinDir, "node-bin-dir", "", "where kubelet, kube-proxy, coredns, netpol and pause.tar are (default: this program's directory)")
	flag.Parse()
	if dir == "" {
		fmt.Fprintln(os.Stderr, "controlplane: --dir is required")
		os.Exit(2)
	}
	if withNode && noKCM {
		fmt.Fprintln(os.Stderr, "controlplane: --node needs the controller manager")
		os.Exit(2)
	}
	if withNode && nodeBinDir == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
			os.Exit(1)
		}
		nodeBinDir = filepath.Dir(exe)
	}
	opts := options{readyTimeout: readyTimeout, apiArgs: apiArgs, kcmArgs: kcmArgs, withKCM: !noKCM,
		withParent: withParent, withNode: withNode, nodeBinDir: nodeBinDir}
	if err := run(dir, opts); err != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", err)
		os.Exit(1)
	}
}

type options struct {
	readyTimeout        time.Duration
	apiArgs, kcmArgs    []string
	withKCM, withParent bool
	withNode            bool
	nodeBinDir          string
}

func run(dir string, o options) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	readyFile := filepath.Join(dir, "ready")
	// A previous process may have been killed while ready.
	if err := os.Remove(readyFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if o.withParent {
		ctx = exitWithParent(ctx)
	}
	readyCtx, readyCancel := context.WithTimeout(ctx, o.readyTimeout)
	defer readyCancel()

	host := "127.0.0.1"
	var claim *hostClaim
	if o.withNode {
		// First of all: the pod bridge carries the node IP the API server binds to.
		if claim, err = claimHost(readyCtx, dir, o.nodeBinDir); err != nil {
			return err
		}
		host = nodeIP
	}
	var n *node
	var left stopped
	// stopNode stops the node's in-process components, pods and daemons: before the API server
	// goes, so the kubelet's last updates reach it and no watch of theirs holds its shutdown.
	stopNode := sync.OnceFunc(func() {
		if n != nil {
			n.stop()
		}
		if claim != nil {
			left = claim.stopProcesses()
		}
	})
	// releaseHost removes the node's host state (mounts, iptables, the bridge) and frees the
	// claim: last, once the API server has stopped, since the bridge carries the node IP it is
	// bound to. Either step out of this order costs the API server's shutdown a minute of
	// timeouts.
	releaseHost := sync.OnceFunc(func() {
		if claim != nil {
			claim.removeHostState(left)
			claim.release()
		}
	})
	defer releaseHost()
	defer stopNode()

	l, err := layout(dir, host)
	if err != nil {
		return err
	}
	if err := l.ensureFiles(); err != nil {
		return err
	}
	if o.withNode {
		if err := l.ensureNodePKI(); err != nil {
			return fmt.Errorf("node certificates: %w", err)
		}
	}

	etcd, err := startEtcd(l)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	closeEtcd := sync.OnceFunc(etcd.Close)
	defer closeEtcd()

	apiCtx, apiCancel := context.WithCancel(context.Background())
	defer apiCancel()
	apiDone := make(chan error, 1)
	go func() { apiDone <- runAPIServer(apiCtx, l, o.withNode, o.apiArgs) }()

	kcmCtx, kcmCancel := context.WithCancel(context.Background())
	defer kcmCancel()
	kcmDone := make(chan error, 1)
	// shutdown stops what runs, in order: node, controller manager, API server, etcd; then it
	// releases the host.
	shutdown := func() {
		stopNode()
		kcmCancel()
		if o.withKCM {
			waitDone(kcmDone, 10*time.Second)
		}
		apiCancel()
		waitDone(apiDone, 60*time.Second)
		closeEtcd()
		releaseHost()
	}

	if err := waitReady(readyCtx, l, apiDone); err != nil {
		shutdown()
		if ctx.Err() != nil {
			return nil // asked to stop before we were ready
		}
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	if o.withKCM {
		go func() { kcmDone <- runControllerManager(kcmCtx, l, o.kcmArgs) }()
	}

	var nodeExited <-chan error
	if o.withNode {
		began := time.Now()
		n, err = startNode(readyCtx, claim, l)
		if err == nil {
			nodeExited = n.exited
			err = n.waitReady(readyCtx)
		}
		if err != nil {
			shutdown()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("node: %w", err)
		}
		logf("node ready in %s", time.Since(began).Round(time.Millisecond))
	}

	if err := os.WriteFile(readyFile, []byte(l.apiURL()+"\n"), 0o600); err != nil {
		shutdown()
		return err
	}
	fmt.Println("READY")

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-apiDone:
		apiDone <- err
		runErr = fmt.Errorf("kube-apiserver stopped: %v", err)
	case err := <-kcmDone:
		kcmDone <- err
		runErr = fmt.Errorf("kube-controller-manager stopped: %v", err)
	case err := <-nodeExited:
		runErr = fmt.Errorf("node: %v", err)
	}
	if runErr != nil {
		fmt.Fprintf(os.Stderr, "controlplane: %v\n", runErr)
	}
	fmt.Fprintln(os.Stderr, "controlplane: shutting down")
	_ = os.Remove(readyFile)
	shutdown()
	fmt.Fprintln(os.Stderr, "controlplane: stopped")
	return runErr
}

// waitDone waits for a component to return, at most d.
func waitDone(done <-chan error, d time.Duration) {
	select {
	case <-done:
	case <-time.After(d):
		fmt.Fprintln(os.Stderr, "controlplane: a component did not stop in time")
	}
}

// exitWithParent returns a context that is cancelled when this process is re-parented, that is
// when the process that started it has died, so a test runner killed outright leaves no control
// plane behind.
func exitWithParent(ctx context.Context) context.Context {
	ctx, cancel := context.WithCancel(ctx)
	parent := os.Getppid()
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				if os.Getppid() != parent {
					fmt.Fprintln(os.Stderr, "controlplane: parent process is gone")
					cancel()
					return
				}
			}
		}
	}()
	return ctx
}
