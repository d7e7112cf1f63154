#!/usr/bin/env bash
# The project's one version (docs/versioning.md), and the chart annotations that follow from it.
#
# Usage: scripts/set-version.sh [X.Y.Z | --check]
#   X.Y.Z     moves every place that carries the version to X.Y.Z: the crates
#             (Cargo.toml's [workspace.package] version, and Cargo.lock), the chart's version
#             and appVersion, a new `## [X.Y.Z] - Unreleased` entry at the top of CHANGELOG.md
#             (unless it is there), then what is generated from them (deploy/, the operator's
#             golden files) and the annotations below.
#   (nothing) writes Chart.yaml's generated Artifact Hub annotations: artifacthub.io/images
#             (the two images at the chart's appVersion), artifacthub.io/changes (CHANGELOG.md's
#             first entry) and artifacthub.io/crdsExamples (examples/unauthenticated-relay.yaml).
#   --check   writes nothing; exits 1 showing the difference when those annotations are not
#             what this script would write (e2e/tests/release.rs runs it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/charts/smtp-relay-operator/Chart.yaml"
CHANGELOG="$ROOT/CHANGELOG.md"
EXAMPLE="$ROOT/charts/smtp-relay-operator/examples/unauthenticated-relay.yaml"
REGISTRY=ghcr.io/smtp-relay-operator
# The images the release publishes, as the chart's values.yaml names them, and their platforms.
IMAGES=(smtp-relay-operator smtp-relay)
PLATFORMS=(linux/amd64 linux/arm64)

LOG_TAG="set-version"
source "$ROOT/scripts/env.sh"
source "$ROOT/scripts/lib.sh"
die() {
    log "error: $*"
    exit 1
}

app_version() {
    awk -F'"' '/^appVersion:/ { print $2; exit }' "$CHART"
}

images_yaml() {
    local version="$1" name p
    for name in "${IMAGES[@]}"; do
        echo "- name: $name"
        echo "  image: $REGISTRY/$name:$version"
        echo "  platforms:"
        for p in "${PLATFORMS[@]}"; do echo "    - $p"; done
    done
}

# CHANGELOG.md's first entry as Artifact Hub's list of changes: each bullet a change, of the
# kind its section names (Added -> added, ...), its lines joined, as a double-quoted string.
changes_yaml() {
    awk '
        function flush() {
            if (text == "") return
            if (kind !~ /^(added|changed|deprecated|removed|fixed|security)$/) {
                printf "CHANGELOG.md: a change under \"### %s\", which is none of Added, Changed, Deprecated, Removed, Fixed, Security\n", section > "/dev/stderr"
                failed = 1
            }
            gsub(/\\/, "\\\\", text)
            gsub(/"/, "\\\"", text)
            printf "- kind: %s\n  description: \"%s\"\n", kind, text
            text = ""
        }
        /^## \[/ { flush(); entries++; next }
        entries != 1 { next }
        /^### / { flush(); section = substr($0, 5); kind = tolower(section); next }
        /^- / { flush(); text = substr($0, 3); next }
        /^  +[^ ]/ && text != "" { sub(/^ +/, ""); text = text " " $0; next }
        { flush() }
        END { flush(); exit failed }
    ' "$CHANGELOG"
}

# The example relay as a one-element list: the file from its apiVersion line on.
example_yaml() {
    awk '/^apiVersion:/ { on = 1; print "- " $0; next } on { print ($0 == "" ? "" : "  " $0) }' "$EXAMPLE"
}

# annotated_chart: Chart.yaml with the generated annotations' blocks replaced, on stdout.
annotated_chart() {
    local version tmp
    version="$(app_version)"
    [ -n "$version" ] || die "$CHART has no quoted appVersion"
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: tmp is local
    trap "rm -rf '$tmp'" RETURN
    images_yaml "$version" >"$tmp/images"
    changes_yaml >"$tmp/changes" || die "CHANGELOG.md's first entry cannot be read (above)"
    example_yaml >"$tmp/crdsExamples"
    awk -v dir="$tmp" '
        # Inside a replaced block: its lines are indented by four spaces or more.
        skipping && /^    / { next }
        skipping && /^$/ { next }
        { skipping = 0 }
        match($0, /^  artifacthub\.io\/(images|changes|crdsExamples): \|$/) {
            print
            name = substr($0, 18, RLENGTH - 20)
            file = dir "/" name
            while ((getline line < file) > 0) print (line == "" ? "" : "    " line)
            close(file)
            skipping = 1
            next
        }
        { print }
    ' "$CHART"
}

# set_version X.Y.Z: every place that carries the version.
set_version() {
    local v="$1"
    [[ "$v" =~ ^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$ ]] ||
        die "$v is not a semantic version X.Y.Z[-pre]"
    sed -i '/^\[workspace.package\]/,/^\[/ s/^version = ".*"$/version = "'"$v"'"/' "$ROOT/Cargo.toml"
    sed -i -e 's/^version: .*/version: '"$v"'/' -e 's/^appVersion: .*/appVersion: "'"$v"'"/' "$CHART"
    if ! grep -m1 '^## \[' "$CHANGELOG" | grep -qF "## [$v] "; then
        awk -v v="$v" '/^## \[/ && !done { print "## [" v "] - Unreleased\n"; done = 1 } { print }' \
            "$CHANGELOG" >"$CHANGELOG.new"
        mv "$CHANGELOG.new" "$CHANGELOG"
        log "CHANGELOG.md: entry $v opened; write its changes (Added, Changed, ...) there"
    fi
    (cd "$ROOT" && cargo update --workspace --quiet)
    write_annotations
    "$ROOT/deploy/render.sh" >"$ROOT/deploy/smtp-relay-operator.yaml"
    (cd "$ROOT" && UPDATE_GOLDEN=1 cargo test --quiet -p smtp-relay-operator --lib golden >/dev/null)
    log "version $v: $(cd "$ROOT" && git status --short | awk '{ print $2 }' | tr '\n' ' ')"
}

write_annotations() {
    annotated_chart >"$CHART.new"
    mv "$CHART.new" "$CHART"
}

main() {
    case "${1:-}" in
        -h | --help) sed -n '/^# Usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' ;;
        --check)
            if ! annotated_chart | diff -u "$CHART" - >&2; then
                die "Chart.yaml's Artifact Hub annotations are stale: run scripts/set-version.sh"
            fi
            ;;
        "") write_annotations ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) set_version "$1" ;;
    esac
}

main "$@"
