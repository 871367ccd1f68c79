"""Stand-in for the get-pip.py bootstrap script that ansible-test downloads from its own file host.

That host is not reachable from our machines, so scripts/setup.sh saves this file where ansible-test
caches the download (~/.ansible/test/cache/get_pip_<version>.py). It does what get-pip.py does for
ansible-test: put pip into the fresh virtual environment (here from the standard library's
ensurepip) and install the requested packages (pip==<version>) from the package index.
"""

import ensurepip
import os
import subprocess
import sys

# ansible-test runs this with a filtered environment; pass on the package index settings of the
# machine's pip (its CA bundle behind an intercepting proxy, for one) that setup.sh recorded.
SETTINGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pip-settings.txt")

ensurepip.bootstrap(upgrade=True)
args = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
extra = open(SETTINGS).read().split() if os.path.exists(SETTINGS) else []
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", *extra, *args]))
