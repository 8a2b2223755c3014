#!/usr/bin/env bash
# kstatus, the real one: the verdict Flux and `kubectl wait`-style tools (through
# sigs.k8s.io/cli-utils/pkg/kstatus) give a Kubernetes object.
#
#   scripts/kstatus.sh build     build hack/kstatus if it is not cached yet; print the binary's path
#   scripts/kstatus.sh < o.json  print the status of the object on stdin (Current, InProgress,
#                                Failed, ...) on the first line and its message on the second
#
# Built on demand only (scripts/stack.sh does not build it), like the stack's binaries from a
# hack/* Go module with its go.sum, and cached outside the repo, keyed by the cli-utils version:
#   ${WRO_CACHE_DIR:-$HOME/.cache/worker-recovery-operator}/bin/kstatus-vX.Y.Z/kstatus
# GO: go binary to use (default: go on PATH, else /usr/local/go/bin/go).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MOD_DIR="$(cd "${SCRIPT_DIR}/.." && pwd)/hack/kstatus"
CACHE_DIR="${WRO_CACHE_DIR:-${HOME}/.cache/worker-recovery-operator}"

die() {
	printf '[kstatus] ERROR: %s\n' "$*" >&2
	exit 1
}

VERSION="$(awk '$1 == "sigs.k8s.io/cli-utils" && $2 ~ /^v/ { print $2; exit }' "${MOD_DIR}/go.mod")"
[[ -n "${VERSION}" ]] || die "cannot find the version of sigs.k8s.io/cli-utils in ${MOD_DIR}/go.mod"
BIN_DIR="${CACHE_DIR}/bin/kstatus-${VERSION}"
BIN="${BIN_DIR}/kstatus"

find_go() {
	local g="${GO:-}"
	if [[ -z "${g}" ]]; then
		g="$(command -v go 2>/dev/null || true)"
		[[ -n "${g}" ]] || g=/usr/local/go/bin/go
	fi
	[[ -x "${g}" ]] || die "Go toolchain not found (set GO=/path/to/go or put go on PATH)"
	printf '%s\n' "${g}"
}

# go build into a temp dir next to the cache dir, then rename into place, so an interrupted
# (or concurrent) build never leaves a half-populated cache entry.
build_kstatus() {
	[[ -x "${BIN}" ]] && return 0
	local go tmp
	go="$(find_go)"
	tmp="${BIN_DIR}.tmp.$$"
	rm -rf "${tmp}"
	mkdir -p "${tmp}"
	printf '[kstatus] building kstatus (cli-utils %s) -> %s\n' "${VERSION}" "${BIN_DIR}" >&2
	(
		cd "${MOD_DIR}"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
			"${go}" build -trimpath -ldflags "-s -w" -o "${tmp}/kstatus" .
	) >&2 || die "building kstatus failed"
	[[ -x "${tmp}/kstatus" ]] || die "kstatus build produced no binary in ${tmp}"
	if [[ -x "${BIN}" ]]; then
		rm -rf "${tmp}" # another build finished first
	else
		rm -rf "${BIN_DIR}"
		mv "${tmp}" "${BIN_DIR}"
	fi
}

case "${1:-}" in
build)
	build_kstatus
	printf '%s\n' "${BIN}"
	;;
"")
	build_kstatus
	exec "${BIN}"
	;;
*) die "usage: $0 [build] (see the comment at the top)" ;;
esac
