#!/usr/bin/env bash
# Build the operator image worker-recovery-operator:dev from the top-level Dockerfile.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE="${WRO_OPERATOR_IMAGE:-worker-recovery-operator:dev}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
	--target x86_64-unknown-linux-gnu --bin worker-recovery-operator
bin="${TARGET_DIR}/x86_64-unknown-linux-gnu/release/worker-recovery-operator"
if ldd "${bin}" >/dev/null 2>&1 && ! ldd "${bin}" 2>&1 | grep -q "statically linked"; then
	echo "error: ${bin} is dynamically linked" >&2
	exit 1
fi
context="$(mktemp -d)"
trap 'rm -rf "${context}"' EXIT
cp "${bin}" Dockerfile "${context}/"
DOCKER_BUILDKIT=0 docker build --quiet --network none -t "${IMAGE}" "${context}" >/dev/null
echo "${IMAGE}"
