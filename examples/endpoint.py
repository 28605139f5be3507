"""A tiny HTTP server standing for one regional endpoint: answers GET /health with 200.

    python3 examples/endpoint.py 127.0.0.11 8080
    python3 examples/endpoint.py 127.0.0.42 8041 --delay 0.05   # a slower one

Standard library only, so it runs anywhere without installing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    delay = 0.0  # seconds to wait before answering: stands for a distant or busy endpoint

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        time.sleep(self.delay)
        status, body = (200, b"ok\n") if self.path == "/health" else (200, b"hello\n")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the prober calls often; keep the terminal quiet


def main() -> None:
    parser = argparse.ArgumentParser(description="A stand-in regional endpoint.")
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=8080)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    Handler.delay = args.delay
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"endpoint listening on http://{args.host}:{args.port}/health", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
