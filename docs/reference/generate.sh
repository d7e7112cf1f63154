#!/usr/bin/env bash
# Regenerates the reference pages of docs/reference/ from their sources:
#   api.md     from crds/smtprelay.dev_smtprelays.yaml (regenerate it first if the types changed:
#              cargo run -p smtp-relay-operator -- crd > crds/smtprelay.dev_smtprelays.yaml);
#   values.md  from charts/smtp-relay-operator/values.yaml and values.schema.json;
#   rbac.md    from the chart, rendered by helm (.cache/bin/helm, scripts/install-deps.sh).
#
#   docs/reference/generate.sh
#
# The generator is e2e/tests/docs_reference.rs: with UPDATE=1 it writes the pages, without it the
# same test fails when a committed page differs from what its sources give.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
UPDATE=1 cargo test -q -p smtp-relay-e2e --test docs_reference
