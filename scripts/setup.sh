#!/usr/bin/env bash
# Install everything the collection's lab and tests need on a fresh Debian 12 machine (as root):
# Debian packages, the controller venv, the real livekit-server built from source, and the
# systemd test host images. Every step is cached and safe to re-run.
# Usage: scripts/setup.sh [--no-images]
source "$(dirname "$0")/lib.sh"

apt_packages=(podman runc netavark iptables aardvark-dns slirp4netns uidmap debootstrap git curl ca-certificates
              openssl python3-venv nftables age)
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

# Controller venv, shared by every checkout on this machine and keyed by the pinned requirements.
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

# Make this checkout resolvable as the selfhosted.livekit collection (see ansible.cfg).
mkdir -p "$REPO_ROOT/.cache/collections/ansible_collections/selfhosted"
ln -sfn ../../../.. "$REPO_ROOT/.cache/collections/ansible_collections/selfhosted/livekit"

# The real server, built from source and packaged like a release.
for version in "$LIVEKIT_TEST_VERSION" "$LIVEKIT_UPGRADE_FROM_VERSION"; do
  bash "$REPO_ROOT/scripts/build-livekit-artifact.sh" "$version" >/dev/null
done

# The S3-compatible server of the backup tests.
bash "$REPO_ROOT/scripts/build-minio.sh" >/dev/null

if [ "${1:-}" != "--no-images" ]; then
  for suite in $TEST_SUITES; do
    bash "$REPO_ROOT/scripts/build-test-image.sh" "$suite"
  done
fi
log "setup complete"
