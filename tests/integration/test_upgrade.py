"""Rolling upgrade and rollback on a real two-node cluster (one Redis host) with real participants.

The scenario converged both nodes on the older release (LKT_UPGRADE_FROM_VERSION); these tests
run upgrade.yml and rollback.yml exactly as an operator would, while real clients built on
LiveKit's SDK publish and subscribe in rooms hosted on each node. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

from conftest import (REPO, ArgvSampler, Node, Participant, assert_no_secret, audit, cluster_nodes, create_room, node_state,
                      place_room, playbook_command, room_host, run_playbook, run_playbook_watched, unit_state, wait_until)

OLD = os.environ["LKT_UPGRADE_FROM_VERSION"]
NEW = os.environ["LKT_UPGRADE_TO_VERSION"]
# upgrade.yml and rollback.yml read the target release from the inventory, which reads these.
TARGET_ENV = {"LKT_LIVEKIT_VERSION": NEW, "LKT_ARTIFACT_DIR": os.environ["LKT_UPGRADE_TO_ARTIFACT_DIR"]}


def running_version(node: Node) -> str:
    out = node.sh("/proc/$(systemctl show -p MainPID --value livekit-server)/exe --version", check=False).stdout
    return out.strip().rsplit(" ", 1)[-1]


def record(node: Node) -> dict:
    return json.loads(node.sh("cat /var/lib/livekit-deploy/deployment.json").stdout)


def test_cluster_starts_on_the_old_release(cluster):
    for name in ("a", "b"):
        assert running_version(cluster[name]) == OLD
        assert record(cluster[name])["version"] == OLD
        assert node_state(cluster[name]) == "SERVING"


def test_upgrade_in_check_mode_changes_nothing(cluster):
    before = {name: (record(cluster[name]), cluster[name].sh("readlink /opt/livekit/current").stdout)
              for name in ("a", "b")}
    result = run_playbook("upgrade.yml", "--check", env=TARGET_ENV, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
    for name in ("a", "b"):
        node = cluster[name]
        assert (record(node), node.sh("readlink /opt/livekit/current").stdout) == before[name]
        assert running_version(node) == OLD and unit_state(node) == "active"
        assert node.sh(f"test -e /opt/livekit/releases/{NEW}", check=False).returncode != 0


def test_failed_node_is_rolled_back_and_the_rollout_stops(cluster, api_key, api_secret, people):
    """A setting the new release refuses fails node A before it drains: A is put back as it was, its
    call is never touched, and node B is not upgraded.

    The controller's preflight would refuse this setting before any host changes (test_bad_input); a
    controller that cannot run the host's build leaves the check to the host, which this test takes."""
    a, b = cluster["a"], cluster["b"]
    before = {name: (record(cluster[name]), cluster[name].sh("readlink /opt/livekit/current").stdout,
                     cluster[name].sh("sha256sum /etc/livekit/livekit.yaml").stdout) for name in ("a", "b")}
    pid_a = a.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()
    caller = Participant(a, place_room(cluster, a, "fail", api_key, api_secret), "caller", api_key, api_secret)
    people.append(caller)
    result = run_playbook("upgrade.yml", "-e", '{"livekit_server_config_extra": {"not_an_option": true},'
                          ' "livekit_server_check_config_on_controller": false}',
                          env=TARGET_ENV, timeout=600)
    assert result.returncode != 0
    assert f"Upgrading {a.name} from {OLD} to {NEW} failed" in result.stdout + result.stderr, result.stderr[-3000:]
    for name in ("a", "b"):
        node = cluster[name]
        now = (record(node), node.sh("readlink /opt/livekit/current").stdout, node.sh("sha256sum /etc/livekit/livekit.yaml").stdout)
        assert now[1:] == before[name][1:], f"{node.name} must be back to its release and configuration"
        assert running_version(node) == OLD and node_state(node) == "SERVING"
    assert record(a)["event"] == "rollback" and record(b) == before["b"][0]
    assert a.sh("systemctl show -p MainPID --value livekit-server").stdout.strip() == pid_a
    assert caller.connected() and caller.hang_up()["summary"]["disconnected"] is False
    assert a.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode != 0


def test_rolling_upgrade_drops_no_call(cluster, api_key, api_secret, people, tmp_path):
    a, b = cluster["a"], cluster["b"]
    room_a = place_room(cluster, a, "on-a", api_key, api_secret)
    room_b = place_room(cluster, b, "on-b", api_key, api_secret)
    alice = Participant(a, room_a, "alice", api_key, api_secret, publish=True)
    bob = Participant(b, room_b, "bob", api_key, api_secret, publish=True)
    bea = Participant(b, room_b, "bea", api_key, api_secret)
    people.extend([alice, bob, bea])
    old_pid_a = a.sh("systemctl show -p MainPID --value livekit-server").stdout.strip()

    # With -vvv --diff into a file (a pipe would fill up), every command line sampled for secrets.
    log = tmp_path / "upgrade.log"
    sampler = ArgvSampler(list(cluster.values()))
    sampler.start()
    with log.open("w") as sink:
        upgrade = subprocess.Popen(
            playbook_command("upgrade.yml", "-vvv", "--diff", "-e", "livekit_server_restart_drain_timeout=100"),
            stdout=sink, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=dict(os.environ, **TARGET_ENV),
        )
    try:
        # Node A goes first and drains: it keeps serving alice but refuses new rooms.
        assert wait_until(lambda: unit_state(a) == "deactivating", 300), "node A never started draining"
        assert wait_until(lambda: node_state(a) == "SHUTTING_DOWN", 20), cluster_nodes(a)
        # The audit log has the drain while it is under way, not only once the playbook's task returns.
        assert wait_until(lambda: [e for e in audit(a)[-3:] if e["event"] == "drain_started"], 10), audit(a)[-3:]
        room_c = f"during-drain-{uuid.uuid4().hex[:6]}"
        create_room(a, room_c, api_key, api_secret)  # asked of node A itself
        assert room_host(cluster, room_c) == b.name, "a room created during A's drain must land on B"

        time.sleep(10)  # the drain waits for alice, however long she stays
        assert unit_state(a) == "deactivating" and alice.connected()
        assert a.sh("systemctl show -p MainPID --value livekit-server").stdout.strip() == old_pid_a
        left_at = time.time()
        alice_call = alice.hang_up()
        assert alice_call["summary"]["disconnected"] is False, alice_call

        assert wait_until(lambda: record(a)["version"] == NEW, 120), "node A was not upgraded"
        assert bob.connected() and bea.connected(), "B's participants must stay while A drains and upgrades"
        restarted_a = [e for e in audit(a) if e["event"] == "restarted" and e["version"] == NEW][-1]
        assert restarted_a["forced"] == 0 and restarted_a["drain_seconds"] >= 10
        assert time.time() >= left_at and running_version(a) == NEW

        # B's call ends (its participants leave at this set time), then B drains and upgrades.
        bob_call, bea_call = bob.hang_up(), bea.hang_up()
        for call in (bob_call, bea_call):
            assert call["summary"]["disconnected"] is False, call
            assert not [e for e in call["events"] if e.get("event") in ("reconnecting", "disconnected")], call
        assert bea_call["summary"]["video_frames_received"] > 0, bea_call
        upgrade.wait(timeout=400)
    finally:
        sampler.stop.set()
        if upgrade.poll() is None:
            upgrade.kill()
            upgrade.wait()
    output = log.read_text()
    assert upgrade.returncode == 0, output[-4000:]
    assert_no_secret("upgrade.yml", output, sampler)
    for node in (a, b):
        assert running_version(node) == NEW and record(node)["version"] == NEW
        assert record(node)["previous_version"] == OLD and record(node)["playbook"] == "upgrade.yml"
        assert node_state(node) == "SERVING"
        assert not [e for e in audit(node) if e["event"] == "drain_forced"]
    print(f"node A refused new rooms for {restarted_a['drain_seconds']} s of drain; alice left at {left_at:.0f}")


def test_rollback_forces_off_a_caller_after_the_deadline(cluster, api_key, api_secret, people):
    a = cluster["a"]
    room = place_room(cluster, a, "late", api_key, api_secret)
    late = Participant(a, room, "late", api_key, api_secret, publish=True)
    people.append(late)
    result = run_playbook_watched("rollback.yml", "--limit", a.name, "-e", "livekit_server_restart_drain_timeout=5",
                                  "-e", "livekit_server_restart_on_drain_timeout=force", nodes=[a], env=TARGET_ENV,
                                  timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    call = late.hang_up()
    assert call["summary"]["disconnected"] is True and call["summary"]["reason"] == "SERVER_SHUTDOWN", call
    assert running_version(a) == OLD
    rec = record(a)
    assert (rec["version"], rec["previous_version"], rec["event"]) == (OLD, NEW, "rollback")
    forced = [e for e in audit(a) if e["event"] == "drain_forced"][-1]
    assert forced["participants"] == 1
    restarted = [e for e in audit(a) if e["event"] == "restarted"][-1]
    print(f"forced rollback: drain {restarted['drain_seconds']} s, then restarted on {restarted['version']}")


def test_deadline_without_force_leaves_the_node_draining_until_the_call_ends(cluster, api_key, api_secret, people):
    b = cluster["b"]
    room = place_room(cluster, b, "stays", api_key, api_secret)
    stays = Participant(b, room, "stays", api_key, api_secret)
    people.append(stays)
    result = run_playbook("rollback.yml", "--limit", b.name, "-e", "livekit_server_restart_drain_timeout=5",
                          env=TARGET_ENV, timeout=300)
    assert result.returncode != 0
    assert audit(b)[-1]["event"] == "drain_timeout" and audit(b)[-1]["participants"] == 1
    assert unit_state(b) == "deactivating" and stays.connected()
    assert node_state(b) == "SHUTTING_DOWN"

    call = stays.hang_up()
    assert call["summary"]["disconnected"] is False, call
    # With its last participant gone the node finishes the drain and starts the release the
    # rollback switched to; a second run then records it.
    assert wait_until(lambda: unit_state(b) == "active" and running_version(b) == OLD, 60)
    again = run_playbook("rollback.yml", "--limit", b.name, "-e", f"livekit_server_rollback_version={OLD}",
                         env=TARGET_ENV, timeout=300)
    assert again.returncode == 0, again.stdout[-4000:]
    assert record(b)["version"] == OLD and record(b)["event"] == "rollback"
    assert b.sh("test -e /var/lib/livekit/restart-pending", check=False).returncode != 0


def test_major_upgrade_needs_a_window_and_snapshots_redis_first(cluster):
    """The major-version path, end to end. No older major of livekit-server builds here, so the nodes'
    deployment records are made to claim 0.x of the release they run: a stand-in for an older major,
    and the only one in this file. The gate, the Redis snapshot and the rolling upgrade are real."""
    stand_in = "0." + OLD.split(".", 1)[1]
    for name in ("a", "b"):
        cluster[name].sh(
            "python3 -c 'import json,sys; p=\"/var/lib/livekit-deploy/deployment.json\"; r=json.load(open(p)); "
            f"r[\"version\"]=\"{stand_in}\"; json.dump(r, open(p, \"w\"))'")
    redis = cluster["redis"]
    snapshots_before = set(redis.sh("ls /var/backups/redis 2>/dev/null || true").stdout.split())

    refused = run_playbook("upgrade.yml", env=TARGET_ENV, timeout=600)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "changes the major version" in said, said[-3000:]
    assert "livekit_upgrade_maintenance_window=true" in said
    for name in ("a", "b"):
        assert running_version(cluster[name]) == OLD and record(cluster[name])["version"] == stand_in
    assert set(redis.sh("ls /var/backups/redis 2>/dev/null || true").stdout.split()) == snapshots_before

    # In the window: Redis is snapshotted first, then the nodes upgrade one at a time (-vvv --diff,
    # every command line sampled for secrets).
    done = run_playbook_watched("upgrade.yml", "-e", "livekit_upgrade_maintenance_window=true",
                                nodes=list(cluster.values()), env=TARGET_ENV, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:]
    new = sorted(set(redis.sh("ls /var/backups/redis").stdout.split()) - snapshots_before)
    assert len(new) == 1, new
    rdb = redis.sh(f"stat -c '%a %s' /var/backups/redis/{new[0]}/dump.rdb").stdout.split()
    assert int(rdb[1]) > 0, rdb
    assert redis.sh(f"stat -c '%a' /var/backups/redis/{new[0]}").stdout.strip() == "700"
    for name in ("a", "b"):
        node = cluster[name]
        assert running_version(node) == NEW and record(node)["version"] == NEW
        assert record(node)["previous_version"] == stand_in and node_state(node) == "SERVING"
