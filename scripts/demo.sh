#!/usr/bin/env bash
# The main job, end to end on this machine: a real Kubernetes control plane, the Helm chart, the
# operator, an SmtpRelay, its relay pod run against real Postfix, and a mail delivered through
# it. No cluster of your own is needed. Installs what it needs first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh

scripts/install-deps.sh
cargo build --workspace --bins --locked
exec cargo run --quiet --locked -p smtp-relay-e2e --bin demo -- "$@"
