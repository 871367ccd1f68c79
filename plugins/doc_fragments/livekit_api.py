# Copyright: selfhosted.livekit contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    """Options shared by modules that call a livekit-server's API."""

    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the server's signalling/API port, as seen from the managed host.
    type: str
    default: http://127.0.0.1:7880
  key_file:
    description:
      - "LiveKit key file on the managed host (one C(name: secret) per line) to sign API calls with."
      - Ignored when O(api_key) and O(api_secret) are given.
    type: path
    default: /etc/livekit/keys.yaml
  key_name:
    description:
      - Which key of O(key_file) to use; the first one by default.
    type: str
  api_key:
    description:
      - API key to sign calls with, instead of reading O(key_file).
    type: str
  api_secret:
    description:
      - Secret of O(api_key).
    type: str
  timeout:
    description:
      - Seconds to wait for each HTTP request.
    type: int
    default: 10
"""
