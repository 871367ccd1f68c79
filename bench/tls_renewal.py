"""Renewals under a live call (driven by bench/tls_renewal.sh against the tls scenario).

PARTICIPANTS clients join one room over wss through nginx on lkt-tls (one publishes), and one
TURN/TLS stream is opened on 443. Then RENEWALS times: make the certificate due and start
certbot.service (what certbot.timer starts), and time (a) the ACME round trip (certbot's run) and
(b) until 443 serves the new certificate. After each, the TURN stream must still answer. At the
end the clients report whether they were ever disconnected or reconnecting.
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from conftest import Participant  # noqa: E402
from test_tls import (DOMAIN, RENEWAL_CONF, TURN_DOMAIN, host_named, main_pid, pebble_root_pem,  # noqa: E402
                      private_hosts, served_certificate, stun_binding, turn_tls)

hosts_dir, renewals, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
node = host_named(hosts_dir, "lkt-tls")
root = Path(hosts_dir).parent / "pebble-root.pem"
root.write_text(pebble_root_pem(host_named(hosts_dir, "lkt-acme")))
wrap = private_hosts(Path(hosts_dir).parent / "bench-hosts", node.ip, [DOMAIN, TURN_DOMAIN])
key, secret = os.environ["LKT_API_KEY"], os.environ["LKT_API_SECRET"]

people = [Participant(node, "bench-renewal", f"p{i}", key, secret, publish=(i == 0), url=f"wss://{DOMAIN}",
                      wrap=wrap, extra_env={"SSL_CERT_FILE": str(root)}) for i in range(count)]
stream = turn_tls(node.ip, str(root))
assert stun_binding(stream)
pid = main_pid(node)
rows = []
try:
    for n in range(1, renewals + 1):
        before = served_certificate(node.ip, DOMAIN, str(root))["serial"]
        node.sh(f"sed -i 's/^renew_before_expiry.*/renew_before_expiry = 3650 days/' {RENEWAL_CONF}")
        t0 = time.monotonic()
        node.sh("systemctl start certbot.service")
        acme_s = time.monotonic() - t0
        node.sh(f"sed -i 's/^renew_before_expiry.*/renew_before_expiry = 30 days/' {RENEWAL_CONF}")
        while served_certificate(node.ip, DOMAIN, str(root))["serial"] == before:
            if time.monotonic() - t0 > 60:
                raise SystemExit(f"renewal {n}: 443 still serves the old certificate after 60 s")
            time.sleep(0.05)
        served_s = time.monotonic() - t0
        rows.append({"renewal": n, "acme_s": round(acme_s, 2), "served_s": round(served_s, 2),
                     "turn_stream_ok": stun_binding(stream),
                     "connected": sum(p.connected() for p in people)})
        time.sleep(2)
finally:
    reports = [p.hang_up() for p in people]
    stream.close()
print("| renewal | certbot run (s) | new certificate on 443 after (s) | TURN/TLS stream answers | clients connected |")
print("|---|---|---|---|---|")
for r in rows:
    print(f"| {r['renewal']} | {r['acme_s']} | {r['served_s']} | {r['turn_stream_ok']} | {r['connected']}/{count} |")
disconnected = sum(1 for r in reports if r["summary"].get("disconnected"))
reconnects = sum(1 for r in reports for e in r["events"] if e.get("event") == "reconnecting")
print(f"\nmedian certbot run {statistics.median(r['acme_s'] for r in rows):.2f} s, median until 443 serves the new "
      f"certificate {statistics.median(r['served_s'] for r in rows):.2f} s ({len(rows)} renewals); "
      f"clients disconnected {disconnected}/{count}, reconnect events {reconnects}, "
      f"livekit-server restarted: {main_pid(node) != pid}")
print(json.dumps({"rows": rows, "disconnected": disconnected, "reconnects": reconnects}))
