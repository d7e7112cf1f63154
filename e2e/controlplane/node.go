package main

// --node: a real node next to the control plane. containerd (built from e2e/runtime, on its own
// socket and directories), the kubelet and kube-proxy (built from this module), CoreDNS
// (e2e/coredns) and the NetworkPolicy controller (e2e/netpol) run as child processes; the
// scheduler and the local-volume loop run in this process. Everything lives under DIR/node,
// except the persistent volumes' data (DIR/pv), so it survives a restart on the same directory.

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// pauseImage is the sandbox image, imported from BIN/pause.tar (scripts/install-node-deps.sh).
const pauseImage = "localhost/pause:3.10"

// The NetworkPolicy controller (sigs.k8s.io/kube-network-policies behind e2e/netpol's main):
// the iptables chain (mangle table) that diverts the first packets of pod connections to its
// NFQUEUE, the queue, the nftables table (family inet) the controller tries to install (which
// this kernel refuses: e2e/netpol/main.go says why), and the file it writes under DIR/node
// once policies are enforced.
const (
	netpolChain     = "E2E-NODE-NETPOL"
	netpolQueue     = "100"
	netpolTable     = "e2e-node-netpol"
	netpolReadyFile = "netpol.ready"
)

type node struct {
	claim  *hostClaim
	l      *files
	binDir string
	// exited receives the first unexpected end of a daemon or in-process component.
	exited chan error
	cancel context.CancelFunc
	bg     sync.WaitGroup
}

func (n *node) path(parts ...string) string {
	return filepath.Join(append([]string{n.claim.nodeDir()}, parts...)...)
}

// traversable lets everyone search the directory (x for group and others), keeping the rest of
// its mode.
func traversable(dir string) error {
	info, err := os.Stat(dir)
	if err != nil {
		return err
	}
	return os.Chmod(dir, info.Mode().Perm()|0o011)
}

func (n *node) socket() string { return n.path("containerd", "containerd.sock") }

// startNode starts containerd, the kubelet, kube-proxy, CoreDNS, the NetworkPolicy controller,
// the scheduler and the volume loop, and creates the cluster objects they need. The API server
// must be ready. On error it still returns the node, whose stop ends what was started in-process.
func startNode(ctx context.Context, claim *hostClaim, l *files) (*node, error) {
	n := &node{claim: claim, l: l, binDir: claim.BinDir, exited: make(chan error, 1)}
	for _, d := range []string{"logs", "containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs"} {
		if err := os.MkdirAll(n.path(d), 0o700); err != nil {
			return n, err
		}
	}
	if err := os.MkdirAll(l.path("pv"), 0o755); err != nil {
		return n, err
	}
	// A pod with `hostUsers: false` is set up by runc inside its user namespace, whose root is
	// an unprivileged UID on this machine: it must be able to pass through every directory
	// down to the containers' state (as containerd's own directories are 0711). Searching,
	// not listing: the files below are the owner's only (0600).
	for _, d := range []string{l.dir, n.path(), n.path("containerd")} {
		if err := traversable(d); err != nil {
			return n, err
		}
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc", "kubelet", "kube-proxy", "coredns", "netpol", "pause.tar"} {
		if !fileExists(filepath.Join(n.binDir, bin)) {
			return n, fmt.Errorf("%s not found in %s: run scripts/install-node-deps.sh", bin, n.binDir)
		}
	}
	if err := n.writeConfigs(); err != nil {
		return n, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.path("kubeconfig"))
	if err != nil {
		return n, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return n, err
	}
	if err := createClusterObjects(ctx, cs); err != nil {
		return n, fmt.Errorf("cluster objects: %w", err)
	}

	// containerd pulls through a proxy that does not exist: an image that was not imported
	// fails to pull at once, instead of the pull reaching a registry off this machine.
	noPull := []string{"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=", "http_proxy=", "https_proxy=", "no_proxy="}
	if err := n.startDaemon("containerd", noPull, filepath.Join(n.binDir, "containerd"), "--config", n.path("containerd.toml")); err != nil {
		return n, err
	}
	if err := n.waitSocket(ctx, n.socket()); err != nil {
		return n, fmt.Errorf("containerd: %w", err)
	}
	if err := runCmd(filepath.Join(n.binDir, "ctr"), "--address", n.socket(), "-n", "k8s.io", "images", "import",
		filepath.Join(n.binDir, "pause.tar")); err != nil {
		return n, fmt.Errorf("importing the pause image: %w", err)
	}

	bgCtx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	n.goComponent("kube-scheduler", func() error { return runScheduler(bgCtx, l) })
	n.goComponent("local volumes", func() error { return runLocalVolumes(bgCtx, cs, l.path("pv")) })

	// The daemons talk to the API server on the bridge: a proxy from the environment must not
	// take that traffic.
	direct := []string{"NO_PROXY=" + nodeIP + ",127.0.0.1", "no_proxy=" + nodeIP + ",127.0.0.1"}
	if err := n.startDaemon("kubelet", direct, filepath.Join(n.binDir, "kubelet"),
		"--config="+n.path("kubelet.yaml"),
		"--kubeconfig="+n.path("kubelet.kubeconfig"),
		"--root-dir="+n.path("kubelet"),
		// Its self-signed serving certificate: by default in /var/lib/kubelet/pki, whatever
		// --root-dir says, where nothing would clean it.
		"--cert-dir="+n.path("kubelet", "pki"),
		"--hostname-override="+nodeName,
		"--node-ip="+nodeIP,
	); err != nil {
		return n, err
	}
	if err := n.startDaemon("kube-proxy", direct, filepath.Join(n.binDir, "kube-proxy"),
		"--config="+n.path("kube-proxy.yaml")); err != nil {
		return n, err
	}
	if err := n.startDaemon("coredns", direct, filepath.Join(n.binDir, "coredns"),
		"-conf", n.path("Corefile")); err != nil {
		return n, err
	}
	// NetworkPolicies: the first packet of each connection to or from a pod goes to an NFQUEUE,
	// where the controller accepts or drops it. A ready file left by a killed run must not pass
	// for this one's (cleanup removes it too).
	_ = os.Remove(n.path(netpolReadyFile))
	if err := n.startDaemon("netpol", direct, filepath.Join(n.binDir, "netpol"),
		"--kubeconfig="+l.path("kubeconfig"),
		"--hostname-override="+nodeName,
		"--pod-cidr="+podCIDR,
		"--nfqueue-id="+netpolQueue,
		"--chain="+netpolChain,
		"--table="+netpolTable,
		"--ready-file="+n.path(netpolReadyFile),
		// Each verdict in its log: what a test that expects a drop wants to read.
		"--v=2"); err != nil {
		return n, err
	}
	return n, nil
}

// stop ends the in-process components and cleans the host up (see hostClaim.cleanup).
func (n *node) stop() {
	if n.cancel != nil {
		n.cancel()
	}
	done := make(chan struct{})
	go func() { n.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		logf("the scheduler or the volume loop did not stop in time")
	}
}

// startDaemon starts a child process with its output in DIR/node/logs/NAME.log.
func (n *node) startDaemon(name string, env []string, args ...string) error {
	log, err := os.OpenFile(n.path("logs", name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Out of the terminal's process group: Ctrl-C reaches us, and we stop them in order.
		Setpgid: true,
		// If this process is killed outright, the daemons stop too; the next run cleans up the
		// pods they leave (see claimHost).
		Pdeathsig: syscall.SIGTERM,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		err := cmd.Wait()
		n.report(fmt.Errorf("%s exited (%v); see %s", name, err, n.path("logs", name+".log")))
	}()
	return nil
}

func (n *node) goComponent(name string, run func() error) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		err := run()
		n.report(fmt.Errorf("%s stopped: %v", name, err))
	}()
}

func (n *node) report(err error) {
	select {
	case n.exited <- err:
	default:
	}
}

func (n *node) waitSocket(ctx context.Context, path string) error {
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %v", path, err)
		case err := <-n.exited:
			n.report(err)
			return err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitReady polls until the node is Ready, the cluster DNS, asked through the kube-dns
// ClusterIP (so through kube-proxy's rules), resolves the kubernetes Service, and
// NetworkPolicies are enforced.
func (n *node) waitReady(ctx context.Context) error {
	cfg, err := clientcmd.BuildConfigFromFlags("", n.l.path("kubeconfig"))
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	resolver := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, net.JoinHostPort(dnsServiceIP, "53"))
		},
	}
	var last string
	for {
		last = n.readiness(ctx, cs, resolver)
		if last == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node not ready (%v): %s", ctx.Err(), last)
		case err := <-n.exited:
			n.report(err)
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// readiness returns what is not ready yet, or "".
func (n *node) readiness(ctx context.Context, cs kubernetes.Interface, resolver *net.Resolver) string {
	reqCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	nd, err := cs.CoreV1().Nodes().Get(reqCtx, nodeName, metav1.GetOptions{})
	if err != nil {
		return "node: " + err.Error()
	}
	ready := false
	for _, c := range nd.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status != corev1.ConditionTrue {
				return fmt.Sprintf("node: Ready=%s: %s", c.Status, c.Message)
			}
			ready = true
		}
	}
	if !ready {
		return "node: no Ready condition yet"
	}
	name := "kubernetes.default.svc." + clusterDomain + "."
	addrs, err := resolver.LookupHost(reqCtx, name)
	if err != nil {
		return "cluster DNS: " + err.Error()
	}
	if len(addrs) != 1 || addrs[0] != apiServiceIP {
		return fmt.Sprintf("cluster DNS: %s is %v, want %s", name, addrs, apiServiceIP)
	}
	if !fileExists(n.path(netpolReadyFile)) {
		return "NetworkPolicies: the controller does not read its queue yet"
	}
	return ""
}

// createClusterObjects creates the default StorageClass and the kube-dns Service. CoreDNS runs
// on the host, on the node IP, so the Service has no selector: its EndpointSlice, written here,
// points at the node IP.
func createClusterObjects(ctx context.Context, cs kubernetes.Interface) error {
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	retain := corev1.PersistentVolumeReclaimRetain
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{
			Name:        localStorageClass,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		Provisioner:       "kubernetes.io/no-provisioner",
		VolumeBindingMode: &wffc,
		ReclaimPolicy:     &retain,
	}
	// Not the default: claims that want a volume that fills up name it (volumes.go).
	sized := &storagev1.StorageClass{
		ObjectMeta:        metav1.ObjectMeta{Name: sizedStorageClass},
		Provisioner:       "kubernetes.io/no-provisioner",
		VolumeBindingMode: &wffc,
		ReclaimPolicy:     &retain,
	}
	dnsPorts := []corev1.ServicePort{
		{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
		{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: "kube-dns", Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"},
		},
		Spec: corev1.ServiceSpec{ClusterIP: dnsServiceIP, Ports: dnsPorts},
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "kube-dns-host", Namespace: metav1.NamespaceSystem,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: "kube-dns",
				// Not the EndpointSlice controller's: it leaves the slice alone.
				discoveryv1.LabelManagedBy: "controlplane.e2e",
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{nodeIP},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			NodeName:   ptr.To(nodeName),
		}},
	}
	for _, p := range dnsPorts {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(p.Protocol), Port: ptr.To(p.Port)})
	}
	// They exist already when the control plane restarts on the same directory. Get before
	// create: creating the Service again fails on its taken ClusterIP (Invalid), not with
	// AlreadyExists.
	class := func(sc *storagev1.StorageClass) struct{ get, create func() error } {
		return struct{ get, create func() error }{
			func() error {
				_, err := cs.StorageV1().StorageClasses().Get(ctx, sc.Name, metav1.GetOptions{})
				return err
			},
			func() error {
				_, err := cs.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{})
				return err
			},
		}
	}
	steps := []struct{ get, create func() error }{
		class(sc),
		class(sized),
		{
			func() error {
				_, err := cs.CoreV1().Services(svc.Namespace).Get(ctx, svc.Name, metav1.GetOptions{})
				return err
			},
			func() error {
				_, err := cs.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
				return err
			},
		},
		{
			func() error {
				_, err := cs.DiscoveryV1().EndpointSlices(slice.Namespace).Get(ctx, slice.Name, metav1.GetOptions{})
				return err
			},
			func() error {
				_, err := cs.DiscoveryV1().EndpointSlices(slice.Namespace).Create(ctx, slice, metav1.CreateOptions{})
				return err
			},
		},
	}
	for _, step := range steps {
		err := step.get()
		if err == nil {
			continue
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		if err := step.create(); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// ensureNodePKI issues what the node needs from the CA, if missing: the kubelet's client
// certificate (user system:node:NAME in system:nodes, as the Node authorizer expects) and the
// API server's client certificate for the kubelet (logs, exec, port-forward).
func (l *files) ensureNodePKI() error {
	need := map[string]*x509.Certificate{
		"kubelet": {
			Subject:     pkix.Name{CommonName: "system:node:" + nodeName, Organization: []string{"system:nodes"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		},
		"apiserver-kubelet-client": {
			Subject:     pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		},
	}
	var missing []string
	for name := range need {
		if _, err := os.Stat(l.cert(name + ".crt")); errors.Is(err, os.ErrNotExist) {
			missing = append(missing, name)
		} else if err != nil {
			return err
		}
	}
	if len(missing) == 0 {
		return nil
	}
	caCert, caKey, err := l.loadCA()
	if err != nil {
		return err
	}
	for _, name := range missing {
		if err := l.issue(caCert, caKey, name, need[name]); err != nil {
			return err
		}
	}
	return nil
}

// writeConfigs writes the daemons' configuration files under DIR/node.
func (n *node) writeConfigs() error {
	nd := n.claim.nodeDir()
	files := map[string]string{
		"containerd.toml": fmt.Sprintf(containerdConfig, nd, pauseImage, n.binDir, shimSocketDir(nd)),
		"cni/net.d/10-e2e-pods.conflist": fmt.Sprintf(cniConfig, cniNetwork, bridgeName, podCIDR, nodeIP,
			filepath.Join(nd, "cni", "ipam")),
		"kubelet.yaml": fmt.Sprintf(kubeletConfig, nodeIP, dnsServiceIP, clusterDomain,
			"unix://"+n.socket(), n.path("pod-logs"), n.l.cert("ca.crt")),
		"kubelet.kubeconfig": fmt.Sprintf(certKubeconfig, n.l.apiURL(), n.l.cert("ca.crt"),
			"system:node:"+nodeName, n.l.cert("kubelet.crt"), n.l.cert("kubelet.key")),
		"kube-proxy.yaml": fmt.Sprintf(kubeProxyConfig, n.l.path("kubeconfig"), nodeName, podCIDR),
		"Corefile":        fmt.Sprintf(corefile, nodeIP, clusterDomain, n.l.path("kubeconfig")),
	}
	for name, text := range files {
		if err := writeFileAtomic(n.path(name), []byte(text), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// containerdConfig (containerd 2, config version 3): its own root, state and socket, so it can
// run beside a system containerd; its own shim and runc by path (containerd looks for a shim on
// PATH first, where a Debian containerd's older one may be); the shims' sockets under the
// node's directory when it is short enough; NRI off (its socket is machine-wide); and the
// settings real-node.md found necessary on this machine kind: restrict_oom_score_adj (the
// bounding set lacks CAP_SYS_RESOURCE, runc cannot lower oom_score_adj), cgroupfs (no
// systemd), overlayfs, a local sandbox image.
const containerdConfig = `version = 3
root = "%[1]s/containerd/root"
state = "%[1]s/containerd/state"
imports = []

[grpc]
  address = "%[1]s/containerd/containerd.sock"

[ttrpc]
  address = "%[1]s/containerd/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "%[1]s/containerd/opt"

[plugins."io.containerd.nri.v1.nri"]
  disable = true

[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "%[4]s"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "%[2]s"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      runtime_path = "%[3]s/containerd-shim-runc-v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "%[3]s/runc"
        Root = "%[1]s/containerd/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "%[1]s/cni/net.d"
    max_conf_num = 1
`

// shimSocketDir is where the shims' sockets go: under the node's directory, so a shim killed
// with the node leaves no socket behind on the host, when that path is short enough for a
// socket's name (containerd allows 42 characters); else "", containerd's /run/containerd/s.
func shimSocketDir(nodeDir string) string {
	dir := filepath.Join(nodeDir, "s")
	if len(dir) > 42 {
		return ""
	}
	return dir
}

// cniConfig: pods on the bridge, no masquerading (nothing may leave the machine anyway), and
// the address leases under the state directory.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "%s",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "%s",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "%s", "gateway": "%s"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "%s"
      }
    }
  ]
}
`

// kubeletConfig: cgroup v1 with cgroupfs, no swap check, oomScoreAdj and maxOpenFiles within
// what this machine kind allows; no host resolv.conf for pods (the host's name servers are off
// the machine); image garbage collection off (imported images cannot be pulled again) and
// low eviction thresholds, so a busy shared disk does not evict test pods: absolute ones, as
// this machine kind's disk keeps most of its free blocks for root (statfs: 190 GB free, 17 GB
// available to others), so a percentage of its 270 GB (2%: 5.4 GB) of what the kubelet sees
// as available was crossed by the builds of a second checkout beside the node, and the
// kubelet evicted the operator's pod (DiskPressure). syncFrequency 10s
// (default 1m): the kubelet re-projects an updated Secret into a running pod's volume at its
// next periodic sync of that pod, so tests of in-place Secret updates wait seconds, not a minute.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
syncFrequency: 10s
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
oomScoreAdj: 0
maxOpenFiles: 20000
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDNS: [%s]
clusterDomain: %s
resolvConf: ""
containerRuntimeEndpoint: %s
podLogsDir: %s
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 50Mi
  nodefs.available: 512Mi
  imagefs.available: 512Mi
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
`

const certKubeconfig = `apiVersion: v1
kind: Config
clusters:
  - name: controlplane
    cluster:
      server: %s
      certificate-authority: %s
users:
  - name: %s
    user:
      client-certificate: %s
      client-key: %s
contexts:
  - name: default
    context:
      cluster: controlplane
      user: system:node:` + nodeName + `
current-context: default
`

// kubeProxyConfig: iptables mode; no conntrack sysctl changes and no localhost NodePorts (which
// would set route_localnet), so kube-proxy changes nothing on the host but its chains.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
clusterCIDR: %s
oomScoreAdj: 0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  localhostNodePorts: false
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

// corefile: cluster names only; no forward, so no query leaves the machine.
const corefile = `.:53 {
    bind %s
    errors
    kubernetes %s in-addr.arpa ip6.arpa {
        kubeconfig %s admin
        pods insecure
        ttl 5
    }
    cache 5
}
`

// apiServerNodeArgs are the API server flags for --node: reachable from pods at the node IP
// (bound there only, not on every interface), the kubernetes Service's endpoints maintained,
// and a client certificate for talking to the kubelet, found by its InternalIP (the node name
// resolves nowhere).
func apiServerNodeArgs(l *files) []string {
	return []string{
		"--bind-address=" + nodeIP,
		"--advertise-address=" + nodeIP,
		"--endpoint-reconciler-type=lease",
		"--kubelet-preferred-address-types=InternalIP",
		"--kubelet-client-certificate=" + l.cert("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + l.cert("apiserver-kubelet-client.key"),
	}
}
