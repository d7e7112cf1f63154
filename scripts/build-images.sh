#!/usr/bin/env bash
# Builds the relay and operator images without a Docker engine or a registry, from the
# ordinary Dockerfiles (image/Dockerfile, operator/Dockerfile):
#   1. a debian:bookworm-slim equivalent made with mmdebstrap from Debian's packages, stored
#      as docker.io/library/debian:bookworm-slim in the project's own buildah storage, so
#      `FROM debian:bookworm-slim` resolves with --pull=never (built once, then reused);
#   2. the two release binaries, built on the host (a cargo stage inside a container cannot
#      reach crates.io here) and handed to the Dockerfiles through their BINARIES build
#      argument;
#   3. both images tagged exactly as the chart references them by default
#      (ghcr.io/smtp-relay-operator/<name>:<chart appVersion>), exported as docker-archive
#      tarballs under .cache/images/, with a table of their sizes;
#   4. an SBOM of each image beside its tarball (<name>.spdx.json, SPDX 2.3 JSON), made by syft
#      as the release workflow makes them: the Debian packages from the image's dpkg status,
#      the crates from the binaries, which are built with cargo-auditable so that each carries
#      the list of crates compiled into it.
#
# Usage: scripts/build-images.sh [--previous] [--verify] [--verify-only] [--import ADDRESS]
#   --previous      build the previous release instead (the commit in e2e/previous-release):
#                   its own sources, Dockerfiles and Cargo.lock, versioned
#                   <its version>-previous.<12 hex of the commit> (crates, binaries and image
#                   tags), exported under .cache/images/previous/ with a VERSION file; the
#                   upgrade test of the user path (e2e/tests/user_path.rs) installs it first.
#   --verify        then check the tarballs on a private containerd (own root, state and
#                   socket in a temporary directory): import, list, and run them with runc
#                   (the relay for real, also as the operator's pod runs it); the containerd
#                   is stopped and its files removed after.
#   --verify-only   the same check on the tarballs already built, without building.
#   --import ADDR   then import the tarballs into the k8s.io namespace of the containerd
#                   listening on the socket ADDR (a node's containerd, run by someone else).
#
# Idempotent: installs its Debian packages when missing; a second run with nothing changed
# reuses the base image, cargo's and buildah's caches and the exported tarballs (seconds).
# `rm -rf .cache/buildah` starts over (the base takes about a minute).
# Needs root (mmdebstrap, overlay mounts, runc).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh

CACHE="$ROOT/.cache"
STORE="$CACHE/buildah"
OUT="$CACHE/images"
APT_PACKAGES=(buildah mmdebstrap runc containerd openssl)
# The SBOM tools, built into .cache/bin (the Dockerfiles and the release workflow name the same
# cargo-auditable; e2e/tests/release.rs checks they agree).
SYFT_VERSION="${SYFT_VERSION:-v1.57.2}"
CARGO_AUDITABLE_VERSION="${CARGO_AUDITABLE_VERSION:-0.7.7}"
BIN="$CACHE/bin"
BASE_REF=docker.io/library/debian:bookworm-slim
REGISTRY=ghcr.io/smtp-relay-operator
# Image name, Dockerfile: the names are the ones the chart's values.yaml references.
IMAGES=("smtp-relay-operator operator/Dockerfile" "smtp-relay image/Dockerfile")
BINARIES=(smtp-relay smtp-relay-operator)
# What is built: this checkout, unless use_previous points these at the previous release.
SRC="$ROOT"
TAG=
BIN_DIR=
BINARIES_REPO=localhost/smtp-relay-binaries
# The binaries as this run put them into its images (see binaries_image).
STAGED=
# Whether SBOMs are written (not for the previous release, which only the upgrade test runs).
SBOM=1

LOG_TAG="build-images"
source scripts/lib.sh
die() {
    log "error: $*"
    exit 1
}

# RELAY_SMOKE: run inside a relay container by `sh -ec "$RELAY_SMOKE" sh [RUN ARGS...]`:
# starts `smtp-relay run RUN ARGS...`, waits for its probe (30 s at most; its log on failure),
# lists its SASL users on stdout and stops it with SIGTERM.
# shellcheck disable=SC2016 # expanded by the container's shell
RELAY_SMOKE='
        smtp-relay run "$@" >/tmp/relay.log 2>&1 &
        pid=$!
        i=0
        until smtp-relay probe >/dev/null 2>&1; do
            i=$((i + 1))
            if [ "$i" -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then cat /tmp/relay.log >&2; exit 1; fi
            sleep 0.1
        done
        smtp-relay users
        kill -TERM "$pid"
        wait "$pid"'

usage() {
    sed -n '/^# Usage:/,/^# Needs root/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# buildah on the project's own storage (overlay), never the system's, and with runc: buildah
# defaults to crun, which refuses this machine's hybrid cgroup hierarchy.
bah() {
    buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver overlay "$@"
}
export BUILDAH_RUNTIME=runc BUILDAH_ISOLATION=oci
# The docker format keeps HEALTHCHECK (OCI image configs have no field for it).
export BUILDAH_FORMAT=docker

app_version() {
    awk -F'"' '/^appVersion:/ { print $2; exit }' "$ROOT/charts/smtp-relay-operator/Chart.yaml"
}

# The previous release: the commit e2e/previous-release names (its first line that is not a
# comment).
previous_commit() {
    local commit
    commit="$(grep -v '^#' "$ROOT/e2e/previous-release" | head -n 1 | tr -d '[:space:]')"
    [[ "$commit" =~ ^[0-9a-f]{40}$ ]] || die "e2e/previous-release names no commit (40 hex digits)"
    echo "$commit"
}

# use_previous: the build's sources, tag, binaries and tarballs become the previous release's.
# Its sources are taken from the repository's history into .cache/previous/src, and its
# workspace version becomes <version>-previous.<12 hex>: the crates then differ from this
# checkout's in cargo's eyes (same names and relative paths would otherwise share their
# compiled artifacts in the one target directory), while every dependency is shared, so the
# previous release costs only its own two crates. The binaries are copied out of target/ at
# once, before this checkout's next build puts its own back there.
use_previous() {
    local commit src version
    commit="$(previous_commit)"
    src="$CACHE/previous/src"
    if [ "$(cat "$CACHE/previous/commit" 2>/dev/null)" != "$commit" ]; then
        rm -rf "$CACHE/previous"
        mkdir -p "$src"
        git -C "$ROOT" archive --format=tar "$commit" | tar -x -C "$src" ||
            die "git archive $commit failed: the previous release needs a clone with its history"
        version="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' "$src/Cargo.toml")"
        [ -n "$version" ] || die "$commit: no [workspace.package] version in Cargo.toml"
        version="$version-previous.${commit:0:12}"
        sed -i '/^\[workspace.package\]/,/^\[/ s/^version = ".*"$/version = "'"$version"'"/' "$src/Cargo.toml"
        # The lock's entries of the workspace's own packages (those with no source).
        awk -v v="$version" 'BEGIN { RS = ""; ORS = "\n\n" }
            /^\[\[package\]\]/ && !/\nsource = / { sub(/\nversion = "[^"]*"/, "\nversion = \"" v "\"") }
            { print }' "$src/Cargo.lock" >"$src/Cargo.lock.new"
        mv "$src/Cargo.lock.new" "$src/Cargo.lock"
        echo "$version" >"$CACHE/previous/version"
        echo "$commit" >"$CACHE/previous/commit"
    fi
    SRC="$src"
    TAG="$(cat "$CACHE/previous/version")"
    BIN_DIR="$CACHE/previous/bin"
    BINARIES_REPO=localhost/smtp-relay-binaries-previous
    SBOM=
    OUT="$CACHE/images/previous"
    mkdir -p "$OUT"
    cp "$CACHE/previous/version" "$OUT/VERSION"
}

apt_packages() {
    apt_install "${APT_PACKAGES[@]}"
}

sbom_tools() {
    mkdir -p "$BIN"
    GO="$(find_go)"
    go_tool syft "$SYFT_VERSION" github.com/anchore/syft/cmd/syft \
        "-X main.version=${SYFT_VERSION#v}"
    crate_tool cargo-auditable "$CARGO_AUDITABLE_VERSION"
}

# The settings that make an mmdebstrap minbase root a debian:bookworm-slim equivalent, as
# dpkg and apt configuration files in directory $1. Their content is also the base's cache key.
write_slim_settings() {
    local dir="$1"
    # dpkg: documentation, manuals and translations are never unpacked (copyright files are
    # kept, they are licences).
    cat >"$dir/dpkg-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
force-unsafe-io
EOF
    # apt: no package cache, no .deb left after an install, compressed lists, no translations:
    # without these, 74 MB of apt caches end up in the image layers.
    cat >"$dir/apt-docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::GzipIndexes "true";
Acquire::Languages "none";
Apt::AutoRemove::SuggestsImportant "false";
EOF
    # mmdebstrap unpacks the essential packages before dpkg reads the excludes above: remove
    # what they would have kept out (a customize hook, run on the finished root).
    cat >"$dir/slim-cleanup" <<'EOF'
set -e
cd "$1/usr/share"
rm -rf man/* groff/* info/* lintian/* linda/*
find doc -mindepth 1 ! -type d ! -name copyright -delete
find locale -mindepth 1 ! -type d ! -path locale/locale.alias -delete
find doc locale -mindepth 1 -depth -type d -empty -delete
EOF
}

# debian:bookworm-slim from Debian's packages, rebuilt only when missing or when its recipe
# (the settings above and the mmdebstrap command) changed.
base_image() {
    local tmp key stamp="$STORE/base.recipe"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'; trap - RETURN" RETURN
    write_slim_settings "$tmp"
    local sources=(
        "deb http://deb.debian.org/debian bookworm main"
        "deb http://deb.debian.org/debian bookworm-updates main"
        "deb http://deb.debian.org/debian-security bookworm-security main"
    )
    local cmd=(mmdebstrap --quiet --variant=minbase --mode=root --format=tar
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
        --dpkgopt="$tmp/dpkg-slim" --aptopt="$tmp/apt-docker-clean"
        --customize-hook="sh $tmp/slim-cleanup \"\$1\""
        bookworm "$tmp/rootfs.tar" "${sources[@]}")
    key="$( (cat "$tmp/dpkg-slim" "$tmp/apt-docker-clean" "$tmp/slim-cleanup"; printf '%s\n' "${cmd[@]/$tmp/}") | sha256sum | cut -c1-16)"
    if bah inspect --type image "$BASE_REF" >/dev/null 2>&1 && [ "$(cat "$stamp" 2>/dev/null)" = "$key" ]; then
        log "base $BASE_REF: up to date"
        return
    fi
    log "base $BASE_REF: mmdebstrap --variant=minbase bookworm"
    # Its progress (hundreds of lines) goes to a log, shown when it fails.
    if ! "${cmd[@]}" >"$STORE/mmdebstrap.log" 2>&1; then
        tail -n 40 "$STORE/mmdebstrap.log" >&2
        die "mmdebstrap failed (log: $STORE/mmdebstrap.log)"
    fi
    local ctr
    ctr="$(bah from --pull=never scratch)"
    bah add --quiet "$ctr" "$tmp/rootfs.tar" / >/dev/null
    # What the official image's config says.
    bah config --cmd bash \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --created-by "mmdebstrap --variant=minbase bookworm (scripts/build-images.sh)" "$ctr"
    local old
    old="$(bah inspect --type image --format '{{.FromImageID}}' "$BASE_REF" 2>/dev/null || true)"
    bah commit --quiet --rm "$ctr" "$BASE_REF" >/dev/null
    # The previous base, unless images built on it still use it.
    if [ -n "$old" ]; then bah rmi "$old" >/dev/null 2>&1 || true; fi
    echo "$key" >"$stamp"
}

target_dir() {
    local dir="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$dir" in
        /*) echo "$dir" ;;
        *) echo "$ROOT/$dir" ;;
    esac
}

# The release binaries, on the host: cargo does nothing when they are up to date. Built in
# SRC with this checkout's target directory; BIN_DIR holds their copies.
binaries() {
    local args=() b target
    target="$(target_dir)"
    for b in "${BINARIES[@]}"; do args+=(-p "$b"); done
    (cd "$SRC" && PATH="$BIN:$PATH" CARGO_TARGET_DIR="$target" \
        nice cargo auditable build --release --locked "${args[@]}")
    [ "$BIN_DIR" = "$target/release" ] && return
    mkdir -p "$BIN_DIR"
    for b in "${BINARIES[@]}"; do cp -p "$target/release/$b" "$BIN_DIR/$b"; done
}

# An image holding the binaries at /out/<name>, as the Dockerfiles' `build` stage does; the
# Dockerfiles copy them from whatever image their BINARIES argument names. Named after the
# binaries' content, so unchanged binaries reuse the image and buildah's layer cache.
#
# The binaries are first copied to STAGED: another cargo in this checkout may relink them in
# BIN_DIR at any time, and the image must hold exactly what its name says (an image named after
# one build but holding another was reused by every later run, each stopping on an outdated
# binary until the store was removed by hand). An existing image of that name is checked, and
# made again when it holds something else.
binaries_image() {
    local files=() b sum ref ctr
    rm -rf "$STAGED" && mkdir -p "$STAGED"
    for b in "${BINARIES[@]}"; do
        cp -p "$BIN_DIR/$b" "$STAGED/$b"
        files+=("$STAGED/$b")
    done
    sum="$(sha256sum "${files[@]}" | awk '{ print $1 }' | sha256sum | cut -c1-16)"
    ref="$BINARIES_REPO:$sum"
    if bah inspect --type image "$ref" >/dev/null 2>&1 && ! holds_staged "$ref" /out; then
        log "$ref does not hold the binaries it is named after: making it again"
        bah rmi -f "$ref" >/dev/null
    fi
    if ! bah inspect --type image "$ref" >/dev/null 2>&1; then
        ctr="$(bah from --pull=never scratch)"
        bah copy --quiet "$ctr" "${files[@]}" /out/ >/dev/null
        bah commit --quiet --rm "$ctr" "$ref" >/dev/null
    fi
    # Earlier binaries are never used again.
    bah images --format '{{.Name}}:{{.Tag}}' | grep "^$BINARIES_REPO:" | grep -vxF "$ref" |
        while read -r old; do bah rmi "$old" >/dev/null 2>&1 || true; done
    echo "$ref"
}

# holds_staged REF DIR [BINARY...]: whether image REF holds, in DIR, the same bytes as STAGED
# (every binary, or those named).
holds_staged() {
    local ref="$1" dir="$2" ctr mnt b ok=0
    shift 2
    local names=("$@")
    [ ${#names[@]} -gt 0 ] || names=("${BINARIES[@]}")
    ctr="$(bah from --pull=never "$ref")"
    mnt="$(bah mount "$ctr")"
    for b in "${names[@]}"; do
        cmp -s "$STAGED/$b" "$mnt$dir/$b" || ok=1
    done
    bah umount "$ctr" >/dev/null
    bah rm "$ctr" >/dev/null
    return "$ok"
}

# build_image NAME DOCKERFILE BINARIES_REF: SRC's Dockerfile as it is, its cargo stage skipped
# (unused once BINARIES names another image), tagged as the chart references it.
build_image() {
    local name="$1" dockerfile="$2" binref="$3" ref bin=smtp-relay
    ref="$REGISTRY/$name:$TAG"
    [ "$name" = smtp-relay-operator ] && bin=smtp-relay-operator
    bud "$ref" "$dockerfile" "$binref" --layers
    # The layer cache must never keep an old binary: the image holds exactly what was staged.
    # Should it not, the layers are not trusted: built once more without them.
    if ! holds_staged "$ref" /usr/local/bin "$bin"; then
        log "$ref holds another $bin than the one staged: building it again without the layer cache"
        bud "$ref" "$dockerfile" "$binref" --no-cache
        holds_staged "$ref" /usr/local/bin "$bin" ||
            die "$ref still holds another $bin than the one built; remove $STORE and run this again"
    fi
}

# bud REF DOCKERFILE BINARIES_REF FLAG...: buildah bud. --network host: RUN apt-get reaches
# Debian like the host's apt does, and no CNI bridge is created (the node's pod network uses
# the range buildah's default one would take). Its RUN steps' output goes to a log, shown when
# the build fails.
bud() {
    local ref="$1" dockerfile="$2" binref="$3" log name
    shift 3
    name="${ref##*/}"
    log="$STORE/build-${name%%:*}.log"
    if ! bah bud --quiet --pull=never "$@" --network host \
        --build-arg "BINARIES=$binref" \
        -f "$SRC/$dockerfile" -t "$ref" "$SRC" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        bah rm --all >/dev/null 2>&1 || true
        die "building $ref failed (log: $log)"
    fi
    # bud leaves a working container behind for the stage that only names the BINARIES image;
    # this storage is the script's own, so no container in it outlives a build.
    bah rm --all >/dev/null
}

# export_image NAME: OUT/NAME.tar (docker-archive), redone only when the image changed;
# NAME.id and NAME.gzsize cache its id and gzipped size.
export_image() {
    local name="$1" ref id tar="$OUT/$1.tar"
    ref="$REGISTRY/$name:$TAG"
    id="$(bah inspect --type image --format '{{.FromImageID}}' "$ref")"
    if [ -f "$tar" ] && [ "$(cat "$OUT/$name.id" 2>/dev/null)" = "$id" ]; then
        return
    fi
    rm -f "$tar" "$OUT/$name.id" "$OUT/$name.gzsize"
    bah push --quiet "$ref" "docker-archive:$tar:$ref" >/dev/null
    gzip -c "$tar" | wc -c >"$OUT/$name.gzsize"
    echo "$id" >"$OUT/$name.id"
}

# sbom NAME: OUT/NAME.spdx.json, the SBOM of the exported image, redone only when the image
# changed (NAME.sbom-id remembers which it describes).
sbom() {
    local name="$1" id out="$OUT/$1.spdx.json"
    id="$(cat "$OUT/$name.id")"
    if [ -f "$out" ] && [ "$(cat "$OUT/$name.sbom-id" 2>/dev/null)" = "$id" ]; then
        return
    fi
    rm -f "$out" "$OUT/$name.sbom-id"
    # Offline: no update check, nothing fetched; the image's own files are the only input.
    SYFT_CHECK_FOR_APP_UPDATE=false "$BIN/syft" scan --quiet \
        --source-name "$REGISTRY/$name" --source-version "$TAG" \
        --output "spdx-json=$out.new" "docker-archive:$OUT/$name.tar"
    mv "$out.new" "$out"
    echo "$id" >"$OUT/$name.sbom-id"
}

mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }

size_table() {
    local entry name ref size b
    printf '\n%-58s %12s %12s\n' "image" "uncompressed" "gzipped"
    for entry in "${IMAGES[@]}"; do
        name="${entry%% *}"
        ref="$REGISTRY/$name:$TAG"
        # The docker-archive holds the layers uncompressed: its size is the image's.
        size="$(stat -c %s "$OUT/$name.tar")"
        printf '%-58s %12s %12s\n' "$ref" "$(mb "$size")" "$(mb "$(cat "$OUT/$name.gzsize")")"
    done
    printf '%-58s %12s\n' "base $BASE_REF" "$(bah images --format '{{.Size}}' "$BASE_REF")"
    for b in "${BINARIES[@]}"; do
        printf '%-58s %12s\n' "binary $b" "$(mb "$(stat -c %s "$BIN_DIR/$b")")"
    done
    printf '\ntarballs: %s\n' "$OUT"
}

tarballs() {
    local entry tar
    for entry in "${IMAGES[@]}"; do
        tar="$OUT/${entry%% *}.tar"
        [ -f "$tar" ] || die "$tar missing: run scripts/build-images.sh"
        echo "$tar"
    done
}

# import_images ADDRESS: every tarball into the k8s.io namespace (the one the kubelet's CRI
# uses) of the containerd at ADDRESS.
import_images() {
    local address="$1" tar
    [ -S "$address" ] || die "$address is not a socket"
    for tar in $(tarballs); do
        ctr --address "$address" --namespace k8s.io images import "$tar" >/dev/null
    done
    ctr --address "$address" --namespace k8s.io images list --quiet | grep "^$REGISTRY/" >&2
}

# A containerd of our own for the checks: its root, state, socket and runc state live in
# PRIVATE_DIR, the CRI plugin is off (nothing here is a node), so it shares nothing with a
# node's containerd that may run on the same machine. Only the overlayfs snapshotter (the
# default) is loaded.
PRIVATE_DIR=
PRIVATE_PID=
# containerd 1.6 puts its shims' sockets in /run/containerd/s whatever its state directory.
# A node's containerd keeps its socket in /run/containerd: when nothing but an empty s/ is
# left there, it is ours (or a leftover) and is removed.
SHIM_DIR=/run/containerd
# The checks' containers get cgroups under this one (removed after), not under the
# namespace's default /k8s.io, which a node's containers use.
CGROUP_PARENT="smtp-relay-images-$$"

private_containerd_start() {
    PRIVATE_DIR="$(mktemp -d /tmp/smtp-relay-images.XXXXXX)"
    local d="$PRIVATE_DIR"
    cat >"$d/config.toml" <<EOF
version = 2
root = "$d/root"
state = "$d/state"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = "$d/containerd.sock"
[ttrpc]
  address = "$d/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/opt"
EOF
    containerd --config "$d/config.toml" >"$d/containerd.log" 2>&1 &
    PRIVATE_PID=$!
    local deadline=$((SECONDS + 30))
    until ctr --address "$d/containerd.sock" version >/dev/null 2>&1; do
        if ! kill -0 "$PRIVATE_PID" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            cat "$d/containerd.log" >&2
            die "private containerd did not come up"
        fi
        sleep 0.1
    done
}

private_containerd_stop() {
    if [ -n "$PRIVATE_PID" ]; then
        kill -TERM "$PRIVATE_PID" 2>/dev/null || true
        local deadline=$((SECONDS + 15))
        while kill -0 "$PRIVATE_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        kill -KILL "$PRIVATE_PID" 2>/dev/null || true
        wait "$PRIVATE_PID" 2>/dev/null || true
        PRIVATE_PID=
    fi
    if [ -n "$PRIVATE_DIR" ]; then
        # Snapshot and rootfs mounts left under the directory, deepest first.
        awk -v d="$PRIVATE_DIR/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo |
            sort -r | while read -r m; do umount -l "$m" || true; done
        rm -rf "$PRIVATE_DIR"
        PRIVATE_DIR=
    fi
    local cgroup
    for cgroup in /sys/fs/cgroup/*/"$CGROUP_PARENT"; do
        if [ -d "$cgroup" ]; then rmdir "$cgroup" 2>/dev/null || true; fi
    done
    if [ "$(ls -A "$SHIM_DIR" 2>/dev/null)" = s ]; then
        rmdir "$SHIM_DIR/s" "$SHIM_DIR" 2>/dev/null || true
    fi
}

# pctr ARGS...: ctr on the private containerd, in the namespace a node would use.
pctr() { ctr --address "$PRIVATE_DIR/containerd.sock" --namespace k8s.io "$@"; }

# remove_shim_socket ID: the socket of container ID's shim, should it outlive the shim. It is
# named sha256(address/namespace/id) after our containerd's address, so never another's.
remove_shim_socket() {
    rm -f "$SHIM_DIR/s/$(printf '%s' "$PRIVATE_DIR/containerd.sock/k8s.io/$1" | sha256sum | cut -d' ' -f1)"
}

# prun NAME IMAGE ARGS...: runs ARGS in a fresh container of IMAGE with runc (no network but
# loopback), prints its output, fails when it fails.
prun() {
    local name="$1" image="$2"
    shift 2
    local id="smtp-relay-images-$name-$$" status=0
    pctr run --rm --runc-root "$PRIVATE_DIR/runc" --fifo-dir "$PRIVATE_DIR/fifo" \
        --cgroup "/$CGROUP_PARENT/$name" "${PRUN_MOUNTS[@]}" "$image" "$id" "$@" || status=$?
    remove_shim_socket "$id"
    return "$status"
}

# Extra ctr arguments of prun (mounts).
PRUN_MOUNTS=()

# test_certificate DIR: a self-signed certificate for localhost (tls.crt, tls.key): a relay with
# SASL users needs one, as it offers AUTH only inside TLS.
test_certificate() {
    mkdir -p "$1"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost -keyout "$1/tls.key" -out "$1/tls.crt" 2>/dev/null ||
        die "openssl could not make a test certificate"
    chmod 0644 "$1/tls.key"
}

# The tarballs as a node gets them: imported into a containerd, then run. Checks what the
# relay needs at run time (every program it calls), and the relay for real: Postfix up and
# answering SMTP, SASL users in the database.
verify_images() {
    local version="$TAG" relay operator out
    relay="$REGISTRY/smtp-relay:$version"
    operator="$REGISTRY/smtp-relay-operator:$version"
    trap private_containerd_stop EXIT
    private_containerd_start
    import_images "$PRIVATE_DIR/containerd.sock"

    out="$(prun version "$relay" smtp-relay --version)"
    [ "$out" = "smtp-relay $version" ] || die "relay --version said: $out"
    log "relay: $out"
    # shellcheck disable=SC2016 # expanded by the container's shell
    prun tools "$relay" sh -c '
        for t in postfix postconf postsuper postqueue postmap saslpasswd2 sasldblistusers2 \
                 /usr/lib/postfix/sbin/master /usr/lib/postfix/sbin/smtpd /usr/lib/postfix/sbin/postlogd; do
            command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
        done
        test -f /etc/ssl/certs/ca-certificates.crt || { echo "missing: CA bundle" >&2; exit 1; }'
    log "relay: postfix, postconf, saslpasswd2, sasldblistusers2, master and the CA bundle are there"
    # The relay itself: validate, configure, build the SASL database with saslpasswd2, start
    # Postfix, answer the SMTP probe, list the users with sasldblistusers2, stop on SIGTERM.
    test_certificate "$PRIVATE_DIR/tls"
    PRUN_MOUNTS=(--mount "type=bind,src=$PRIVATE_DIR/tls,dst=/etc/smtp-relay/tls,options=rbind:ro")
    # shellcheck disable=SC2016 # expanded by the container's shell
    out="$(prun relay "$relay" sh -ec '
        printf "alice s3cret\n" >/etc/postfix/client_sasl_passwd
        export RELAY_MYDOMAIN=example.net RELAY_HOST="[127.0.0.1]:2525" \
               RELAY_MYNETWORKS=127.0.0.0/8 RELAY_LISTEN=127.0.0.1:25 \
               RELAY_METRICS_LISTEN=127.0.0.1:9154 \
               RELAY_TLS_CERT=/etc/smtp-relay/tls/tls.crt RELAY_TLS_KEY=/etc/smtp-relay/tls/tls.key
        '"$RELAY_SMOKE")" || die "the relay did not run in its image"
    PRUN_MOUNTS=()
    [ "$out" = "alice@example.net" ] || die "smtp-relay users said: $out"
    log "relay: ran Postfix, answered the probe, listed its SASL user, stopped on SIGTERM"
    relay_as_pod "$relay"

    out="$(prun operator-version "$operator" smtp-relay-operator --version)"
    [ "$out" = "smtp-relay-operator $version" ] || die "operator --version said: $out"
    log "operator: $out"
    # Read whole, then checked: `| grep -q` stops reading at the match, and the rest of the
    # CRD (94 KB, more than a pipe holds) would then meet a closed pipe.
    out="$(prun operator-crd "$operator" smtp-relay-operator crd)" || die "operator crd failed"
    grep -q '^kind: CustomResourceDefinition' <<<"$out" || die "operator crd printed no CRD"
    log "operator: runs as user $(image_user "$OUT/smtp-relay-operator.tar"), prints its CRD"

    private_containerd_stop
    trap - EXIT
}

# relay_as_pod IMAGE: the relay as the operator's StatefulSet runs it: read-only root,
# empty directories on /run/smtp-relay, /data and /tmp, an empty spool (a fresh volume), the
# config file and a SASL users directory mounted read-only, only the capabilities the pod
# keeps (ctr's defaults minus the rest), the command and environment of the pod spec.
relay_as_pod() {
    local image="$1" id="smtp-relay-images-pod-$$" inputs="$PRIVATE_DIR/pod-inputs" out status=0
    mkdir -p "$inputs/config" "$inputs/sasl-users"
    cat >"$inputs/config/relay.yaml" <<'EOF'
domain: example.net
networks: [127.0.0.0/8]
relayhost: {host: 127.0.0.1, port: 2525}
saslUsersDir: /etc/smtp-relay/sasl-users
inboundTls: {certFile: /etc/smtp-relay/tls/tls.crt, keyFile: /etc/smtp-relay/tls/tls.key}
EOF
    printf 's3cret' >"$inputs/sasl-users/bob"
    local args=(--read-only --runc-root "$PRIVATE_DIR/runc" --fifo-dir "$PRIVATE_DIR/fifo"
        --cgroup "/$CGROUP_PARENT/pod"
        --mount "type=bind,src=$inputs/config,dst=/etc/smtp-relay/config,options=rbind:ro"
        --mount "type=bind,src=$inputs/sasl-users,dst=/etc/smtp-relay/sasl-users,options=rbind:ro"
        --mount "type=bind,src=$PRIVATE_DIR/tls,dst=/etc/smtp-relay/tls,options=rbind:ro"
        --env RELAY_LISTEN=127.0.0.1:25 --env RELAY_POSTFIX_DIR=/run/smtp-relay/postfix
        --env RELAY_DATA_DIR=/data --env RELAY_SPOOL_DIR=/var/spool/postfix
        --env RELAY_METRICS_LISTEN=127.0.0.1:9154)
    local dir cap
    for dir in /run/smtp-relay /data /tmp /var/spool/postfix; do
        args+=(--mount "type=tmpfs,src=tmpfs,dst=$dir,options=nosuid:nodev:mode=1777")
    done
    # The pod drops ALL and adds CHOWN DAC_OVERRIDE FOWNER SETUID SETGID NET_BIND_SERVICE KILL.
    for cap in FSETID MKNOD NET_RAW SETFCAP SETPCAP SYS_CHROOT AUDIT_WRITE; do
        args+=(--cap-drop "CAP_$cap")
    done
    out="$(pctr run --rm "${args[@]}" "$image" "$id" sh -ec "$RELAY_SMOKE" sh \
        --config /etc/smtp-relay/config/relay.yaml)" || status=$?
    remove_shim_socket "$id"
    [ "$status" -eq 0 ] || die "the relay did not run as the operator's pod runs it"
    [ "$out" = "bob@example.net" ] || die "smtp-relay users (pod) said: $out"
    log "relay: ran as the operator's pod (read-only root, pod capabilities, config file, empty spool)"
}

# image_user TARBALL: the USER in a docker-archive's image config.
image_user() {
    local config
    config="$(tar -xOf "$1" manifest.json | sed -n 's/.*"Config":"\([^"]*\)".*/\1/p')"
    tar -xOf "$1" "$config" | sed -n 's/.*"User":"\([^"]*\)".*/\1/p'
}

build_all() {
    mkdir -p "$STORE" "$OUT"
    step "apt packages" apt_packages
    step "SBOM tools" sbom_tools
    step "base image" base_image
    step "release binaries" binaries
    local binref entry
    binref="$(binaries_image)"
    for entry in "${IMAGES[@]}"; do
        # shellcheck disable=SC2086 # "name dockerfile"
        step "image ${entry%% *}" build_image $entry "$binref"
        step "export ${entry%% *}" export_image "${entry%% *}"
        [ -z "$SBOM" ] || step "SBOM ${entry%% *}" sbom "${entry%% *}"
    done
    size_table
}

main() {
    local verify='' build=1 import_address='' previous=''
    while [ $# -gt 0 ]; do
        case "$1" in
            --previous) previous=1 ;;
            --verify) verify=1 ;;
            --verify-only) verify=1 build= ;;
            --import)
                [ $# -ge 2 ] || die "--import needs a containerd socket path"
                import_address="$2"
                shift
                ;;
            -h | --help)
                usage
                return
                ;;
            *)
                usage >&2
                die "unknown argument: $1"
                ;;
        esac
        shift
    done
    [ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap, overlay mounts, runc)"
    # Before building, not after minutes of it.
    if [ -n "$import_address" ] && [ ! -S "$import_address" ]; then
        die "$import_address is not a socket (--import takes a containerd socket path)"
    fi
    TAG="$(app_version)"
    BIN_DIR="$(target_dir)/release"
    STAGED="$STORE/staged"
    if [ -n "$previous" ]; then
        use_previous
        STAGED="$CACHE/previous/staged"
    fi
    if [ -n "$build" ]; then
        build_all
    fi
    if [ -n "$verify" ]; then
        step "verify on a private containerd" verify_images
    fi
    if [ -n "$import_address" ]; then
        step "import into $import_address" import_images "$import_address"
    fi
}

# Sourcing the file (to run one function while debugging) runs nothing.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
