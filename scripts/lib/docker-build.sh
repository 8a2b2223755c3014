# shellcheck shell=bash
# Sourced by the build-*-image.sh scripts: images are built from a prepared context (a
# `FROM scratch` Dockerfile and the files it copies), with no network and nothing pulled.
# The caller defines die().

# Fail unless a Docker engine answers.
require_docker() {
	docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
		die "no Docker engine answers (start one, e.g. scripts/stack.sh up)"
}

# docker_build_context IMAGE CONTEXT [docker build args...]: build IMAGE from CONTEXT and print
# its ID. The build's stderr is shown only on failure (the classic builder prints a
# deprecation notice on every run).
docker_build_context() {
	local image="$1" ctx="$2" id
	shift 2
	local build_env=()
	if ! docker buildx version >/dev/null 2>&1; then
		# No buildx plugin: use the classic builder explicitly (no RUN steps in these images).
		build_env=(DOCKER_BUILDKIT=0)
	fi
	if ! id="$(env "${build_env[@]}" docker build --quiet --network none -t "${image}" "$@" "${ctx}" 2>"${ctx}.err")"; then
		cat "${ctx}.err" >&2
		rm -f "${ctx}.err"
		die "docker build of ${image} failed"
	fi
	rm -f "${ctx}.err"
	printf '%s\n' "${id}"
}
