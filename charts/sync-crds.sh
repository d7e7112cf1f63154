#!/usr/bin/env bash
# Copies the generated CRD into the chart, and its spec schema into values.schema.json (so
# `relays[].spec` typos fail at helm install). Helm installs charts/*/crds/ before any template
# and cannot read files outside the chart, hence a copy; e2e/tests/chart.rs fails when either is
# stale.
#
#   cargo run -p smtp-relay-operator -- crd > crds/smtprelay.dev_smtprelays.yaml   # regenerate
#   charts/sync-crds.sh                                                            # then copy
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$root/crds/smtprelay.dev_smtprelays.yaml"
dst="$root/charts/smtp-relay-operator/crds/smtprelay.dev_smtprelays.yaml"
[ -f "$src" ] || { echo "missing $src: run cargo run -p smtp-relay-operator -- crd first" >&2; exit 1; }
mkdir -p "$(dirname "$dst")"
cp "$src" "$dst"
echo "copied $src -> $dst"
# The schema transformation lives in the test that checks it: one definition, no drift.
cd "$root"
UPDATE=1 cargo test -q -p smtp-relay-e2e --test chart values_schema_embeds_the_crd_spec_schema
