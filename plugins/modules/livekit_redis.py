#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_redis
short_description: Snapshot a local Redis, or wait until it has loaded its data
version_added: 0.4.0
description:
  - Talks to the Redis on this host over its unix socket (or TCP on loopback) with the collection's
    own small RESP client, the same code the backups use. The password is sent only inside the
    connection (C(AUTH)); it never appears in a process's arguments or environment, and the module
    never returns it.
  - With O(state=snapshot), asks Redis for a fresh RDB (C(BGSAVE SCHEDULE), so a running AOF
    rewrite delays the save instead of failing it), waits until that save, not an earlier one, has
    finished (Redis's C(rdb_saves) counter moved past its value before the request and no save is
    running), checks it succeeded, and copies the RDB and the append-only directory into O(dest)
    (0700), with a C(snapshot.json) describing it. Always reports a change. With O(keep), then removes
    all but the newest O(keep) snapshots next to it.
  - With O(state=loaded), waits until Redis answers and has finished loading its data set (after a
    start or a restore), and returns how many keys it holds. Changes nothing.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  state:
    description:
      - V(snapshot) takes a fresh snapshot and copies it to O(dest).
      - V(loaded) waits until Redis has loaded its data and answers.
    type: str
    choices: [snapshot, loaded]
    required: true
  socket:
    description: Redis's unix socket. Empty to connect over TCP to O(host) and O(port).
    type: path
    default: /run/redis/redis-server.sock
  host:
    description: Redis's address when O(socket) is empty (plain TCP, so keep it on loopback).
    type: str
    default: 127.0.0.1
  port:
    description: Redis's port when O(socket) is empty.
    type: int
    default: 6379
  password:
    description: The password of Redis's default user (C(requirepass)); empty when Redis has none.
    type: str
    default: ""
  data_dir:
    description: Redis's data directory (C(dir) in redis.conf), where the RDB and AOF are copied from.
    type: path
    default: /var/lib/redis
  dest:
    description: Directory the snapshot is copied into (created 0700). Required with O(state=snapshot).
    type: path
  keep:
    description:
      - With O(state=snapshot), how many snapshots to keep in the directory above O(dest), the new one
        included; older ones are removed after the new one is complete. V(0) keeps them all.
      - Only directories this module made (they hold a C(snapshot.json)) or named like its default
        timestamp names (C(20261123T031500Z)) count; nothing else in that directory is touched.
    type: int
    default: 0
    version_added: 0.5.0
  timeout:
    description:
      - Seconds to wait for the snapshot (V(snapshot)) or for Redis to answer with its data loaded
        (V(loaded)).
      - Defaults to 600 with O(state=snapshot) and 60 with O(state=loaded).
    type: int
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details:
      - V(snapshot) does not contact Redis and reports the copy it would make and the snapshots O(keep) would
        remove.
      - V(loaded) only reads, so it runs as usual.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
notes:
  - Redis 7 or later counts saves (C(rdb_saves)); with an older Redis the module waits until the last
    save time moves past the one before the request instead.
seealso:
  - module: selfhosted.livekit.livekit_backup
"""

EXAMPLES = r"""
- name: Snapshot Redis before a major upgrade
  selfhosted.livekit.livekit_redis:
    state: snapshot
    password: "{{ redis_password }}"
    dest: /var/backups/redis/before-2.0
    keep: 3  # this one and the two before it
  register: snapshot

- name: Start Redis
  ansible.builtin.systemd_service:
    name: redis-server.service
    state: started

- name: Wait until Redis has loaded its data
  selfhosted.livekit.livekit_redis:
    state: loaded
    password: "{{ redis_password }}"
  register: redis_state

- name: Show how many keys came back
  ansible.builtin.debug:
    msg: "{{ redis_state.dbsize }} keys"
"""

RETURN = r"""
path:
  description: The directory the snapshot was (or, in check mode, would be) copied into.
  returned: state=snapshot
  type: str
  sample: /var/backups/redis/20261123T031500Z
rdb:
  description: File name of the RDB copied.
  returned: state=snapshot and not in check mode
  type: str
  sample: dump.rdb
aof:
  description: Name of the append-only directory copied, or null when AOF is off.
  returned: state=snapshot and not in check mode
  type: str
  sample: appendonlydir
rdb_saved_at:
  description: UNIX time Redis finished the snapshot.
  returned: state=snapshot and not in check mode
  type: int
redis_version:
  description: The version of the Redis server.
  returned: state=snapshot and not in check mode
  type: str
  sample: 7.0.15
pruned:
  description: Older snapshots removed (in check mode, that would be removed) to keep O(keep).
  returned: state=snapshot
  type: list
  elements: str
  sample: [/var/backups/redis/20260101T031500Z]
  version_added: 0.5.0
dbsize:
  description: Keys in database 0 (what C(DBSIZE) answers).
  returned: state=loaded
  type: int
  sample: 42
keys:
  description: Keys over all databases.
  returned: state=loaded, and state=snapshot when not in check mode
  type: int
  sample: 42
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils import livekit_backup as lb

DEFAULT_TIMEOUT = {"snapshot": 600, "loaded": 60}


class RedisOperation:
    """One request to the local Redis; every write is guarded by check mode."""

    def __init__(self, module):
        self.module = module
        params = module.params
        self.timeout = params["timeout"] if params["timeout"] is not None else DEFAULT_TIMEOUT[params["state"]]
        self.redis = lb.Redis(params["host"], params["port"], params["password"], timeout=10,
                              unix_socket=params["socket"] or None)

    def where(self):
        params = self.module.params
        return params["socket"] or "%s:%d" % (params["host"], params["port"])

    def snapshot(self):
        dest = self.module.params["dest"].rstrip("/")
        parent, keep = os.path.dirname(dest), self.module.params["keep"]
        if self.module.check_mode:
            return dict(changed=True, path=dest, pruned=lb.prune_snapshots(parent, keep, dest, check_mode=True))
        facts = lb.redis_snapshot(self.redis, self.module.params["data_dir"], dest, timeout=self.timeout)
        lb.write_snapshot_marker(dest, facts)
        # Older snapshots go only once the new one is complete.
        return dict(changed=True, path=dest, pruned=lb.prune_snapshots(parent, keep, dest), **facts)

    def loaded(self):
        return dict(changed=False, **lb.redis_wait_loaded(self.redis, timeout=self.timeout))


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", required=True, choices=["snapshot", "loaded"]),
            socket=dict(type="path", default="/run/redis/redis-server.sock"),
            host=dict(type="str", default="127.0.0.1"),
            port=dict(type="int", default=6379),
            password=dict(type="str", default="", no_log=True),
            data_dir=dict(type="path", default="/var/lib/redis"),
            dest=dict(type="path"),
            timeout=dict(type="int"),
            keep=dict(type="int", default=0),
        ),
        required_if=[("state", "snapshot", ["dest"])],
        supports_check_mode=True,
    )
    operation = RedisOperation(module)
    state = module.params["state"]
    try:
        result = operation.snapshot() if state == "snapshot" else operation.loaded()
    except (lb.BackupError, OSError) as err:
        module.fail_json(msg="Redis at %s: %s" % (operation.where(), err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
