# shellcheck shell=bash
# Shared settings for the repo's scripts. Source it; it defines paths and versions only.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Slow things (Go builds, release artifacts, the controller venv) are cached outside the checkout so
# a fresh clone on the same machine reuses them; podman keeps the test images in its own store.
CACHE_DIR=${SELFHOSTED_LIVEKIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/selfhosted.livekit}
VENV_DIR=$REPO_ROOT/.venv
ARTIFACT_DIR=$CACHE_DIR/artifacts
# The livekit-server release the tests install (built locally from the Go module proxy).
LIVEKIT_TEST_VERSION=${LIVEKIT_TEST_VERSION:-1.13.5}
# The release upgrade tests start from (an older patch that still builds from the module proxy).
LIVEKIT_UPGRADE_FROM_VERSION=${LIVEKIT_UPGRADE_FROM_VERSION:-1.13.4}
# The S3-compatible server backup tests upload to: MinIO, built with `go install`. MinIO tags its
# releases RELEASE.<date>, which the module proxy does not serve, so this pins the pseudo-version
# the proxy resolves for its newest commit (2026-02-12).
MINIO_MODULE_VERSION=${MINIO_MODULE_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}
MINIO_BIN=$CACHE_DIR/bin/minio-$MINIO_MODULE_VERSION
# promtool and amtool from Debian 12's prometheus and prometheus-alertmanager packages (the versions a
# monitoring host runs), unpacked on the controller without installing the packages (that would start
# their services). scripts/setup.sh fills it; $PROMETHEUS_TOOLS_DIR/bin holds the current pair.
PROMETHEUS_TOOLS_DIR=$CACHE_DIR/prometheus-tools
PROMTOOL=$PROMETHEUS_TOOLS_DIR/bin/promtool
AMTOOL=$PROMETHEUS_TOOLS_DIR/bin/amtool
# The join probe's SDK (PyPI package livekit, the version the livekit_join_probe role installs) as
# wheels for the test hosts' Python (Debian 12: 3.11, like the controller), which reach no package
# index: the role installs them with livekit_join_probe_sdk_source: local. The load test in `default`
# installs the same wheels into its generator's venv on the controller (livekit_loadtest_sdk_source: local).
PROBE_SDK_VERSION=${PROBE_SDK_VERSION:-1.2.1}
PROBE_WHEEL_DIR=$CACHE_DIR/probe-wheels/livekit-$PROBE_SDK_VERSION
# Test host images: localhost/selfhosted-livekit-test:<suite>
TEST_IMAGE_REPO=${TEST_IMAGE_REPO:-localhost/selfhosted-livekit-test}
TEST_SUITES=${TEST_SUITES:-"bookworm trixie"}
# podman on this kind of machine (cgroup v1 hybrid) needs runc and ulimits under the hard limit.
export CONTAINERS_CONF=$REPO_ROOT/molecule/containers.conf
export PATH=$VENV_DIR/bin:$PATH

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
