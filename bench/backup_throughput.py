"""Backup throughput against a plain upload of the same bytes to the same endpoint.

Starts the test MinIO (scripts/build-minio.sh) on loopback, makes DATA_MIB of incompressible data
(like an RDB, which Redis compresses already), and RUNS times: takes a backup of it with the
collection's code (livekit_backup.run_backup: tar.gz, age, checked multipart upload, manifest,
latest), then uploads the same encrypted archive with boto3's own upload_file (default transfer
settings: 8 MiB parts, 10 threads) to the same endpoint. Prints medians and the ratios; goal for
upload throughput >= 0.8 of the plain upload.
Usage: bench/backup_throughput.sh [RUNS] [DATA_MIB]"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import boto3

from ansible_collections.selfhosted.livekit.plugins.module_utils import livekit_backup as lb

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
DATA_MIB = int(sys.argv[2]) if len(sys.argv) > 2 else 256
MINIO = os.environ["MINIO_BIN"]
PORT = 19000


def main() -> None:
    work = tempfile.mkdtemp(prefix="lkt-bench-backup-")
    user, password = "bench" + os.urandom(3).hex(), os.urandom(16).hex()
    minio = subprocess.Popen([MINIO, "server", f"{work}/minio", "--address", f"127.0.0.1:{PORT}",
                              "--console-address", f"127.0.0.1:{PORT + 1}", "--quiet"],
                             env=dict(os.environ, MINIO_ROOT_USER=user, MINIO_ROOT_PASSWORD=password),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s3 = dict(endpoint_url=f"http://127.0.0.1:{PORT}", access_key=user, secret_key=password)
        client = lb.s3_client(**s3)
        for _attempt in range(100):
            try:
                client.create_bucket(Bucket="bench")
                break
            except (lb.BotoCoreError, lb.ClientError):  # MinIO is still starting
                time.sleep(0.2)
        data = os.path.join(work, "data")
        os.makedirs(data)
        with open(os.path.join(data, "dump.rdb"), "wb") as handle:
            for _chunk in range(DATA_MIB):
                handle.write(os.urandom(1024 * 1024))
        identity = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True).stdout
        recipient = subprocess.run(["age-keygen", "-y"], input=identity, capture_output=True, text=True,
                                   check=True).stdout.strip()
        plain = boto3.client("s3", endpoint_url=s3["endpoint_url"], region_name="us-east-1",
                             aws_access_key_id=user, aws_secret_access_key=password)
        rows = []
        for run in range(RUNS):
            cfg = dict(host="bench", paths=[data], recipients=[recipient], bucket="bench", s3=s3,
                       spool_dir=os.path.join(work, "spool"), lock_file=os.path.join(work, "lock"),
                       keep_local=True, keep_last=1, keep_daily=0, keep_monthly=0)
            result = lb.run_backup(cfg)
            started = time.monotonic()
            plain.upload_file(result["archive"], "bench", f"plain/{run}")
            plain_seconds = time.monotonic() - started
            os.unlink(result["archive"])
            rows.append(dict(size=result["archive_size"], total=result["duration"], pack=result["packed_seconds"],
                             upload=result["upload_seconds"], plain=plain_seconds))
            time.sleep(1.1)  # backup ids have one-second resolution
        mib = rows[0]["size"] / 1048576
        print("| run | archive MiB | pack+encrypt s | checked upload s | whole backup s | plain upload_file s |")
        print("|---|---|---|---|---|---|")
        for i, row in enumerate(rows):
            print(f"| {i} | {row['size'] / 1048576:.0f} | {row['pack']:.2f} | {row['upload']:.2f} | {row['total']:.2f} | {row['plain']:.2f} |")
        med = {key: statistics.median(row[key] for row in rows) for key in ("pack", "upload", "total", "plain")}
        print(f"\nmedians ({RUNS} runs, {mib:.0f} MiB): checked upload {mib / med['upload']:.0f} MiB/s, "
              f"plain upload_file {mib / med['plain']:.0f} MiB/s, whole backup {mib / med['total']:.0f} MiB/s")
        print(f"ratio upload (plain time / checked upload time): {med['plain'] / med['upload']:.2f}  (goal >= 0.8)")
        print(f"ratio whole backup incl. tar+gzip+age (plain time / backup time): {med['plain'] / med['total']:.2f}")
    finally:
        minio.terminate()
        minio.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
