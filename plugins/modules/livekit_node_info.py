#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_node_info
short_description: Read how busy a livekit-server node is
version_added: 0.1.0
description:
  - Asks a livekit-server on the managed host whether it is healthy and how many rooms and
    participants it has, through the server API (Twirp C(RoomService/ListRooms)) signed with a key
    from the node's key file.
  - A server that is not running is reported as such (O(url) refused), not as an error; a key the
    server rejects, or an unreadable key file, is an error, because it is a misconfiguration.
  - A load that cannot be read is an error too, never an idle node - O(url) accepts the connection
    but times out or closes it, or C(ListRooms) answers something that is not a room list (for
    example a proxy's error page).
  - Restart decisions use it - restart an idle node now, defer while calls are live.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
extends_documentation_fragment:
  - selfhosted.livekit.livekit_api
options:
  binary:
    description:
      - Path of the livekit-server binary on the host; when given, its version is returned.
    type: path
  unit:
    description:
      - systemd unit of livekit-server; when given, the version its running process executes is
        returned in RV(running_version) (it differs from O(binary) between a release switch and the
        restart).
    type: str
  config:
    description:
      - Path of livekit.yaml. With O(binary) and a Redis-backed configuration, the cluster's node
        table (C(livekit-server list-nodes)) is returned in RV(cluster_nodes), with each node's
        state (C(SERVING) or C(SHUTTING_DOWN)).
    type: path
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Read-only; runs the same in check mode.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
notes:
  - Counts cover the rooms the API lists. With Redis shared by several nodes, that is the whole
    cluster's rooms, not this node's.
"""

EXAMPLES = r"""
- name: Read the load of the local node
  selfhosted.livekit.livekit_node_info:
  register: node

- name: Restart only when nobody is connected
  ansible.builtin.systemd_service:
    name: livekit-server
    state: restarted
  when: node.idle

- name: Use an explicit key (for example from a vault) and report the binary version
  selfhosted.livekit.livekit_node_info:
    url: http://127.0.0.1:7880
    api_key: "{{ vault_livekit_api_key }}"
    api_secret: "{{ vault_livekit_api_secret }}"
    binary: /opt/livekit/current/livekit-server
"""

RETURN = r"""
running:
  description: Whether the server answered on O(url).
  returned: always
  type: bool
  sample: true
healthy:
  description: Whether C(GET /) answered C(OK) (node statistics are fresh).
  returned: always
  type: bool
  sample: true
health_status:
  description: HTTP status of C(GET /), or null when the server did not answer.
  returned: always
  type: int
  sample: 200
rooms:
  description: Number of rooms.
  returned: always
  type: int
  sample: 2
participants:
  description: Participants in all rooms.
  returned: always
  type: int
  sample: 5
room_list:
  description: Each room with its participant and publisher counts.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "standup", "num_participants": 3, "num_publishers": 2}]
idle:
  description: >-
    True when no participant is connected (or the server is not running, O(url) refused). False
    when the load could not be read (the module fails then).
  returned: always
  type: bool
  sample: false
running_version:
  description: Version of the binary the running process of O(unit) executes; null when not running.
  returned: always
  type: str
  sample: 1.13.4
cluster_nodes:
  description: The nodes registered in Redis, when O(binary) and O(config) are given.
  returned: always
  type: list
  elements: dict
  sample: [{"id": "ND_ePSNHNKpZkkK", "ip": "10.0.0.5", "region": "", "rooms": 1, "clients": 3, "state": "SERVING"}]
version:
  description: Version reported by O(binary), or null.
  returned: always
  type: str
  sample: 1.13.5
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import (
    LiveKitAPIError,
    LiveKitError,
    LiveKitUnavailable,
    api_argument_spec,
    client_from_params,
)
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import running_version
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_metrics import parse_list_nodes


def binary_version(module, binary):
    rc, out, err = module.run_command([binary, "--version"])
    match = re.search(r"version (\S+)", out)
    if rc != 0 or not match:
        module.fail_json(msg="%s --version did not report a version: %s" % (binary, (out + err).strip()[:200]))
    return match.group(1)


def main():
    argument_spec = api_argument_spec()
    argument_spec.update(binary=dict(type="path"), config=dict(type="path"), unit=dict(type="str"))
    module = AnsibleModule(
        argument_spec=argument_spec,
        required_together=[("api_key", "api_secret")],
        supports_check_mode=True,
    )
    result = dict(changed=False, running=False, healthy=False, health_status=None, rooms=0,
                  participants=0, room_list=[], idle=True, version=None, cluster_nodes=[], running_version=None)
    if module.params["unit"]:
        rc, out, err = module.run_command(["systemctl", "show", "--property=MainPID", "--value", module.params["unit"]])
        if rc != 0:
            module.fail_json(msg="systemctl show %s failed: %s" % (module.params["unit"], (err or out).strip()), **result)
        result["running_version"] = running_version(module.run_command, int(out.strip() or 0))
    if module.params["binary"]:
        result["version"] = binary_version(module, module.params["binary"])
        if module.params["config"]:
            rc, out, err = module.run_command([module.params["binary"], "list-nodes", "--config",
                                               module.params["config"]])
            if rc != 0:
                module.fail_json(msg="list-nodes failed: %s" % (err or out).strip()[-300:], **result)
            result["cluster_nodes"] = parse_list_nodes(out + "\n" + err)

    try:
        client = client_from_params(module.params)
    except (OSError, ValueError) as err:
        module.fail_json(msg="cannot read API credentials: %s" % err, **result)

    try:
        result["healthy"], result["health_status"], _text = client.health()
    except LiveKitUnavailable as err:
        if err.refused:  # nothing listens on url: the server is not running, so nobody is connected
            module.exit_json(**result)
        result["idle"] = False
        module.fail_json(msg="%s; cannot tell whether livekit-server runs or how many participants it has, and an "
                             "unknown load is never reported as idle. Check that url is livekit-server's HTTP port "
                             "and that it answers GET /" % err, **result)
    result["running"] = True
    try:
        rooms = client.list_rooms()
    except LiveKitUnavailable as err:
        result["idle"] = False
        module.fail_json(msg="the server answered GET / but not ListRooms: %s; the room count is unknown" % err,
                         **result)
    except LiveKitAPIError as err:
        result["idle"] = False
        module.fail_json(msg="the server rejected the API call (%s); check that the key is one it loaded" % err,
                         **result)
    except LiveKitError as err:
        result["idle"] = False
        module.fail_json(msg="the answer to ListRooms could not be read (%s); the room count is unknown. Check "
                             "that url reaches livekit-server itself" % err, **result)

    result["room_list"] = [
        dict(name=room.get("name"), num_participants=int(room.get("num_participants", 0)),
             num_publishers=int(room.get("num_publishers", 0)))
        for room in rooms
    ]
    result["rooms"] = len(rooms)
    result["participants"] = sum(room["num_participants"] for room in result["room_list"])
    result["idle"] = result["participants"] == 0
    module.exit_json(**result)


if __name__ == "__main__":
    main()
