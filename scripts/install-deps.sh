#!/usr/bin/env bash
# Installs everything the tests need on a Debian bookworm machine, idempotently:
#   - Debian packages: postfix, Cyrus SASL, lua, openssl (the system postfix is kept stopped:
#     tests run their own instances);
#   - into $ROOT/.cache/lib/sasl2: the relay's XOAUTH2 mechanism (image/sasl-xoauth2), which the
#     tests' relays load (RELAY_SASL_PLUGIN_DIR) as the image's do from /usr/lib/smtp-relay/sasl2;
#   - into $ROOT/.cache/bin: helm (3) and helm4, and controlplane + kubectl built from
#     e2e/controlplane (a real etcd + kube-apiserver + kube-controller-manager, from Go modules);
#   - with --lint (the tests, not the demo): actionlint, controlplane-oldest (the same control
#     plane at the oldest supported Kubernetes, e2e/controlplane/oldest), cargo-deny, promtool
#     (checks and unit-tests the chart's alerts and dashboard queries) and kstatus (e2e/kstatus:
#     the status the kstatus library computes, asked about SmtpRelays on the real node), into
#     the same place.
# A second run with everything present does nothing and takes seconds.
#
# Environment: GO (default: go on PATH, else /usr/local/go/bin/go), HELM_VERSION, HELM4_VERSION.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/.cache/bin"
# Helm 3.21, the newest Helm 3 approved here (3.22.0 is served but not approved), and Helm 4,
# the current line: the chart is tested with both (e2e/tests/chart.rs, e2e/tests/user_path.rs).
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
HELM4_VERSION="${HELM4_VERSION:-v4.3.2}"
ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
CARGO_DENY_VERSION="${CARGO_DENY_VERSION:-0.20.2}"
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
APT_PACKAGES=(postfix sasl2-bin libsasl2-modules libsasl2-dev gcc libc6-dev lua5.4 ca-certificates openssl)

LOG_TAG="install-deps"
source "$ROOT/scripts/lib.sh"

apt_packages() {
    # Postfix's package asks what to configure: nothing, the tests configure their own.
    echo 'postfix postfix/main_mailer_type select No configuration' | as_root debconf-set-selections
    apt_install "${APT_PACKAGES[@]}"
    # The tests run their own postfix instances; a system one would hold port 25 and the queue.
    if as_root postfix status >/dev/null 2>&1; then
        log "stopping the system postfix"
        as_root postfix stop >/dev/null 2>&1 || true
    fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now postfix >/dev/null 2>&1 || true
    fi
}

helm_install() {
    go_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
        "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

# Helm 4 as `helm4`: `go install` names its binary `helm` too, so it is built into a directory
# of its own and linked beside Helm 3.
helm4_install() {
    local stamp="$BIN/.helm4-version"
    current "$stamp" "$HELM4_VERSION" "$BIN/helm4" && return
    log "building helm4 $HELM4_VERSION"
    mkdir -p "$BIN/helm4.d"
    GOBIN="$BIN/helm4.d" "$GO" install -trimpath \
        "-ldflags=-s -w -X helm.sh/helm/v4/internal/version.version=$HELM4_VERSION" \
        "helm.sh/helm/v4/cmd/helm@$HELM4_VERSION"
    ln -sf helm4.d/helm "$BIN/helm4"
    echo "$HELM4_VERSION" >"$stamp"
}

# actionlint checks the release workflow (.github/workflows) in the tests.
actionlint_install() {
    go_tool actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint
}

# cargo-deny checks the dependencies' licences, bans and sources (deny.toml).
cargo_deny_install() {
    crate_tool cargo-deny "$CARGO_DENY_VERSION"
}

# promtool, Prometheus' own rule checker and unit-test runner (the Go module's v0.316.0 is
# Prometheus 3.16).
promtool_install() {
    go_tool promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool
}

sasl_plugin_build() {
    local src="$ROOT/image/sasl-xoauth2/xoauth2.c" dir="$ROOT/.cache/lib/sasl2"
    local out="$dir/libsmtprelayxoauth2.so" stamp="$dir/.sources" sum
    sum="$( (gcc --version | head -1 && cat "$src") | sha256sum | cut -d' ' -f1)"
    current "$stamp" "$sum" "$out" && return
    mkdir -p "$dir"
    gcc -shared -fPIC -O2 -Wall -Wextra -Werror -o "$out" "$src"
    echo "$sum" >"$stamp"
}

controlplane_build() {
    local src="$ROOT/e2e/controlplane" stamp="$BIN/.controlplane-sources" sum
    # The sources' content, not their times: a fresh checkout of the same sources builds nothing.
    sum="$(sources_hash "$src" '*.go' go.mod go.sum)"
    current "$stamp" "$sum" "$BIN/controlplane" "$BIN/kubectl" && return
    log "building controlplane and kubectl"
    local x
    x="$(k8s_version_ldflags "$src/go.mod")"
    (cd "$src" && "$GO" build -trimpath "-ldflags=-s -w$x" -o "$BIN/" . k8s.io/kubernetes/cmd/kubectl)
    echo "$sum" >"$stamp"
}

# The same control plane built against the oldest supported Kubernetes minor, from the module
# e2e/controlplane/oldest: its .go files are links to ../*.go, its go.mod pins that minor. Only
# `controlplane-oldest`: the newer kubectl talks to it (beyond kubectl's documented skew of one
# minor: see e2e/controlplane/README.md).
# Packages shared with the build above come from the same Go build cache.
controlplane_oldest_build() {
    local src="$ROOT/e2e/controlplane" out="$BIN/controlplane-oldest"
    local stamp="$BIN/.controlplane-oldest-sources" f sum missing=()
    for f in "$src"/*.go; do
        [ -L "$src/oldest/${f##*/}" ] || missing+=("${f##*/}")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "e2e/controlplane/oldest lacks links to: ${missing[*]}" \
            "(cd e2e/controlplane/oldest && ln -s ../NAME.go .)"
        exit 1
    fi
    # The links' targets are the sources above (find sees no links); the module is its own.
    sum="$( (sources_hash "$src" '*.go' && sources_hash "$src/oldest" go.mod go.sum) |
        sha256sum | cut -d' ' -f1)"
    current "$stamp" "$sum" "$out" && return
    log "building controlplane-oldest"
    local x
    x="$(k8s_version_ldflags "$src/oldest/go.mod")"
    (cd "$src/oldest" && "$GO" build -trimpath "-ldflags=-s -w$x" -o "$out" .)
    echo "$sum" >"$stamp"
}

main() {
    local start=$EPOCHREALTIME
    mkdir -p "$BIN"
    GO="$(find_go)"
    # Build with the Go that is here rather than fetching another toolchain.
    export GOTOOLCHAIN=local
    step "apt packages" apt_packages
    step "XOAUTH2 SASL plugin" sasl_plugin_build
    step "helm $HELM_VERSION" helm_install
    step "helm4 $HELM4_VERSION" helm4_install
    step "controlplane + kubectl" controlplane_build
    if [ "${1:-}" = "--lint" ]; then
        step "actionlint $ACTIONLINT_VERSION" actionlint_install
        # The oldest supported Kubernetes, for e2e/tests/oldest_kubernetes.rs alone: the demo
        # does not wait for its build (as long as the newest's on an empty Go cache).
        step "controlplane-oldest" controlplane_oldest_build
        step "cargo-deny $CARGO_DENY_VERSION" cargo_deny_install
        step "promtool $PROMETHEUS_VERSION" promtool_install
        # kstatus (e2e/kstatus): the status the kstatus library computes for an object, as
        # Flux and `kubectl wait` users see it; the tests ask it about SmtpRelays.
        step "kstatus" go_module_build kstatus
    fi
    step "node (install-node-deps.sh)" "$ROOT/scripts/install-node-deps.sh"
    log "tools in $BIN: $(cd "$BIN" && echo *)"
    log "$(awk -v s="$start" -v e="$EPOCHREALTIME" 'BEGIN { printf "%-28s %7.1fs", "total", e - s }')"
}

main "$@"
