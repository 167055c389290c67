"""A stand-in OTLP/HTTP receiver for `scripts/bench --otlp`: answers every POST (and the
bench's readiness probe) 200 and discards the body, so the gateway's tracing runs whole
(encoding, sending) while the receiver's own cost stays out of the gateway's figures.
Each export is noted on stdout (path and size), to show spans did arrive.
Run as `python scripts/bench_otlp.py PORT`.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Handlers run on the server's threads; print() writes a line and its end separately, so
# two exports noted at once could interleave into a joined line and an empty one.
_NOTE = threading.Lock()


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector's is

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        self.rfile.read(size)
        with _NOTE:
            sys.stdout.write(f"{self.path} {size} bytes\n")
            sys.stdout.flush()
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """An exporter that drops its connection as the gateway stops is no error of the
        bench's: only other failures are printed, as a line that names them."""
        error = sys.exc_info()[1]
        if not isinstance(error, ConnectionError):
            with _NOTE:
                sys.stdout.write(f"receiver error: {error!r}\n")
                sys.stdout.flush()


if __name__ == "__main__":
    QuietServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
