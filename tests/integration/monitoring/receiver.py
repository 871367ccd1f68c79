"""The on-call stand-in for the monitoring scenario: an HTTP server that appends every POST body it
receives (Alertmanager's webhook JSON) as one line to a file. Usage: receiver.py ADDRESS PORT LOGFILE"""

import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the standard library's name)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            line = json.dumps(json.loads(body), separators=(",", ":"))
        except ValueError:
            line = json.dumps({"unparsed": body.decode("utf-8", "replace")})
        with open(sys.argv[3], "a", encoding="utf-8") as log:
            log.write(line + "\n")
        self.send_response(200)
        self.end_headers()


http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
