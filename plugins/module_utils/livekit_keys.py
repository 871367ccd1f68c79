# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The LiveKit API key file as a set of named keys: read, change, write atomically (0600, owned
by the service user; livekit-server refuses a key file others can read). The layout matches the
livekit_server role's template (leading comment lines kept, then ``name: secret`` sorted by
name), so a converge after a rotation that updated the inventory changes nothing.

Nothing here puts a secret into an exception message, a return value or a diff.
"""

from __future__ import annotations

import json
import re
import secrets
import string
import time

from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_api import KEY_NAME_RE, parse_key_file
from ansible_collections.selfhosted.livekit.plugins.module_utils.livekit_files import atomic_write, read_json

MIN_SECRET_LENGTH = 32
SECRET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-+/=.~]*$")
BASE62 = string.ascii_letters + string.digits


class KeyFileError(ValueError):
    """A key operation that would break the file or lock clients out; the message names no secret."""


def generate_name(prefix="API", length=12):
    return prefix + "".join(secrets.choice(BASE62) for i in range(length))


def generate_secret(length=48):
    """Random base62, like ``livekit-server generate-keys`` (48 chars is about 285 bits)."""
    return "".join(secrets.choice(BASE62) for i in range(length))


def check_name(name):
    if not KEY_NAME_RE.match(name or "") or not 3 <= len(name) <= 64:
        raise KeyFileError("key name %r must be 3-64 letters, digits, '_' or '-'" % name)


def check_secret(secret):
    if len(secret) < MIN_SECRET_LENGTH:
        raise KeyFileError("the secret must have at least %d characters (it has %d); a shorter one can be "
                           "brute-forced. Leave secret unset to generate one" % (MIN_SECRET_LENGTH, len(secret)))
    if not SECRET_RE.match(secret):
        raise KeyFileError("the secret may only use letters, digits and _-+/=.~, and must start with a "
                           "letter or digit (it is written unquoted into the key file)")


class KeyFile:
    """Header comment lines plus an ordered mapping of key name to secret."""

    def __init__(self, header, keys):
        self.header = header
        self.keys = keys

    @classmethod
    def parse(cls, text):
        header = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                header.append(line)
            else:
                break
        while header and not header[-1].strip():
            header.pop()
        return cls(header, parse_key_file(text))

    @classmethod
    def read(cls, path):
        with open(path) as handle:
            return cls.parse(handle.read())

    def render(self):
        lines = list(self.header) + ["%s: %s" % (name, self.keys[name]) for name in sorted(self.keys)]
        return "\n".join(lines) + "\n"

    def add(self, name, secret):
        """Add a key; True when the file changes. A name already used with another secret is refused."""
        check_name(name)
        check_secret(secret)
        if name in self.keys:
            if self.keys[name] != secret:
                raise KeyFileError("key %s already exists with a different secret: choose another name, or retire "
                                   "%s first" % (name, name))
            return False
        self.keys[name] = secret
        return True

    def retire(self, name, missing_ok=False):
        """Remove a key; True when the file changes. The last key is never removed."""
        if name not in self.keys:
            if missing_ok:
                return False
            raise KeyFileError("key %s is not in the key file (it has: %s)" % (name, ", ".join(sorted(self.keys))))
        if len(self.keys) == 1:
            raise KeyFileError("key %s is the only key: retiring it would lock every client and the API out. Add "
                               "the new key first (phase 1), then retire the old one" % name)
        del self.keys[name]
        return True


def write_key_file(path, keyfile, uid=-1, gid=-1, mode=0o600):
    """Write via a temporary file in the same directory, then rename: readers see old or new, whole."""
    atomic_write(path, keyfile.render().encode(), mode, uid, gid)


def read_metadata(path):
    return read_json(path)


def write_metadata(path, data):
    """Key names and when they were added (no secrets): lets a later run judge a key's age."""
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o644)


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
