"""What went over the wire: a recording reverse proxy, and the pure readers of what it recorded.

Standard library only (it runs inside a cell's environment). :class:`RecordingProxy` listens on a
free loopback port in a thread and forwards every request to an upstream HTTP server; the
response body is passed through byte for byte, and a streamed response (chunked, or without a
length: SSE, NDJSON) is re-sent to the client as chunked, one chunk per piece read upstream,
flushed at once, so a client sees the stream arrive as the server sends it. Every exchange is
recorded (:class:`Exchange`): method, path, request JSON, response status, the raw response body
and its SSE events (or NDJSON lines) in order. Credentials are forwarded upstream but never
recorded: ``Authorization``, ``Proxy-Authorization``, ``Cookie``, ``api-key`` and ``x-api-key``
headers are left out of every record and every log line::

    with RecordingProxy("http://127.0.0.1:8080") as proxy:
        mark = proxy.mark()
        ...  # a client SDK talks to proxy.url
        for ex in proxy.since(mark):
            print(ex.method, ex.path, ex.status, len(ex.events))

Pure helpers: :func:`parse_sse` (an SSE body into events), :func:`parse_ndjson`, and
:func:`accumulate` (OpenAI chat-completion stream events into the message they spell: content
and tool-call deltas concatenated in order, by tool-call ``index``).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "api-key", "x-api-key"})
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
READ_SIZE = 65536


@dataclass
class Exchange:
    """One request and its response as they were on the wire (no credentials)."""

    method: str
    path: str
    request_headers: dict
    request_body: bytes
    status: int | None = None
    response_headers: dict = field(default_factory=dict)
    body: bytes = b""
    pieces: int = 0
    """How many reads the response body arrived in (each forwarded as its own chunk)."""
    streamed: bool = False
    error: str = ""
    started: float = 0.0
    first_byte_s: float | None = None
    seconds: float | None = None
    done: bool = False

    @property
    def request_json(self):
        try:
            return json.loads(self.request_body.decode("utf-8")) if self.request_body else None
        except ValueError:
            return None

    @property
    def response_json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError:
            return None

    @property
    def content_type(self) -> str:
        return self.response_headers.get("content-type", "")

    @property
    def events(self) -> list[dict]:
        """SSE events (``text/event-stream``), in order; else []."""
        if "text/event-stream" not in self.content_type and not self.body.lstrip().startswith(b"data:"):
            return []
        return parse_sse(self.body)

    @property
    def lines(self) -> list:
        """NDJSON lines (Ollama's streamed API), decoded; else []."""
        if "ndjson" not in self.content_type and "x-ndjson" not in self.content_type:
            return []
        return parse_ndjson(self.body)

    def to_json(self, body_chars: int = 4000) -> dict:
        text = self.body.decode("utf-8", errors="replace")
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "request": self.request_json,
            "request_headers": self.request_headers,
            "content_type": self.content_type,
            "streamed": self.streamed,
            "pieces": self.pieces,
            "events": len(self.events),
            "body": text[:body_chars] + ("…" if len(text) > body_chars else ""),
            "error": self.error,
            "first_byte_s": self.first_byte_s,
            "seconds": self.seconds,
        }


def safe_headers(items) -> dict:
    """Headers as a dict of lower-case names, without credentials (their names are kept, values not)."""
    out = {}
    for k, v in items:
        name = k.lower()
        out[name] = "<redacted>" if name in SECRET_HEADERS else v
    return out


# --------------------------------------------------------------------------- pure readers


def parse_sse(body: bytes | str) -> list[dict]:
    """Server-sent events: ``[{"event", "data", "json", "done"}]`` in order. ``data`` lines of one
    event are joined with newlines; ``json`` is the decoded data (None when not JSON);
    ``done`` marks OpenAI's ``[DONE]`` sentinel. Comments (``:``) are skipped."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for block in text.split("\n\n"):
        data, name, seen = [], None, False
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "data":
                data.append(value)
                seen = True
            elif key == "event":
                name = value
        if not seen:
            continue
        payload = "\n".join(data)
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = None
        events.append({"event": name, "data": payload, "json": decoded, "done": payload.strip() == "[DONE]"})
    return events


def parse_ndjson(body: bytes | str) -> list:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"_unparsed": line})
    return out


def _get(obj, name, default=None):
    """A field of a dict or of an SDK object (attribute), the same way."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def usage_of(usage) -> dict | None:
    if usage is None:
        return None
    return {k: _get(usage, k) for k in USAGE_FIELDS}


def accumulate(chunks, choice_index: int = 0) -> dict:
    """The message a stream of chat-completion chunks spells, by the OpenAI streaming rules.

    ``chunks``: decoded SSE payloads (dicts) or SDK chunk objects. Content (and
    ``reasoning_content``/``reasoning``) deltas, and the ``text`` of completions (not chat)
    chunks, are concatenated in order; tool-call deltas are
    grouped by their ``index``: ``id``, ``type`` and ``function.name`` come from the first delta
    that carries them, ``function.arguments`` are concatenated in order. The last
    ``finish_reason`` and the last ``usage`` win. ``notes`` lists what the rules do not allow (a
    delta without ``index``, a later delta that repeats a different id or name): servers that do
    this break some accumulators, so it is worth knowing where a mismatch comes from.
    """
    out: dict[str, Any] = {
        "role": None,
        "content": None,
        "reasoning": None,
        "tool_calls": [],
        "finish_reason": None,
        "usage": None,
        "chunks": 0,
        "notes": [],
    }
    calls: dict = {}
    order: list = []
    for chunk in chunks:
        if isinstance(chunk, dict) and chunk.get("done"):
            continue
        out["chunks"] += 1
        if _get(chunk, "usage") is not None:
            out["usage"] = usage_of(_get(chunk, "usage"))
        for choice in _get(chunk, "choices") or []:
            if (_get(choice, "index") or 0) != choice_index:
                continue
            delta = _get(choice, "delta") or {}
            if _get(delta, "role") and out["role"] is None:
                out["role"] = _get(delta, "role")
            for piece in (_get(delta, "content"), _get(choice, "text")):  # chat delta, or completions text
                if isinstance(piece, str):
                    out["content"] = (out["content"] or "") + piece
            for key in ("reasoning_content", "reasoning"):
                piece = _get(delta, key)
                if isinstance(piece, str):
                    out["reasoning"] = (out["reasoning"] or "") + piece
            for pos, tc in enumerate(_get(delta, "tool_calls") or []):
                idx = _get(tc, "index")
                if idx is None:
                    out["notes"].append(f"chunk {out['chunks']}: tool-call delta without index (position {pos} used)")
                    idx = pos
                if idx not in calls:
                    calls[idx] = {"index": idx, "id": None, "type": None, "name": None, "arguments": ""}
                    order.append(idx)
                slot = calls[idx]
                fn = _get(tc, "function") or {}
                for key, value in (("id", _get(tc, "id")), ("type", _get(tc, "type")), ("name", _get(fn, "name"))):
                    if value:
                        if slot[key] is None:
                            slot[key] = value
                        elif slot[key] != value:
                            out["notes"].append(
                                f"chunk {out['chunks']}: tool call {idx} {key} {value!r} after {slot[key]!r}"
                            )
                        elif key != "type":
                            out["notes"].append(f"chunk {out['chunks']}: tool call {idx} repeats its {key}")
                args = _get(fn, "arguments")
                if isinstance(args, str):
                    slot["arguments"] += args
            if _get(choice, "finish_reason"):
                out["finish_reason"] = _get(choice, "finish_reason")
    out["tool_calls"] = [calls[i] for i in sorted(order, key=lambda i: (not isinstance(i, int), i))]
    return out


# --------------------------------------------------------------------------- the proxy


class RecordingProxy:
    """A recording reverse proxy to ``upstream`` (``http://host:port``) on a free loopback port."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0):
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"upstream must be an http(s) URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self.up_scheme = parsed.scheme
        self.up_host = parsed.hostname
        self.up_port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.up_prefix = parsed.path.rstrip("/")
        self.timeout = timeout
        self.exchanges: list[Exchange] = []
        self.log: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RecordingProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="llmcompat-wire", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def mark(self) -> int:
        with self._lock:
            return len(self.exchanges)

    def since(self, mark: int, wait: float = 2.0) -> list[Exchange]:
        """Exchanges recorded after ``mark``; waits (briefly) for those still streaming to finish."""
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                got = list(self.exchanges[mark:])
            if all(ex.done for ex in got) or time.monotonic() > deadline:
                return got
            time.sleep(0.01)

    def _connection(self):
        cls = http.client.HTTPSConnection if self.up_scheme == "https" else http.client.HTTPConnection
        return cls(self.up_host, self.up_port, timeout=self.timeout)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # request lines only: never headers
                with proxy._lock:
                    proxy.log.append(fmt % args)

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    parts: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _forward(self):
                ex = Exchange(
                    self.command, self.path, safe_headers(self.headers.items()), b"", started=time.monotonic()
                )
                with proxy._lock:
                    proxy.exchanges.append(ex)
                try:
                    ex.request_body = self._body()
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    headers["Host"] = f"{proxy.up_host}:{proxy.up_port}"
                    if ex.request_body or self.command in ("POST", "PUT", "PATCH"):
                        headers["Content-Length"] = str(len(ex.request_body))
                    conn = proxy._connection()
                    try:
                        conn.request(
                            self.command, proxy.up_prefix + self.path, body=ex.request_body or None, headers=headers
                        )
                        resp = conn.getresponse()
                    except (OSError, http.client.HTTPException) as exc:
                        conn.close()
                        ex.error = f"upstream: {exc}"
                        msg = json.dumps({"error": {"message": f"llmcompat wire proxy: {ex.error}"}}).encode()
                        self.send_response(502)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(msg)))
                        self.end_headers()
                        self.wfile.write(msg)
                        return
                    ex.status = resp.status
                    ex.response_headers = safe_headers(resp.getheaders())
                    length = resp.getheader("Content-Length")
                    bodyless = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
                    ex.streamed = length is None and not bodyless
                    self.send_response_only(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in HOP_BY_HOP:
                            self.send_header(k, v)
                    if ex.streamed:
                        self.send_header("Transfer-Encoding", "chunked")
                    elif length is not None:
                        self.send_header("Content-Length", length)
                    self.end_headers()
                    buf = bytearray()
                    try:
                        while True:
                            piece = b"" if bodyless else resp.read1(READ_SIZE)
                            if not piece:
                                break
                            if ex.first_byte_s is None:
                                ex.first_byte_s = round(time.monotonic() - ex.started, 4)
                            buf += piece
                            ex.pieces += 1
                            if ex.streamed:
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                            else:
                                self.wfile.write(piece)
                            self.wfile.flush()
                    except (OSError, http.client.HTTPException) as exc:
                        ex.error = f"stream: {exc}"
                        self.close_connection = True
                    finally:
                        ex.body = bytes(buf)
                        conn.close()
                    if ex.streamed and not ex.error:
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                except (OSError, ValueError) as exc:  # the client went away
                    ex.error = ex.error or f"client: {exc}"
                    self.close_connection = True
                finally:
                    ex.seconds = round(time.monotonic() - ex.started, 4)
                    ex.done = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _forward

        return Handler
