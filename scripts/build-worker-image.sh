#!/usr/bin/env bash
# Builds the statically linked sample worker and its Docker image
# (default tag wro-sample-worker:dev).
#
#   scripts/build-worker-image.sh [extra docker build args...]
#
# Environment:
#   WRO_SAMPLE_WORKER_IMAGE  image reference to build (default wro-sample-worker:dev)
#   BUSYBOX                  static busybox to ship (default /bin/busybox, from
#                            Debian's busybox-static)
#
# Idempotent: cargo and the Docker layer cache make a rebuild with no change a
# no-op of a few seconds. Logs go to stderr; the image reference is printed on
# stdout at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${WRO_SAMPLE_WORKER_IMAGE:-wro-sample-worker:dev}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
TARGET="x86_64-unknown-linux-gnu"
MANIFEST="${ROOT}/sample-worker/Cargo.toml"
TARGET_DIR="${ROOT}/sample-worker/target"
BIN="${TARGET_DIR}/${TARGET}/release/sample-worker"

log() { printf '[build-worker-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/docker-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/docker-build.sh"

# A static executable: ldd says "not a dynamic executable" (static) or
# "statically linked" (static-pie).
assert_static() {
	local out
	out="$(ldd "$1" 2>&1 || true)"
	case "${out}" in
	*"not a dynamic executable"* | *"statically linked"*) ;;
	*) die "$1 is not statically linked: ${out}" ;;
	esac
}

command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH"
command -v docker >/dev/null 2>&1 || die "the docker client is not on PATH"
command -v ldd >/dev/null 2>&1 || die "ldd is not on PATH (package libc-bin)"
if [[ ! -x "${BUSYBOX}" && "${BUSYBOX}" == /bin/busybox && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
	log "installing Debian's busybox-static with apt"
	{
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update &&
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y busybox-static
	} >&2 || die "apt-get install busybox-static failed"
fi
[[ -x "${BUSYBOX}" ]] || die "${BUSYBOX} not found: install Debian's busybox-static (apt-get install busybox-static)"
assert_static "${BUSYBOX}"

start=${SECONDS}
log "cargo build --release --target ${TARGET} (static, crt-static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
	--target "${TARGET}" \
	--manifest-path "${MANIFEST}" \
	--target-dir "${TARGET_DIR}" >&2
[[ -x "${BIN}" ]] || die "cargo did not produce ${BIN}"
assert_static "${BIN}"
log "binary ok: ${BIN} ($(stat -c %s "${BIN}") bytes, static)"

require_docker

# The busybox root filesystem (busybox, one symlink per applet, /etc/passwd,
# /etc/group, /tmp) is staged once into a cache under the cargo target dir and
# reused while busybox and this recipe are unchanged.
ROOTFS_CACHE="${TARGET_DIR}/image-rootfs"
rootfs_stamp="recipe=1 busybox=$(stat -L -c '%s %Y' "${BUSYBOX}")"
if [[ "$(cat "${ROOTFS_CACHE}.stamp" 2>/dev/null || true)" != "${rootfs_stamp}" ]]; then
	log "staging busybox rootfs (${BUSYBOX})"
	rm -rf "${ROOTFS_CACHE}" "${ROOTFS_CACHE}.stamp"
	mkdir -p "${ROOTFS_CACHE}/bin" "${ROOTFS_CACHE}/etc" "${ROOTFS_CACHE}/tmp" "${ROOTFS_CACHE}/shared"
	chmod 1777 "${ROOTFS_CACHE}/tmp"
	cp "${BUSYBOX}" "${ROOTFS_CACHE}/bin/busybox"
	chmod 0755 "${ROOTFS_CACHE}/bin/busybox"
	# Equivalent of `busybox --install -s`, done at staging time because a
	# FROM-scratch build cannot RUN anything before busybox exists.
	while IFS= read -r applet; do
		[[ "${applet}" == */* ]] || continue # e.g. "linuxrc" at the top level
		mkdir -p "${ROOTFS_CACHE}/${applet%/*}"
		[[ -e "${ROOTFS_CACHE}/${applet}" || -L "${ROOTFS_CACHE}/${applet}" ]] ||
			ln -s /bin/busybox "${ROOTFS_CACHE}/${applet}"
	done < <("${BUSYBOX}" --list-full)
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"${ROOTFS_CACHE}/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"${ROOTFS_CACHE}/etc/group"
	printf '%s\n' "${rootfs_stamp}" >"${ROOTFS_CACHE}.stamp"
fi

ctx="$(mktemp -d "${TMPDIR:-/tmp}/wro-sample-worker-ctx.XXXXXX")"
trap 'rm -rf "${ctx}" "${ctx}.err"' EXIT
cp -a "${ROOTFS_CACHE}" "${ctx}/rootfs"
cp "${BIN}" "${ctx}/sample-worker"
cp "${ROOT}/sample-worker/Dockerfile" "${ctx}/Dockerfile"

log "docker build -t ${IMAGE}"
id="$(docker_build_context "${IMAGE}" "${ctx}" "$@")"
log "built ${IMAGE} (${id}) in $((SECONDS - start))s"
printf '%s\n' "${IMAGE}"
