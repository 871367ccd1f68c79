#!/usr/bin/env bash
# Build a systemd-as-PID-1 Debian test host image from debootstrap and `podman import` it as
# localhost/selfhosted-livekit-test:<suite>. Cached: rebuilt only when this script changes.
# Usage: scripts/build-test-image.sh bookworm|trixie
source "$(dirname "$0")/lib.sh"
suite=${1:?usage: $0 SUITE}
image=$TEST_IMAGE_REPO:$suite
recipe=$(sha256sum "$0" | cut -c1-16)

if podman image exists "$image" \
  && [ "$(podman image inspect --format '{{ index .Labels "recipe" }}' "$image" 2>/dev/null)" = "$recipe" ]; then
  log "test image $image is up to date"
  exit 0
fi

root=$(mktemp -d "${TMPDIR:-/tmp}/rootfs-$suite.XXXXXX")
trap 'rm -rf "$root"' EXIT
log "debootstrap $suite into $root"
# A minimal host as a provider would hand it over: systemd, python3 for Ansible, CA certificates,
# and sshd, so that tests and benchmarks reach it the way a user reaches a server (the key is made
# per run and mounted at /root/.ssh/authorized_keys; root logs in with a key only).
debootstrap --variant=minbase \
  --include=systemd,systemd-sysv,dbus,python3,python3-apt,ca-certificates,iproute2,procps,sudo,gnupg,openssh-server \
  "$suite" "$root" http://deb.debian.org/debian >"$root.log" 2>&1 \
  || { tail -20 "$root.log"; die "debootstrap $suite failed (log: $root.log)"; }
rm -f "$root.log"

# Container-friendly systemd: no getty on consoles, no units that need real hardware.
for unit in getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service \
            systemd-networkd-wait-online.service systemd-timesyncd.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
echo "$suite-testhost" >"$root/etc/hostname"
: >"$root/etc/machine-id"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

log "importing $image"
tar -C "$root" -c . | podman import \
  --change 'CMD ["/sbin/init"]' \
  --change 'ENV container=podman' \
  --change 'STOPSIGNAL SIGRTMIN+3' \
  --change "LABEL recipe=$recipe" \
  --change "LABEL suite=$suite" \
  - "$image" >/dev/null
log "built $image"
