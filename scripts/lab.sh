#!/usr/bin/env bash
# A local LiveKit node for trying the collection: a Debian 12 systemd container converged with
# playbooks/site.yml exactly as a real host would be, then the URL, an API key and a join token.
# Usage: scripts/lab.sh up | down | token [ROOM] [IDENTITY]
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

name=livekit-lab
lab=$REPO_ROOT/.cache/lab
inventory=$lab/inventory

lab_ip() { podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$name"; }

# The lab host is reached over SSH, as a real server is, with a key made for this lab.
authorize_key() {
  [ -s "$lab/ssh/id_ed25519" ] || { mkdir -p -m 700 "$lab/ssh"; ssh-keygen -q -t ed25519 -N '' -C livekit-lab -f "$lab/ssh/id_ed25519"; }
  podman exec -i "$name" sh -c 'umask 077; mkdir -p /root/.ssh; cat >/root/.ssh/authorized_keys' <"$lab/ssh/id_ed25519.pub"
}

write_inventory() {
  mkdir -p "$inventory/group_vars/all"
  chmod 700 "$lab"
  cat >"$inventory/hosts.yml" <<YAML
---
all:
  children:
    livekit:
      hosts:
        $name:
          ansible_host: $(lab_ip)
          ansible_user: root
          ansible_ssh_private_key_file: $lab/ssh/id_ed25519
          # A lab container gets a new address (and the image's host key) each time: do not pin it.
          ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
    redis:
      hosts:
        $name:
    # No monitoring host or outside probe in the lab (docs/monitoring.md); the groups exist so
    # site.yml's plays for them match nothing without a warning.
    monitoring:
      hosts: {}
    livekit_join_probe:
      hosts: {}
YAML
  # Secrets are generated once per lab and kept only here (mode 0600).
  if [ ! -s "$inventory/group_vars/all/secrets.yml" ]; then
    umask 077
    cat >"$inventory/group_vars/all/secrets.yml" <<YAML
---
livekit_server_api_keys:
  APIlab$(openssl rand -hex 3): $(openssl rand -hex 24)
redis_password: $(openssl rand -hex 16)
YAML
  fi
  cat >"$inventory/group_vars/all/main.yml" <<YAML
---
livekit_server_artifact_source: local
livekit_server_local_artifact_dir: $ARTIFACT_DIR/$LIVEKIT_TEST_VERSION
livekit_server_version: "$LIVEKIT_TEST_VERSION"
livekit_server_redis_password: "{{ redis_password }}"
livekit_server_turn_domain: turn.$name.test
livekit_server_tls_source: local_ca
livekit_server_local_ca_dir: $lab/ca
livekit_server_turn_allow_restricted_peer_cidrs:
  - "{{ ansible_facts['default_ipv4']['network'] }}/{{ ansible_facts['default_ipv4']['prefix'] }}"
livekit_server_limit_nofile: 16384
livekit_host_nofile_limit: 16384
YAML
}

print_token() {
  local room=${1:-lab} identity=${2:-you}
  python - "$inventory/group_vars/all/secrets.yml" "$room" "$identity" <<'PY'
import sys, yaml
from livekit import api
secrets = yaml.safe_load(open(sys.argv[1]))
key, secret = next(iter(secrets["livekit_server_api_keys"].items()))
token = (api.AccessToken(key, secret).with_identity(sys.argv[3])
         .with_grants(api.VideoGrants(room_join=True, room=sys.argv[2])).to_jwt())
print(f"API key:     {key}  (secret in .cache/lab/inventory/group_vars/all/secrets.yml)")
print(f"Join token:  {token}")
print(f"             (room '{sys.argv[2]}', identity '{sys.argv[3]}', valid 6 h)")
PY
}

case ${1:-up} in
  up)
    bash scripts/setup.sh lab
    if ! podman container exists "$name"; then
      podman network exists "$name" || podman network create "$name" >/dev/null
      log "starting the lab host $name"
      podman run -d --name "$name" --hostname "$name" --network "$name" --privileged --systemd=always \
        "$TEST_IMAGE_REPO:bookworm" /sbin/init >/dev/null
    fi
    # A container left created or stopped (an earlier failed start, a reboot) is started again.
    [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] || podman start "$name" >/dev/null
    podman exec "$name" systemctl is-system-running --wait >/dev/null || true
    mkdir -p "$lab" && chmod 700 "$lab"
    authorize_key
    write_inventory
    log "converging $name with playbooks/site.yml"
    ANSIBLE_COLLECTIONS_PATH=$REPO_ROOT/.cache/collections \
      ansible-playbook -i "$inventory" playbooks/site.yml
    echo
    echo "LiveKit is up."
    echo "URL:         ws://$(lab_ip):7880"
    print_token lab you
    echo "Lab CA:      $lab/ca/ca.crt (trust it for TURN/TLS at turn.$name.test)"
    echo "Tear down:   scripts/lab.sh down"
    ;;
  token) shift; print_token "$@" ;;
  down)
    podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
    podman network rm -f "$name" >/dev/null 2>&1 || true
    rm -rf "$lab"
    log "lab removed"
    ;;
  *) die "usage: $0 up | down | token [ROOM] [IDENTITY]" ;;
esac
