#!/usr/bin/env bash
# Capacity of a local LiveKit node for two room shapes, with playbooks/loadtest.yml (the livekit_loadtest
# role) as a user runs it: a 1:N webinar (one room, one publisher, subscribers ramping up) and an N:N
# meeting (rooms of publishers that all see each other), each ramping up until the run ends or a stop
# threshold ends it. One throwaway Debian 12 test host (livekit + redis, lkt-load-node) converged with
# site.yml; the load generator runs on this same machine, from the controller, so the two share its
# cores: the limits judge livekit-server's own share of the CPU (livekit_loadtest_cpu_basis: livekit).
# Prints a Markdown table for docs/benchmarks.md and docs/sizing.md, and copies the two plots to
# docs/loadtest-webinar.png and docs/loadtest-meeting.png. Public tools only (the collection, podman).
# Usage: bench/loadtest.sh [webinar|meeting ...]   (default both; about 12-15 min on a busy 2-core machine)
# Bounded: each run's ramp-up + duration is below 4 min, and loadtest.yml's own hard limits apply.
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(webinar meeting)
name=lkt-load-node
source "$(dirname "$0")/lib.sh"
bench_inventory livekit redis
# The load host is the controller: the inventory's podman connection is for the test host only.
mkdir -p "$state/inventory/host_vars"
printf -- '---\nansible_connection: local\nansible_python_interpreter: "{{ ansible_playbook_python }}"\n' \
  >"$state/inventory/host_vars/localhost.yml"
bash scripts/setup.sh default >/dev/null  # the SDK's wheels ($PROBE_WHEEL_DIR)
bench_host
log "converging $name with site.yml (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
bench_converge

common() {  # the settings both shapes share (a JSON object's members)
  cat <<JSON
"livekit_loadtest_node": "$name", "livekit_loadtest_home": "$state/load-host",
"livekit_loadtest_report_dir": "$state/reports/$1", "livekit_loadtest_sdk_source": "local",
"livekit_loadtest_local_wheel_dir": "$PROBE_WHEEL_DIR", "livekit_loadtest_install_packages": false,
"livekit_loadtest_load_host_become": false, "livekit_loadtest_cpu_basis": "livekit",
"livekit_loadtest_sample_interval": 3, "livekit_loadtest_video_resolution": "320x180",
"livekit_loadtest_video_fps": 15, "livekit_loadtest_simulcast": true, "livekit_loadtest_video_max_bitrate": 300,
"livekit_loadtest_join_timeout": 30, "livekit_loadtest_stop_join_failures": 3
JSON
}

# The reports outlive the throwaway host: .cache/loadtest-bench/<shape>/ (bench/loadtest.py reads them).
keep=$REPO_ROOT/.cache/loadtest-bench
rm -rf "$keep" && mkdir -p "$keep"

run_shape() {
  local shape=$1 vars=$state/$1.json start=$SECONDS
  case $shape in
    # One presenter, 80 viewers joining over 150 s, then 30 s with everyone.
    webinar) printf '{%s, "livekit_loadtest_rooms": 1, "livekit_loadtest_publishers_per_room": 1, "livekit_loadtest_subscribers_per_room": 80, "livekit_loadtest_ramp_up": 150, "livekit_loadtest_duration": 30}\n' "$(common webinar)" >"$vars" ;;
    # Ten 4-person meetings (the ops guide's example shape), joining over 120 s, then 30 s.
    meeting) printf '{%s, "livekit_loadtest_rooms": 10, "livekit_loadtest_publishers_per_room": 4, "livekit_loadtest_subscribers_per_room": 0, "livekit_loadtest_ramp_up": 120, "livekit_loadtest_duration": 30}\n' "$(common meeting)" >"$vars" ;;
    *) die "unknown shape $shape (webinar, meeting)" ;;
  esac
  log "load test: $shape (load average before: $(cut -d' ' -f1-3 /proc/loadavg))"
  if ! ansible-playbook -i "$state/inventory" playbooks/loadtest.yml -e "@$vars" >"$state/$shape.log" 2>&1; then
    tail -40 "$state/$shape.log"
    log "loadtest.yml failed for $shape"
    return 1
  fi
  log "$shape done in $((SECONDS - start)) s (load average after: $(cut -d' ' -f1-3 /proc/loadavg))"
  cp -r "$state/reports/$shape" "$keep/$shape"
  cp "$(ls -d "$state/reports/$shape"/*/ | head -1)report.png" "docs/loadtest-$shape.png"
}

for shape in "${shapes[@]}"; do
  run_shape "$shape" || true
done
python bench/loadtest.py "$keep" "${shapes[@]}"
