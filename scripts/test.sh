#!/usr/bin/env bash
# The whole test suite: lint, sanity, unit tests, then molecule scenarios on real test hosts,
# cheapest first so the quick failures show up early. Installs what it needs (scripts/setup.sh).
# Usage: scripts/test.sh [stage...]   stages: lint sanity unit provision bad_input default monitoring tls backup cluster bluegreen  (default: all)
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(lint sanity unit provision bad_input default monitoring tls backup cluster bluegreen)

# Setup in the order the stages need it. lint, sanity, unit and provision need only Debian's packages and
# the controller venv: they run while the test images and the Go builds of livekit-server (minutes on a
# fresh machine) are made in the background, and the first scenario waits for those. The older release
# and MinIO (only tls, backup, cluster and bluegreen use them) are built after that, while bad_input,
# default and monitoring run.
controller_stages=() host_stages=()
for stage in "${stages[@]}"; do
  case $stage in
    lint|sanity|unit|provision) controller_stages+=("$stage") ;;
    *) host_stages+=("$stage") ;;
  esac
done
late_setup_log=$(mktemp "${TMPDIR:-/tmp}/lkt-setup-late.XXXXXX")
late_setup_done=$late_setup_log.first-done
late_setup_pid=
late_setup_shown=0
trap 'rm -f "$late_setup_log" "$late_setup_done"' EXIT
early_builds_pending=0 extra_builds_pending=0
if [ ${#controller_stages[@]} -gt 0 ] && [ ${#host_stages[@]} -gt 0 ]; then
  bash scripts/setup.sh "${controller_stages[@]}"
  early_builds_pending=1
fi
if [[ " ${stages[*]} " =~ \ (tls|backup|cluster|bluegreen)\  ]] && [[ " ${stages[*]} " =~ \ (bad_input|default|monitoring)\  ]]; then
  extra_builds_pending=1
fi
if [ $early_builds_pending = 1 ] || [ $extra_builds_pending = 1 ]; then
  [ $early_builds_pending = 1 ] || bash scripts/setup.sh --defer-extra-builds "${stages[@]}"
  (
    if [ $early_builds_pending = 1 ]; then
      defer=()
      [ $extra_builds_pending = 0 ] || defer=(--defer-extra-builds)
      bash scripts/setup.sh "${defer[@]}" "${host_stages[@]}" || exit 1
      touch "$late_setup_done"
    fi
    [ $extra_builds_pending = 0 ] || bash scripts/setup.sh --no-images "${host_stages[@]}"
  ) >"$late_setup_log" 2>&1 &
  late_setup_pid=$!
else
  bash scripts/setup.sh "${stages[@]}"
fi
show_late_setup() {  # the background setup's progress lines not shown yet
  grep -h '==>' "$late_setup_log" | tail -n +$((late_setup_shown + 1)) >&2 || true
  late_setup_shown=$(grep -c '==>' "$late_setup_log" || true)
}
setup_failed() {
  show_late_setup
  tail -n 30 "$late_setup_log" >&2
  die "the background setup failed (the builds and images the scenarios need)"
}
early_setup() {  # wait for the images and livekit-server before the first scenario
  [ $early_builds_pending = 1 ] || return 0
  while [ ! -f "$late_setup_done" ]; do
    kill -0 "$late_setup_pid" 2>/dev/null || { [ -f "$late_setup_done" ] || setup_failed; }
    sleep 2
  done
  early_builds_pending=0
  show_late_setup
}
late_setup() {  # wait for every background build (the older release and MinIO too)
  early_setup
  [ -n "$late_setup_pid" ] || return 0
  local rc=0
  wait "$late_setup_pid" || rc=$?
  late_setup_pid=
  [ $rc = 0 ] || setup_failed
  show_late_setup
}
# LKT_NO_CLEANUP=1 keeps other scenarios' containers (when two stages are developed side by side).
# Only stages that start containers clean up: lint, sanity and unit leave every container alone.
if [ "${LKT_NO_CLEANUP:-0}" != 1 ] && [[ " ${stages[*]} " =~ \ (bad_input|default|monitoring|mondev|tls|backup|cluster|bluegreen)\  ]]; then
  bash scripts/cleanup.sh
fi

# Per-run secrets and state: nothing secret lives in the repository.
LKT_STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/lkt-state.XXXXXX")
chmod 700 "$LKT_STATE_DIR"
export LKT_STATE_DIR
# Backups: an S3 account on the test MinIO and an age identity that exists only for this run.
export LKT_MINIO_BIN=$MINIO_BIN
export LKT_S3_ACCESS_KEY="lkt$(openssl rand -hex 6)" LKT_S3_SECRET_KEY=$(openssl rand -hex 20)
export LKT_AGE_IDENTITY_FILE=$LKT_STATE_DIR/age-identity.txt
age-keygen -o "$LKT_AGE_IDENTITY_FILE" 2>/dev/null
LKT_AGE_RECIPIENT=$(age-keygen -y "$LKT_AGE_IDENTITY_FILE")
export LKT_AGE_RECIPIENT
# The backup-signing key of the test hosts (in production one per host, from the vault).
export LKT_BACKUP_SIGNING_KEY_FILE=$LKT_STATE_DIR/backup-signing-key
ssh-keygen -q -t ed25519 -N '' -C "selfhosted.livekit test backups" -f "$LKT_BACKUP_SIGNING_KEY_FILE"
# Test hosts are reached over SSH with a key that exists only for this run (molecule/shared/prepare.yml).
mkdir -m 700 "$LKT_STATE_DIR/ssh"
ssh-keygen -q -t ed25519 -N '' -C "selfhosted.livekit test run" -f "$LKT_STATE_DIR/ssh/id_ed25519"
export LKT_SSH_KEY=$LKT_STATE_DIR/ssh/id_ed25519
export LKT_LIVEKIT_VERSION=$LIVEKIT_TEST_VERSION
export LKT_ARTIFACT_DIR=$ARTIFACT_DIR/$LIVEKIT_TEST_VERSION
export LKT_UPGRADE_FROM_VERSION=$LIVEKIT_UPGRADE_FROM_VERSION
export LKT_UPGRADE_FROM_ARTIFACT_DIR=$ARTIFACT_DIR/$LIVEKIT_UPGRADE_FROM_VERSION
export LKT_UPGRADE_TO_VERSION=$LIVEKIT_TEST_VERSION LKT_UPGRADE_TO_ARTIFACT_DIR=$LKT_ARTIFACT_DIR
export LKT_API_KEY="APItest$(openssl rand -hex 4)"
LKT_API_SECRET=$(openssl rand -hex 24)
LKT_REDIS_PASSWORD=$(openssl rand -hex 16)
export LKT_API_SECRET LKT_REDIS_PASSWORD
# The join probe's own key (monitoring), which the servers also accept.
export LKT_PROBE_API_KEY="APIprobe$(openssl rand -hex 4)" LKT_PROBE_API_SECRET=$(openssl rand -hex 24)
export LKT_PROBE_WHEEL_DIR=$PROBE_WHEEL_DIR
export ANSIBLE_COLLECTIONS_PATH=$REPO_ROOT/.cache/collections
export MOLECULE_EPHEMERAL_DIRECTORY_BASE=$LKT_STATE_DIR
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-$HOME/.cache}
trap 'rm -rf "$LKT_STATE_DIR"; rm -f "$late_setup_log" "$late_setup_done"' EXIT

passed=0
failed=0
failed_names=()
run_stage() {
  local name=$1
  shift
  log "stage $name"
  local start=$SECONDS
  if "$@"; then
    passed=$((passed + 1))
    log "stage $name passed in $((SECONDS - start)) s"
  else
    failed=$((failed + 1))
    failed_names+=("$name")
    log "stage $name FAILED after $((SECONDS - start)) s"
  fi
}

stage_lint() {
  ansible-lint --offline --profile production || return
  # changelogs/: fragments and changelog.yaml (antsibull-changelog in its own cached venv, <1 s)
  bash scripts/changelog.sh lint
}

stage_sanity() {
  # ansible-test wants the collection at ansible_collections/<ns>/<name>, outside any git checkout
  # that would hide it: copy the tracked tree there.
  local root tree
  root=$(mktemp -d "${TMPDIR:-/tmp}/lkt-sanity.XXXXXX")
  tree=$root/ansible_collections/selfhosted/livekit
  mkdir -p "$tree"
  git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$tree"
  (cd "$tree" && ansible-test sanity --color no --local --python 3.11)
  local rc=$?
  rm -rf "$root"
  return $rc
}

stage_unit() {
  # tests/unit/monitoring runs Debian 12's promtool on the alert rules (unpacked by setup.sh).
  PROMTOOL=$PROMTOOL PYTHONPATH=$REPO_ROOT/.cache/collections python -m pytest -p no:cacheprovider -q tests/unit
}

stage_provision() {
  # playbooks/provision_hetzner.yml and inventories/hcloud against tests/standin/hcloud_api.py, a local
  # stand-in for the Hetzner Cloud API on loopback (no cloud account, no containers).
  python -m pytest -p no:cacheprovider -q tests/provisioning
}

stage_molecule() {
  local scenario=$1
  # Every playbook run (converge, idempotence, the tests' own runs) prints its wall time, so a CI log
  # shows where a scenario's minutes went; pytest prints its slowest tests (molecule/shared/verify.yml).
  ANSIBLE_CALLBACKS_ENABLED=ansible.posix.timer \
  MOLECULE_EPHEMERAL_DIRECTORY=$LKT_STATE_DIR/molecule-$scenario molecule test -s "$scenario"
}

for stage in "${stages[@]}"; do
  case $stage in
    lint) run_stage lint stage_lint ;;
    sanity) run_stage sanity stage_sanity ;;
    unit) run_stage unit stage_unit ;;
    provision) run_stage provision stage_provision ;;
    tls|backup|cluster|bluegreen) late_setup; run_stage "molecule:$stage" bash -c "$(declare -f stage_molecule); stage_molecule $stage" ;;
    bad_input|default|monitoring|mondev) early_setup; run_stage "molecule:$stage" bash -c "$(declare -f stage_molecule); stage_molecule $stage" ;;
    *) die "unknown stage $stage (lint sanity unit provision bad_input default monitoring tls backup cluster bluegreen)" ;;
  esac
done

[ $failed -eq 0 ] || log "failed stages: ${failed_names[*]}"
echo "stages: $passed passed, $failed failed"
[ $failed -eq 0 ]
