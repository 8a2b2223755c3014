#!/bin/sh
# mmdebstrap --customize-hook of scripts/build-systemd-image.sh: turns a Debian root filesystem
# (directory $1) into a container "node" that boots systemd as PID 1, the way kind's node image
# does. Runs on the host, after every package is installed; the result is cached, keyed by this
# file's content among others (so any change here makes a new root filesystem).
set -eu

root="$1"
[ -x "${root}/lib/systemd/systemd" ] || {
	echo "customize.sh: ${root} has no /lib/systemd/systemd" >&2
	exit 1
}

# ---- units that make no sense in a container: masked (a /dev/null symlink in /etc beats /lib)
#   consoles and gettys (no tty to log in on), udev and hwdb (no devices to manage), time sync,
#   kernel modules, sysctl and binfmt (would change the HOST kernel's settings under
#   --privileged), kernel pseudo file systems and swap, fstab remounting and first-boot tools,
#   pstore, random seed, audit, logind (no seats or sessions), TRIM of the host's disks.
mkdir -p "${root}/etc/systemd/system"
for unit in \
	getty.target getty-static.service getty@.service serial-getty@.service console-getty.service \
	container-getty@.service autovt@.service \
	systemd-ask-password-console.path systemd-ask-password-wall.path \
	systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
	systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service \
	systemd-timesyncd.service systemd-time-wait-sync.service \
	systemd-modules-load.service kmod-static-nodes.service \
	systemd-sysctl.service systemd-binfmt.service \
	proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount \
	sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
	sys-fs-fuse-connections.mount dev-hugepages.mount swap.target \
	systemd-remount-fs.service systemd-firstboot.service systemd-machine-id-commit.service \
	systemd-pstore.service systemd-random-seed.service \
	systemd-journald-audit.socket systemd-initctl.socket systemd-initctl.service \
	systemd-logind.service systemd-user-sessions.service \
	systemd-boot-update.service systemd-boot-system-token.service \
	fstrim.timer fstrim.service e2scrub_all.timer e2scrub_reap.service \
	cryptsetup.target veritysetup.target integritysetup.target \
	systemd-networkd-wait-online.service; do
	ln -sfn /dev/null "${root}/etc/systemd/system/${unit}"
done
# What the packages enabled (getty@tty1, remote-fs.target, timers, ...) is not wanted either.
rm -f "${root}"/etc/systemd/system/*.wants/*
ln -sfn /lib/systemd/system/multi-user.target "${root}/etc/systemd/system/default.target"

# ---- journald: a persistent journal (/var/log/journal: bind-mounted from the host by
# scripts/stack.sh, so the host reads it with journalctl -D), bounded, without the host
# kernel's ring buffer.
mkdir -p "${root}/etc/systemd/journald.conf.d"
cat >"${root}/etc/systemd/journald.conf.d/10-wro-container.conf" <<'EOF'
# Written by hack/systemd/customize.sh (wro-systemd image).
[Journal]
Storage=persistent
ReadKMsg=no
SystemMaxUse=64M
RuntimeMaxUse=16M
EOF

# ---- the manager: quick stops (tests restart units a lot), accounting for every unit.
mkdir -p "${root}/etc/systemd/system.conf.d"
cat >"${root}/etc/systemd/system.conf.d/10-wro-container.conf" <<'EOF'
# Written by hack/systemd/customize.sh (wro-systemd image).
[Manager]
DefaultTimeoutStopSec=15s
DefaultMemoryAccounting=yes
DefaultTasksAccounting=yes
EOF

# ---- the unit directory the host fills (scripts/stack.sh bind-mounts .stack/systemd/units here;
# it is in systemd's default unit search path, below /etc and /run).
mkdir -p "${root}/usr/local/lib/systemd/system"

# ---- identity: an empty machine-id (systemd makes a transient one at boot unless the container
# manager mounts one, as scripts/stack.sh does), no host name of the build host.
: >"${root}/etc/machine-id"
rm -f "${root}/var/lib/dbus/machine-id"
ln -sfn /etc/machine-id "${root}/var/lib/dbus/machine-id"
printf 'wro-systemd\n' >"${root}/etc/hostname"

# ---- size and leftovers: apt is not installed (variant essential), so the sources and settings
# mmdebstrap gave it, its lists and caches go (the build skips mmdebstrap's cleanup/apt, which
# would run apt once more); so do logs of the bootstrap and docs/man/locales that dpkg's
# path-exclude let through. mmdebstrap removes its own /etc/apt/apt.conf.d/00mmdebstrap after this.
find "${root}/etc/apt" -mindepth 1 ! -name 00mmdebstrap ! -type d -delete 2>/dev/null || true
rm -rf "${root}/var/lib/apt" "${root}/var/cache/apt" \
	"${root}/usr/share/man" "${root}/usr/share/info" "${root}/usr/share/lintian" \
	"${root}/usr/share/linda" "${root}/usr/share/bash-completion" "${root}/usr/share/zsh" \
	"${root}/var/cache/debconf"/*-old "${root}/var/lib/dpkg"/*-old
find "${root}/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
find "${root}/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
rm -rf "${root}/var/log"/* "${root}/tmp"/* "${root}/var/tmp"/*
mkdir -p "${root}/var/log/journal"
