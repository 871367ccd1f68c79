#!/usr/bin/env bash
# antsibull-changelog, from PyPI, in a venv of its own under the cache (kept out of requirements.txt
# so a changelog tool update does not rebuild the controller venv). Runs it on this checkout with
# the given arguments, e.g.:
#   scripts/changelog.sh lint                        # check changelogs/ (the lint stage runs this)
#   scripts/changelog.sh release --version 0.5.0     # fold the fragments into changelog.yaml
#   scripts/changelog.sh generate                    # rewrite CHANGELOG.rst from changelog.yaml
# `release` reads the modules' and roles' version_added through ansible-doc.
source "$(dirname "$0")/lib.sh"

ANTSIBULL_CHANGELOG_VERSION=0.36.0
# antsibull-changelog finds the collection's roles only when it can import ansible itself, so its
# venv gets the ansible-core that requirements.txt pins (modules come from ansible-doc either way).
ansible_core=$(grep -m1 '^ansible-core==' "$REPO_ROOT/requirements.txt")
tool_venv=$CACHE_DIR/antsibull-changelog-$ANTSIBULL_CHANGELOG_VERSION-${ansible_core#ansible-core==}
mkdir -p "$CACHE_DIR"
exec 9>"$tool_venv.lock"
flock 9  # another checkout on this machine may be creating the same venv
if [ ! -x "$tool_venv/bin/antsibull-changelog" ] || [ ! -f "$tool_venv/.complete" ]; then
  log "installing antsibull-changelog $ANTSIBULL_CHANGELOG_VERSION and $ansible_core ($tool_venv)"
  rm -rf "$tool_venv"
  python3 -m venv "$tool_venv"
  "$tool_venv/bin/pip" install -q "antsibull-changelog==$ANTSIBULL_CHANGELOG_VERSION" "$ansible_core" >&2
  touch "$tool_venv/.complete"
fi
exec 9>&-
export PATH=$tool_venv/bin:$PATH
cd "$REPO_ROOT"
exec "$tool_venv/bin/antsibull-changelog" "$@"
