#!/usr/bin/env bash
# What does a certificate renewal cost a live call? Stands up the tls scenario (Pebble as the ACME
# CA, lkt-tls behind nginx in sni mode, lkt-tls-d in direct mode) with molecule, then runs
# bench/tls_renewal.py: PARTICIPANTS real clients in one call over wss through nginx and one
# TURN/TLS stream stay up while RENEWALS renewals go through certbot's timer unit. Prints per
# renewal the ACME round trip and the time until 443 serves the new certificate, then the
# medians and what the clients saw (Markdown for docs/benchmarks.md). Bounded: RENEWALS <= 20.
# Usage: bench/tls_renewal.sh [RENEWALS] [PARTICIPANTS]   (default 5 4)
renewals=${1:-5}
participants=${2:-4}
[ "$renewals" -le 20 ] || { echo "at most 20 renewals" >&2; exit 2; }
source "$(dirname "$0")/../scripts/lib.sh"
cd "$REPO_ROOT"
TEST_SUITES=bookworm bash scripts/setup.sh >/dev/null

state=$(mktemp -d)
chmod 700 "$state"
export LKT_STATE_DIR=$state LKT_LIVEKIT_VERSION=$LIVEKIT_TEST_VERSION LKT_ARTIFACT_DIR=$ARTIFACT_DIR/$LIVEKIT_TEST_VERSION
export LKT_API_KEY=APIbench LKT_API_SECRET=$(openssl rand -hex 24) LKT_REDIS_PASSWORD=$(openssl rand -hex 16)
export ANSIBLE_COLLECTIONS_PATH=$REPO_ROOT/.cache/collections MOLECULE_EPHEMERAL_DIRECTORY=$state/molecule-tls
trap 'molecule destroy -s tls >/dev/null 2>&1; rm -rf "$state"' EXIT

log "standing up the tls scenario (Pebble, two nodes behind nginx)"
start=$SECONDS
for step in create prepare converge; do
  molecule "$step" -s tls >"$state/$step.log" 2>&1 || { tail -40 "$state/$step.log"; die "molecule $step failed"; }
done
log "converged in $((SECONDS - start)) s"
molecule verify -s tls >"$state/verify.log" 2>&1 || true  # writes the host descriptions the bench reads
python bench/tls_renewal.py "$state/molecule-tls/hosts" "$renewals" "$participants"
