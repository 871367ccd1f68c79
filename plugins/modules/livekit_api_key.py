#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_api_key
short_description: Add or retire an API key in livekit-server's key file
version_added: 0.2.0
description:
  - Manages the key file of livekit-server (C(key_file) in livekit.yaml) as a set of named keys.
    With O(state=present) adds a key, generated (a random C(API...) name and a 48-character secret
    from Python's C(secrets)) or supplied; with O(state=absent) retires one.
  - Refuses what would break clients or the file, and leaves the file untouched then - a name
    already used with another secret, a secret under 32 characters, retiring a key that is not
    there (unless O(missing_ok)) or the last key.
  - Writes atomically (temporary file in the same directory, then rename) with mode 0600, owned
    by O(owner)/O(group); livekit-server refuses a key file others can read.
  - "livekit-server reads the key file only at start: restart it through a drain afterwards
    (M(selfhosted.livekit.livekit_restart)); the C(rotate_keys.yml) playbook does the whole rotation."
  - Keeps key names and when they were added in O(metadata_file) (no secrets), so a later run can
    tell whether tokens signed with an old key have expired.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  path:
    description: The key file.
    type: path
    default: /etc/livekit/keys.yaml
  state:
    description: V(present) adds the key, V(absent) retires it.
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - Key name (the C(iss) of tokens signed with it). Required with O(state=absent).
      - With O(state=present) and no name, a name is generated.
    type: str
  secret:
    description:
      - The secret of a supplied key, at least 32 characters. Unset with O(state=present), one is
        generated.
    type: str
  return_secret:
    description:
      - Return the (new) key's secret in RV(secret), for handing to a secret store. Set C(no_log) on
        the task when you do; without it the secret is never returned.
    type: bool
    default: false
  missing_ok:
    description: With O(state=absent), a key that is not there is not an error.
    type: bool
    default: false
  owner:
    description: Owner of the key file.
    type: str
    default: livekit
  group:
    description: Group of the key file.
    type: str
    default: livekit
  metadata_file:
    description: Where key names and the time each was added are kept (no secrets); empty to skip.
    type: path
    default: /var/lib/livekit-deploy/api_keys.json
  audit_log:
    description: Append a C(key_added)/C(key_retired) event (name only) to this JSON-lines file.
    type: path
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: full
    details: The diff lists key names only, never a secret.
notes:
  - A generated name is only generated once per task run; to make a second run idempotent, pass the
    name (and secret) the first run returned.
seealso:
  - module: selfhosted.livekit.livekit_api_key_info
  - module: selfhosted.livekit.livekit_restart
"""

EXAMPLES = r"""
- name: Add a generated key and hand its secret to the play (never logged)
  selfhosted.livekit.livekit_api_key:
    return_secret: true
  register: new_key
  no_log: true

- name: Add the same key on another node
  selfhosted.livekit.livekit_api_key:
    name: "{{ new_key.name }}"
    secret: "{{ new_key.secret }}"
  no_log: true

- name: Retire the old key once its tokens have expired
  selfhosted.livekit.livekit_api_key:
    name: APIoldkey
    state: absent
"""

RETURN = r"""
name:
  description: The key added or retired.
  returned: always
  type: str
  sample: APIk3Jd9fQ2xLm0p
secret:
  description: The key's secret, only with O(return_secret=true) and O(state=present).
  returned: when requested
  type: str
keys:
  description: Key names in the file after the task.
  returned: always
  type: list
  elements: str
  sample: [APIk3Jd9fQ2xLm0p, APIold]
"""

import grp
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_keys import (
    KeyFile,
    KeyFileError,
    generate_name,
    generate_secret,
    now_iso,
    read_metadata,
    write_key_file,
    write_metadata,
)
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import append_audit


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/livekit/keys.yaml"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            name=dict(type="str"),
            secret=dict(type="str", no_log=True),
            return_secret=dict(type="bool", default=False),
            missing_ok=dict(type="bool", default=False),
            owner=dict(type="str", default="livekit"),
            group=dict(type="str", default="livekit"),
            metadata_file=dict(type="path", default="/var/lib/livekit-deploy/api_keys.json"),
            audit_log=dict(type="path"),
        ),
        required_if=[("state", "absent", ["name"])],
        supports_check_mode=True,
    )
    params = module.params
    try:
        keyfile = KeyFile.read(params["path"])
    except (OSError, ValueError) as err:
        module.fail_json(msg="cannot read the key file %s: %s" % (params["path"], err))
    before = sorted(keyfile.keys)
    name = params["name"]
    result = dict(changed=False, name=name)

    try:
        if params["state"] == "present":
            name = name or generate_name()
            secret = params["secret"] or keyfile.keys.get(name) or generate_secret()
            changed = keyfile.add(name, secret)
            if params["return_secret"]:
                result["secret"] = secret
        else:
            changed = keyfile.retire(name, params["missing_ok"])
    except KeyFileError as err:
        module.fail_json(msg="%s; %s was left unchanged" % (err, params["path"]), keys=before)

    result.update(name=name, changed=changed, keys=sorted(keyfile.keys))
    if module._diff and changed:
        result["diff"] = dict(before="\n".join(before) + "\n", after="\n".join(result["keys"]) + "\n",
                              before_header="%s (key names)" % params["path"],
                              after_header="%s (key names)" % params["path"])
    if changed and not module.check_mode:
        try:
            uid = pwd.getpwnam(params["owner"]).pw_uid
            gid = grp.getgrnam(params["group"]).gr_gid
        except KeyError as err:
            module.fail_json(msg="unknown owner or group: %s" % err, keys=before)
        write_key_file(params["path"], keyfile, uid, gid)
        event = "key_added" if params["state"] == "present" else "key_retired"
        if params["metadata_file"]:
            meta = read_metadata(params["metadata_file"])
            if params["state"] == "present":
                meta[name] = dict(added=now_iso())
            else:
                meta.pop(name, None)
            write_metadata(params["metadata_file"], meta)
        append_audit(params["audit_log"], event, key=name, keys=len(keyfile.keys))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
