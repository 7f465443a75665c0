"""A real HTTP server on 127.0.0.1 for the download tests (a thread in the test process): serves
``files`` (name -> bytes) with Range support and a strong ETag (honouring If-Range), and records what
it was asked."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server:
    """``ranges``: the Range header of each request (None: none); ``requests``: each request's path;
    ``sent``: body bytes sent. ``honour_range = False`` answers every request whole (200);
    ``redirect_loop = True`` sends every request back to itself (302); ``validators = False`` sends no ETag
    (nor Last-Modified: nothing to send If-Range with); ``if_range = False`` ignores If-Range, a 206 of
    the file as it is now whatever version the client's part is of (as some servers do)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.requests: list[str] = []
        self.sent = 0
        self.honour_range = True
        self.redirect_loop = False
        self.validators = True
        self.if_range = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                if outer.redirect_loop:
                    self.send_response(302)
                    self.send_header("Location", self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = 0
                etag = f'"{hashlib.sha256(body).hexdigest()[:16]}"'
                if outer.if_range and self.headers.get("If-Range") not in (None, etag):
                    rng = None  # the client's part is of another version of the file: send it whole
                if rng and outer.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                if outer.validators:
                    self.send_header("ETag", etag)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                outer.sent += len(body) - start  # before writing: the client may finish first
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
