package main

// The host side of --node: the machine-wide claim (one node per machine), the pod bridge and
// its egress guard, and the cleanup that undoes everything a node run leaves on the host, for
// this run at shutdown as well as for a previous run that was killed.

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	nodeName      = "e2e-node"
	bridgeName    = "e2ebr0"
	podCIDR       = "10.88.0.0/16"
	nodeIP        = "10.88.0.1"
	serviceCIDR   = "10.96.0.0/16"
	apiServiceIP  = "10.96.0.1"
	dnsServiceIP  = "10.96.0.10"
	clusterDomain = "cluster.local"
	cniNetwork    = "e2e-pods"
	// guardChain (mangle table) drops what pods send anywhere but the pod and service ranges
	// and this machine's own addresses: no packet from a pod may leave the machine.
	guardChain = "E2E-NODE-GUARD"
	// claimDir holds the machine-wide lock and the record of the node run that owns the host.
	claimDir = "/run/smtp-relay-e2e-node"
)

// sysctls the node needs: forwarding for pod -> Service -> pod (DNAT then routing back onto
// the bridge), and bridged traffic through iptables so kube-proxy's rules see it. Their
// previous values are recorded and restored at cleanup.
var nodeSysctls = map[string]string{
	"net/ipv4/ip_forward":                "1",
	"net/bridge/bridge-nf-call-iptables": "1",
}

// hostClaim is the record, in claimDir/owner.json, of what a node run changed on the host:
// enough for the next run to clean up after it if it was killed.
type hostClaim struct {
	PID     int               `json:"pid"`
	Dir     string            `json:"dir"`
	BinDir  string            `json:"binDir"`
	Sysctls map[string]string `json:"sysctls"`
	lock    *os.File
}

func (c *hostClaim) nodeDir() string { return filepath.Join(c.Dir, "node") }

// claimHost takes the machine-wide lock (failing if another node runs), cleans up what a
// killed previous run left behind, records this run and sets up the pod network.
func claimHost(ctx context.Context, dir, binDir string) (*hostClaim, error) {
	if err := os.MkdirAll(claimDir, 0o700); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(filepath.Join(claimDir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	// A lock, not a PID check: the kernel releases it when its holder dies, however it dies.
	// Wait for it: the node of the previous test binary may still be shutting down.
	for syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		select {
		case <-ctx.Done():
			_ = lock.Close()
			return nil, fmt.Errorf("another node runs on this machine (lock %s/lock is held): one kubelet per machine", claimDir)
		case <-time.After(200 * time.Millisecond):
		}
	}
	ownerFile := filepath.Join(claimDir, "owner.json")
	if data, err := os.ReadFile(ownerFile); err == nil {
		var old hostClaim
		if err := json.Unmarshal(data, &old); err != nil {
			logf("ignoring unreadable %s: %v", ownerFile, err)
		} else {
			logf("cleaning up after a previous node run (pid %d, dir %s)", old.PID, old.Dir)
			old.cleanup()
		}
	}
	// Whatever the record says, start from a host without our bridge and chains.
	removeKubeChains()
	removeNetwork()

	c := &hostClaim{PID: os.Getpid(), Dir: dir, BinDir: binDir, Sysctls: map[string]string{}, lock: lock}
	for key := range nodeSysctls {
		v, err := os.ReadFile(filepath.Join("/proc/sys", key))
		if err != nil {
			c.release()
			return nil, fmt.Errorf("sysctl %s: %w", key, err)
		}
		c.Sysctls[key] = strings.TrimSpace(string(v))
	}
	data, err := json.Marshal(c)
	if err != nil {
		c.release()
		return nil, err
	}
	if err := writeFileAtomic(ownerFile, data, 0o600); err != nil {
		c.release()
		return nil, err
	}
	if err := setupNetwork(); err != nil {
		c.cleanup()
		c.release()
		return nil, fmt.Errorf("pod network: %w", err)
	}
	return c, nil
}

// release forgets the claim and drops the lock; cleanup must have run.
func (c *hostClaim) release() {
	_ = os.Remove(filepath.Join(claimDir, "owner.json"))
	if c.lock != nil {
		_ = c.lock.Close()
		c.lock = nil
	}
}

// setupNetwork creates the pod bridge with the node IP, routes the service range onto it (so a
// service address that kube-proxy does not translate stays on this machine instead of taking
// the default route), turns on the sysctls and installs the egress guard.
func setupNetwork() error {
	cmds := [][]string{
		{"ip", "link", "add", bridgeName, "type", "bridge"},
		{"ip", "addr", "add", nodeIP + "/16", "dev", bridgeName},
		{"ip", "link", "set", bridgeName, "up"},
		// Two /17 routes for the pods, more specific than the bridge's own /16: another bridge
		// may hold 10.88.0.1/16 too (buildah's and podman's default CNI network, cni-podman0,
		// stays after buildah exits, link down), and its /16 route would otherwise take the
		// host's traffic to pods.
		{"ip", "route", "add", "10.88.0.0/17", "dev", bridgeName, "src", nodeIP},
		{"ip", "route", "add", "10.88.128.0/17", "dev", bridgeName, "src", nodeIP},
		{"ip", "route", "add", serviceCIDR, "dev", bridgeName, "src", nodeIP},
		{"iptables", "-w", "-t", "mangle", "-N", guardChain},
		{"iptables", "-w", "-t", "mangle", "-A", guardChain, "-d", podCIDR, "-j", "RETURN"},
		{"iptables", "-w", "-t", "mangle", "-A", guardChain, "-d", serviceCIDR, "-j", "RETURN"},
		{"iptables", "-w", "-t", "mangle", "-A", guardChain, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "RETURN"},
		{"iptables", "-w", "-t", "mangle", "-A", guardChain, "-j", "DROP"},
		// Mangle PREROUTING comes before kube-proxy's DNAT: service addresses are still
		// 10.96/16 here, which is why that range is allowed.
		{"iptables", "-w", "-t", "mangle", "-I", "PREROUTING", "1", "-i", bridgeName, "-j", guardChain},
	}
	for _, args := range cmds {
		if err := runCmd(args...); err != nil {
			return err
		}
	}
	for key, v := range nodeSysctls {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", key, v, err)
		}
	}
	return nil
}

// removeNetwork deletes the guard and the bridge (with its addresses and routes); each step
// may fail because there is nothing to remove.
func removeNetwork() {
	for runCmdQuiet("iptables", "-w", "-t", "mangle", "-D", "PREROUTING", "-i", bridgeName, "-j", guardChain) == nil {
	}
	_ = runCmdQuiet("iptables", "-w", "-t", "mangle", "-F", guardChain)
	_ = runCmdQuiet("iptables", "-w", "-t", "mangle", "-X", guardChain)
	_ = runCmdQuiet("ip", "link", "del", bridgeName)
}

// removeKubeChains removes every KUBE-* chain left in the iptables and ip6tables tables, with
// the rules that jump to them: only one kubelet and one kube-proxy run per machine, so they
// are ours.
func removeKubeChains() {
	for _, cmd := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"filter", "nat", "mangle", "raw"} {
			out, err := exec.Command(cmd, "-w", "-t", table, "-S").Output()
			if err != nil {
				continue
			}
			var chains []string
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				switch {
				case len(f) == 2 && f[0] == "-N" && strings.HasPrefix(f[1], "KUBE-"):
					chains = append(chains, f[1])
				case len(f) > 3 && f[0] == "-A" && !strings.HasPrefix(f[1], "KUBE-") &&
					strings.Contains(line, " -j KUBE-"):
					// Rules hold quoted comments: let the shell split them as iptables -S
					// quoted them.
					del := cmd + " -w -t " + table + " -D " + strings.TrimPrefix(line, "-A ")
					if err := exec.Command("sh", "-c", del).Run(); err != nil {
						logf("%s: %v", del, err)
					}
				}
			}
			for _, flag := range []string{"-F", "-X"} {
				for _, chain := range chains {
					_ = runCmdQuiet(cmd, "-w", "-t", table, flag, chain)
				}
			}
		}
	}
}

// cleanup undoes a node run: its pods, daemons, mounts, network, iptables rules, cgroups and
// sysctls. It works from what is on the host, not from what this process remembers, so it
// serves both a normal shutdown and a run that was killed.
func (c *hostClaim) cleanup() {
	c.removeHostState(c.stopProcesses())
}

// stopped is what stopProcesses learnt of the sandboxes for removeHostState.
type stopped struct {
	netns     []string
	sandboxes map[string]bool
}

// stopProcesses stops every process of the node: the kubelet, the pods, the shims and the
// daemons (containerd, kube-proxy, CoreDNS). The API server can then shut down at once: no
// client of its own keeps a watch open.
func (c *hostClaim) stopProcesses() stopped {
	nodeDir := c.nodeDir()
	// The kubelet first, or it would restart the containers being stopped.
	stopProcs("kubelet", func(cmdline string) bool {
		return strings.Contains(cmdline, nodeDir+"/") && strings.Contains(cmdline, "kubelet")
	}, 20*time.Second)
	// The netns that containerd pinned for the sandboxes, read from the sandboxes' OCI specs
	// while the sandboxes still run: when a sandbox's process exits, containerd deletes its
	// task directory at once, but leaves the pinned netns to the kubelet, which is gone.
	netns, sandboxes := sandboxNetns(nodeDir)
	// Pod processes, by cgroup: the kubelet puts every pod under /kubepods (cgroupfs driver).
	// SIGTERM first so they may stop cleanly, SIGKILL after a grace period.
	stopPIDs("pod processes", kubepodsPIDs, 10*time.Second)
	// The shims have nothing left to save once their containers are gone, and a runc shim
	// does not stop on SIGTERM: kill them outright (no grace).
	stopProcs("containerd shims", func(cmdline string) bool {
		return strings.Contains(cmdline, nodeDir+"/") && strings.Contains(cmdline, "containerd-shim")
	}, 0)
	// containerd, kube-proxy, CoreDNS, the NetworkPolicy controller: everything else started
	// with a path in nodeDir.
	stopProcs("node daemons", func(cmdline string) bool {
		return strings.Contains(cmdline, nodeDir+"/")
	}, 15*time.Second)
	return stopped{netns: netns, sandboxes: sandboxes}
}

// removeHostState removes what the node changed on the host once its processes are gone:
// mounts, pinned network namespaces, iptables chains (the NetworkPolicy controller's too), the
// bridge (and with it the node IP the API server binds to: so, after the API server), cgroups,
// sysctls and leftover files.
func (c *hostClaim) removeHostState(s stopped) {
	nodeDir := c.nodeDir()
	netns, sandboxes := s.netns, s.sandboxes
	unmountUnder(nodeDir, netns)
	// The tmpfs of sized local volumes (volumes.go); their directories stay for the PVs.
	unmountUnder(filepath.Join(c.Dir, "pv"), nil)
	for _, ns := range netns {
		_ = os.Remove(ns)
	}
	// kube-proxy's chains (iptables and nftables), then the kubelet's (KUBE-FIREWALL and the
	// canaries, which kube-proxy leaves), then our own network.
	if proxy := filepath.Join(c.BinDir, "kube-proxy"); fileExists(proxy) {
		if err := runCmdQuiet(proxy, "--cleanup"); err != nil {
			logf("kube-proxy --cleanup: %v", err)
		}
	}
	removeKubeChains()
	// The NetworkPolicy controller removes its diversion chain when it stops; a killed one
	// leaves it (and, where the kernel has nft `queue`, its nftables table, whose rules queue
	// pod packets to a queue no one reads: dropped).
	if err := runCmd(filepath.Join(c.BinDir, "netpol"), "--cleanup",
		"--chain="+netpolChain, "--table="+netpolTable); err != nil {
		logf("%v", err)
	}
	_ = os.Remove(filepath.Join(nodeDir, netpolReadyFile))
	removeNetwork()
	removeKubepodsCgroups()
	for key, v := range c.Sysctls {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(v), 0o644); err != nil {
			logf("restoring sysctl %s=%s: %v", key, v, err)
		}
	}
	// Outside the state directory, the kubelet links container logs into /var/log/containers
	// and libcni caches results in /var/lib/cni/results.
	removeMatching("/var/log/containers", func(path string) bool {
		target, err := os.Readlink(path)
		return err == nil && strings.HasPrefix(target, nodeDir+"/")
	})
	removeMatching("/var/lib/cni/results", func(path string) bool {
		name := filepath.Base(path)
		if strings.HasPrefix(name, cniNetwork+"-") {
			return true
		}
		// containerd's built-in loopback network: cni-loopback-SANDBOXID-lo.
		id, ok := strings.CutPrefix(name, "cni-loopback-")
		return ok && sandboxes[strings.TrimSuffix(id, "-lo")]
	})
	removeKubeletLeftovers()
	// Address leases of pods that are gone; the rest of nodeDir (images, logs) is kept, so a
	// restart on the same directory finds the images imported into containerd.
	_ = os.RemoveAll(filepath.Join(nodeDir, "cni", "ipam"))
}

// kubeletFixedDir is where a kubelet writes whatever its flags say: the device-plugin socket
// (pluginapi.KubeletSocket, not derived from --root-dir) and, without --cert-dir (before it
// was given), its self-signed serving certificate.
const kubeletFixedDir = "/var/lib/kubelet"

// removeKubeletLeftovers removes what the node's kubelet wrote under kubeletFixedDir: the
// device-plugin socket, a serving certificate it signed for this node (its subject names the
// node), and the directories once empty. Nothing else is touched: one kubelet per machine,
// ours, but a file we did not write is not ours to remove.
func removeKubeletLeftovers() {
	_ = os.Remove(filepath.Join(kubeletFixedDir, "device-plugins", "kubelet.sock"))
	pki := filepath.Join(kubeletFixedDir, "pki")
	if ours, err := selfSignedFor(filepath.Join(pki, "kubelet.crt"), nodeName); err == nil && ours {
		_ = os.Remove(filepath.Join(pki, "kubelet.crt"))
		_ = os.Remove(filepath.Join(pki, "kubelet.key"))
	}
	// os.Remove leaves a directory that is not empty.
	for _, dir := range []string{"device-plugins", "pki", ""} {
		_ = os.Remove(filepath.Join(kubeletFixedDir, dir))
	}
}

// selfSignedFor says whether the PEM certificate at path is one a kubelet signed for the node
// `node` (subject CN "NODE@TIMESTAMP").
func selfSignedFor(path, node string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return false, fmt.Errorf("%s: no PEM block", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return false, err
	}
	return strings.HasPrefix(cert.Subject.CommonName, node+"@"), nil
}

// stopProcs stops the processes whose command line matches: SIGTERM, then SIGKILL after grace.
func stopProcs(what string, match func(cmdline string) bool, grace time.Duration) {
	self := os.Getpid()
	stopPIDs(what, func() []int {
		var pids []int
		for _, pid := range allPIDs() {
			if pid == self {
				continue
			}
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil || len(data) == 0 {
				continue
			}
			if match(strings.ReplaceAll(string(data), "\x00", " ")) {
				pids = append(pids, pid)
			}
		}
		return pids
	}, grace)
}

// stopPIDs signals what list returns with SIGTERM and polls until it is empty; after grace,
// SIGKILL, and polls again (processes in uninterruptible sleep take a moment to go).
func stopPIDs(what string, list func() []int, grace time.Duration) {
	pids := alive(list())
	if len(pids) == 0 {
		return
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		deadline := time.Now().Add(grace)
		for {
			pids = alive(list())
			if len(pids) == 0 {
				return
			}
			if time.Now().After(deadline) {
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, sig)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if sig == syscall.SIGTERM && grace > 0 {
			logf("%s still running after SIGTERM: killing %v", what, pids)
		}
		grace = 5 * time.Second
	}
	logf("%s did not die: %v", what, pids)
}

// alive drops zombies: a child of ours that exited stays in /proc until it is reaped.
func alive(pids []int) []int {
	var out []int
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The state follows the command name, which is in parentheses and may hold spaces.
		s := string(data)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) && s[i+2] == 'Z' {
			continue
		}
		out = append(out, pid)
	}
	return out
}

func allPIDs() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// kubepodsCgroups lists the kubepods cgroup directories of every cgroup v1 hierarchy, parents
// before children.
func kubepodsCgroups() []string {
	var dirs []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	for _, root := range roots {
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
	}
	return dirs
}

func kubepodsPIDs() []int {
	seen := map[int]bool{}
	var pids []int
	for _, dir := range kubepodsCgroups() {
		data, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// removeKubepodsCgroups removes the (now empty) kubepods trees, children first.
func removeKubepodsCgroups() {
	dirs := kubepodsCgroups()
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := syscall.Rmdir(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			logf("rmdir %s: %v", dirs[i], err)
		}
	}
}

// sandboxNetns reads the network namespace paths from the OCI specs of the tasks containerd
// ran: the pinned namespaces (/var/run/netns/cni-…) live outside the state directory and are
// ours only if one of our sandboxes used them. It also returns the tasks' IDs.
func sandboxNetns(nodeDir string) ([]string, map[string]bool) {
	specs, _ := filepath.Glob(filepath.Join(nodeDir, "containerd", "state", "io.containerd.runtime.v2.task", "*", "*", "config.json"))
	seen := map[string]bool{}
	ids := map[string]bool{}
	var out []string
	for _, spec := range specs {
		ids[filepath.Base(filepath.Dir(spec))] = true
		data, err := os.ReadFile(spec)
		if err != nil {
			continue
		}
		var s struct {
			Linux struct {
				Namespaces []struct {
					Type string `json:"type"`
					Path string `json:"path"`
				} `json:"namespaces"`
			} `json:"linux"`
		}
		if json.Unmarshal(data, &s) != nil {
			continue
		}
		for _, ns := range s.Linux.Namespaces {
			if ns.Type == "network" && strings.Contains(ns.Path, "/netns/") && !seen[ns.Path] {
				seen[ns.Path] = true
				out = append(out, ns.Path)
			}
		}
	}
	return out, ids
}

// unmountUnder detaches every mount under dir and the given mount points, deepest first.
func unmountUnder(dir string, extra []string) {
	want := map[string]bool{}
	for _, p := range extra {
		want[p] = true
		if real, err := filepath.EvalSymlinks(p); err == nil {
			want[real] = true
		}
	}
	var points []string
	for _, p := range mountPoints() {
		if strings.HasPrefix(p, dir+"/") || want[p] {
			points = append(points, p)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, os.ErrNotExist) {
			logf("umount %s: %v", p, err)
		}
	}
}

// mountPoints lists this mount namespace's mount points, from /proc/self/mountinfo.
func mountPoints() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			out = append(out, unescapeMount(fields[4]))
		}
	}
	return out
}

// unescapeMount decodes mountinfo's octal escapes (\040 for a space…).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func removeMatching(dir string, match func(path string) bool) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if p := filepath.Join(dir, e.Name()); match(p) {
			_ = os.Remove(p)
		}
	}
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// runCmd runs a command, returning its output in the error when it fails.
func runCmd(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// runCmdQuiet is runCmd for cleanup steps that fail when there is nothing to clean.
func runCmdQuiet(args ...string) error {
	return exec.Command(args[0], args[1:]...).Run()
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "controlplane: "+format+"\n", args...)
}
