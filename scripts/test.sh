#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit tests, and the end-to-end tests
# against the real local stack (kube-apiserver + etcd + dockerd), the real sample worker and the
# core analyzer image (wro-core-analyzer:dev, gdb) and a real systemd (wro-systemd:dev, PID 1 in
# a container, started on demand by the tests that need it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all --check
cargo fmt --manifest-path sample-worker/Cargo.toml --check

step "cargo clippy -D warnings"
cargo clippy --all-targets --all-features --locked -- -D warnings
cargo clippy --manifest-path sample-worker/Cargo.toml --all-targets --locked -- -D warnings

step "sample worker unit tests"
cargo test --manifest-path sample-worker/Cargo.toml --locked

step "local stack up (kube-apiserver + etcd + dockerd)"
bash scripts/stack.sh up

step "Helm chart: lint, render, assertions, server-side dry run"
bash scripts/test-chart.sh

step "alert rules: promtool check and unit tests"
bash scripts/test-alerts.sh

step "sample worker image"
bash scripts/build-worker-image.sh

step "core analyzer image (Debian's gdb-minimal, for the backtraces of core dumps)"
bash scripts/build-analyzer-image.sh

step "systemd node image (systemd as PID 1, for Workers run as services)"
bash scripts/build-systemd-image.sh

step "operator unit and end-to-end tests"
cargo test --locked

step "the operator as a pod: the chart in the one-node cluster (stack restarted with --cluster)"
bash scripts/stack.sh down
bash scripts/test-cluster.sh
