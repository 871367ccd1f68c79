#!/usr/bin/env bash
# Build the MinIO server the backup tests use, with `go install` through the Go module proxy, and
# cache it by version. Prints the binary's path.
source "$(dirname "$0")/lib.sh"
if [ -x "$MINIO_BIN" ] && "$MINIO_BIN" --version >/dev/null 2>&1; then
  log "MinIO $MINIO_MODULE_VERSION is cached at $MINIO_BIN"
  echo "$MINIO_BIN"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "building MinIO $MINIO_MODULE_VERSION with go install (about 2 minutes on 2 cores)"
GOBIN=$work CGO_ENABLED=0 GOFLAGS=-trimpath go install "github.com/minio/minio@$MINIO_MODULE_VERSION" \
  || die "MinIO $MINIO_MODULE_VERSION does not build here"
mkdir -p "$(dirname "$MINIO_BIN")"
mv "$work/minio" "$MINIO_BIN"
echo "$MINIO_BIN"
