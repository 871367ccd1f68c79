#!/usr/bin/env bash
# Backup throughput vs a plain upload of the same bytes to the same (loopback MinIO) endpoint.
# Usage: bench/backup_throughput.sh [RUNS] [DATA_MIB]   (default 3 runs of 256 MiB)
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
bash scripts/setup.sh --no-images >/dev/null
MINIO_BIN=$MINIO_BIN PYTHONPATH=$REPO_ROOT/.cache/collections python bench/backup_throughput.py "$@"
