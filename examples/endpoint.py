"""A tiny HTTP server standing for one regional endpoint: answers GET /health with 200.

    python3 examples/endpoint.py 127.0.0.11 8080

Standard library only, so it runs anywhere without installing anything.
"""

from __future__ import annotations

import contextlib
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        status, body = (200, b"ok\n") if self.path == "/health" else (200, b"hello\n")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the prober calls often; keep the terminal quiet


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    server = ThreadingHTTPServer((host, port), Handler)
    print(f"endpoint listening on http://{host}:{port}/health", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
