# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One backup of this host, as configured in /etc/livekit-backup/config.json:
``python3 livekit_backup_cli.py [CONFIG]``.

Run by livekit-backup.service (from its timer). The work is done by livekit_backup.py, the same
file the selfhosted.livekit.livekit_backup module uses, installed next to this by the role.
Exit status: 0 backed up and verified, 1 failed (the message says what was kept), 75 skipped: another
backup was running and did not finish in time, or a restore of this host is in progress (a
half-restored state is never uploaded).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import livekit_backup  # noqa: E402  (installed by the role, next to this file)


def main(argv):
    path = argv[1] if len(argv) > 1 else "/etc/livekit-backup/config.json"
    with open(path) as handle:
        cfg = json.load(handle)
    status_file = cfg.pop("status_file")
    textfile = cfg.pop("textfile", None)
    ok, result = livekit_backup.run_and_record(cfg, status_file, textfile)
    if not ok:
        print("livekit-backup: %s" % result["msg"], file=sys.stderr)
        return 75 if result.get("skipped") else 1
    summary = {key: result.get(key) for key in ("id", "manifest_key", "archive_size", "parts", "duration", "pruned")}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
