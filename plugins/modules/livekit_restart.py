#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_restart
short_description: Restart or stop livekit-server without cutting live calls
version_added: 0.2.0
description:
  - Restarts (or stops) the livekit-server systemd unit on the managed host the way a live node
    needs it, and reports what happened.
  - "Optional quiet-hour gate: wait until at most O(quiet_threshold) participants are connected to
    this node, for up to O(quiet_timeout) seconds; if they are not, fail, defer (report and do
    nothing) or drain anyway (O(on_busy))."
  - "Drain: asks systemd to restart or stop the unit without blocking, so the unit's C(ExecStop)
    sends the first SIGTERM. livekit-server then stops taking new rooms (with Redis), keeps serving
    its rooms and exits when its last participant leaves. The module waits up to O(drain_timeout)
    seconds; on that deadline it fails and leaves the node draining, or sends the second SIGTERM
    that ends the remaining sessions (O(on_drain_timeout=force))."
  - A drain already in progress (the unit is deactivating, for example after an operator's
    C(systemctl stop)) is joined, never signalled again, because a second signal forces it.
  - "Start: waits until the unit is active again (the unit's C(ExecStartPost) health check passed)
    with a new process and C(GET /) answers OK, then reads the version of the binary that process
    runs, and fails if it is not O(expected_version)."
  - How busy the node is comes from its own metrics (C(livekit_participant_total),
    C(livekit_room_total)); they count this node only, also when several nodes share Redis.
  - "A load that cannot be read (O(metrics_url) refuses, times out, closes the connection, answers an
    HTTP error or something without those gauges) counts as busy: the quiet-hour gate keeps waiting
    for a reading, and at O(quiet_timeout) O(on_busy) decides as for a busy node, with the cause in
    the message and in RV(load_error)."
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  unit:
    description: The systemd unit of livekit-server.
    type: str
    default: livekit-server.service
  state:
    description:
      - V(restarted) drains and starts the unit again (a stopped unit is just started).
      - V(stopped) drains and leaves it stopped.
    type: str
    choices: [restarted, stopped]
    default: restarted
  metrics_url:
    description: The node's Prometheus endpoint (the C(prometheus.port) of livekit.yaml).
    type: str
    default: http://127.0.0.1:6789/metrics
  health_url:
    description: The node's health check, C(GET /) on the signaling port.
    type: str
    default: http://127.0.0.1:7880/
  quiet_threshold:
    description:
      - Drain only once at most this many participants are connected to this node (as read from
        O(metrics_url); a load that cannot be read is not quiet). Unset, there is no gate and the
        drain starts at once.
    type: int
  quiet_timeout:
    description: Seconds to wait for the node to become quiet; V(0) checks once.
    type: int
    default: 0
  on_busy:
    description:
      - What to do when the node is not quiet by O(quiet_timeout).
      - V(fail) fails without signalling anything; V(defer) reports RV(deferred) and changes nothing;
        V(drain) drains anyway.
    type: str
    choices: [fail, defer, drain]
    default: fail
  drain_timeout:
    description:
      - Seconds to wait for the draining server to exit. Must leave 120 s of the unit's
        C(TimeoutStopSec), so systemd never SIGKILLs a drain this module is still waiting for.
    type: int
    default: 18000
  on_drain_timeout:
    description:
      - V(fail) leaves the node draining (it restarts by itself once its participants leave) and fails.
      - V(force) sends the second SIGTERM; the remaining participants are disconnected with
        SERVER_SHUTDOWN and counted in RV(forced_participants).
    type: str
    choices: [fail, force]
    default: fail
  start_timeout:
    description: Seconds to wait for the restarted server to be active and healthy.
    type: int
    default: 120
  expected_version:
    description: Fail unless the restarted server runs this version.
    type: str
  audit_log:
    description:
      - Append one JSON line per event (drain started or joined, deferred, forced, restarted, failed
        start) to this file, each as it happens, with its time (C(time), and C(ts) in epoch seconds).
        So a drain that is still under way, or whose Ansible run was cut, is already on record.
        Unset, nothing is written.
    type: path
  poll_interval:
    description: Seconds between probes while waiting.
    type: float
    default: 1.0
  max_refusal:
    description:
      - For a node that is the only one (nothing else takes its new rooms while it drains), the longest time a
        drain may refuse new rooms. A drain of a busy node whose O(drain_timeout) is longer fails before
        anything is signalled, unless O(allow_long_refusal). Unset, no bound.
    type: int
    version_added: 0.5.0
  allow_long_refusal:
    description: Drain anyway past O(max_refusal), with a warning.
    type: bool
    default: false
    version_added: 0.5.0
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: Reports the load and what it would do; the quiet-hour gate is checked once, without waiting.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
notes:
  - Without Redis, a draining livekit-server still accepts new rooms; the roles of this collection
    always configure Redis.
  - The module must run as root (it reads C(/proc/PID/exe) of the service process).
seealso:
  - module: selfhosted.livekit.livekit_node_info
"""

EXAMPLES = r"""
- name: Restart in a quiet hour, waiting up to an hour for the node to empty, then force
  selfhosted.livekit.livekit_restart:
    drain_timeout: 3600
    on_drain_timeout: force
    expected_version: 1.13.5
    audit_log: /var/lib/livekit-deploy/audit.jsonl
  register: restart

- name: Restart only if nobody is connected; otherwise leave it for the next run
  selfhosted.livekit.livekit_restart:
    quiet_threshold: 0
    on_busy: defer

- name: Wait up to 30 minutes for fewer than 3 participants, then drain and stop (before a restore)
  selfhosted.livekit.livekit_restart:
    state: stopped
    quiet_threshold: 2
    quiet_timeout: 1800
    on_busy: drain
"""

RETURN = r"""
action:
  description: >-
    What was done: C(restarted), C(drained) (stopped), C(started) (it was not running),
    C(joined_drain) (a drain was already in progress), C(deferred) or C(none).
  returned: always
  type: str
  sample: restarted
deferred:
  description: True when O(on_busy=defer) left the node alone because it was busy.
  returned: always
  type: bool
  sample: false
rooms_at_drain:
  description: >-
    Rooms on this node when the drain began (or when the restart was deferred); null when the load
    could not be read (see RV(load_error)).
  returned: always
  type: int
  sample: 2
participants_at_drain:
  description: Participants on this node when the drain began; null when the load could not be read.
  returned: always
  type: int
  sample: 5
load_error:
  description: >-
    Why the load could not be read before the drain (or the deferral): the metrics URL and the
    cause. An unknown load counts as busy.
  returned: when the load could not be read
  type: str
  sample: "http://127.0.0.1:6789/metrics: timed out"
gate_seconds:
  description: Seconds spent waiting for the node to become quiet.
  returned: always
  type: float
  sample: 12.0
drain_seconds:
  description: Seconds from the drain request until the old process exited.
  returned: always
  type: float
  sample: 431.5
forced_participants:
  description: >-
    Participants disconnected by the forcing signal (0 unless forced; the last count read, null if
    none could be read).
  returned: always
  type: int
  sample: 0
restart_seconds:
  description: Seconds from the old process's exit until the new one was healthy.
  returned: when the server was started
  type: float
  sample: 2.4
refused_new_rooms:
  description: >-
    The window in which this node refused new rooms: from the drain request until the new process
    was healthy (UTC, seconds).
  returned: when a running server was restarted
  type: dict
  sample: {"started": "2026-11-23T02:00:00Z", "ended": "2026-11-23T02:07:14Z", "seconds": 434.0}
old_pid:
  description: Main process before the restart.
  returned: always
  type: int
old_version:
  description: Version the old process was running.
  returned: always
  type: str
  sample: 1.13.4
new_pid:
  description: Main process after the restart.
  returned: when the server was started
  type: int
new_version:
  description: Version the new process runs.
  returned: when the server was started
  type: str
  sample: 1.13.5
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import (
    DrainRestart,
    RestartError,
    Systemd,
    read_health,
    read_load,
    running_version,
)
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import append_audit


def main():
    module = AnsibleModule(
        argument_spec=dict(
            unit=dict(type="str", default="livekit-server.service"),
            state=dict(type="str", choices=["restarted", "stopped"], default="restarted"),
            metrics_url=dict(type="str", default="http://127.0.0.1:6789/metrics"),
            health_url=dict(type="str", default="http://127.0.0.1:7880/"),
            quiet_threshold=dict(type="int"),
            quiet_timeout=dict(type="int", default=0),
            on_busy=dict(type="str", choices=["fail", "defer", "drain"], default="fail"),
            drain_timeout=dict(type="int", default=18000),
            on_drain_timeout=dict(type="str", choices=["fail", "force"], default="fail"),
            start_timeout=dict(type="int", default=120),
            expected_version=dict(type="str"),
            audit_log=dict(type="path"),
            poll_interval=dict(type="float", default=1.0),
            max_refusal=dict(type="int"),
            allow_long_refusal=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    for name in ("quiet_timeout", "drain_timeout", "start_timeout"):
        if params[name] < 0:
            module.fail_json(msg="%s must be 0 or more seconds, not %d" % (name, params[name]))
    if params["quiet_threshold"] is not None and params["quiet_threshold"] < 0:
        module.fail_json(msg="quiet_threshold must be 0 or more participants")

    audit_errors = []

    def write_audit(event, fields):
        if module.check_mode or audit_errors:
            return
        try:
            append_audit(params["audit_log"], event, unit=params["unit"], **fields)
        except OSError as err:
            audit_errors.append(str(err))

    restart = DrainRestart(
        Systemd(module.run_command, params["unit"]),
        load=lambda: read_load(params["metrics_url"]),
        health=lambda: read_health(params["health_url"]),
        version=lambda pid: running_version(module.run_command, pid),
        poll=params["poll_interval"],
        on_event=write_audit,
    )
    failure = None
    try:
        result = restart.run(
            state=params["state"], quiet_threshold=params["quiet_threshold"], quiet_timeout=params["quiet_timeout"],
            on_busy=params["on_busy"], drain_timeout=params["drain_timeout"],
            on_drain_timeout=params["on_drain_timeout"], start_timeout=params["start_timeout"],
            expected_version=params["expected_version"], check_mode=module.check_mode,
            max_refusal=params["max_refusal"], allow_long_refusal=params["allow_long_refusal"])
    except RestartError as err:
        failure, result = str(err), err.result
    except RuntimeError as err:
        failure, result = str(err), {}

    if result.get("refusal_warning"):
        module.warn(result["refusal_warning"])
    if audit_errors:
        module.warn("could not write the audit log %s: %s" % (params["audit_log"], audit_errors[0]))
    if failure:
        module.fail_json(msg=failure, **result)
    if result.get("load_error"):
        if result.get("deferred"):
            module.warn("restart deferred: the load of the node could not be read (%s), and an unknown load counts "
                        "as busy. Check that metrics_url is livekit-server's Prometheus endpoint and that it answers"
                        % result["load_error"])
        else:
            module.warn("the load of the node could not be read before the drain (%s); participants_at_drain is "
                        "unknown" % result["load_error"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
