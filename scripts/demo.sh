#!/usr/bin/env bash
# The main job, end to end on this machine: a real single-node Kubernetes (kubelet on
# containerd, kube-proxy, CoreDNS), the images built and imported, `helm install` of the chart
# with its default values (the operator runs as a pod), the example SmtpRelay, its relay pod
# Ready, and a mail sent to its Service shown delivered. No cluster of your own is needed.
# Installs and builds what it needs first. Needs root.
#
# Usage: scripts/demo.sh [--keep]
#   --keep  leave everything running after the mail and print the KUBECONFIG to explore it
#           with kubectl; Ctrl-C tears it down.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/env.sh

scripts/install-deps.sh
# The images the chart references by default, from the current sources (incremental).
scripts/build-images.sh
exec cargo run --quiet --locked -p smtp-relay-e2e --bin demo -- "$@"
