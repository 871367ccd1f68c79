#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_room_reaper
short_description: Close LiveKit rooms in which nobody has published anything for too long
version_added: 0.5.0
description:
  - Lists the rooms of a livekit-server (of the whole cluster when nodes share Redis) and their
    participants through the server API, and closes (C(DeleteRoom)) each room whose participants
    have published nothing for at least O(threshold) seconds, such as a recorder or an agent left
    alone in a room after everyone else left. Closing a room disconnects its participants.
  - "A room counts as idle when it has at least one participant and no participant has a published
    track (a muted track counts as published). It has been idle since the latest of: its creation,
    the newest participant's join, and the last time a run saw a track published in it (kept in
    O(state_file)). A room without participants is left to livekit-server's own C(empty_timeout)."
  - Rooms whose name matches a pattern of O(allow_list) are never touched.
  - Before closing a room the module lists its participants again; a room in which someone joined
    or published meanwhile is kept.
  - Check mode is the dry run; it reports in RV(would_close) what it would close and changes nothing
    (no room, no state file, no audit line).
  - The same code runs on the host from the C(livekit-room-reaper) timer of the
    P(selfhosted.livekit.livekit_server#role) role.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
extends_documentation_fragment:
  - selfhosted.livekit.livekit_api
options:
  threshold:
    description: Seconds a room must have been idle before it is closed, from 60 (a minute) to 604800 (a week).
    type: int
    default: 3600
  allow_list:
    description:
      - Python regular expressions for room names that are never closed. A pattern matches anywhere
        in the name (C(re.search)); anchor it (C(^rec-)) to match a prefix.
    type: list
    elements: str
    default: []
  state_file:
    description:
      - Where the module remembers when it last saw a track in each room (small JSON, only rooms that still exist).
      - Shared with the role's timer. Empty to keep no state (a room then counts as idle from its newest join).
    type: path
    default: /var/lib/livekit-reaper/state.json
  audit_log:
    description:
      - Append one JSON line (C(event) C(room_reaped)) per room closed to this file. Empty for none.
    type: path
    default: /var/lib/livekit-deploy/audit.jsonl
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: The dry run; nothing is closed or written.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
notes:
  - The API key needs the C(roomList), C(roomAdmin) and C(roomCreate) grants; every key in livekit-server's key file has them.
seealso:
  - module: selfhosted.livekit.livekit_node_info
"""

EXAMPLES = r"""
- name: What would be closed (dry run)
  selfhosted.livekit.livekit_room_reaper:
    threshold: 7200
    allow_list: ['^webinar-', '^standup$']
  check_mode: true
  register: reaper

- name: Close rooms idle for over an hour, never the recording studio
  selfhosted.livekit.livekit_room_reaper:
    threshold: 3600
    allow_list: ['^studio-']
"""

RETURN = r"""
closed:
  description: The rooms closed, each with its name, sid, participant count and identities, and how long it was idle.
  returned: always
  type: list
  elements: dict
  sample: [{"room": "rec-42", "sid": "RM_x1", "participants": 1, "identities": ["EG_rec"], "idle_seconds": 4100,
            "idle_since": "2026-11-23T02:00:00Z"}]
would_close:
  description: In check mode, the rooms that would be closed (as in RV(closed)); otherwise empty.
  returned: always
  type: list
  elements: dict
kept:
  description:
    - The rooms left open, each with a C(reason) (C(allow_listed) with the C(pattern), C(publishing), C(empty) or
      C(idle_below_threshold) with C(idle_seconds)).
  returned: always
  type: list
  elements: dict
errors:
  description: Rooms that could not be inspected or closed, with the server's answer; the module fails when there are any.
  returned: always
  type: list
  elements: dict
rooms:
  description: How many rooms the server listed.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import api_argument_spec, client_from_params
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_reaper import Reaper, ReaperError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            api_argument_spec(),
            threshold=dict(type="int", default=3600),
            allow_list=dict(type="list", elements="str", default=[]),
            state_file=dict(type="path", default="/var/lib/livekit-reaper/state.json"),
            audit_log=dict(type="path", default="/var/lib/livekit-deploy/audit.jsonl"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        client = client_from_params(params)
        reaper = Reaper(client, params["threshold"], params["allow_list"], dry_run=module.check_mode,
                        state_file=params["state_file"] or None,
                        audit_log=None if module.check_mode else params["audit_log"] or None, source="module")
    except ValueError as err:
        module.fail_json(msg=str(err))
    except OSError as err:
        module.fail_json(msg="cannot read the key file %s: %s" % (params["key_file"], err.strerror or err))
    try:
        result = reaper.run(write_state=not module.check_mode)
    except ReaperError as err:
        module.fail_json(msg=str(err))
    except OSError as err:
        module.fail_json(msg="could not write the reaper's state or audit log: %s" % err)
    result.pop("state_changed", None)
    if result["errors"]:
        module.fail_json(msg="%d room(s) could not be inspected or closed; first: %s: %s"
                         % (len(result["errors"]), result["errors"][0]["room"], result["errors"][0]["error"]), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
