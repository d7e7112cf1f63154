#!/usr/bin/env bash
# Every test of the project: formatting and lints, unit tests, the relay against real Postfix,
# the chart and the Argo CD health check, and the end-to-end suite on a real control plane.
# Installs what it needs first (scripts/install-deps.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh

phase() { printf '\n==> %s\n' "$*"; }
started=$SECONDS

phase "install dependencies"
scripts/install-deps.sh --lint
rustup component add rustfmt clippy >/dev/null 2>&1 || true

phase "formatting"
cargo fmt --all -- --check
unformatted="$(gofmt -l e2e)"
if [ -n "$unformatted" ]; then
    echo "gofmt: needs formatting: $unformatted" >&2
    exit 1
fi

phase "lints"
# The crates' own lints are in Cargo.toml ([workspace.lints]: no unsafe code, no unwrap or
# expect outside tests) and clippy.toml.
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
# Licences, bans and sources of every dependency (deny.toml).
"$ROOT/.cache/bin/cargo-deny" --locked check bans licenses sources

phase "build"
# The end-to-end tests run the operator and relay binaries; cargo cannot build them from
# inside a running test, so they are built first.
cargo build --workspace --bins --locked

phase "images"
# The previous release's images, from its commit (e2e/previous-release): the user path
# upgrades from it. First, so that target/release/ ends with this checkout's binaries.
scripts/build-images.sh --previous
# The relay and operator images, as a node gets them (e2e/tests/images.rs checks them).
scripts/build-images.sh

phase "tests"
cargo test --workspace --locked -- "$@"

printf '\nall checks passed in %ds\n' $((SECONDS - started))
