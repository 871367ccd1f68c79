# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a LiveKit host reports about itself through node-exporter's textfile collector, and the
cluster table it is read from.

The livekit_server role installs this file (with livekit_files.py next to it) on each LiveKit host
for the ``livekit-node-metrics`` timer, which writes ``livekit_node.prom``:

- ``livekit_restart_pending_since_timestamp_seconds``: the mtime of the restart-pending marker
  (the role writes it when a change waits for a restart), 0 while there is none;
- ``livekit_node_state{state="SERVING"|"SHUTTING_DOWN"}``: 1 for the state in this node's own record
  (``livekit-server list-nodes``, matched by the node's address), 0 for the other; both 0 when the
  node has no record (livekit-server stopped, or the table could not be read). Both series are
  always written.

Standard library only (never Ansible): the modules import it too.
"""

from __future__ import annotations

import datetime
import os
import subprocess

try:
    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import atomic_write
except ImportError:  # on the host, for the timer: installed next to livekit_files.py by the role
    from livekit_files import atomic_write  # pylint: disable=import-error

NODE_STATES = ("SERVING", "SHUTTING_DOWN")


def parse_list_nodes(text):
    """Nodes from ``livekit-server list-nodes``: each table row pair gives id, ip, state, rooms, clients."""
    nodes = []
    rows = [line for line in text.splitlines() if line.startswith("\u2502")]
    for first, second in zip(rows, rows[1:]):
        cells = [cell.strip() for cell in first.strip("\u2502").split("\u2502")]
        state = [cell.strip() for cell in second.strip("\u2502").split("\u2502")]
        if not cells or not cells[0].startswith("ND_"):
            continue
        nodes.append(dict(id=cells[0], ip=cells[1], region=cells[2], rooms=int(cells[6] or 0),
                          clients=int(cells[7] or 0), state=state[0].strip("()"), updated=state[-1]))
    return nodes


# Records updated within this many seconds of the newest count as live (keepalive every 2 s).
FRESH_SECONDS = 10


def _seconds_between(earlier, later):
    try:
        parse = [datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S") for text in (earlier, later)]
    except (TypeError, ValueError):
        return None
    return (parse[1] - parse[0]).total_seconds()


def own_state(nodes, address):
    """The state in the record of the node at ``address``, or None when it has none. A node killed
    without a clean stop can leave its old record behind next to the new one until it expires:
    the most recently updated record is the node's. Under blue_green two instances of the host keep
    fresh records (one serving, one draining): the host serves when one of its fresh records does."""
    mine = sorted((n for n in nodes if n["ip"] == address), key=lambda n: n.get("updated", ""))
    if not mine:
        return None
    latest = mine[-1].get("updated", "")
    fresh = [n for n in mine if (_seconds_between(n.get("updated", ""), latest) or 0) <= FRESH_SECONDS]
    return "SERVING" if any(n["state"] == "SERVING" for n in fresh) else mine[-1]["state"]


def pending_since(marker):
    """The marker's mtime in whole seconds, 0 when there is no marker."""
    try:
        return int(os.stat(marker).st_mtime)
    except FileNotFoundError:
        return 0


def node_textfile(pending, state):
    """The text of livekit_node.prom for a marker time (0: none) and a node state (None: no record)."""
    lines = [
        "# HELP livekit_restart_pending_since_timestamp_seconds When livekit-server was left waiting for a restart "
        "(mtime of the restart-pending marker); 0 when nothing waits.",
        "# TYPE livekit_restart_pending_since_timestamp_seconds gauge",
        "livekit_restart_pending_since_timestamp_seconds %d" % pending,
        "# HELP livekit_node_state The state in this node's own record in the cluster (1 current, 0 other).",
        "# TYPE livekit_node_state gauge",
    ]
    lines += ['livekit_node_state{state="%s"} %d' % (name, 1 if state == name else 0) for name in NODE_STATES]
    return "\n".join(lines) + "\n"


def read_node_state(list_nodes_command, address, timeout=30):
    """(state or None, error or None) from running ``livekit-server list-nodes``."""
    try:
        done = subprocess.run(list_nodes_command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return None, "list-nodes did not run: %s" % err
    text = done.stdout + "\n" + done.stderr
    nodes = parse_list_nodes(text)
    # livekit-server exits 0 on start-up errors (a configuration it cannot load, Redis unreachable):
    # no table at all is a failure whatever the exit status.
    if not nodes and (done.returncode != 0 or "\u2502" not in text):
        return None, "list-nodes (exit %d) printed no node table: %s" % (done.returncode, text.strip()[-300:])
    return own_state(nodes, address), None


def write_node_textfile(path, marker, list_nodes_command, address):
    """Write ``path`` atomically (0644); returns (text, error or None)."""
    state, error = read_node_state(list_nodes_command, address)
    text = node_textfile(pending_since(marker), state)
    atomic_write(path, text.encode(), 0o644)
    return text, error
