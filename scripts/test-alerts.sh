#!/usr/bin/env bash
# The alert rules (charts/worker-recovery-operator/files/alert-rules.yaml): promtool checks them
# and runs their unit tests (tests/prometheus/alert-rules.test.yaml). promtool is Debian's,
# unpacked by scripts/stack.sh prometheus; no stack needed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="$(bash scripts/stack.sh prometheus)"
"${bin}/promtool" check rules charts/worker-recovery-operator/files/alert-rules.yaml
"${bin}/promtool" test rules tests/prometheus/alert-rules.test.yaml
