#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_swap
short_description: Move a livekit-server host to a new instance without refusing a new call (blue-green)
version_added: 0.5.0
description:
  - "Under the blue_green deployment strategy a host runs livekit-server as systemd template instances
    (slots, each with its own ports, all in the same Redis with the same keys). A swap starts the new
    release or configuration in a free slot, waits until it is healthy and C(SERVING) in Redis,
    checks it runs O(version) and accepts every API key of the key file, points nginx at it, and only
    then lets the live instance drain: it takes no new rooms but keeps its calls, and exits when they
    end. New rooms are never refused (docs/blue-green.md)."
  - "A swap that fails before the drain (no free slot or port, not enough memory or file descriptors, a
    key a draining slot still needs, a new instance that exits, is not healthy in O(timeout), runs
    another version, refuses a key, or an nginx configuration that does not pass its test) stops the new
    instance, leaves the live one untouched (its PID is checked), records the slot as C(failed) with the
    reason and fails with it."
  - "With O(state=planned), only chooses the slot and runs the checks (nothing starts); it notes drains
    that have ended in the record."
  - The single instance of the restart strategy (O(legacy_unit)), when it runs and the record names no
    live slot, is the live instance of the first swap, which disables it.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  state:
    description:
      - V(swapped) swaps; V(planned) only chooses the slot and checks.
      - V(failed) records that a swap to O(target) failed before the module ran (its configuration was
        refused by the release, say) with O(reason), and changes nothing else.
    type: str
    choices: [planned, swapped, failed]
    default: swapped
  reason:
    description: Why the swap failed, with O(state=failed).
    type: str
  slots:
    description:
      - The slots and their ports, by name. Each has C(port), C(rtc_tcp_port), C(turn_udp_port),
        C(turn_tls_port) and C(prometheus_port) (other keys are ignored).
    type: dict
    required: true
  target:
    description: The slot to start; by default the first free one after the live slot.
    type: str
  version:
    description: The release the new instance must run. Required with O(state=swapped).
    type: str
  event:
    description: What the swap is, for the record and the audit log.
    type: str
    choices: [deploy, rollback]
    default: deploy
  unit_template:
    description: The unit of a slot, with C({slot}) for its name.
    type: str
    default: livekit-server@{slot}.service
  legacy_unit:
    description: The restart strategy's single unit; empty when there is none to migrate from.
    type: str
    default: livekit-server.service
  legacy_ports:
    description: The ports of O(legacy_unit)'s instance (same keys as a slot).
    type: dict
    default: {}
  config_template:
    description: A slot's livekit.yaml, with C({slot}).
    type: str
    default: /etc/livekit/livekit-{slot}.yaml
  binary_template:
    description: A slot's livekit-server binary, with C({slot}) (runs C(list-nodes)).
    type: str
    default: /opt/livekit/current-{slot}/livekit-server
  key_file:
    description: The key file every instance reads; each key in it must be accepted by the new instance.
    type: path
    default: /etc/livekit/keys.yaml
  proxy_files:
    description:
      - Files nginx includes that name the live instance's ports, each C(path) and C(content) for the
        new slot. Written after the new instance passed its checks, then O(proxy_test_command) must
        pass, else they are put back.
    type: list
    elements: dict
    default: []
  proxy_test_command:
    description: Checks nginx's configuration (argv).
    type: list
    elements: str
    default: [nginx, -t, -q]
  proxy_reload_command:
    description: Reloads nginx gracefully (argv); open connections stay with the old workers.
    type: list
    elements: str
    default: [systemctl, reload, nginx.service]
  min_free_memory_mb:
    description: MemAvailable needed to start a second instance (at least the live instance's RSS is needed anyway).
    type: int
    default: 256
  min_free_fds:
    description: File descriptors that must be free in the system (fs.file-max minus allocated).
    type: int
    default: 65536
  timeout:
    description: Seconds for the new instance to be healthy and C(SERVING).
    type: int
    default: 120
  deploy_dir:
    description: Directory of the deployment record, audit log and configuration snapshots.
    type: path
    default: /var/lib/livekit-deploy
  facts_file:
    description: Where to also write the record as a local fact; empty to skip.
    type: path
    default: /etc/ansible/facts.d/livekit_deployment.fact
  playbook:
    description: Playbook that made the change, for the record.
    type: str
  by:
    description: Who made the change, for the record.
    type: str
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Runs the checks of O(state=planned) and reports the slot it would start.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
notes:
  - Secrets are never returned; the key file is read on the host to sign a ListRooms call per key.
"""

EXAMPLES = r"""
- name: Choose the slot for the new instance
  selfhosted.livekit.livekit_swap:
    state: planned
    slots: "{{ slots }}"
  register: plan

- name: Swap to it (after its livekit-<slot>.yaml and current-<slot> link are in place)
  selfhosted.livekit.livekit_swap:
    slots: "{{ slots }}"
    target: "{{ plan.target }}"
    version: 1.13.5
    proxy_files:
      - path: /etc/nginx/livekit-upstream-http.conf
        content: "upstream livekit_signal { server 127.0.0.1:{{ slots[plan.target].port }}; }\n"
"""

RETURN = r"""
target:
  description: The slot chosen (planned) or now live (swapped).
  returned: always
  type: str
  sample: b
live_slot:
  description: The live slot after the task (C('') is the restart strategy's single instance).
  returned: always
  type: str
previous_slot:
  description: The slot that was live before the swap; it now drains.
  returned: when swapped
  type: str
draining:
  description: Slots whose instance is still draining its calls.
  returned: always
  type: list
  elements: str
free:
  description: Slots with no instance, in the order a swap tries them.
  returned: always
  type: list
  elements: str
participants_at_drain:
  description: Participants on the old instance when it began to drain.
  returned: when swapped
  type: int
start_seconds:
  description: Seconds from the start of the task until the new instance was healthy and SERVING.
  returned: when swapped
  type: float
new_pid:
  description: The new instance's PID.
  returned: when swapped
  type: int
old_pid:
  description: The old instance's PID (it drains).
  returned: when swapped
  type: int
memory_available_mb:
  description: MemAvailable when the swap was planned.
  returned: always
  type: int
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import LiveKitClient, LiveKitError
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import parse_key_file
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import append_audit, atomic_write
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_metrics import parse_list_nodes
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import parse_metrics, read_health
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import running_version
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_record import merge_slots, read_record
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_record import record_deployment, write
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_swap import Host, Swap, SwapError


def proc_listening():
    """(proto, port) of every listening TCP socket and bound UDP socket on the host."""
    found = set()
    for proto, names in (("tcp", ("/proc/net/tcp", "/proc/net/tcp6")), ("udp", ("/proc/net/udp", "/proc/net/udp6"))):
        for name in names:
            try:
                with open(name) as handle:
                    lines = handle.read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if len(fields) > 3 and (proto == "udp" or fields[3] == "0A"):
                    found.add((proto, int(fields[1].rsplit(":", 1)[1], 16)))
    return found


def read_number(path, field=None):
    with open(path) as handle:
        text = handle.read()
    if field is None:
        return text.split()
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    return 0.0


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["planned", "swapped", "failed"], default="swapped"),
            reason=dict(type="str"),
            slots=dict(type="dict", required=True),
            target=dict(type="str"),
            version=dict(type="str"),
            event=dict(type="str", choices=["deploy", "rollback"], default="deploy"),
            unit_template=dict(type="str", default="livekit-server@{slot}.service"),
            legacy_unit=dict(type="str", default="livekit-server.service"),
            legacy_ports=dict(type="dict", default={}),
            config_template=dict(type="str", default="/etc/livekit/livekit-{slot}.yaml"),
            binary_template=dict(type="str", default="/opt/livekit/current-{slot}/livekit-server"),
            key_file=dict(type="path", default="/etc/livekit/keys.yaml"),
            proxy_files=dict(type="list", elements="dict", default=[]),
            proxy_test_command=dict(type="list", elements="str", default=["nginx", "-t", "-q"]),
            proxy_reload_command=dict(type="list", elements="str", default=["systemctl", "reload", "nginx.service"]),
            min_free_memory_mb=dict(type="int", default=256),
            min_free_fds=dict(type="int", default=65536),
            timeout=dict(type="int", default=120),
            deploy_dir=dict(type="path", default="/var/lib/livekit-deploy"),
            facts_file=dict(type="path", default="/etc/ansible/facts.d/livekit_deployment.fact"),
            playbook=dict(type="str"),
            by=dict(type="str"),
        ),
        required_if=[("state", "swapped", ["version"]), ("state", "failed", ["target", "reason"])],
        supports_check_mode=True,
    )
    params = module.params
    slots = params["slots"]
    for name, ports in slots.items():
        if not isinstance(ports, dict) or not all(str(ports.get(k, "")).isdigit() for k in ("port", "prometheus_port")):
            module.fail_json(msg="slot %s needs numeric port and prometheus_port, got %r" % (name, ports))
    for entry in params["proxy_files"]:
        if set(entry) != {"path", "content"}:
            module.fail_json(msg="each proxy_files entry needs exactly path and content")
    run = module.run_command
    saved = {}

    def unit(slot):
        if slot == "":
            return params["legacy_unit"] or None
        return params["unit_template"].format(slot=slot)

    def ctl(*args):
        rc, out, err = run(["systemctl"] + list(args))
        if rc != 0:
            raise RuntimeError("systemctl %s failed: %s" % (" ".join(args), (err or out).strip()[:300]))
        return out

    def show(name):
        out = ctl("show", "--property=ActiveState,MainPID,NRestarts,UnitFileState,LoadState", name)
        status = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        status["MainPID"] = int(status.get("MainPID") or 0)
        return status

    def fetch(port):
        try:
            with open_url("http://127.0.0.1:%s/metrics" % port, timeout=5, follow_redirects="none") as response:
                return response.read().decode("utf-8", "replace")
        except Exception:  # pylint: disable=broad-except  # any failure is "no reading"
            return None

    def participants(port):
        text = fetch(port)
        try:
            return parse_metrics(text)["participants"] if text else None
        except ValueError:
            return None

    def list_nodes(slot):
        command = [params["binary_template"].format(slot=slot), "list-nodes",
                   "--config", params["config_template"].format(slot=slot)]
        rc, out, err = run(command)
        nodes = parse_list_nodes(out + "\n" + err)
        if not nodes and "\u2502" not in out + err:
            raise RuntimeError("list-nodes printed no table (exit %d)" % rc)
        return nodes

    def rss_mb(pid):
        try:
            return read_number("/proc/%d/status" % pid, "VmRSS") / 1024.0
        except OSError:
            return 0.0

    def free_fds():
        allocated, dummy, maximum = (int(x) for x in read_number("/proc/sys/fs/file-nr")[:3])
        return maximum - allocated

    def key_names():
        try:
            with open(params["key_file"]) as handle:
                return sorted(parse_key_file(handle.read()))
        except (OSError, ValueError):
            return []

    def check_keys(port):
        try:
            with open(params["key_file"]) as handle:
                keys = parse_key_file(handle.read())
        except (OSError, ValueError) as err:
            return [("(key file)", "cannot read %s: %s" % (params["key_file"], err))]
        refused = []
        for name in sorted(keys):
            try:
                LiveKitClient("http://127.0.0.1:%s" % port, name, keys[name]).list_rooms()
            except LiveKitError as err:
                refused.append((name, str(err)))
        return refused

    def proxy_write(dummy_slot):
        for entry in params["proxy_files"]:
            try:
                with open(entry["path"], "rb") as handle:
                    saved[entry["path"]] = handle.read()
            except FileNotFoundError:
                saved[entry["path"]] = None
            atomic_write(entry["path"], entry["content"].encode(), 0o644)

    def command_error(argv):
        if not argv:
            return None
        rc, out, err = run(argv)
        return None if rc == 0 else "%s: %s" % (" ".join(argv), (err or out).strip()[-400:])

    def proxy_restore():
        for path, content in saved.items():
            if content is None:
                os.unlink(path)
            else:
                atomic_write(path, content, 0o644)

    def save(slot, version, slots_update):
        if slot is None:
            record = read_record(params["deploy_dir"])
            record["slots"] = merge_slots(record.get("slots"), slots_update)
            write(params["deploy_dir"], record, params["facts_file"])
            return
        record_deployment(params["deploy_dir"], version, event=params["event"],
                          config=params["config_template"].format(slot=slot), playbook=params["playbook"],
                          by=params["by"], facts_file=params["facts_file"], slot=slot, slots_update=slots_update)

    def audit(event, **fields):
        append_audit(os.path.join(params["deploy_dir"], "audit.jsonl"), event, **fields)

    host = Host(
        unit=unit, show=show,
        start=lambda name: ctl("start", "--no-block", name),
        stop=lambda name: ctl("stop", "--no-block", name),
        stop_now=lambda name: ctl("stop", name),
        enable=lambda name: ctl("enable", "--quiet", name),
        disable=lambda name: ctl("disable", "--quiet", name),
        health=lambda port: read_health("http://127.0.0.1:%s/" % port),
        metrics=fetch, participants=participants, list_nodes=list_nodes,
        version=lambda pid: running_version(run, pid), rss_mb=rss_mb,
        mem_available_mb=lambda: read_number("/proc/meminfo", "MemAvailable") / 1024.0,
        free_fds=free_fds, listening=proc_listening, key_names=key_names, check_keys=check_keys,
        proxy_write=proxy_write, proxy_test=lambda: command_error(params["proxy_test_command"]),
        proxy_restore=proxy_restore, proxy_reload=lambda: command_error(params["proxy_reload_command"]),
        record=lambda: read_record(params["deploy_dir"]), save=save, audit=audit,
        legacy_ports=params["legacy_ports"],
    )
    swap = Swap(host, slots)
    try:
        if params["state"] == "failed":
            result = dict(changed=True, target=params["target"])
            if not module.check_mode:
                swap.record_failure(params["target"], params["reason"])
        elif params["state"] == "planned":
            result = swap.plan(params["target"], params["min_free_memory_mb"], params["min_free_fds"], module.check_mode)
            state = result.pop("state")
            result["changed"] = swap.note_ended_drains(state, module.check_mode)
        else:
            result = swap.run(params["version"], params["target"], params["min_free_memory_mb"],
                              params["min_free_fds"], params["timeout"], module.check_mode, params["event"])
    except SwapError as err:
        result = dict(err.result)
        result.pop("state", None)
        module.fail_json(msg=str(err), **result)
    except (RuntimeError, OSError, ValueError) as err:
        module.fail_json(msg="the swap stopped: %s" % err)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**json.loads(json.dumps(result)))


if __name__ == "__main__":
    main()
