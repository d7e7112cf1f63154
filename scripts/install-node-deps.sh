#!/usr/bin/env bash
# Installs what the real single-node Kubernetes of the e2e tests (`controlplane --node`) needs,
# idempotently; scripts/install-deps.sh calls it, and it can be run on its own:
#   - Debian packages: containerd, runc, the CNI plugins, iptables, conntrack, iproute2, and gcc
#     with the static libc for the pause binary;
#   - into $ROOT/.cache/bin: kubelet and kube-proxy (built from the k8s.io/kubernetes module of
#     e2e/controlplane, so they match the control plane's version), coredns (e2e/coredns, its
#     own module) and pause.tar, a docker-archive image `localhost/pause:3.10` FROM scratch
#     holding e2e/node/pause.c built static.
# Each build is skipped when the hash of its sources matches the stamp of the last build.
#
# Environment: GO (default: go on PATH, else /usr/local/go/bin/go).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.cache/bin"
NODE_APT_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack iproute2 gcc libc6-dev)
PAUSE_IMAGE="localhost/pause:3.10"

log() { printf '[install-node-deps] %s\n' "$*" >&2; }

step() {
    local name="$1" start
    shift
    start=$EPOCHREALTIME
    "$@"
    log "$(awk -v n="$name" -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN { printf "%-28s %7.1fs", n, e - s }')"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

find_go() {
    if [ -n "${GO:-}" ]; then
        echo "$GO"
    elif command -v go >/dev/null 2>&1; then
        command -v go
    elif [ -x /usr/local/go/bin/go ]; then
        echo /usr/local/go/bin/go
    else
        log "Go (>= 1.25) is required: not found on PATH nor at /usr/local/go/bin/go"
        exit 1
    fi
}

# sources_hash DIR PATTERN...: a hash of the Go version and the content (not the times) of the
# files under DIR whose names match one of the patterns.
sources_hash() {
    local dir="$1" expr=() p
    shift
    for p in "$@"; do
        [ "${#expr[@]}" -gt 0 ] && expr+=(-o)
        expr+=(-name "$p")
    done
    (cd "$dir" && "$GO" version && find . -type f \( "${expr[@]}" \) -print0 | sort -z | xargs -0 sha256sum) |
        sha256sum | cut -d' ' -f1
}

node_apt_packages() {
    local missing=() p
    for p in "${NODE_APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        # Keep apt from starting the system containerd: the node runs its own, on its own socket.
        local policy=/usr/sbin/policy-rc.d created=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
            as_root chmod 755 "$policy"
            created=1
        fi
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        if [ -n "$created" ]; then as_root rm -f "$policy"; fi
    fi
}

# kubelet and kube-proxy are `tool` entries of e2e/controlplane/go.mod: they depend on its go.mod
# and go.sum only, not on the control plane's own sources.
kubelet_build() {
    local src="$ROOT/e2e/controlplane" stamp="$BIN/.node-sources" sum
    sum="$(sources_hash "$src" go.mod go.sum)"
    if [ -x "$BIN/kubelet" ] && [ -x "$BIN/kube-proxy" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
        return
    fi
    log "building kubelet and kube-proxy"
    # The same version stamp as controlplane_build in install-deps.sh: the kubelet reports it
    # as the node's version, and a v0.0.0 node would look older than the control plane.
    local version minor x
    version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "$src/go.mod")"
    minor="$(echo "$version" | cut -d. -f2)"
    x=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    done
    (cd "$src" && "$GO" build -trimpath "-ldflags=-s -w$x" -o "$BIN/" \
        k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
    echo "$sum" >"$stamp"
}

coredns_build() {
    local src="$ROOT/e2e/coredns" stamp="$BIN/.coredns-sources" sum
    sum="$(sources_hash "$src" '*.go' go.mod go.sum)"
    if [ -x "$BIN/coredns" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
        return
    fi
    log "building coredns"
    (cd "$src" && "$GO" build -trimpath "-ldflags=-s -w" -o "$BIN/coredns" .)
    echo "$sum" >"$stamp"
}

# pause_image writes $BIN/pause.tar: a docker-archive (what `ctr images import` reads) of an
# image FROM scratch with the static pause binary as its only file. Written by hand rather than
# by an image builder: one layer, a config and a manifest are all it takes, and the tar is
# reproducible (fixed owner, mode and time), so the same source gives the same image digest.
pause_image() {
    local src="$ROOT/e2e/node" stamp="$BIN/.pause-sources" sum
    sum="$( (gcc --version | head -1 && echo "$PAUSE_IMAGE" && cat "$src/pause.c") | sha256sum | cut -d' ' -f1)"
    if [ -f "$BIN/pause.tar" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then
        return
    fi
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
    step "kubelet + kube-proxy" kubelet_build
    step "coredns" coredns_build
    step "pause image" pause_image
}

main "$@"
