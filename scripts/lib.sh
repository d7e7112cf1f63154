# shellcheck shell=bash
# Sourced by the install, build and test scripts: the helpers they share. Set LOG_TAG first
# (the prefix of every log line).

log() { printf '[%s] %s\n' "${LOG_TAG:-scripts}" "$*" >&2; }

# step NAME CMD...: runs CMD and prints how long it took.
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

# apt_install PACKAGE...: installs the packages that are missing. Services are kept from
# starting while installing (the tests run their own Postfix and containerd, on their own
# ports and sockets), and dpkg's lock is waited for: another script may be installing too.
apt_install() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return
    log "installing Debian packages: ${missing[*]}"
    local policy=/usr/sbin/policy-rc.d created=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        created=1
    fi
    as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$created" ]; then as_root rm -f "$policy"; fi
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

# sources_hash DIR PATTERN...: a hash of the Go version ($GO) and the content (not the times)
# of the files under DIR whose names match one of the patterns.
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

# current STAMP SUM FILE...: whether every FILE is there and the last build stamped STAMP with
# SUM (the hash of its sources): then there is nothing to build.
current() {
    local stamp="$1" sum="$2" f
    shift 2
    for f in "$@"; do
        [ -e "$f" ] || return 1
    done
    [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]
}

# go_tool NAME VERSION PACKAGE [LDFLAGS]: `go install PACKAGE@VERSION` into $BIN, once per
# version (a stamp file remembers which).
go_tool() {
    local name="$1" version="$2" package="$3" ldflags="-s -w${4:+ $4}" stamp="$BIN/.$1-version"
    current "$stamp" "$version" "$BIN/$name" && return
    log "building $name $version"
    GOBIN="$BIN" "$GO" install -trimpath "-ldflags=$ldflags" "$package@$version"
    echo "$version" >"$stamp"
}

# crate_tool NAME VERSION: `cargo install NAME@VERSION` into $BIN, once per version. Its build
# directory outlives the clone, so a fresh checkout only links it again.
crate_tool() {
    local name="$1" version="$2" stamp="$BIN/.$1-version"
    current "$stamp" "$version" "$BIN/$name" && return
    log "building $name $version"
    cargo install --quiet --locked --force "$name@$version" --root "${BIN%/bin}" \
        --target-dir "${XDG_CACHE_HOME:-$HOME/.cache}/smtp-relay-operator/$name-build"
    echo "$version" >"$stamp"
}

# go_module_build NAME: the Go module e2e/NAME (its main package) built into $BIN/NAME, again
# only when its sources or the Go version changed (stamped in $BIN/.NAME-sources).
go_module_build() {
    local name="$1" src="$ROOT/e2e/$1" stamp="$BIN/.$1-sources" sum
    sum="$(sources_hash "$src" '*.go' go.mod go.sum)"
    current "$stamp" "$sum" "$BIN/$name" && return
    log "building $name"
    (cd "$src" && "$GO" build -trimpath "-ldflags=-s -w" -o "$BIN/$name" .)
    echo "$sum" >"$stamp"
}

# k8s_version_ldflags GO_MOD: the -X flags that stamp the Kubernetes version of GO_MOD's
# k8s.io/kubernetes into a build, as its release build does: clients (helm's kubeVersion
# checks, kubectl version) and the kubelet's node version see v1.x.y, not v0.0.0-master.
k8s_version_ldflags() {
    local version minor pkg x=""
    version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2; exit }' "$1")"
    minor="$(echo "$version" | cut -d. -f2)"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    done
    echo "$x"
}
