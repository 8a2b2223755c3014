#!/bin/sh
# Entrypoint of the wro-systemd image (installed as /usr/local/sbin/wro-node-entrypoint): makes the
# container's cgroup mounts writable, then replaces itself with systemd, which so runs as PID 1.
#
# Docker mounts the cgroup file systems read-only unless the container is --privileged (which
# this host cannot run: its capability bounding set lacks CAP_SYS_RESOURCE, and a privileged
# container asks for every capability). systemd needs to write there: the name=systemd/unified
# hierarchy to track its units (without it: "Failed to create /init.scope control group:
# Read-only file system", PID 1 exits), and the controllers (memory, pids, cpu, ...) to enforce
# MemoryMax=, TasksMax=, CPUQuota=... With a private cgroup namespace (docker run
# --cgroupns=private) each of these mounts is rooted at the container's own cgroup
# (/docker/<id>), so making it writable exposes nothing but the container's subtree. The
# remount needs CAP_SYS_ADMIN (docker run --cap-add SYS_ADMIN), which systemd needs anyway.
# kind's node entrypoint does the same kind of fix-up before it execs /sbin/init.
set -eu

say() { echo "wro-node-entrypoint: $*" >&2; }

remount_rw() {
	# Only mounts that are read-only now (field 4 of /proc/self/mounts is the mount's options).
	if awk -v m="$1" '$2 == m { split($4, o, ","); if (o[1] == "ro") found = 1 } END { exit !found }' /proc/self/mounts; then
		if mount -o remount,bind,rw "$1" 2>/dev/null || mount -o remount,rw "$1" 2>/dev/null; then
			say "remounted $1 read-write"
		else
			say "WARNING: cannot remount $1 read-write (no CAP_SYS_ADMIN?): systemd may fail or not enforce limits"
		fi
	fi
}

if [ -d /sys/fs/cgroup ]; then
	case "$(stat -fc %T /sys/fs/cgroup 2>/dev/null || true)" in
	cgroup2fs)
		# Unified hierarchy (cgroup v2 host).
		remount_rw /sys/fs/cgroup
		;;
	tmpfs)
		# Legacy or hybrid (cgroup v1 host): one mount per hierarchy below the tmpfs.
		for d in /sys/fs/cgroup/*; do
			if [ ! -d "${d}" ] || [ -L "${d}" ]; then continue; fi
			case "$(stat -fc %T "${d}" 2>/dev/null || true)" in
			cgroupfs | cgroup2fs) remount_rw "${d}" ;;
			esac
		done
		;;
	esac
fi

exec /lib/systemd/systemd "$@"
