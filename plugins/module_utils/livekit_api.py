# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small LiveKit server API client that needs nothing on the host beyond Ansible's own module
utilities: access tokens are HS256 JWTs made with the standard library, and the server API is
Twirp (JSON over HTTP POST). The modules that inspect, restart or rotate keys on a node share this
client; secrets never appear in the messages of the exceptions it raises.

The livekit_server role also installs this file on the host for the idle-room reaper's timer, where
Ansible is not installed: there, ``open_url`` is a small standard-library stand-in that, like
Ansible's with ``follow_redirects="none"``, answers a redirect with an HTTPError.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import re
import time
import urllib.error

try:
    from ansible.module_utils.urls import ConnectionError as UrlsConnectionError
    from ansible.module_utils.urls import open_url
except ImportError:  # on the host, for the reaper's timer: the standard library only
    import urllib.request

    class UrlsConnectionError(Exception):
        """Stands in for Ansible's urls.ConnectionError, which the standard library never raises."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """Refuse redirects: urllib then raises HTTPError with the 3xx status."""

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            return None

    def open_url(url, data=None, headers=None, method=None, timeout=10, follow_redirects="none"):
        """The subset of Ansible's open_url this client uses (never following redirects)."""
        request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
        return urllib.request.build_opener(NoRedirect).open(request, timeout=timeout)

KEY_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class LiveKitError(Exception):
    """Any failure talking to a LiveKit server."""


class LiveKitUnavailable(LiveKitError):
    """The server did not answer (refused, timed out, closed the connection, cut its answer short).

    ``refused`` is True only when the connection was refused, i.e. nothing listens there: the one
    case in which a caller may conclude that the server is not running.
    """

    def __init__(self, msg, refused=False):
        super().__init__(msg)
        self.refused = refused


class LiveKitProtocolError(LiveKitError):
    """The server answered 200, but not with what the call returns (not a JSON object)."""


class LiveKitAPIError(LiveKitError):
    """The server answered a Twirp call with an error."""

    def __init__(self, status, code, message):
        super().__init__("HTTP %s %s: %s" % (status, code, message))
        self.status = status
        self.code = code
        self.message = message


def parse_key_file(text):
    """Parse a LiveKit key file (``name: secret`` per line) into an ordered dict.

    Raises ValueError naming the line, never the secret.
    """
    keys = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        name, secret = name.strip(), secret.strip().strip("'\"")
        if not sep or not KEY_NAME_RE.match(name) or not secret:
            raise ValueError("key file line %d is not 'name: secret'" % number)
        if name in keys:
            raise ValueError("key file line %d repeats key %s" % (number, name))
        keys[name] = secret
    if not keys:
        raise ValueError("key file holds no key")
    return keys


def _b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_token(api_key, api_secret, grants, identity="selfhosted-livekit", ttl=600, now=None):
    """An HS256 access token as LiveKit's SDKs make them (``iss`` is the API key)."""
    issued = int(time.time() if now is None else now)
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"iss": api_key, "sub": identity, "nbf": issued - 5, "exp": issued + ttl, "video": grants}
    signing_input = "%s.%s" % (
        _b64(json.dumps(header, separators=(",", ":")).encode()),
        _b64(json.dumps(claims, separators=(",", ":")).encode()),
    )
    signature = hmac.new(api_secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return "%s.%s" % (signing_input, _b64(signature))


class LiveKitClient:
    """Health and RoomService calls against one livekit-server."""

    def __init__(self, url, api_key=None, api_secret=None, timeout=10):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self._secret = api_secret
        self.timeout = timeout

    def _request(self, path, data=None, headers=None):
        try:
            with open_url(self.url + path, data=data, headers=headers or {}, method="POST" if data else "GET",
                          timeout=self.timeout, follow_redirects="none") as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            try:
                return err.code, err.read().decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):
                return err.code, ""
        except (urllib.error.URLError, OSError, http.client.HTTPException, UrlsConnectionError) as err:
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            raise LiveKitUnavailable("%s did not answer: %s" % (self.url, str(reason) or type(reason).__name__),
                                     refused=isinstance(reason, ConnectionRefusedError)) from None

    def health(self):
        """(healthy, status, text) of ``GET /``: OK only while node stats are fresh."""
        status, text = self._request("/")
        return status == 200 and text.strip() == "OK", status, text.strip()

    def twirp(self, method, body=None, grants=None, service="livekit.RoomService"):
        if not self.api_key or not self._secret:
            raise LiveKitError("an API key and secret are needed for %s/%s" % (service, method))
        token = make_token(self.api_key, self._secret, grants or {})
        status, text = self._request(
            "/twirp/%s/%s" % (service, method),
            data=json.dumps(body or {}).encode(),
            headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
        )
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if status != 200:
            if not isinstance(payload, dict):
                payload = {"code": "malformed", "msg": text[:200]}
            raise LiveKitAPIError(status, payload.get("code", "unknown"), payload.get("msg", text[:200]))
        if not isinstance(payload, dict):
            # Never read a proxy's error page or an empty answer as an empty result ("no rooms").
            raise LiveKitProtocolError("%s/%s answered 200 without a JSON object: %r"
                                       % (service, method, text[:120]))
        return payload

    def list_rooms(self):
        return self.twirp("ListRooms", {}, {"roomList": True}).get("rooms", [])

    def create_room(self, name, **options):
        body = dict(options, name=name)
        return self.twirp("CreateRoom", body, {"roomCreate": True})

    def delete_room(self, name):
        return self.twirp("DeleteRoom", {"room": name}, {"roomCreate": True})

    def list_participants(self, room):
        return self.twirp("ListParticipants", {"room": room}, {"roomAdmin": True, "room": room}).get(
            "participants", []
        )


def api_argument_spec():
    """Argument spec of the options in the ``selfhosted.livekit.livekit_api`` doc fragment."""
    return dict(
        url=dict(type="str", default="http://127.0.0.1:7880"),
        key_file=dict(type="path", default="/etc/livekit/keys.yaml"),
        key_name=dict(type="str"),
        api_key=dict(type="str", no_log=False),
        api_secret=dict(type="str", no_log=True),
        timeout=dict(type="int", default=10),
    )


def client_from_params(params):
    """A LiveKitClient from module parameters, reading the key file when no key is given.

    Raises ValueError (bad key file or unknown key name) or OSError (unreadable file).
    """
    key, secret = params.get("api_key"), params.get("api_secret")
    if not (key and secret):
        with open(params["key_file"]) as handle:
            keys = parse_key_file(handle.read())
        key = params.get("key_name") or next(iter(keys))
        if key not in keys:
            raise ValueError("key %s is not in %s" % (key, params["key_file"]))
        secret = keys[key]
    return LiveKitClient(params["url"], key, secret, params.get("timeout", 10))
