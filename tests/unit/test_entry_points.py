"""Every task file that a playbook or another role includes with tasks_from is a declared entry point
(meta/argument_specs.yml: short description, description, the parameters it is passed), its
parameters are public role-prefixed names (so validation sees them), every other task file is
visibly internal, and no role talks to Redis through redis-cli with the password in its environment."""

from __future__ import annotations

import pathlib
import re

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir())
INCLUDE_ROLE = ("include_role", "import_role", "ansible.builtin.include_role", "ansible.builtin.import_role")


def load(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def walk_tasks(node):
    """Every task dict in a play, task list or block, however deep."""
    if isinstance(node, list):
        for item in node:
            yield from walk_tasks(item)
    elif isinstance(node, dict):
        if any(key in node for key in INCLUDE_ROLE) or "name" in node:
            yield node
        for key in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            if key in node:
                yield from walk_tasks(node[key])


def tasks_from_uses():
    """(role, entry point, vars passed, where) for every include_role/import_role with tasks_from."""
    files = sorted((REPO / "playbooks").glob("*.yml")) + sorted((REPO / "playbooks").glob("tasks/*.yml")) \
        + sorted((REPO / "roles").glob("*/tasks/*.yml")) \
        + sorted((REPO / "roles").glob("*/handlers/*.yml"))
    for path in files:
        for task in walk_tasks(load(path) or []):
            for key in INCLUDE_ROLE:
                spec = task.get(key)
                if isinstance(spec, dict) and "tasks_from" in spec:
                    role = spec["name"].rsplit(".", 1)[-1]
                    yield role, spec["tasks_from"], task.get("vars") or {}, str(path.relative_to(REPO))


def specs(role):
    return load(REPO / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]


USES = list(tasks_from_uses())


def test_the_entry_points_are_found():
    # 24 in 0.4.0; livekit_host's firewall_apply became the livekit_firewall module.
    assert len({(role, entry) for role, entry, dummy, dummy2 in USES}) >= 23


@pytest.mark.parametrize("role,entry,passed,where", USES, ids=["%s:%s@%s" % (u[0], u[1], u[3]) for u in USES])
def test_each_entry_point_is_declared_with_its_parameters(role, entry, passed, where):
    spec = specs(role).get(entry)
    assert spec is not None, "%s includes %s tasks_from=%s, which has no entry in argument_specs.yml" % (where, role, entry)
    assert spec.get("short_description") and spec.get("description"), (role, entry)
    assert not entry.startswith("_"), "%s: %s is internal, not an entry point" % (where, entry)
    options = spec.get("options") or {}
    for name in passed:
        assert not name.startswith("_"), \
            "%s passes %s to %s:%s; a private name escapes argument validation" % (where, name, role, entry)
        if name.startswith(role + "_"):
            assert name in options, "%s passes %s, which %s:%s does not declare" % (where, name, role, entry)


@pytest.mark.parametrize("role", ROLES)
def test_every_declared_entry_point_exists_and_every_other_task_file_is_internal(role):
    tasks = REPO / "roles" / role / "tasks"
    declared = set(specs(role))
    files = {p.stem for p in tasks.glob("*.yml")}
    assert declared <= files, "argument_specs.yml declares entry points without a task file: %s" % (declared - files)
    public = {name for name in files if not name.startswith("_")}
    undeclared = public - declared
    assert not undeclared, ("%s: task files that are not entry points must start with an underscore: %s"
                            % (role, sorted(undeclared)))


@pytest.mark.parametrize("role", ROLES)
def test_entry_point_options_are_role_prefixed(role):
    for entry, spec in specs(role).items():
        for name in spec.get("options") or {}:
            assert re.match(r"^%s_[a-z0-9_]+$" % role, name), \
                "%s:%s option %s is not role-prefixed" % (role, entry, name)


def test_site_gates_are_declared():
    assert "livekit_proxy_enabled" in specs("livekit_proxy")["main"]["options"]
    assert "livekit_backup_enabled" in specs("livekit_backup")["main"]["options"]


def test_no_role_runs_redis_cli_with_the_password_in_its_environment():
    for path in sorted((REPO / "roles").glob("*/tasks/*.yml")):
        text = path.read_text()
        assert "REDISCLI_AUTH" not in text and "redis-cli" not in text, \
            "%s: talk to Redis with selfhosted.livekit.livekit_redis (password over the socket only)" % path.name
    for entry in ("snapshot", "start"):
        text = (REPO / "roles" / "redis" / "tasks" / ("%s.yml" % entry)).read_text()
        assert "selfhosted.livekit.livekit_redis:" in text, entry
