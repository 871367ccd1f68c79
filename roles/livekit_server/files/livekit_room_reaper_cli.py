# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One pass of the idle-room reaper, as configured in /etc/livekit-reaper/config.json:
``python3 livekit_room_reaper_cli.py [CONFIG]``.

Run by livekit-room-reaper.service (from its timer). The work is done by livekit_reaper.py, the same
file the selfhosted.livekit.livekit_room_reaper module uses, installed next to this by the role.
The API key comes from livekit-server's key file (``key_file`` in the settings, which hold no
secret), never through the command line or the environment.
One JSON line per room closed (or, in a dry run, that would be closed) goes to the journal and
the audit log. Exit status: 0 done, 1 the rooms could not be listed or a room could not be closed.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import livekit_api  # noqa: E402  (installed by the role, next to this file)
import livekit_reaper  # noqa: E402


def main(argv):
    path = argv[1] if len(argv) > 1 else "/etc/livekit-reaper/config.json"
    with open(path) as handle:
        cfg = json.load(handle)
    try:
        with open(cfg["key_file"]) as handle:
            keys = livekit_api.parse_key_file(handle.read())
        name = cfg.get("key_name") or next(iter(keys))
        if name not in keys:
            raise ValueError("key %s is not in the key file" % name)
        client = livekit_api.LiveKitClient(cfg["url"], name, keys[name], cfg.get("timeout", 10))
        reaper = livekit_reaper.Reaper(client, cfg["threshold"], cfg.get("allow_list", []), dry_run=cfg["dry_run"],
                                       state_file=cfg.get("state_file"), audit_log=cfg.get("audit_log"),
                                       source="timer", log=print)
        result = reaper.run()
    except (OSError, ValueError, livekit_reaper.ReaperError) as err:
        print("livekit-room-reaper: %s" % err, file=sys.stderr)
        return 1
    for error in result["errors"]:
        print("livekit-room-reaper: room %s: %s" % (error["room"], error["error"]), file=sys.stderr)
    done = result["would_close" if result["dry_run"] else "closed"]
    print("livekit-room-reaper: %d room(s), %d %s, %d kept%s" % (
        result["rooms"], len(done), "would be closed (dry run)" if result["dry_run"] else "closed",
        len(result["kept"]), ", %d error(s)" % len(result["errors"]) if result["errors"] else ""))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
