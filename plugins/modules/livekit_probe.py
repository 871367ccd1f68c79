#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_probe
short_description: Compare a host's files, directories, links and packages with what a role would make them, in one round trip
version_added: 0.5.0
description:
  - Read-only. A role renders its templates on the controller, hashes them there, and asks this
    module once which of its paths differ from what it would write (content, kind, mode, owner,
    group, link target, absence) and which of its packages are missing. The role then runs its
    C(template), C(copy), C(file) and C(apt) tasks only for what differs, so a converge that changes
    nothing costs one round trip per role instead of one per file.
  - Those tasks stay the ones that make the change, with their own diff, validation and handlers.
    When a controller-side hash cannot match (a template that renders differently on the host),
    the task simply runs every time and reports no change, as it would without this module.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  paths:
    description: What each path should be.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: Absolute path on the host.
        type: path
        required: true
      state:
        description: C(file), C(directory), C(link), C(absent), or C(any) (only report whether it exists).
        type: str
        choices: [file, directory, link, absent, any]
        default: file
      sha256:
        description: SHA-256 of the content a file should have; omitted, content is not compared.
        type: str
      target:
        description: Where a link should point.
        type: str
      mode:
        description: Octal mode, for example C("0644").
        type: str
      owner:
        description: Owner name.
        type: str
      group:
        description: Group name.
        type: str
  packages:
    description: Debian packages that should be installed.
    type: list
    elements: str
    default: []
  services:
    description: systemd units to report on (enabled at boot, active now).
    type: list
    elements: str
    default: []
  users:
    description: System accounts that should exist as described; the ones that do not are in RV(differ) as C(user:NAME).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Account name.
        type: str
        required: true
      group:
        description: Primary group name.
        type: str
      home:
        description: Home directory.
        type: str
      shell:
        description: Login shell.
        type: str
  groups:
    description: Groups that should exist; the ones that do not are in RV(differ) as C(group:NAME).
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Read-only; it never changes anything.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Find what differs from what this run would write
  selfhosted.livekit.livekit_probe:
    paths:
      - {path: /etc/sysctl.d/60-livekit.conf, sha256: "{{ lookup('ansible.builtin.template', 'sysctl.conf.j2') | hash('sha256') }}",
         mode: "0644", owner: root, group: root}
      - {path: /var/lib/livekit, state: directory, mode: "0750", owner: livekit, group: livekit}
    packages: [nftables, curl]
  register: probe

- name: Write the sysctl settings (only when they differ)
  ansible.builtin.template:
    src: sysctl.conf.j2
    dest: /etc/sysctl.d/60-livekit.conf
    mode: "0644"
  when: "'/etc/sysctl.d/60-livekit.conf' in probe.differ"
"""

RETURN = r"""
differ:
  description: The paths that are not what they should be (missing, other content, kind, mode, owner, group or target).
  returned: always
  type: list
  elements: str
exists:
  description: For every path given, whether something exists there.
  returned: always
  type: dict
reasons:
  description: For each path in RV(differ), what differs.
  returned: always
  type: dict
  sample: {"/etc/livekit/livekit.yaml": "content"}
missing_packages:
  description: The packages given that are not installed.
  returned: always
  type: list
  elements: str
package_lists:
  description: Whether the host has any apt package lists (a freshly imaged host may have none).
  returned: always
  type: bool
services:
  description: For each unit in O(services), whether it is enabled and whether it is active.
  returned: always
  type: dict
  sample: {"nftables.service": {"enabled": true, "active": true}}
"""

import glob
import grp
import hashlib
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _name(lookup, ident):
    try:
        return lookup(ident)[0]
    except KeyError:
        return str(ident)


def why_differs(want):
    """'' when the path is what ``want`` describes, else a word for the first difference."""
    path, state = want["path"], want["state"]
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "" if state in ("absent", "any") else "missing"
    if state == "any":
        return ""
    if state == "absent":
        return "present"
    kind = {"file": stat.S_ISREG, "directory": stat.S_ISDIR, "link": stat.S_ISLNK}[state]
    if not kind(info.st_mode):
        return "kind"
    if state == "link":
        return "" if want.get("target") in (None, os.readlink(path)) else "target"
    if want.get("mode") and int(want["mode"], 8) != stat.S_IMODE(info.st_mode):
        return "mode"
    if want.get("owner") and want["owner"] != _name(pwd.getpwuid, info.st_uid):
        return "owner"
    if want.get("group") and want["group"] != _name(grp.getgrgid, info.st_gid):
        return "group"
    if state == "file" and want.get("sha256") and want["sha256"] != _sha256(path):
        return "content"
    return ""


def user_differs(want):
    try:
        entry = pwd.getpwnam(want["name"])
    except KeyError:
        return "missing"
    if want.get("group") and _name(grp.getgrgid, entry.pw_gid) != want["group"]:
        return "group"
    if want.get("home") and entry.pw_dir != want["home"]:
        return "home"
    if want.get("shell") and entry.pw_shell != want["shell"]:
        return "shell"
    return ""


def group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            paths=dict(type="list", elements="dict", default=[], options=dict(
                path=dict(type="path", required=True),
                state=dict(type="str", default="file", choices=["file", "directory", "link", "absent", "any"]),
                sha256=dict(type="str"),
                target=dict(type="str"),
                mode=dict(type="str"),
                owner=dict(type="str"),
                group=dict(type="str"),
            )),
            packages=dict(type="list", elements="str", default=[]),
            services=dict(type="list", elements="str", default=[]),
            users=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                group=dict(type="str"),
                home=dict(type="str"),
                shell=dict(type="str"),
            )),
            groups=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    reasons, exists = {}, {}
    for want in module.params["paths"]:
        try:
            reason = why_differs(want)
        except (OSError, ValueError) as err:
            reason = "unreadable: %s" % err
        exists[want["path"]] = os.path.lexists(want["path"])
        if reason:
            reasons[want["path"]] = reason

    for name in module.params["groups"]:
        if not group_exists(name):
            reasons["group:" + name] = "missing"
    for want in module.params["users"]:
        reason = user_differs(want)
        if reason:
            reasons["user:" + want["name"]] = reason

    services = {}
    if module.params["services"]:
        systemctl = module.get_bin_path("systemctl", required=True)
        for unit in module.params["services"]:
            enabled = module.run_command([systemctl, "is-enabled", unit])[1].strip()
            active = module.run_command([systemctl, "is-active", unit])[1].strip()
            services[unit] = dict(enabled=enabled == "enabled", active=active == "active")

    missing = []
    packages = module.params["packages"]
    if packages:
        dpkg_query = module.get_bin_path("dpkg-query", required=True)
        rc, out, err = module.run_command([dpkg_query, "-W", "-f", "${Package} ${db:Status-Abbrev}\\n"] + packages)
        installed = set(line.split()[0] for line in out.splitlines() if len(line.split()) > 1 and line.split()[1] == "ii")
        missing = [name for name in packages if name not in installed]

    module.exit_json(
        changed=False,
        differ=sorted(reasons),
        reasons=reasons,
        exists=exists,
        missing_packages=missing,
        package_lists=bool(glob.glob("/var/lib/apt/lists/*_Packages*")),
        services=services,
    )


if __name__ == "__main__":
    main()
