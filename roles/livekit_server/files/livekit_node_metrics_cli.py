# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write this LiveKit host's node-exporter textfile (livekit_node.prom):
``python3 livekit_node_metrics_cli.py TEXTFILE MARKER ADDRESS LIVEKIT_SERVER CONFIG``.

Run by livekit-node-metrics.service (from its timer). The work is done by livekit_metrics.py,
installed next to this by the role: the restart-pending marker's mtime, and the state in this
node's own record (``livekit-server list-nodes``, the row with ADDRESS). A table that cannot be read
writes both states as 0 and says why on stderr (the journal); the file is written either way.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import livekit_metrics  # noqa: E402  (installed by the role, next to this file)


def main(argv):
    if len(argv) != 6:
        print(__doc__.strip().splitlines()[1], file=sys.stderr)
        return 2
    textfile, marker, address, binary, config = argv[1:]
    dummy, error = livekit_metrics.write_node_textfile(textfile, marker, [binary, "list-nodes", "--config", config],
                                                       address)
    if error:
        print("livekit-node-metrics: %s" % error, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
