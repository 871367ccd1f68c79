#!/usr/bin/env bash
# Install what the collection's lab and tests need on a fresh Debian 12 machine (as root): Debian
# packages, the controller venv, the real livekit-server built from source, MinIO, and the systemd
# test host images. Every step is cached and safe to re-run; independent steps run side by side.
# Usage: scripts/setup.sh [--no-images] [--defer-extra-builds] [NEED...]
#   NEED: lab, or test stages (lint sanity unit provision bad_input tls default monitoring backup cluster bluegreen); default: all
#   stages. Only what the named needs use is built: the lab needs no MinIO and no older release.
#   --defer-extra-builds skips those two (tls, backup and cluster need them): scripts/test.sh builds them
#   while the earlier stages run.
source "$(dirname "$0")/lib.sh"

images=1
extra_builds=1
needs=()
for arg in "$@"; do
  case $arg in
    --no-images) images=0 ;;
    --defer-extra-builds) extra_builds=0 ;;
    lab|lint|sanity|unit|provision|bad_input|tls|default|monitoring|mondev|backup|cluster|bluegreen) needs+=("$arg") ;;
    *) die "unknown argument $arg (--no-images, lab, or a test stage)" ;;
  esac
done
[ ${#needs[@]} -gt 0 ] || needs=(lint sanity unit bad_input tls default monitoring backup cluster bluegreen)
wants() { local n; for n in "${needs[@]}"; do [[ " $* " == *" $n "* ]] && return 0; done; return 1; }

apt_packages=(podman runc netavark iptables aardvark-dns slirp4netns uidmap debootstrap git curl ca-certificates
              openssl openssh-client python3-venv nftables age)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ! command -v go >/dev/null 2>&1; then
  missing+=(golang-go)
fi
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs_dir=$(mktemp -d "${TMPDIR:-/tmp}/lkt-setup.XXXXXX")
trap 'rm -rf "$jobs_dir"' EXIT
pids=() names=()
# Run a step in the background, its output in a log that is shown only if it fails.
start() {
  local name=$1
  shift
  ("$@") >"$jobs_dir/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
}

# Controller venv, shared by every checkout on this machine and keyed by the pinned requirements.
setup_venv() {
  local req_hash venv pip_version
  req_hash=$(sha256sum "$REPO_ROOT/requirements.txt" | cut -c1-12)
  venv=$CACHE_DIR/venv-$req_hash
  if [ ! -x "$venv/bin/ansible-playbook" ] || [ ! -f "$venv/.complete" ]; then
    log "creating the controller venv ($venv)"
    rm -rf "$venv"
    mkdir -p "$CACHE_DIR"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$REPO_ROOT/requirements.txt"
    touch "$venv/.complete"
  fi
  ln -sfn "$venv" "$VENV_DIR"

  # ansible-test gives each sanity test a venv and bootstraps pip into it with a script it downloads
  # from a host we cannot reach; give it a stand-in at the path where it caches that download.
  pip_version=$("$venv/bin/python" -c 'from ansible_test._internal.python_requirements import get_venv_packages as g
class P: version = "3.11"
print(g(P)["pip"])')
  mkdir -p "$HOME/.ansible/test/cache"
  cp "$REPO_ROOT/scripts/ansible-test-get-pip.py" "$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
  { [ -n "${PIP_CERT:-}" ] && echo "--cert $PIP_CERT"; [ -n "${PIP_INDEX_URL:-}" ] && echo "--index-url $PIP_INDEX_URL"; true; } \
    >"$HOME/.ansible/test/cache/pip-settings.txt"

  if wants lab monitoring default && [ ! -f "$PROBE_WHEEL_DIR/.complete" ]; then
    log "downloading the join probe's SDK wheels (livekit $PROBE_SDK_VERSION) for the test hosts"
    rm -rf "$PROBE_WHEEL_DIR"
    "$venv/bin/pip" download -q --only-binary=:all: -d "$PROBE_WHEEL_DIR" "livekit==$PROBE_SDK_VERSION"
    touch "$PROBE_WHEEL_DIR/.complete"
  fi
}
start venv setup_venv

# promtool/amtool for the unit stage's rule tests: Debian 12's own packages, downloaded and unpacked
# into the cache (never installed: that would start Prometheus and Alertmanager on this machine).
# Keyed by the package versions apt offers, so a Debian point release brings the new pair.
prometheus_tools() {
  local pm_version am_version dir work
  pm_version=$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')
  am_version=$(apt-cache policy prometheus-alertmanager | awk '/Candidate:/ {print $2}')
  [ -n "$pm_version" ] && [ "$pm_version" != "(none)" ] && [ -n "$am_version" ] && [ "$am_version" != "(none)" ] \
    || die "apt offers no prometheus or prometheus-alertmanager package (is Debian's main archive in the sources?)"
  dir=$PROMETHEUS_TOOLS_DIR/prometheus_${pm_version//[:+~]/_}-alertmanager_${am_version//[:+~]/_}
  if [ ! -f "$dir/.complete" ]; then
    log "unpacking promtool $pm_version and amtool $am_version (Debian packages, not installed)"
    rm -rf "$dir"
    work=$(mktemp -d "${TMPDIR:-/tmp}/lkt-promtools.XXXXXX")
    # apt-get download fetches into the current directory; stale package lists give a 404: update once.
    (cd "$work" && { apt-get download -qq "prometheus=$pm_version" "prometheus-alertmanager=$am_version" 2>/dev/null \
      || { apt-get update -qq && apt-get download -qq "prometheus=$pm_version" "prometheus-alertmanager=$am_version"; }; })
    mkdir -p "$dir"
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
    rm -rf "$work"
    "$dir/root/usr/bin/promtool" --version >/dev/null && "$dir/root/usr/bin/amtool" --version >/dev/null
    touch "$dir/.complete"
  fi
  mkdir -p "$PROMETHEUS_TOOLS_DIR/bin"
  ln -sfn "$dir/root/usr/bin/promtool" "$PROMTOOL"
  ln -sfn "$dir/root/usr/bin/amtool" "$AMTOOL"
}
if wants unit; then
  start prometheus-tools prometheus_tools
fi

# The real server, built from source and packaged like a release; the older release only for the
# upgrade tests, MinIO only for the backup tests and the drill in tls. Go builds share two cores: one after the other.
go_builds() {
  if wants lab bad_input tls default monitoring backup cluster bluegreen; then
    bash "$REPO_ROOT/scripts/build-livekit-artifact.sh" "$LIVEKIT_TEST_VERSION"
  fi
  if [ $extra_builds = 1 ] && wants cluster bluegreen; then
    bash "$REPO_ROOT/scripts/build-livekit-artifact.sh" "$LIVEKIT_UPGRADE_FROM_VERSION"
  fi
  if [ $extra_builds = 1 ] && wants tls backup; then
    bash "$REPO_ROOT/scripts/build-minio.sh"
  fi
}
start go go_builds

# Test host images (debootstrap is mostly download: it overlaps well with the Go builds).
if [ $images = 1 ]; then
  suites=()
  if wants default; then suites=($TEST_SUITES)
  elif wants lab bad_input tls monitoring backup cluster bluegreen; then suites=(bookworm)
  fi
  for suite in "${suites[@]}"; do
    start "image-$suite" bash "$REPO_ROOT/scripts/build-test-image.sh" "$suite"
  done
fi

failed=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then
    grep -h '==>' "$jobs_dir/${names[$i]}.log" >&2 || true
  else
    failed=1
    log "setup step ${names[$i]} failed:"
    tail -n 30 "$jobs_dir/${names[$i]}.log" >&2
  fi
done
[ $failed = 0 ] || die "setup failed"

# Make this checkout resolvable as the selfhosted.livekit collection (see ansible.cfg).
mkdir -p "$REPO_ROOT/.cache/collections/ansible_collections/selfhosted"
ln -sfn ../../../.. "$REPO_ROOT/.cache/collections/ansible_collections/selfhosted/livekit"

log "setup complete"
