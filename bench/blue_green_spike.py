"""The blue-green feasibility experiment (bench/blue_green_spike.sh stands the host up first).

On one converged host: "blue" is the role's livekit-server.service (ports 7880/7881, UDP 50000-50049,
TURN 3478 + plain TURN 5349 behind nginx, relay 30000-30049, metrics 6789). This starts "green" by
hand beside it (7890/7891, UDP 50050-50099, TURN 3479 + 5359, relay 30050-30099, metrics 6790) with
the same Redis and keys, then walks through the swap with real SDK clients over wss://lk.bg.test
(nginx) and prints every observation as a JSON line, then a summary.
Usage: python bench/blue_green_spike.py HOST STATE_DIR
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time
import uuid

import jwt
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTICIPANT = REPO / "tests" / "participant" / "lk_participant.py"
HOST, STATE = sys.argv[1], pathlib.Path(sys.argv[2])
SECRETS = dict(line.split("=", 1) for line in (STATE / "secrets.env").read_text().split())
KEY, SECRET = SECRETS["LKT_API_KEY"], SECRETS["LKT_API_SECRET"]
URL = "wss://lk.bg.test"
BLUE = dict(name="blue", unit="livekit-server", port=7880, prom=6789, config="/etc/livekit/livekit.yaml")
GREEN = dict(name="green", unit="livekit-green", port=7890, prom=6790, config="/etc/livekit/livekit-green.yaml")
T0 = time.monotonic()
RESULTS: list[dict] = []


def note(step: str, **fields) -> dict:
    entry = dict(t=round(time.monotonic() - T0, 1), step=step, **fields)
    RESULTS.append(entry)
    print(json.dumps(entry), flush=True)
    return entry


def sh(command: str, check: bool = True, stdin: str | None = None, env: dict | None = None) -> str:
    extra = [arg for name in (env or {}) for arg in ("-e", name)]
    result = subprocess.run(["podman", "exec", "-i", *extra, HOST, "sh", "-c", command], input=stdin,
                            capture_output=True, text=True, timeout=180, env=dict(os.environ, **(env or {})), check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{command!r} failed: {result.stdout}{result.stderr}")
    return result.stdout


def host_ip() -> str:
    return subprocess.run(["podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", HOST],
                          capture_output=True, text=True, check=True).stdout.strip()


def token(identity: str = "spike", ttl: int = 600, **video) -> str:
    now = int(time.time())
    return jwt.encode({"iss": KEY, "sub": identity, "nbf": now - 5, "exp": now + ttl, "video": video}, SECRET, "HS256")


def twirp(instance: dict, method: str, body: dict) -> dict:
    """RoomService call on one instance's own port (as signalling arriving at that instance would)."""
    out = sh(f"curl -s -X POST -H \"Authorization: Bearer $BG_TOKEN\" -H 'Content-Type: application/json' "
             f"-d '{json.dumps(body)}' http://127.0.0.1:{instance['port']}/twirp/livekit.RoomService/{method}",
             env={"BG_TOKEN": token(roomCreate=True, roomList=True, roomAdmin=True, room=body.get("room", ""))})
    return json.loads(out or "{}")


def redis(*args: str) -> str:
    return sh("redis-cli --no-auth-warning -h 127.0.0.1 " + " ".join(args),
              env={"REDISCLI_AUTH": SECRETS["LKT_REDIS_PASSWORD"]}).strip()


def node_id(instance: dict) -> str | None:
    out = sh(f"curl -s http://127.0.0.1:{instance['prom']}/metrics", check=False)
    found = re.search(r'node_id="(ND_[A-Za-z0-9]+)"', out)
    return found.group(1) if found else None


def nodes() -> list[dict]:
    sys.path.insert(0, str(REPO / ".cache" / "collections"))
    from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_node import parse_list_nodes  # pylint: disable=import-outside-toplevel
    return parse_list_nodes(sh("/opt/livekit/current/livekit-server list-nodes --config /etc/livekit/livekit.yaml 2>/dev/null"))


def colour_of(nid: str | None, ids: dict) -> str | None:
    return next((name for name, value in ids.items() if value == nid), nid)


def room_colour(room: str, ids: dict) -> str | None:
    return colour_of(redis("HGET", "room_node_map", room) or None, ids)


def gauge(instance: dict, metric: str) -> float | None:
    out = sh(f"curl -s http://127.0.0.1:{instance['prom']}/metrics", check=False)
    values = [float(line.split()[-1]) for line in out.splitlines() if line.startswith(metric)]
    return sum(values) if values else None


def healthy(instance: dict) -> bool:
    return sh(f"curl -s -m 2 http://127.0.0.1:{instance['port']}/", check=False).strip() == "OK"


def wait(predicate, timeout: float, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return None


class Person:
    """A real client (lk_participant.py stay) through nginx, with the proxy names in a private /etc/hosts."""

    def __init__(self, room: str, identity: str, publish: bool = False, relay_only: bool = False, seconds: int = 500):
        env = dict(os.environ, LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET, SSL_CERT_FILE=str(STATE / "ca.crt"))
        wrap = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(STATE / "hosts")]
        self.identity = identity
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, str(PARTICIPANT), "--url", URL, "--room", room, "--timeout", str(seconds + 60),
             *(["--relay-only"] if relay_only else []), "stay", "--identity", identity, "--seconds", str(seconds),
             *(["--publish"] if publish else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.first = json.loads(self.proc.stdout.readline() or "{}")
        self.ok = self.first.get("event") == "connected"

    def hang_up(self) -> dict:
        if self.proc.poll() is None:
            self.proc.terminate()
        out = self.proc.communicate(timeout=90)[0]
        events = [json.loads(line) for line in out.splitlines() if line.strip()]
        return {"first": self.first, "events": [e for e in events if "event" in e],
                "summary": next((e for e in events if e.get("summary")), {})}


def call(room: str, relay_only: bool = False) -> dict:
    env = dict(os.environ, LIVEKIT_API_KEY=KEY, LIVEKIT_API_SECRET=SECRET, SSL_CERT_FILE=str(STATE / "ca.crt"))
    wrap = ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(STATE / "hosts")]
    out = subprocess.run([*wrap, sys.executable, str(PARTICIPANT), "--url", URL, "--room", room, "--timeout", "90",
                          *(["--relay-only"] if relay_only else []), "call", "--seconds", "6"],
                         capture_output=True, text=True, env=env, timeout=120, check=False).stdout
    return json.loads(out.strip().splitlines()[-1]) if out.strip() else {"ok": False, "error": "no output"}


def start_green() -> None:
    """Green's config: blue's, with the other half of every port."""
    conf = yaml.safe_load(sh(f"cat {BLUE['config']}"))
    conf["port"] = GREEN["port"]
    conf["rtc"].update(tcp_port=7891, port_range_start=50050, port_range_end=50099)
    conf["turn"].update(udp_port=3479, tls_port=5359, relay_range_start=30050, relay_range_end=30099)
    conf["prometheus"]["port"] = GREEN["prom"]
    sh(f"umask 077; cat > {GREEN['config']}; chown livekit:livekit {GREEN['config']}", stdin=yaml.safe_dump(conf))
    check = sh(f"runuser -u livekit -- /opt/livekit/current/livekit-server --config {GREEN['config']} ports 2>&1", check=False)
    note("green config check (livekit-server ports)", output=check.strip().splitlines()[-6:])
    # Green's ports through the host firewall, like the role's rules for blue's.
    sh("nft list tables 2>/dev/null | grep -q 'inet livekit_filter' && "
       "nft 'insert rule inet livekit_filter input tcp dport 7891 accept'; "
       "nft 'insert rule inet livekit_filter input udp dport { 3479, 50050-50099 } accept' || true", check=False)
    sh("systemctl reset-failed livekit-green 2>/dev/null; systemd-run --unit livekit-green --property User=livekit "
       "--property Group=livekit --property LimitNOFILE=16384 --property WorkingDirectory=/var/lib/livekit "
       f"/opt/livekit/current/livekit-server --config {GREEN['config']}")


def switch_nginx(to: dict, turn_port: int) -> float:
    """Point nginx's signalling upstream and TURN route at an instance; graceful reload. Returns seconds."""
    start = time.monotonic()
    sh(f"sed -i -E 's#proxy_pass http://127.0.0.1:[0-9]+;#proxy_pass http://127.0.0.1:{to['port']};#; "
       f"s#proxy_pass 127.0.0.1:(5349|5359);#proxy_pass 127.0.0.1:{turn_port};#' /etc/nginx/nginx.conf "
       "&& nginx -t -q && systemctl reload nginx")
    return round(time.monotonic() - start, 2)


def hooks() -> list[dict]:
    out = sh("cat /tmp/hooks.jsonl 2>/dev/null", check=False)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


HOOK_SERVER = r"""
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        with open('/tmp/hooks.jsonl', 'a') as f:
            f.write(json.dumps({'event': body.get('event'), 'room': (body.get('room') or {}).get('name'),
                                'participant': (body.get('participant') or {}).get('identity'),
                                'track': (body.get('track') or {}).get('sid'),
                                'id': body.get('id')}) + '\n')
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', 9999), H).serve_forever()
"""


class Prober(threading.Thread):
    """A new room through nginx every 0.5 s (Twirp CreateRoom over https://lk.bg.test): where it lands, or the error."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop, self.outcomes = threading.Event(), []

    def run(self) -> None:
        while not self.stop.is_set() and len(self.outcomes) < 2000:
            room = f"probe-{uuid.uuid4().hex[:6]}"
            try:
                out = sh("curl -s -m 5 --cacert /tmp/bg-ca.crt --resolve lk.bg.test:443:127.0.0.1 -X POST "
                         "-H \"Authorization: Bearer $BG_TOKEN\" -H 'Content-Type: application/json' "
                         f"-d '{{\"name\": \"{room}\", \"empty_timeout\": 5}}' "
                         "https://lk.bg.test/twirp/livekit.RoomService/CreateRoom",
                         check=False, env={"BG_TOKEN": token(roomCreate=True)})
                answer = json.loads(out or "{}")
                placed = redis("HGET", "room_node_map", room) if answer.get("name") == room else None
                self.outcomes.append((time.monotonic() - T0, placed or f"error {out[:120]}"))
            except (ValueError, RuntimeError, subprocess.TimeoutExpired) as err:
                self.outcomes.append((time.monotonic() - T0, f"error {err}"))
            time.sleep(0.5)


def main() -> int:
    ip = host_ip()
    (STATE / "hosts").write_text(f"127.0.0.1 localhost\n{ip} lk.bg.test turn.bg.test\n")
    sh("systemctl stop bg-hooks livekit-green 2>/dev/null; systemctl reset-failed bg-hooks livekit-green 2>/dev/null; "
       "rm -f /tmp/hooks.jsonl", check=False)
    sh("cat > /tmp/hooks.py", stdin=HOOK_SERVER)
    sh("systemd-run --unit bg-hooks python3 /tmp/hooks.py")
    sh("cat > /tmp/bg-ca.crt", stdin=(STATE / "ca.crt").read_text())
    if not healthy(BLUE):
        sh("systemctl restart livekit-server")
    switch_nginx(BLUE, 5349)  # a rerun starts from blue live
    ids = {"blue": node_id(BLUE)}
    note("blue up", node_id=ids["blue"], nodes=nodes())

    # 1. A call on blue through nginx.
    old_room = f"old-{uuid.uuid4().hex[:4]}"
    alice = Person(old_room, "alice", publish=True)
    bob = Person(old_room, "bob")
    note("call on blue", room=old_room, alice=alice.ok, bob=bob.ok, room_on=room_colour(old_room, ids))
    time.sleep(3)
    bytes_blue_0 = gauge(BLUE, 'livekit_packet_bytes{country="",direction="outgoing"')

    # 2a. A failed swap: an instance whose HTTP port is taken (blue's). Does it leave a node behind or touch blue?
    blue_pid = sh("systemctl show -p MainPID --value livekit-server").strip()
    conf = yaml.safe_load(sh(f"cat {BLUE['config']}"))
    conf["prometheus"]["port"] = 6791
    conf["rtc"].update(tcp_port=7893, port_range_start=50100, port_range_end=50110)
    conf["turn"].update(udp_port=3480, tls_port=5369, relay_range_start=30100, relay_range_end=30110)
    sh("umask 077; cat > /etc/livekit/livekit-bad.yaml; chown livekit:livekit /etc/livekit/livekit-bad.yaml", stdin=yaml.safe_dump(conf))
    bad = sh("timeout 30 runuser -u livekit -- /opt/livekit/current/livekit-server --config /etc/livekit/livekit-bad.yaml "
             "2>&1; echo exit=$?", check=False)
    note("failed start (HTTP port taken by blue)", tail=[line[:220] for line in bad.strip().splitlines()[-3:]],
         nodes_after=nodes(), blue_pid_before=blue_pid, blue_pid_after=sh("systemctl show -p MainPID --value livekit-server").strip(),
         blue_health=healthy(BLUE))

    prober = Prober()
    prober.start()
    # 2. Green beside it.
    start = time.monotonic()
    start_green()
    up = wait(lambda: healthy(GREEN), 60)
    ids["green"] = node_id(GREEN)
    note("green started", healthy=bool(up), seconds_to_healthy=round(time.monotonic() - start, 1), node_id=ids["green"],
         nodes=[dict(n, colour=colour_of(n["id"], ids)) for n in nodes()])
    if not up:
        note("green log", log=sh("journalctl -u livekit-green --no-pager -n 30", check=False).splitlines()[-30:])
        return 1
    rss = {c["name"]: sh(f"ps -o rss= -p $(systemctl show -p MainPID --value {c['unit']})", check=False).strip()
           for c in (BLUE, GREEN)}
    note("memory (RSS KiB) with both up", rss=rss)

    # 3. Both SERVING: where do new rooms land when the request arrives at blue? (the window before the drain)
    placed = []
    for i in range(10):
        room = f"place-{i}-{uuid.uuid4().hex[:4]}"
        twirp(BLUE, "CreateRoom", {"name": room, "empty_timeout": 30})
        placed.append(room_colour(room, ids))
        twirp(BLUE, "DeleteRoom", {"room": room})
    note("10 rooms created through blue while both serve", placed_on=placed)

    # 4. Drain blue (the role's ExecStop: first SIGTERM, wait for the room to empty).
    sh("systemctl stop --no-block livekit-server")
    drained = wait(lambda: any(n["state"] == "SHUTTING_DOWN" for n in nodes()), 15)
    note("blue draining", seen=bool(drained),
         blue_outgoing_bytes=gauge(BLUE, 'livekit_packet_bytes{country="",direction="outgoing"'),
         nodes=[dict(n, colour=colour_of(n["id"], ids)) for n in nodes()],
         blue_health=healthy(BLUE), unit=sh("systemctl show -p ActiveState --value livekit-server").strip())

    # 5. nginx still points at blue: a new room through the proxy (blue relays to green over Redis).
    erin_room = f"new-a-{uuid.uuid4().hex[:4]}"
    erin = Person(erin_room, "erin", seconds=60)
    note("new room via proxy -> blue (draining)", joined=erin.ok, room_on=room_colour(erin_room, ids))
    placed = []
    for i in range(5):
        room = f"drainplace-{i}-{uuid.uuid4().hex[:4]}"
        answer = twirp(BLUE, "CreateRoom", {"name": room, "empty_timeout": 30})
        placed.append(room_colour(room, ids) if "name" in answer else answer)
        twirp(BLUE, "DeleteRoom", {"room": room})
    note("5 rooms created through draining blue", placed_on=placed)

    # 6. Switch nginx to green with a graceful reload.
    note("nginx switched to green", reload_seconds=switch_nginx(GREEN, 5359))
    frank_room = f"new-b-{uuid.uuid4().hex[:4]}"
    frank = Person(frank_room, "frank", seconds=60)
    note("new room via proxy -> green", joined=frank.ok, room_on=room_colour(frank_room, ids))
    new_call = call(f"new-c-{uuid.uuid4().hex[:4]}")
    note("new call via proxy (publisher+subscriber, 6 s)", result=new_call)
    relay_call = call(f"new-r-{uuid.uuid4().hex[:4]}", relay_only=True)
    note("new relay-only call via proxy", result=relay_call)

    # 7. Joining blue's existing room through green.
    carol = Person(old_room, "carol", seconds=60)
    note("carol joins blue's room via proxy -> green", joined=carol.ok, room_on=room_colour(old_room, ids))
    dave = Person(old_room, "dave", relay_only=True, seconds=60)
    note("dave (relay-only) joins blue's room via green", joined=dave.ok)
    time.sleep(8)
    carol_out, dave_out = carol.hang_up(), dave.hang_up()
    note("carol got blue's call media", summary=carol_out["summary"], events=carol_out["events"])
    note("dave (relay-only) got blue's call media", summary=dave_out["summary"], events=dave_out["events"])
    bytes_blue_1 = gauge(BLUE, 'livekit_packet_bytes{country="",direction="outgoing"')
    note("blue still forwards its call while draining", outgoing_bytes_before=bytes_blue_0, outgoing_bytes_now=bytes_blue_1,
         blue_participants=gauge(BLUE, "livekit_participant_total"), green_participants=gauge(GREEN, "livekit_participant_total"),
         blue_rooms=gauge(BLUE, "livekit_room_total"), green_rooms=gauge(GREEN, "livekit_room_total"))

    # 8. The old call ends; blue exits.
    for person in (erin, frank):
        person.hang_up()
    alice_out = alice.hang_up()
    bob_out = bob.hang_up()
    left = time.monotonic()
    note("alice and bob hang up", alice=alice_out["summary"], bob=bob_out["summary"],
         bob_events=bob_out["events"], alice_events=alice_out["events"])
    gone = wait(lambda: sh("systemctl show -p ActiveState --value livekit-server").strip() == "inactive", 120)
    note("blue exited", exited=bool(gone), seconds_after_last_leave=round(time.monotonic() - left, 1),
         nodes=[dict(n, colour=colour_of(n["id"], ids)) for n in nodes()],
         green_health=healthy(GREEN), room_node_map=redis("HGETALL", "room_node_map").split())
    time.sleep(3)

    prober.stop.set()
    prober.join(timeout=30)
    landed = {}
    for _t, outcome in prober.outcomes:
        key = outcome if outcome.startswith("error") else colour_of(outcome, ids)
        landed[key] = landed.get(key, 0) + 1
    failures = [(round(t, 1), o) for t, o in prober.outcomes if o.startswith("error")]
    note("prober: a new room through nginx every 0.5 s from green's start to blue's exit",
         attempts=len(prober.outcomes), failures=failures[:10], failed=len(failures),
         landed_while_mapped=landed)

    # 9. Webhooks: how many times was each event sent?
    counts: dict[str, int] = {}
    for hook in hooks():
        if hook["room"] and (hook["room"].startswith("old-") or hook["room"].startswith("new-")):
            name = f"{hook['event']} {hook['room']} {hook['participant'] or ''} {hook.get('track') or ''}".strip()
            counts[name] = counts.get(name, 0) + 1
    note("webhooks per event (room/participant)", counts=counts, duplicates={k: v for k, v in counts.items() if v > 1})
    journal = sh("journalctl -u livekit-server --no-pager -o cat -n 400", check=False).splitlines()
    note("blue journal (drain)", log=[line for line in journal
                                      if re.search(r"exit requested|waiting for participants|stopping|shutting|drain", line, re.I)][-8:])
    (STATE / "results.json").write_text(json.dumps(RESULTS, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
