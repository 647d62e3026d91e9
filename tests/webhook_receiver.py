"""A webhook receiver for the process tests: ``python webhook_receiver.py PORT FILE``
serves 127.0.0.1:PORT and appends each POST (its headers and body) to FILE as
one JSON line, then answers 204. It prints "ready" once it listens."""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        line = json.dumps(
            {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body.decode()}
        )
        with open(sys.argv[2], "a", encoding="utf-8") as out:
            out.write(line + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
