#!/usr/bin/env bash
# Builds the systemd "node" image (default tag wro-systemd:dev): a Debian bookworm root filesystem
# that boots systemd as PID 1 (the way kind runs its nodes), with the statically linked sample
# worker at /usr/local/bin/sample-worker. scripts/stack.sh systemd runs it (container wro-systemd)
# and exposes its system bus on the host, for the operator's systemd backend.
#
#   scripts/build-systemd-image.sh [extra docker build args...]
#
# Environment:
#   WRO_SYSTEMD_IMAGE      image reference to build (default wro-systemd:dev)
#   WRO_CACHE_DIR          cache root (default $HOME/.cache/worker-recovery-operator); the root
#                          filesystem tarball is kept in its systemd-image/
#   WRO_SYSTEMD_APT_SOURCES  apt sources file(s) for mmdebstrap, space separated (default: the
#                          host's enabled sources that name bookworm; the host must be bookworm)
#   WRO_MMDEBSTRAP_MODE    mmdebstrap --mode (default auto: root as root, unshare otherwise)
#
# How: mmdebstrap --variant=essential --include=systemd,systemd-sysv,dbus,usr-is-merged (no
# recommends; dpkg leaves out docs, man pages and locales) makes a tarball of the root
# filesystem (no /dev entries), customized by hack/systemd/customize.sh (units that make no
# sense in a container masked as in kind's node image, persistent bounded journal, no apt). It
# is cached, keyed by the recipe version, the package set (the includes and their candidate
# versions in the host's apt lists) and customize.sh, so a warm rerun skips mmdebstrap (~25 s
# cold) and only runs `docker build` of hack/systemd/Dockerfile (FROM scratch, no network; ~3 s
# with the layer cache), which adds hack/systemd/entrypoint.sh and the sample worker (built as
# scripts/build-worker-image.sh does). The image (~81 MB) is smoke-tested with
# `systemctl --version`. Logs go to stderr (the mmdebstrap log keeps no archive addresses); the
# image reference is printed on stdout at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${WRO_SYSTEMD_IMAGE:-wro-systemd:dev}"
CACHE_DIR="${WRO_CACHE_DIR:-${HOME}/.cache/worker-recovery-operator}/systemd-image"
ROOTFS_TAR="${CACHE_DIR}/rootfs.tar"
MANIFEST="${CACHE_DIR}/rootfs.packages"
CUSTOMIZE="${ROOT}/hack/systemd/customize.sh"
DOCKERFILE="${ROOT}/hack/systemd/Dockerfile"
ENTRYPOINT="${ROOT}/hack/systemd/entrypoint.sh"
# Bump when the mmdebstrap invocation below changes (the cached tarball is then made anew).
RECIPE=2
SUITE=bookworm
VARIANT=essential
# usr-is-merged satisfies init-system-helpers' "usrmerge | usr-is-merged" (mmdebstrap's merged-usr
# hooks merge /usr); usrmerge, which apt would take first, and with it perl (50 MB), is
# pinned away during the build (see NO_USRMERGE).
INCLUDES=(systemd systemd-sysv dbus usr-is-merged)
NO_USRMERGE='Package: usrmerge\nPin: version *\nPin-Priority: -1\n'
# dpkg never unpacks these (copyright files are kept).
DPKG_EXCLUDES=('/usr/share/man/*' '/usr/share/info/*' '/usr/share/locale/*' '/usr/share/doc/*'
	'/usr/share/lintian/*' '/usr/share/bash-completion/*' '/usr/share/zsh/*')
DPKG_INCLUDES=('/usr/share/doc/*/copyright' '/usr/share/locale/locale.alias')

TARGET="x86_64-unknown-linux-gnu"
WORKER_MANIFEST="${ROOT}/sample-worker/Cargo.toml"
WORKER_TARGET_DIR="${ROOT}/sample-worker/target"
WORKER_BIN="${WORKER_TARGET_DIR}/${TARGET}/release/sample-worker"

log() { printf '[build-systemd-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/docker-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/docker-build.sh"

for cmd in apt-cache apt-config dpkg-query sha256sum cargo ldd docker; do
	command -v "${cmd}" >/dev/null 2>&1 || die "${cmd} is not on PATH"
done

apt_opts=(-o DPkg::Lock::Timeout=600)
if ! command -v mmdebstrap >/dev/null 2>&1; then
	if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
		die "mmdebstrap is not installed: apt-get install mmdebstrap (as root)"
	fi
	log "installing Debian's mmdebstrap with apt"
	{
		DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update &&
			DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends mmdebstrap
	} >&2 || die "apt-get install mmdebstrap failed"
fi

# The apt sources mmdebstrap uses: the host's own (a bookworm host), never a name written here.
sources=()
if [[ -n "${WRO_SYSTEMD_APT_SOURCES:-}" ]]; then
	read -r -a sources <<<"${WRO_SYSTEMD_APT_SOURCES}"
else
	# shellcheck disable=SC1091 # the host's os-release
	codename="$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")"
	[[ "${codename}" == "${SUITE}" ]] ||
		die "the host is '${codename:-unknown}', not ${SUITE}: point WRO_SYSTEMD_APT_SOURCES at a ${SUITE} apt sources file"
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
		[[ -f "${f}" ]] && grep -qE "^[^#]*\\b${SUITE}\\b" "${f}" && sources+=("${f}")
	done
fi
((${#sources[@]})) || die "no apt sources for ${SUITE} found (set WRO_SYSTEMD_APT_SOURCES)"
for f in "${sources[@]}"; do
	[[ -f "${f}" ]] || die "apt sources file ${f} does not exist"
	case "${f}" in *.list | *.sources) ;; *) die "${f}: mmdebstrap takes a *.list or *.sources file" ;; esac
done

# The candidate versions of the included packages in the host's apt lists (the cache key).
candidate() { apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }'; }
versions() {
	local p v
	for p in "${INCLUDES[@]}"; do
		v="$(candidate "${p}")"
		[[ -n "${v}" && "${v}" != "(none)" ]] || return 1
		printf '%s=%s ' "${p}" "${v}"
	done
}
if ! package_set="$(versions)"; then
	[[ "$(id -u)" == 0 ]] || die "apt knows no candidate for one of ${INCLUDES[*]}: run apt-get update (as root)"
	log "apt knows no candidate for one of ${INCLUDES[*]}: apt-get update"
	DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update >&2 || die "apt-get update failed"
	package_set="$(versions)" || die "apt has no candidate for one of ${INCLUDES[*]}"
fi
stamp="$(printf 'recipe=%s suite=%s variant=%s packages=%s customize=%s\n' "${RECIPE}" "${SUITE}" \
	"${VARIANT}" "${package_set% }" "$(sha256sum <"${CUSTOMIZE}" | cut -c1-16)")"

start=${SECONDS}
work=""
ctx=""
cleanup() { rm -rf ${work:+"${work}"} ${ctx:+"${ctx}" "${ctx}.err"}; }
trap cleanup EXIT

if [[ "$(cat "${ROOTFS_TAR}.stamp" 2>/dev/null || true)" != "${stamp}" || ! -s "${ROOTFS_TAR}" ]]; then
	mkdir -p "${CACHE_DIR}"
	work="$(mktemp -d "${CACHE_DIR}/stage.XXXXXX")"
	# The host's apt settings that matter for fetching: an archive snapshot's Release files may
	# be past their Valid-Until, and a proxy may be configured (passed on, never written here).
	aptopts=('Apt::Install-Recommends "false"' 'Apt::Install-Suggests "false"')
	eval "$(apt-config shell CHECK_VALID Acquire::Check-Valid-Until CHECK_DATE Acquire::Check-Date \
		HTTP_PROXY_CONF Acquire::http::Proxy HTTPS_PROXY_CONF Acquire::https::Proxy)"
	[[ "${CHECK_VALID:-}" == false ]] && aptopts+=('Acquire::Check-Valid-Until "false"')
	[[ "${CHECK_DATE:-}" == false ]] && aptopts+=('Acquire::Check-Date "false"')
	[[ -n "${HTTP_PROXY_CONF:-}" ]] && aptopts+=("Acquire::http::Proxy \"${HTTP_PROXY_CONF}\"")
	[[ -n "${HTTPS_PROXY_CONF:-}" ]] && aptopts+=("Acquire::https::Proxy \"${HTTPS_PROXY_CONF}\"")
	args=(--variant="${VARIANT}" --mode="${WRO_MMDEBSTRAP_MODE:-auto}" --format=tar
		--include="$(
			IFS=,
			printf '%s' "${INCLUDES[*]}"
		)" --skip=output/dev --skip=cleanup/apt)
	for o in "${aptopts[@]}"; do args+=(--aptopt="${o}"); done
	for p in "${DPKG_EXCLUDES[@]}"; do args+=(--dpkgopt="path-exclude=${p}"); done
	for p in "${DPKG_INCLUDES[@]}"; do args+=(--dpkgopt="path-include=${p}"); done
	# Merged /usr the way debootstrap does it (directory symlinks, a dummy usr-is-merged), made
	# explicit: mmdebstrap runs its default maybe-merged-usr hooks only when no other hook is given.
	args+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
	# Hooks are run with sh -c, $1 being the root filesystem directory: usrmerge pinned away
	# before anything is installed; then customize.sh and the package list.
	args+=(--setup-hook="mkdir -p \"\$1/etc/apt/preferences.d\" && printf '${NO_USRMERGE}' >\"\$1/etc/apt/preferences.d/99wro-no-usrmerge\""
		--customize-hook="sh $(printf '%q' "${CUSTOMIZE}") \"\$1\""
		--customize-hook="dpkg-query --admindir=\"\$1/var/lib/dpkg\" -W -f='\${Package} \${Version}\\n' >$(printf '%q' "${work}/packages")")
	log "mmdebstrap ${SUITE} (${VARIANT} + ${INCLUDES[*]}, recipe ${RECIPE}; log: ${work}/mmdebstrap.log)"
	# The log keeps no archive addresses (apt's "Get:" lines name them).
	if ! mmdebstrap "${args[@]}" "${SUITE}" "${work}/rootfs.tar" "${sources[@]}" </dev/null 2>&1 |
		sed -E 's#[a-z][a-z0-9+.-]*://[^ ]*#<uri>#g' >"${work}/mmdebstrap.log"; then
		tail -n 40 "${work}/mmdebstrap.log" >&2 || true
		cp "${work}/mmdebstrap.log" "${CACHE_DIR}/mmdebstrap-failed.log" 2>/dev/null || true
		die "mmdebstrap failed (log: ${CACHE_DIR}/mmdebstrap-failed.log)"
	fi
	[[ -s "${work}/rootfs.tar" && -s "${work}/packages" ]] || die "mmdebstrap produced no tarball or no package list"
	rm -f "${ROOTFS_TAR}.stamp" "${CACHE_DIR}/mmdebstrap-failed.log"
	mv -f "${work}/rootfs.tar" "${ROOTFS_TAR}"
	mv -f "${work}/packages" "${MANIFEST}"
	printf '%s\n' "${stamp}" >"${ROOTFS_TAR}.stamp"
	log "rootfs ok: ${ROOTFS_TAR} ($(($(stat -c %s "${ROOTFS_TAR}") / 1024)) KiB, $(wc -l <"${MANIFEST}") packages) in $((SECONDS - start))s"
else
	log "rootfs cached: ${ROOTFS_TAR} (${stamp})"
fi

# The sample worker, built as scripts/build-worker-image.sh does (a no-op when up to date).
log "cargo build --release --target ${TARGET} (sample worker, static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
	--target "${TARGET}" --manifest-path "${WORKER_MANIFEST}" --target-dir "${WORKER_TARGET_DIR}" >&2 ||
	die "cargo build of the sample worker failed"
case "$(ldd "${WORKER_BIN}" 2>&1 || true)" in
*"not a dynamic executable"* | *"statically linked"*) ;;
*) die "${WORKER_BIN} is not statically linked" ;;
esac

require_docker

# The context next to the cache (same file system: the tarball is hard-linked, not copied).
ctx="$(mktemp -d "${CACHE_DIR}/ctx.XXXXXX")"
ln "${ROOTFS_TAR}" "${ctx}/rootfs.tar" 2>/dev/null || cp "${ROOTFS_TAR}" "${ctx}/rootfs.tar"
cp "${WORKER_BIN}" "${ctx}/sample-worker"
cp "${DOCKERFILE}" "${ctx}/Dockerfile"
cp "${ENTRYPOINT}" "${ctx}/entrypoint.sh"

log "docker build -t ${IMAGE}"
id="$(docker_build_context "${IMAGE}" "${ctx}" --label "wro.systemd.rootfs=${stamp}" "$@")"

# (systemctl: systemd itself, as PID 1 of a container, prints nothing for --version.)
if ! version="$(docker run --rm --network none --entrypoint /usr/bin/systemctl "${IMAGE}" --version 2>&1)"; then
	printf '%s\n' "${version}" >&2
	die "systemctl --version fails in ${IMAGE}"
fi
log "built ${IMAGE} (${id}, $(docker image inspect -f '{{.Size}}' "${IMAGE}") bytes): $(head -n1 <<<"${version}") in $((SECONDS - start))s"
printf '%s\n' "${IMAGE}"
