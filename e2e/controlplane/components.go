package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/apimachinery/pkg/util/errors"
	clientgofeatures "k8s.io/client-go/features"
	"k8s.io/client-go/rest"
	basecompatibility "k8s.io/component-base/compatibility"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	apiserveroptions "k8s.io/kubernetes/cmd/kube-apiserver/app/options"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	scheduleroptions "k8s.io/kubernetes/cmd/kube-scheduler/app/options"
)

// startEtcd starts a single-member etcd on loopback with its data in DIR/etcd.
func startEtcd(l *files) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "controlplane"
	cfg.Dir = l.path("etcd")
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(l.ports.EtcdClient)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(l.ports.EtcdPeer)}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{l.path("etcd.log")}
	// Losing the page cache needs a machine crash, not a process kill: skipping fsync keeps
	// writes fast and a killed process still restarts with all its data.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("not ready after 60s")
	}
}

// parseFlags parses args into a flag set built from the component's named flag sets.
func parseFlags(name string, sets map[string]*pflag.FlagSet, args []string) error {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	for _, s := range sets {
		fs.AddFlagSet(s)
	}
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%s flags: %w", name, err)
	}
	return nil
}

// runAPIServer runs kube-apiserver in-process until ctx is cancelled, the way its own command
// does, with the flags below followed by extra.
func runAPIServer(ctx context.Context, l *files, withNode bool, extra []string) error {
	bind := []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// No kubelets, no kube-proxy: nothing would ever reach the advertised address.
		"--endpoint-reconciler-type=none",
	}
	if withNode {
		bind = apiServerNodeArgs(l)
	}
	args := []string{
		"--etcd-servers=http://127.0.0.1:" + strconv.Itoa(l.ports.EtcdClient),
		"--secure-port=" + strconv.Itoa(l.ports.APIServer),
		"--cert-dir=" + l.cert(""),
		"--tls-cert-file=" + l.cert("apiserver.crt"),
		"--tls-private-key-file=" + l.cert("apiserver.key"),
		"--client-ca-file=" + l.cert("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + l.cert("sa.pub"),
		"--service-account-signing-key-file=" + l.cert("sa.key"),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--audit-policy-file=" + l.path("audit-policy.yaml"),
		"--audit-log-path=" + l.path("audit.log"),
		"--audit-log-format=json",
		"--audit-log-mode=blocking",
		"--profiling=false",
	}
	args = append(append(args, bind...), extra...)

	s := apiserveroptions.NewServerRunOptions()
	if err := parseFlags("kube-apiserver", s.Flags().FlagSets, args); err != nil {
		return err
	}
	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// Like kube-apiserver: its loopback clients should not log self-issued warnings.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
	featureGate := s.GenericServerRunOptions.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)
	if err := logsapi.ValidateAndApply(s.Logs, featureGate); err != nil {
		return err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return err
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return errors.NewAggregate(errs)
	}
	featureGate.(featuregate.MutableFeatureGate).AddMetrics()
	return apiserver.Run(ctx, completed)
}

// runControllerManager runs kube-controller-manager in-process until ctx is cancelled, with
// the default set of controllers, as the admin user, without leader election or serving.
func runControllerManager(ctx context.Context, l *files, extra []string) error {
	args := []string{
		"--kubeconfig=" + l.path("kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + l.cert("sa.key"),
		"--root-ca-file=" + l.cert("ca.crt"),
		"--cluster-signing-cert-file=" + l.cert("ca.crt"),
		"--cluster-signing-key-file=" + l.cert("ca.key"),
		"--profiling=false",
	}
	args = append(args, extra...)

	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	if err := enableWatchListClient(s.ComponentGlobalsRegistry.FeatureGateFor(basecompatibility.DefaultKubeComponent)); err != nil {
		return err
	}
	all, disabled, aliases := kcm.KnownControllers(), kcm.ControllersDisabledByDefault(), kcm.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	if err := parseFlags("kube-controller-manager", named.FlagSets, args); err != nil {
		return err
	}
	s.ParsedFlags = &named
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// Logging was set up by the API server (it may be applied once per process).
	c, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return err
	}
	return kcm.Run(ctx, c.Complete())
}

// enableWatchListClient switches client-go's WatchListClient on, as the controller manager of
// Kubernetes 1.34 (e2e/controlplane/oldest) does by overriding the gate's default in its Flags:
// that override panics once the API server of this process has added the gates to its flags,
// and is skipped when the gate is on already. From 1.35 it is on by default: nothing to do.
func enableWatchListClient(gate featuregate.FeatureGate) error {
	watchList := featuregate.Feature(clientgofeatures.WatchListClient)
	if gate.Enabled(watchList) {
		return nil
	}
	mutable, ok := gate.(featuregate.MutableFeatureGate)
	if !ok {
		return fmt.Errorf("the feature gates cannot be changed: %s stays off", watchList)
	}
	return mutable.SetFromMap(map[string]bool{string(watchList): true})
}

// runScheduler runs kube-scheduler in-process until ctx is cancelled (with --node: without a
// scheduler, pods stay Pending), as the admin user, without leader election or serving.
func runScheduler(ctx context.Context, l *files) error {
	args := []string{
		"--kubeconfig=" + l.path("kubeconfig"),
		"--leader-elect=false",
		"--secure-port=0",
		"--profiling=false",
	}
	s := scheduleroptions.NewOptions()
	if err := parseFlags("kube-scheduler", s.Flags.FlagSets, args); err != nil {
		return err
	}
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	// Logging was set up by the API server.
	cc, sched, err := scheduler.Setup(ctx, s)
	if err != nil {
		return err
	}
	return scheduler.Run(ctx, cc, sched)
}

// waitReady polls the API server's /readyz as the admin user until it answers ok.
func waitReady(ctx context.Context, l *files, apiDone chan error) error {
	client, err := adminHTTPClient(l)
	if err != nil {
		return err
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, l.apiURL()+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case err := <-apiDone:
			apiDone <- err
			return fmt.Errorf("stopped before ready: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("not ready (%v); last answer: %s", ctx.Err(), last)
		case <-tick.C:
		}
	}
}

func adminHTTPClient(l *files) (*http.Client, error) {
	ca, err := os.ReadFile(l.cert("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(l.cert("admin.crt"), l.cert("admin.key"))
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      pool,
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		}},
	}, nil
}
