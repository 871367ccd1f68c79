#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_api_key_info
short_description: List the API keys in livekit-server's key file (names only)
version_added: 0.2.0
description:
  - Lists the key names in the key file and, for keys added by M(selfhosted.livekit.livekit_api_key),
    when they were added. Never returns a secret.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  path:
    description: The key file.
    type: path
    default: /etc/livekit/keys.yaml
  metadata_file:
    description: The file M(selfhosted.livekit.livekit_api_key) keeps names and times in.
    type: path
    default: /var/lib/livekit-deploy/api_keys.json
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Read-only.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
seealso:
  - module: selfhosted.livekit.livekit_api_key
"""

EXAMPLES = r"""
- name: Which keys does the node accept?
  selfhosted.livekit.livekit_api_key_info:
  register: keys

- name: Show them
  ansible.builtin.debug:
    msg: "{{ keys.keys | map(attribute='name') | list }}"
"""

RETURN = r"""
keys:
  description: Each key's name and when it was added (null when unknown, e.g. installed by the role).
  returned: always
  type: list
  elements: dict
  sample: [{"name": "APIk3Jd9fQ2xLm0p", "added": "2026-11-23T02:00:00Z"}, {"name": "APIold", "added": null}]
names:
  description: The key names, sorted.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_keys import KeyFile, read_metadata


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/livekit/keys.yaml"),
            metadata_file=dict(type="path", default="/var/lib/livekit-deploy/api_keys.json"),
        ),
        supports_check_mode=True,
    )
    try:
        keyfile = KeyFile.read(module.params["path"])
    except (OSError, ValueError) as err:
        module.fail_json(msg="cannot read the key file %s: %s" % (module.params["path"], err))
    meta = read_metadata(module.params["metadata_file"]) if module.params["metadata_file"] else {}
    names = sorted(keyfile.keys)
    module.exit_json(changed=False, names=names,
                     keys=[dict(name=name, added=meta.get(name, {}).get("added")) for name in names])


if __name__ == "__main__":
    main()
