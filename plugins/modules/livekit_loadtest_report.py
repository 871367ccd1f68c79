#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_loadtest_report
short_description: Write a LiveKit load test's capacity report (Markdown, JSON and a PNG plot)
version_added: 0.8.0
description:
  - Reads the load generator's result (its participants, their joins, its timeline and its own CPU
    use) and the node's samples (from M(selfhosted.livekit.livekit_loadtest_sampler)) and writes
    C(report.md), C(report.json) and C(report.png) into O(dest).
  - The report gives the largest load that stayed under the limits (by default the ops guide's 70 %
    CPU and 3 % packet loss; a limit counts as crossed at the first of two samples in a row over it),
    the participants and subscribed tracks per core extrapolated to the CPU limit, CPU and egress per
    subscribed track, and the participants per core the load generator itself sustained.
  - The PNG (written with the standard library, no plotting package) shows participants and subscribed
    tracks, CPU (host and livekit-server) and packet loss over time, with the limits.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
options:
  generator_result:
    description:
      - The load generator's JSON result file on the managed host (normally the controller).
    type: path
    required: true
  samples:
    description:
      - The node's samples, the RV(selfhosted.livekit.livekit_loadtest_sampler#module:samples) it returned.
    type: list
    elements: dict
    required: true
  node:
    description:
      - Name of the node under test, for the report's title.
    type: str
    required: true
  dest:
    description:
      - Directory to write the three files into (created 0755 if missing).
    type: path
    required: true
  cpu_limit:
    description:
      - CPU percent of the node (all cores = 100) the capacity must stay under.
    type: float
    default: 70
  loss_limit:
    description:
      - Packet loss percent the capacity must stay under.
    type: float
    default: 3
  stop_cpu:
    description:
      - The generator's early-stop CPU threshold (shown in the report and the plot).
    type: float
    default: 85
  stop_loss:
    description:
      - The generator's early-stop loss threshold (shown in the report and the plot).
    type: float
    default: 5
  stop_join_failures:
    description:
      - The generator's early-stop count of failed joins (shown in the report).
    type: int
    default: 1
  cpu_basis:
    description:
      - C(host) judges the host's CPU (everything on the node); C(livekit) only livekit-server's
        share of it, for a node that shares its host with the load generator or other work.
    type: str
    choices: [host, livekit]
    default: host
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: In check mode the report is computed and returned, and no file is written.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Write the report next to the playbook
  selfhosted.livekit.livekit_loadtest_report:
    generator_result: /tmp/loadtest/generator.json
    samples: "{{ sampler_job.samples }}"
    node: lk-1
    dest: "{{ playbook_dir }}/loadtest-reports/lk-1"
  delegate_to: localhost
"""

RETURN = r"""
files:
  description: The three files written.
  returned: always
  type: list
  elements: str
  sample: [/reports/lk-1/report.md, /reports/lk-1/report.json, /reports/lk-1/report.png]
summary:
  description: The report without its per-sample data.
  returned: always
  type: dict
  sample:
    participants_planned: 6
    participants_joined: 6
    stop_reason: null
    capacity: {"participants_per_core": 180.5, "limit_crossed": false}
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import atomic_write
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_loadtest import (
    build_report,
    render_markdown,
    render_plot,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            generator_result=dict(type="path", required=True),
            samples=dict(type="list", elements="dict", required=True),
            node=dict(type="str", required=True),
            dest=dict(type="path", required=True),
            cpu_limit=dict(type="float", default=70),
            loss_limit=dict(type="float", default=3),
            stop_cpu=dict(type="float", default=85),
            stop_loss=dict(type="float", default=5),
            stop_join_failures=dict(type="int", default=1),
            cpu_basis=dict(type="str", choices=["host", "livekit"], default="host"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        with open(params["generator_result"]) as handle:
            generator = json.load(handle)
    except (OSError, ValueError) as err:
        module.fail_json(msg="cannot read the generator's result %s: %s" % (params["generator_result"], err))
    limits = {"cpu_percent": params["cpu_limit"], "loss_percent": params["loss_limit"],
              "stop_cpu_percent": params["stop_cpu"], "stop_loss_percent": params["stop_loss"],
              "stop_join_failures": params["stop_join_failures"], "cpu_basis": params["cpu_basis"]}
    report = build_report(generator, params["samples"], limits, params["node"])
    files = [os.path.join(params["dest"], name) for name in ("report.md", "report.json", "report.png")]
    summary = {k: v for k, v in report.items() if k not in ("samples", "generator_timeline")}
    if not module.check_mode:
        os.makedirs(params["dest"], 0o755, exist_ok=True)
        atomic_write(files[0], render_markdown(report).encode(), 0o644)
        atomic_write(files[1], (json.dumps(report, indent=2) + "\n").encode(), 0o644)
        atomic_write(files[2], render_plot(report), 0o644)
    module.exit_json(changed=not module.check_mode, files=files, summary=summary)


if __name__ == "__main__":
    main()
