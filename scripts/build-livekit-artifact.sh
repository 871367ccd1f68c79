#!/usr/bin/env bash
# Build livekit-server VERSION from source through the Go module proxy and package it the way
# LiveKit's releases are: livekit_<version>_linux_<arch>.tar.gz with livekit-server at the root,
# plus checksums.txt. The role installs it through its offline path (livekit_server_artifact_source:
# local) with the same sha256 check a downloaded release gets. Cached per version.
# Usage: scripts/build-livekit-artifact.sh 1.13.5   -> prints the artifact directory
source "$(dirname "$0")/lib.sh"
version=${1:-$LIVEKIT_TEST_VERSION}
arch=$(go env GOARCH)
out=$ARTIFACT_DIR/$version
tarball=livekit_${version}_linux_${arch}.tar.gz

if [ -s "$out/$tarball" ] && [ -s "$out/checksums.txt" ] \
  && (cd "$out" && sha256sum --check --status checksums.txt); then
  log "livekit-server $version artifact is cached in $out"
  echo "$out"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "building livekit-server $version with go install (CGO_ENABLED=0)"
# v1.13.x declares go 1.26; an older local Go fetches that toolchain through the module proxy.
GOBIN=$work/bin CGO_ENABLED=0 GOFLAGS=-trimpath \
  go install "github.com/livekit/livekit-server/cmd/server@v$version"
mkdir -p "$work/pkg" "$out"
mv "$work/bin/server" "$work/pkg/livekit-server"
"$work/pkg/livekit-server" --version | grep -qx "livekit-server version $version" \
  || die "the built binary does not report version $version"
tar -C "$work/pkg" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - livekit-server \
  | gzip -n >"$work/$tarball"
mv "$work/$tarball" "$out/$tarball"
(cd "$out" && sha256sum "$tarball" >checksums.txt)
log "artifact ready: $out/$tarball"
echo "$out"
