#!/usr/bin/python
# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: livekit_loadtest_sampler
short_description: Sample a LiveKit node's CPU, memory, packet loss and join latency during a load test
version_added: 0.8.0
description:
  - Runs on the node under test while a load test runs (the livekit_loadtest role starts it with
    C(async) and stops it with O(stop_file)). Every O(interval) seconds it reads the host's CPU from
    C(/proc/stat), livekit-server's CPU and RSS from C(/proc/<pid>), and from livekit-server's own
    Prometheus listener the participants, rooms, tracks, bytes, the packet loss histogram
    (C(livekit_packet_loss_percent), per direction) and the join latency
    (C(livekit_session_join_latency_ms)).
  - Each sample is also written into the metadata of the first of O(rooms) that exists (server API
    C(UpdateRoomMetadata), signed with a key from the node's key file), where the load generator
    reads it to stop early on its thresholds; nothing else is written.
  - Ends when O(stop_file) exists, or after O(max_seconds) (and at most O(max_seconds) / O(interval) + 2
    samples), and returns the samples.
author: selfhosted.livekit maintainers (@selfhosted-livekit)
extends_documentation_fragment:
  - selfhosted.livekit.livekit_api
options:
  rooms:
    description:
      - The load test's room names, whose metadata carries the latest sample to the generator. Empty
        to only sample.
    type: list
    elements: str
    default: []
  metrics_url:
    description:
      - livekit-server's Prometheus endpoint as seen from the node.
    type: str
    default: http://127.0.0.1:6789/metrics
  process:
    description:
      - Command name of the livekit-server process (its CPU and RSS are read from C(/proc)).
    type: str
    default: livekit-server
  interval:
    description:
      - Seconds between samples (1-60).
    type: float
    default: 2
  max_seconds:
    description:
      - Hard limit of the sampling in seconds (10-7200).
    type: int
    required: true
  stop_file:
    description:
      - Sampling ends soon after this file exists (the role creates it when the generator has ended).
    type: path
    required: true
attributes:
  check_mode:
    description: Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: In check mode it takes no samples and writes no room metadata.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check mode), when in diff mode.
    support: none
"""

EXAMPLES = r"""
- name: Sample the node while the load runs (stopped by touching the stop file)
  selfhosted.livekit.livekit_loadtest_sampler:
    key_name: APIloadtest
    rooms: [loadtest-1-0, loadtest-1-1]
    metrics_url: http://127.0.0.1:6789/metrics
    max_seconds: 300
    stop_file: /run/livekit-loadtest-1.stop
  async: 330
  poll: 0
  register: sampler
"""

RETURN = r"""
samples:
  description: One entry per interval (CPU in percent of the whole host, all cores = 100).
  returned: always
  type: list
  elements: dict
  sample:
    - {"t": 1796098010.5, "cpus": 2, "cpu_host_percent": 41.5, "cpu_livekit_percent": 22.1,
       "rss_bytes": 81264640, "participants": 6, "rooms": 2, "tracks_published": 4, "tracks_subscribed": 16,
       "loss_in_percent": 0.0, "loss_out_percent": 0.1, "loss_percent": 0.1, "join_latency_ms": 41.0,
       "egress_mbps": 3.2, "ingress_mbps": 1.1, "load1": 1.2}
cpus:
  description: CPUs of the node.
  returned: always
  type: int
  sample: 2
errors:
  description: How many metric reads and metadata writes failed (the latest reason of each).
  returned: always
  type: dict
  sample: {"metrics": 0, "metadata": 3, "last_metadata_error": "HTTP 404 not_found: room not found"}
"""

import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import (
    LiveKitError,
    api_argument_spec,
    client_from_params,
)
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_loadtest import (
    find_pid,
    live_metadata,
    make_sample,
    node_counters,
    parse_metrics,
    read_host_cpu,
    read_process,
)


def reading(module, pid, errors):
    """A raw reading: time, host CPU jiffies, the process's jiffies and RSS, the node's counters."""
    busy, all_jiffies, cpus = read_host_cpu()
    with open("/proc/loadavg") as handle:
        load1 = float(handle.read().split()[0])
    raw = {"t": time.time(), "host": (busy, all_jiffies, cpus), "proc": read_process(pid) if pid else (None, None),
           "load1": load1, "node": None}
    try:
        with open_url(module.params["metrics_url"], timeout=3, follow_redirects="none") as response:
            raw["node"] = node_counters(parse_metrics(response.read().decode("utf-8", "replace")))
    except Exception as err:  # pylint: disable=broad-except  # a missed scrape is a gap, not the end
        errors["metrics"] += 1
        errors["last_metrics_error"] = str(err)[:200]
    return raw


def publish(client, rooms, sample, seq, errors):
    """Write the sample into the first load-test room that exists."""
    for room in rooms[:3]:
        try:
            client.twirp("UpdateRoomMetadata", {"room": room, "metadata": live_metadata(sample, seq)},
                         {"roomAdmin": True, "room": room})
            return
        except LiveKitError as err:
            errors["metadata"] += 1
            errors["last_metadata_error"] = str(err)[:200]


def main():
    argument_spec = api_argument_spec()
    argument_spec.update(
        rooms=dict(type="list", elements="str", default=[]),
        metrics_url=dict(type="str", default="http://127.0.0.1:6789/metrics"),
        process=dict(type="str", default="livekit-server"),
        interval=dict(type="float", default=2),
        max_seconds=dict(type="int", required=True),
        stop_file=dict(type="path", required=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, required_together=[("api_key", "api_secret")],
                           supports_check_mode=True)
    params = module.params
    if not 1 <= params["interval"] <= 60:
        module.fail_json(msg="interval must be 1-60 seconds, not %s" % params["interval"])
    if not 10 <= params["max_seconds"] <= 7200:
        module.fail_json(msg="max_seconds must be 10-7200, not %s" % params["max_seconds"])
    errors = {"metrics": 0, "metadata": 0}
    if module.check_mode:
        module.exit_json(changed=False, samples=[], cpus=os.cpu_count() or 0, errors=errors)
    client = None
    if params["rooms"]:
        try:
            client = client_from_params(params)
        except (OSError, ValueError) as err:
            module.fail_json(msg="cannot read API credentials: %s" % err)
    hz = os.sysconf("SC_CLK_TCK")
    pid = find_pid(params["process"])
    deadline = time.monotonic() + params["max_seconds"]
    samples = []
    previous = reading(module, pid, errors)
    for seq in range(int(params["max_seconds"] / params["interval"]) + 2):
        time.sleep(max(0.0, min(params["interval"], deadline - time.monotonic())))
        if pid is None or read_process(pid)[0] is None:
            pid = find_pid(params["process"])
        current = reading(module, pid, errors)
        sample = make_sample(previous, current, hz)
        samples.append(sample)
        previous = current
        if client:
            publish(client, params["rooms"], sample, seq, errors)
        if os.path.exists(params["stop_file"]) or time.monotonic() >= deadline:
            break
    module.exit_json(changed=False, samples=samples, cpus=samples[-1]["cpus"] if samples else os.cpu_count(),
                     errors=errors)


if __name__ == "__main__":
    main()
