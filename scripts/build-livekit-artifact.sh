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
log "building livekit-server $version from the Go module proxy (CGO_ENABLED=0)"
# Build inside a copy of the module, as its main module: its own go.sum then verifies every
# dependency (some tags pin pseudo-versions the checksum database does not serve, which makes a
# plain `go install pkg@version` fail), and the result is the same binary `go install` gives.
# v1.13.x declares go 1.26; an older local Go fetches that toolchain through the module proxy.
src=$(go mod download -json "github.com/livekit/livekit-server@v$version" \
  | python3 -c 'import json, sys; info = json.load(sys.stdin); print(info.get("Dir") or sys.exit(info.get("Error")))') \
  || die "the Go module proxy does not serve livekit-server v$version"
cp -r "$src" "$work/src" && chmod -R u+w "$work/src"
mkdir -p "$work/bin"
(cd "$work/src" && CGO_ENABLED=0 go build -trimpath -o "$work/bin/server" ./cmd/server) \
  || die "livekit-server v$version does not build here (tags with replace directives to forks the proxy lacks, such as v1.13.6+, cannot)"
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
