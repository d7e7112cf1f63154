#!/usr/bin/env bash
# Installs what the real single-node Kubernetes of the e2e tests (`controlplane --node`) needs,
# idempotently; scripts/install-deps.sh calls it, and it can be run on its own:
#   - Debian packages: the CNI plugins, iptables, conntrack, iproute2, gcc with the static libc
#     for the pause binary, and libseccomp-dev for runc;
#   - into $ROOT/.cache/bin: containerd, its runc shim, ctr and runc, built from the Go modules
#     of e2e/runtime (Debian's containerd 1.6 is too old for the Kubernetes releases after 1.35,
#     and ignores user namespaces);
#   - into $ROOT/.cache/bin: kubelet and kube-proxy (built from the k8s.io/kubernetes module of
#     e2e/controlplane, so they match the control plane's version), coredns (e2e/coredns, its
#     own module), netpol (e2e/netpol, its own module: the NetworkPolicy controller
#     sigs.k8s.io/kube-network-policies) and pause.tar, a docker-archive image
#     `localhost/pause:3.10` FROM scratch holding e2e/node/pause.c built static.
# Each build is skipped when the hash of its sources matches the stamp of the last build.
#
# Environment: GO (default: go on PATH, else /usr/local/go/bin/go).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.cache/bin"
NODE_APT_PACKAGES=(containernetworking-plugins iptables conntrack iproute2 gcc libc6-dev libseccomp-dev pkg-config)
PAUSE_IMAGE="localhost/pause:3.10"

LOG_TAG="install-node-deps"
source "$ROOT/scripts/lib.sh"

node_apt_packages() {
    apt_install "${NODE_APT_PACKAGES[@]}"
}

# kubelet and kube-proxy are `tool` entries of e2e/controlplane/go.mod: they depend on its go.mod
# and go.sum only, not on the control plane's own sources.
kubelet_build() {
    local src="$ROOT/e2e/controlplane" stamp="$BIN/.node-sources" sum
    sum="$(sources_hash "$src" go.mod go.sum)"
    current "$stamp" "$sum" "$BIN/kubelet" "$BIN/kube-proxy" && return
    log "building kubelet and kube-proxy"
    # The kubelet reports it as the node's version: a v0.0.0 node would look older than the
    # control plane.
    local x
    x="$(k8s_version_ldflags "$src/go.mod")"
    (cd "$src" && "$GO" build -trimpath "-ldflags=-s -w$x" -o "$BIN/" \
        k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
    echo "$sum" >"$stamp"
}

# runtime_build: containerd, containerd-shim-runc-v2 and ctr (pure Go; btrfs, the one cgo
# snapshotter, left out) and runc (cgo, with seccomp; without libpathrs, which Debian does not
# ship: runc falls back to its Go code), the `tool` entries of e2e/runtime/go.mod; containerd
# stamped with its version as its release build is (runc embeds its own).
runtime_build() {
    local src="$ROOT/e2e/runtime" stamp="$BIN/.runtime-sources" sum
    sum="$(sources_hash "$src" go.mod go.sum)"
    current "$stamp" "$sum" "$BIN"/{containerd,containerd-shim-runc-v2,ctr,runc} && return
    log "building containerd and runc"
    local c=github.com/containerd/containerd/v2 containerd
    containerd="$(awk -v m="$c" '$1 == m { print $2; exit }' "$src/go.mod")"
    local x="-s -w -X $c/version.Version=$containerd -X $c/version.Package=$c"
    (
        cd "$src"
        CGO_ENABLED=0 "$GO" build -trimpath -tags "urfave_cli_no_docs no_btrfs" "-ldflags=$x" \
            -o "$BIN/" "$c/cmd/containerd" "$c/cmd/ctr"
        CGO_ENABLED=0 "$GO" build -trimpath -tags "urfave_cli_no_docs no_grpc" "-ldflags=$x" \
            -o "$BIN/" "$c/cmd/containerd-shim-runc-v2"
        CGO_ENABLED=1 "$GO" build -trimpath -buildmode=pie -tags "seccomp urfave_cli_no_docs" \
            "-ldflags=-s -w" -o "$BIN/runc" github.com/opencontainers/runc
    )
    echo "$sum" >"$stamp"
}

# pause_image writes $BIN/pause.tar: a docker-archive (what `ctr images import` reads) of an
# image FROM scratch with the static pause binary as its only file. Written by hand rather than
# by an image builder: one layer, a config and a manifest are all it takes, and the tar is
# reproducible (fixed owner, mode and time), so the same source gives the same image digest.
pause_image() {
    local src="$ROOT/e2e/node" stamp="$BIN/.pause-sources" sum
    sum="$( (gcc --version | head -1 && echo "$PAUSE_IMAGE" && cat "$src/pause.c") | sha256sum | cut -d' ' -f1)"
    current "$stamp" "$sum" "$BIN/pause.tar" && return
    log "building the pause image $PAUSE_IMAGE"
    local work
    work="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: work is local
    trap "rm -rf '$work'" RETURN
    mkdir -p "$work/rootfs" "$work/image"
    gcc -static -O2 -s -Wall -Wextra -Werror -o "$work/rootfs/pause" "$src/pause.c"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --mode=0755 \
        -cf "$work/layer.tar" -C "$work/rootfs" pause
    local layer config
    layer="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
    printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
        "$layer" >"$work/config.json"
    config="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
    mkdir -p "$work/image/$layer"
    mv "$work/layer.tar" "$work/image/$layer/layer.tar"
    mv "$work/config.json" "$work/image/$config.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
        "$config" "$PAUSE_IMAGE" "$layer" >"$work/image/manifest.json"
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
        -cf "$BIN/pause.tar.tmp" -C "$work/image" .
    mv "$BIN/pause.tar.tmp" "$BIN/pause.tar"
    echo "$sum" >"$stamp"
}

main() {
    mkdir -p "$BIN"
    GO="$(find_go)"
    export GOTOOLCHAIN=local
    step "node apt packages" node_apt_packages
    step "containerd + runc" runtime_build
    step "kubelet + kube-proxy" kubelet_build
    step "coredns" go_module_build coredns
    step "netpol" go_module_build netpol
    step "pause image" pause_image
}

main "$@"
