#!/usr/bin/env bash
# Remove test containers and networks a previous (possibly killed) test run left behind.
# Touches only this project's test hosts: containers and networks named lkt-*.
source "$(dirname "$0")/lib.sh"
command -v podman >/dev/null 2>&1 || exit 0
mapfile -t containers < <(podman ps -a --format '{{.Names}}' | grep -E '^lkt-' || true)
if [ ${#containers[@]} -gt 0 ]; then
  log "removing leftover test containers: ${containers[*]}"
  podman rm -f -t 0 "${containers[@]}" >/dev/null
fi
mapfile -t networks < <(podman network ls --format '{{.Name}}' | grep -E '^lkt-' || true)
if [ ${#networks[@]} -gt 0 ]; then
  log "removing leftover test networks: ${networks[*]}"
  podman network rm -f "${networks[@]}" >/dev/null
fi
