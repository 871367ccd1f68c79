"""API key rotation with rotate_keys.yml on a real node: old key -> both -> only the new one, a call
signed with the old key survives phase 1, and no secret shows up where it must not."""

from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
import sys
import time

import pytest

from conftest import (ArgvSampler, Node, Participant, load_nodes, make_token, playbook_command, read_vault_keys, run_playbook,
                      twirp, unit_state, wait_until)

NODE = "lkt-bookworm"  # rotation is per node; one node keeps the scenario short
STATE = pathlib.Path(os.environ["LKT_STATE_DIR"])
VAULT_FILE = STATE / "rotation" / "api_keys.vault.yml"
VAULT_PASS = STATE / "rotation" / "vault-pass"


@pytest.fixture(scope="module")
def host(request) -> Node:
    VAULT_PASS.parent.mkdir(mode=0o700, exist_ok=True)
    VAULT_PASS.write_text(secrets.token_hex(16))
    VAULT_PASS.chmod(0o600)
    return {n.name: n for n in load_nodes(request.config.getoption("--hosts-dir"))}[NODE]


def rotation_args(phase: str, *extra: str) -> list[str]:
    return ["--limit", NODE, "-e", f"livekit_rotation_phase={phase}", "-e", f"livekit_rotation_vault_file={VAULT_FILE}",
            "-e", f"livekit_rotation_vault_password_file={VAULT_PASS}", *extra]


def vault_keys() -> dict:
    return read_vault_keys(VAULT_FILE, VAULT_PASS)


def accepted(node: Node, key: str, secret: str) -> bool:
    status, body = twirp(node, "ListRooms", {}, make_token(key, secret, roomList=True))
    assert status in (200, 401), (status, body)
    return status == 200


def key_file_digest(node: Node) -> str:
    return node.sh("sha256sum /etc/livekit/keys.yaml").stdout.split()[0]


def leaks(node: Node, values: list[str]) -> str:
    """Files on the host that others may read and that contain one of the values (patterns via stdin)."""
    script = ("umask 077; cat > /run/lkt-patterns; "
              "find /etc /var /opt /tmp /root /home -xdev -type f -perm -o+r -size -5M -print0 2>/dev/null "
              "| xargs -0 -r grep -l -F -f /run/lkt-patterns 2>/dev/null; rm -f /run/lkt-patterns")
    return subprocess.run(["podman", "exec", "-i", node.name, "sh", "-c", script], input="\n".join(values) + "\n",
                          capture_output=True, text=True, timeout=300, check=False).stdout.strip()


def test_rotation_keeps_calls_and_never_leaks_a_secret(host, api_key, api_secret, people):
    assert accepted(host, api_key, api_secret)
    caller = Participant(host, "rotation-call", "old-key-caller", api_key, api_secret, publish=True)
    people.append(caller)
    # A single node refuses every new room while it drains: with a call on it and a drain timeout (the test
    # budget, 120 s) above the bound, the rotation is refused before the vault file or the key file changes.
    digest = key_file_digest(host)
    refused = run_playbook("rotate_keys.yml", *rotation_args("add", "-e", "livekit_server_restart_max_refusal=60"))
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "up to 120s" in said and "livekit_server_restart_max_refusal=60s" in said, said[-3000:]
    assert "livekit_server_restart_allow_long_refusal=true" in said and "blue_green" in said
    assert key_file_digest(host) == digest and not VAULT_FILE.exists()
    assert caller.connected() and unit_state(host) == "active"
    sampler = ArgvSampler([host])
    sampler.start()
    add = subprocess.Popen(playbook_command("rotate_keys.yml", *rotation_args("add"), "-vvv", "--diff"),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Phase 1 must wait for the call signed with the old key; the caller hangs up at a set time.
        assert wait_until(lambda: unit_state(host) == "deactivating", 240), "the node never started draining"
        time.sleep(8)
        assert caller.connected() and unit_state(host) == "deactivating"
        call = caller.hang_up()
        output = add.communicate(timeout=300)[0]
    finally:
        sampler.stop.set()
        if add.poll() is None:
            add.kill()
            add.communicate()
    assert add.returncode == 0, output[-4000:]
    assert call["summary"]["disconnected"] is False, call

    keys = vault_keys()
    assert api_key in keys and len(keys) == 2, sorted(keys)
    new_key = next(name for name in keys if name != api_key)
    new_secret = keys[new_key]
    assert len(new_secret) >= 32
    assert accepted(host, new_key, new_secret) and accepted(host, api_key, api_secret)
    assert host.sh("stat -c '%a %U' /etc/livekit/keys.yaml").stdout.split() == ["600", "livekit"]

    # Booleans only: a failing assert must not print the secret it looked for.
    for secret in (new_secret, api_secret):
        in_output = secret in output
        in_argv = any(secret in sample for sample in sampler.samples)
        assert not in_output, "a secret reached the -vvv --diff output"
        assert not in_argv, "a secret reached a process command line"
    assert len(sampler.samples) > 20
    assert leaks(host, [new_secret, api_secret]) == ""
    assert VAULT_FILE.read_text().startswith("$ANSIBLE_VAULT") and VAULT_FILE.stat().st_mode & 0o077 == 0

    # The inventory still lists only the old key (as when another inventory file shadows the vault
    # file phase 1 wrote): site.yml must refuse to drop the new key, before anything changes.
    digest = key_file_digest(host)
    shadowed = run_playbook("site.yml", "--limit", NODE, timeout=600)
    assert shadowed.returncode != 0, shadowed.stdout[-3000:]
    said = shadowed.stdout + shadowed.stderr
    assert f"would remove API key(s) {new_key}" in said and "livekit_server_api_keys_remove" in said, said[-3000:]
    assert key_file_digest(host) == digest
    assert accepted(host, new_key, new_secret)

    # Phase 2 too early: tokens signed with the old key may still be valid, so it is refused.
    digest = key_file_digest(host)
    early = run_playbook("rotate_keys.yml", *rotation_args("retire", "-e", f"livekit_rotation_retire_key={api_key}",
                                                           "-e", f"@{VAULT_FILE}", "--vault-password-file", str(VAULT_PASS)))
    # Failed tasks are reported on stderr.
    assert early.returncode != 0 and "livekit_rotation_token_ttl=21600" in early.stdout + early.stderr, early.stderr[-3000:]
    assert key_file_digest(host) == digest
    assert accepted(host, api_key, api_secret)

    # As in a real inventory, the key set now comes from the vault file phase 1 wrote.
    retire = run_playbook("rotate_keys.yml", *rotation_args(
        "retire", "-e", f"livekit_rotation_retire_key={api_key}", "-e", "livekit_rotation_force=true", "--diff",
        "-e", f"@{VAULT_FILE}", "--vault-password-file", str(VAULT_PASS)))
    assert retire.returncode == 0, retire.stdout[-4000:]
    assert not accepted(host, api_key, api_secret), "the retired key must be rejected"
    assert accepted(host, new_key, new_secret)
    only_new = vault_keys() == {new_key: new_secret}
    assert only_new, "the vault file must hold exactly the new key"
    leaked = any(secret in retire.stdout + retire.stderr for secret in (new_secret, api_secret))
    assert not leaked, "a secret reached the output of phase 2"
    events = [line for line in host.sh("cat /var/lib/livekit-deploy/audit.jsonl").stdout.splitlines() if '"key_' in line]
    assert any('"key_added"' in e and new_key in e for e in events)
    assert any('"key_retired"' in e and api_key in e for e in events)


@pytest.mark.parametrize("args,message", [
    ("name={new} secret=" + "x" * 40, "already exists with a different secret"),
    ("name=APIshort secret=tooshort", "at least 32 characters"),
    ("name=APInotthere state=absent", "is not in the key file"),
    ("name={new} state=absent", "only key"),
])
def test_bad_key_requests_leave_the_key_file_unchanged(host, args, message):
    inventory = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "inventory"
    new_key = next(iter(vault_keys()))
    digest = key_file_digest(host)
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name("ansible")), "-i", str(inventory), NODE, "-b",
         "-m", "selfhosted.livekit.livekit_api_key", "-a", args.format(new=new_key)],
        capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1"))
    assert result.returncode != 0
    assert message in result.stdout and "left unchanged" in result.stdout, result.stdout[-2000:]
    assert key_file_digest(host) == digest
