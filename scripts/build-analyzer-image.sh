#!/usr/bin/env bash
# Builds the core analyzer image (default tag wro-core-analyzer:dev): Debian's gdb-minimal with
# the ELF interpreter and exactly the shared libraries it needs, FROM scratch. The operator runs
# it with its own command (gdb -nx -batch ... /analyze/bin/<executable> /analyze/core, both bind-mounted
# read-only), a read-only root filesystem and no network; see analyzer/Dockerfile.
#
#   scripts/build-analyzer-image.sh [extra docker build args...]
#
# Environment:
#   WRO_CORE_ANALYZER_IMAGE  image reference to build (default wro-core-analyzer:dev)
#   WRO_CACHE_DIR            cache root (default $HOME/.cache/worker-recovery-operator); the
#                            .debs and the staged root filesystem are kept in its core-analyzer/
#
# How: the .debs of gdb-minimal's dependency closure (Depends and Pre-Depends, recursively) are
# fetched with `apt-get download` (nothing is installed on the host) and unpacked with
# `dpkg-deb -x`; the root filesystem then gets only /usr/bin/gdb, /etc/gdb/, the ELF interpreter
# and the libraries found by walking DT_NEEDED from gdb (plus libthread_db.so.1, which gdb
# dlopen()s), so no docs, man pages, locales or maintainer tools. It is keyed by the recipe
# version and the package files (name, version, SHA-256): a warm rerun downloads nothing and
# only runs `docker build` (a no-op of a few seconds with the layer cache). The built image is
# smoke-tested with `gdb --version` (read-only, no network). Logs go to stderr; the image
# reference is printed on stdout at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${WRO_CORE_ANALYZER_IMAGE:-wro-core-analyzer:dev}"
CACHE_DIR="${WRO_CACHE_DIR:-${HOME}/.cache/worker-recovery-operator}/core-analyzer"
DEBS_DIR="${CACHE_DIR}/debs"
ROOTFS_CACHE="${CACHE_DIR}/rootfs"
# Bump when the staging below changes (the cached rootfs is then staged anew).
RECIPE=1
PACKAGE="gdb-minimal"
# Libraries gdb loads with dlopen() (not in DT_NEEDED), staged with what they link.
DLOPENED=(libthread_db.so.1)
# Where the sonames are looked up in the unpacked packages, in the dynamic loader's order
# (Debian's ld.so searches its multiarch directories without an ld.so.cache).
LIB_DIRS=(lib/x86_64-linux-gnu usr/lib/x86_64-linux-gnu lib64 usr/lib64 lib usr/lib)

log() { printf '[build-analyzer-image] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# shellcheck source=lib/docker-build.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/docker-build.sh"

for cmd in apt-get apt-cache dpkg-deb readelf sha256sum docker; do
	command -v "${cmd}" >/dev/null 2>&1 || die "${cmd} is not on PATH (readelf: package binutils)"
done

apt_opts=(-o DPkg::Lock::Timeout=600)
if [[ "$(id -u)" == 0 ]]; then
	# As root apt-get drops to the _apt user to download, which cannot write into root's cache.
	apt_opts+=(-o APT::Sandbox::User=root)
fi

candidate() { apt-cache policy "${PACKAGE}" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }'; }
if [[ -z "$(candidate)" || "$(candidate)" == "(none)" ]]; then
	[[ "$(id -u)" == 0 ]] || die "apt knows no ${PACKAGE}: run apt-get update (as root)"
	log "apt knows no ${PACKAGE}: apt-get update"
	DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update >&2 || die "apt-get update failed"
	[[ -n "$(candidate)" && "$(candidate)" != "(none)" ]] || die "apt has no candidate for ${PACKAGE}"
fi

start=${SECONDS}

# The dependency closure: real packages only (no <virtual> names), native architecture. It is a
# superset of what gdb needs at run time (it also holds dpkg, debconf, tar...): only what the
# DT_NEEDED walk reaches ends up in the image.
mapfile -t packages < <(
	apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
		--no-replaces --no-enhances "${PACKAGE}" | grep -E '^[a-z0-9][a-z0-9.+-]*$' | sort -u
)
[[ " ${packages[*]} " == *" ${PACKAGE} "* ]] || die "apt-cache depends did not list ${PACKAGE}"

# "<file name> <sha256>" of each package's candidate .deb, from apt's lists (no download).
uris="$(apt-get "${apt_opts[@]}" download --print-uris "${packages[@]}")" ||
	die "apt-get download --print-uris failed"
debs="$(awk '{ sub(/^SHA256:/, "", $4); print $2, $4 }' <<<"${uris}" | sort)"
[[ "$(wc -l <<<"${debs}")" == "${#packages[@]}" ]] ||
	die "expected ${#packages[@]} .debs from apt-get download --print-uris, got: ${debs}"
stamp="$(printf 'recipe=%s package=%s dlopened=%s\n%s\n' "${RECIPE}" "${PACKAGE}" "${DLOPENED[*]}" "${debs}")"
gdb_deb="$(awk -v p="${PACKAGE}_" 'index($1, p) == 1 { print $1 }' <<<"${debs}")"

ctx=""
work=""
cleanup() { rm -rf "${work}" ${ctx:+"${ctx}" "${ctx}.err"}; }
trap cleanup EXIT

if [[ "$(cat "${ROOTFS_CACHE}.stamp" 2>/dev/null || true)" != "${stamp}" ]]; then
	mkdir -p "${DEBS_DIR}"
	# Download what is not cached yet (or whose hash does not match), then drop stale versions.
	missing=()
	while read -r file sha; do
		if [[ ! -f "${DEBS_DIR}/${file}" ]] ||
			[[ "$(sha256sum "${DEBS_DIR}/${file}" | cut -d' ' -f1)" != "${sha}" ]]; then
			rm -f "${DEBS_DIR}/${file}"
			missing+=("${file%%_*}")
		fi
	done <<<"${debs}"
	if ((${#missing[@]})); then
		log "apt-get download: ${#missing[@]} of ${#packages[@]} packages of the ${PACKAGE} closure"
		(cd "${DEBS_DIR}" && apt-get "${apt_opts[@]}" -q download "${missing[@]}") >&2 ||
			die "apt-get download failed"
	fi
	while read -r file sha; do
		[[ -f "${DEBS_DIR}/${file}" ]] || die "apt-get download did not produce ${file}"
		[[ "$(sha256sum "${DEBS_DIR}/${file}" | cut -d' ' -f1)" == "${sha}" ]] ||
			die "${file}: SHA-256 does not match apt's lists"
	done <<<"${debs}"
	for f in "${DEBS_DIR}"/*.deb; do
		grep -qF "$(basename "${f}") " <<<"${debs}" || rm -f "${f}"
	done

	log "staging rootfs (${gdb_deb%.deb}, recipe ${RECIPE})"
	work="$(mktemp -d "${CACHE_DIR}/stage.XXXXXX")"
	all="${work}/all"
	rootfs="${work}/rootfs"
	mkdir -p "${all}" "${rootfs}"
	while read -r file _; do
		dpkg-deb -x "${DEBS_DIR}/${file}" "${all}" || die "dpkg-deb -x ${file} failed"
	done <<<"${debs}"

	# Copies the path `rel` (relative to the unpacked tree) into the rootfs, following a chain of
	# symlinks (each link and the final file are copied as they are); prints the final file.
	stage_path() {
		local rel="$1" target i
		for ((i = 0; i < 40; i++)); do
			[[ -e "${all}/${rel}" || -L "${all}/${rel}" ]] || die "${rel} is not in the unpacked packages"
			if [[ ! -e "${rootfs}/${rel}" && ! -L "${rootfs}/${rel}" ]]; then
				mkdir -p "$(dirname "${rootfs}/${rel}")"
				cp -a "${all}/${rel}" "${rootfs}/${rel}"
			fi
			if [[ ! -L "${all}/${rel}" ]]; then
				printf '%s\n' "${rel}"
				return 0
			fi
			target="$(readlink "${all}/${rel}")"
			[[ "${target}" == /* ]] || target="$(dirname "/${rel}")/${target}"
			# Lexical normalisation only: the host's own symlinks (e.g. a merged /usr) must not
			# be followed.
			rel="$(realpath -m -s "${target}")"
			rel="${rel#/}"
		done
		die "symlink loop at ${rel}"
	}

	find_soname() {
		local d
		for d in "${LIB_DIRS[@]}"; do
			if [[ -e "${all}/${d}/$1" || -L "${all}/${d}/$1" ]]; then
				printf '%s\n' "${d}/$1"
				return 0
			fi
		done
		return 1
	}

	gdb_bin="$(stage_path usr/bin/gdb)"
	[[ -x "${rootfs}/${gdb_bin}" ]] || die "${PACKAGE} has no executable usr/bin/gdb"
	if [[ "${gdb_bin}" != usr/bin/gdb ]]; then
		ln -sfn "/${gdb_bin}" "${rootfs}/usr/bin/gdb"
	fi
	if [[ -d "${all}/etc/gdb" ]]; then # the system gdbinit (a comment; -nx skips it anyway)
		mkdir -p "${rootfs}/etc"
		cp -a "${all}/etc/gdb" "${rootfs}/etc/"
	fi

	interp="$(readelf -l "${all}/${gdb_bin}" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')"
	[[ -n "${interp}" ]] || die "no ELF interpreter in ${gdb_bin}"

	# Breadth-first over DT_NEEDED: every soname must resolve inside the unpacked packages.
	declare -A seen=()
	queue=("${gdb_bin}" "$(stage_path "${interp#/}")")
	for so in "${DLOPENED[@]}"; do
		rel="$(find_soname "${so}")" || die "${so} (dlopen()ed by gdb) is not in the closure"
		queue+=("$(stage_path "${rel}")")
	done
	while ((${#queue[@]})); do
		elf="${queue[0]}"
		queue=("${queue[@]:1}")
		[[ -z "${seen[${elf}]:-}" ]] || continue
		seen["${elf}"]=1
		while read -r so; do
			rel="$(find_soname "${so}")" || die "${elf} needs ${so}, which no package of the closure ships"
			queue+=("$(stage_path "${rel}")")
		done < <(readelf -d "${all}/${elf}" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]$/\1/p')
	done
	log "staged ${#seen[@]} ELF files (gdb, ${interp}, $((${#seen[@]} - 2)) libraries)"

	mkdir -p "${rootfs}/etc" "${rootfs}/tmp" "${rootfs}/analyze"
	chmod 1777 "${rootfs}/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"${rootfs}/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"${rootfs}/etc/group"

	rm -rf "${ROOTFS_CACHE}" "${ROOTFS_CACHE}.stamp"
	mv "${rootfs}" "${ROOTFS_CACHE}"
	printf '%s\n' "${stamp}" >"${ROOTFS_CACHE}.stamp"
	rm -rf "${work}"
	work=""
	log "rootfs ok: ${ROOTFS_CACHE} ($(du -sk "${ROOTFS_CACHE}" | cut -f1) KiB)"
else
	log "rootfs cached: ${ROOTFS_CACHE} (${gdb_deb%.deb}, recipe ${RECIPE})"
fi

require_docker

ctx="$(mktemp -d "${TMPDIR:-/tmp}/wro-core-analyzer-ctx.XXXXXX")"
cp -a "${ROOTFS_CACHE}" "${ctx}/rootfs"
cp "${ROOT}/analyzer/Dockerfile" "${ctx}/Dockerfile"

log "docker build -t ${IMAGE}"
id="$(docker_build_context "${IMAGE}" "${ctx}" "$@")"

# Smoke test as the operator runs it: every library resolves, without network or a writable root.
if ! version="$(docker run --rm --network none --read-only --security-opt no-new-privileges \
	"${IMAGE}" gdb --version 2>&1)"; then
	printf '%s\n' "${version}" >&2
	die "gdb --version fails in ${IMAGE}"
fi
log "built ${IMAGE} (${id}, $(docker image inspect -f '{{.Size}}' "${IMAGE}") bytes): $(head -n1 <<<"${version}") in $((SECONDS - start))s"
printf '%s\n' "${IMAGE}"
