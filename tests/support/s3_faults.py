"""An unreliable S3 endpoint on loopback: a proxy that fails a share of the requests.

:class:`FaultyS3Proxy` listens on ``127.0.0.1`` and forwards every request to a real
S3 server (the moto server of :mod:`tests.support.s3`, MinIO, ...). On a seeded
random share of the requests it instead

* answers ``503 SlowDown`` (S3's "reduce your request rate"), without forwarding;
* resets the connection (TCP RST) before forwarding: the request never arrived;
* resets the connection *after* forwarding: the request took effect, the client
  never hears so and must retry an operation that already happened.

Requests whose ``METHOD path`` matches one of ``always_fail`` (shell globs such as
``PUT /bucket/out/stems/song 3*``) get ``503 SlowDown`` every time: a persistent
failure that retries cannot cure::

    with S3Server() as s3, FaultyS3Proxy(s3.endpoint_url, slowdown=0.1, reset=0.05) as proxy:
        with s3_environment(proxy.endpoint_url):
            ...  # storage and every process started here go through the proxy
        print(proxy.counts)  # {"forwarded": ..., "slowdown": ..., "reset_before": ..., ...}

``proxy.enabled = False`` passes everything through (for set-up and checks).
"""

from __future__ import annotations

import fnmatch
import http.client
import http.server
import random
import socket
import socketserver
import struct
import threading
import urllib.parse
from collections import Counter
from typing import Any

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade", "expect"}  # fmt: skip
_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")  # fmt: skip


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FaultyS3Proxy:
    """An HTTP proxy in front of ``upstream`` that fails a seeded share of requests."""

    def __init__(self, upstream: str, slowdown: float = 0.1, reset: float = 0.05,
                 seed: int = 0, always_fail: tuple[str, ...] = ()):  # fmt: skip
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.slowdown, self.reset = slowdown, reset
        self.always_fail = always_fail
        self.enabled = True
        self.counts: Counter[str] = Counter()
        self.failed_requests: list[str] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> str:
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), self._handler())
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()
        return self.endpoint_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._server = None

    def __enter__(self) -> FaultyS3Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decide(self, method: str, path: str) -> str:
        """What to do with one request: ``forward``, ``slowdown``, ``reset_before``, ``reset_after``."""
        with self._lock:
            if not self.enabled:
                action = "forward"
            elif any(fnmatch.fnmatchcase(f"{method} {urllib.parse.unquote(path)}", p)
                     for p in self.always_fail):  # fmt: skip
                action = "slowdown"
                self.failed_requests.append(f"{method} {path}")
            else:
                r = self._rng.random()
                if r < self.slowdown:
                    action = "slowdown"
                elif r < self.slowdown + self.reset:
                    action = "reset_before" if self._rng.random() < 0.5 else "reset_after"
                else:
                    action = "forward"
            self.counts[action] += 1
            return action

    # ------------------------------------------------------------------ handler

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reset(self) -> None:
                self.close_connection = True
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))  # fmt: skip
                self.connection.close()

            def _handle(self) -> None:
                body = self._body()
                action = proxy.decide(self.command, self.path)
                if action == "reset_before":
                    self._reset()
                    return
                if action == "slowdown":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_SLOWDOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_SLOWDOWN)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out_headers = [(k, v) for k, v in resp.getheaders()
                                   if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]  # fmt: skip
                finally:
                    conn.close()
                if action == "reset_after":
                    self._reset()
                    return
                self.send_response(resp.status, resp.reason)
                for k, v in out_headers:
                    self.send_header(k, v)
                if self.command == "HEAD":
                    length = resp.getheader("Content-Length")
                    if length is not None:
                        self.send_header("Content-Length", length)
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        return Handler
