"""A minimal Alertmanager webhook receiver for the compose stack: logs every notification.

Replace it with your own service (or point alertmanager.yml at PagerDuty, Slack, ...).
Standard library only, so it runs in the plain python image.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        for alert in body.get("alerts", []):
            line = {
                "route": self.path,
                "status": alert.get("status"),
                "labels": alert.get("labels"),
                "summary": alert.get("annotations", {}).get("summary"),
            }
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
        sys.stdout.flush()
        self.send_response(200)
        self.end_headers()

    def do_GET(self) -> None:  # health check
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        return


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer(("0.0.0.0", port), Receiver).serve_forever()
