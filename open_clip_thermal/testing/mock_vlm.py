"""A deterministic OpenAI-compatible chat-completions server for tests and offline smoke runs.

It answers ``POST /v1/chat/completions`` with captions derived from the request (which image,
which prompt), counts requests per item and caption kind, and injects faults on demand. It only
binds to 127.0.0.1. Example::

    with MockChatServer() as server:
        server.add_faults("sha:ab12...", "global", ["500", "429"])
        run ... --server-url server.url
"""
import base64
import hashlib
import json
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Sequence

from ..contracts import FINE_GRAINED, GLOBAL
from ..ircap.prompts import PromptSet, load_prompt_set

FAULTS = ("500", "429", "hang", "malformed", "empty", "400", "401", "403", "hallucinate",
          "echo_auth")


def image_key(image_bytes: bytes) -> str:
    """Default item name for an image: ``sha:`` + 12 hex digits of its SHA-256."""
    return "sha:" + hashlib.sha256(image_bytes).hexdigest()[:12]


def expected_caption(item: str, kind: str) -> str:
    """The caption the server returns for ``item`` and ``kind`` when no fault applies."""
    if kind == GLOBAL:
        return (f"infrared thermal image of a street scene {item} at night under an overcast sky; "
                "the asphalt releases heat stored during the day while street lights do not "
                "change the heat distribution.")
    if kind == FINE_GRAINED:
        return (f"infrared thermal view of {item}: pedestrians show warm body heat on faces and "
                "hands, a moving car has a hot engine and warm tyres, and lane markings appear "
                "cooler than the asphalt because of their lower emissivity.")
    return f"infrared thermal rewrite of {item}: lane markings appear cooler than the asphalt."


class MockChatServer:
    """Threaded HTTP server on 127.0.0.1 (port 0 = any free port) speaking chat completions.

    Args:
        prompts: prompt set used to tell a global from a fine-grained request.
        hang_seconds: how long a ``hang`` fault stalls before answering (set it past the client
            timeout).
        delay: seconds to wait before every answer (to slow a run down in tests).
        retry_after: value of the Retry-After header sent with a ``429`` fault.
        api_key: when set, a request without ``Authorization: Bearer <api_key>`` gets a 401 whose
            body echoes the token it was sent (as some real servers do), to test redaction.
    """

    def __init__(self, prompts: Optional[PromptSet] = None, hang_seconds: float = 2.0,
                 delay: float = 0.0, retry_after: str = "1", api_key: Optional[str] = None):
        self.prompts = prompts or load_prompt_set()
        self.hang_seconds = hang_seconds
        self.delay = delay
        self.retry_after = retry_after
        self.api_key = api_key
        self.requests_total = 0  # every POST received, rejected ones included
        self.lock = threading.Lock()
        self.counts: Counter = Counter()  # (item, kind) -> requests received
        self.log: List[dict] = []  # one entry per request: item, kind, fault
        self.auth_headers: Counter = Counter()  # Authorization header values seen
        self._faults: Dict[tuple, List[str]] = defaultdict(list)
        self._names: Dict[str, str] = {}
        self._closing = threading.Event()
        self.gate: Optional[threading.Event] = None  # when set up, requests past gate_after wait
        self.gate_after = 0
        self.blocked = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    # ---- configuration -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL to pass as ``--server-url``."""
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def name_image(self, image_bytes: bytes, name: str) -> None:
        """Call requests carrying ``image_bytes`` item ``name`` (instead of ``sha:...``)."""
        self._names[image_key(image_bytes)] = name

    def add_faults(self, item: str, kind: str, faults: Sequence[str]) -> None:
        """Answer the next requests for ``(item, kind)`` with ``faults``, one per request, in order.

        ``kind`` is ``global``, ``fine_grained`` or ``fix``; faults are ``500``, ``429`` (with
        Retry-After), ``hang``, ``malformed`` (HTTP 200, body not JSON), ``empty`` (no choices),
        ``400`` (permanent), ``401`` / ``403`` (authentication; the body echoes the Authorization
        header received), ``hallucinate`` (a caption with colour words) or ``echo_auth`` (a
        caption that quotes the Authorization header received).
        """
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; expected some of {FAULTS}")
        with self.lock:
            self._faults[(item, kind)].extend(faults)

    def clear_faults(self) -> None:
        """Forget all queued faults."""
        with self.lock:
            self._faults.clear()

    def hold_after(self, n_requests: int) -> threading.Event:
        """Make every request after the first ``n_requests`` wait until the returned event is set."""
        self.gate = threading.Event()
        self.gate_after = n_requests
        return self.gate

    def reset_counts(self) -> None:
        """Zero the request counters and the log."""
        with self.lock:
            self.counts.clear()
            self.log.clear()

    def item_counts(self) -> Counter:
        """Requests per item, all kinds together."""
        with self.lock:
            total: Counter = Counter()
            for (item, _), n in self.counts.items():
                total[item] += n
            return total

    # ---- request handling ----------------------------------------------------------------
    def _classify(self, body: dict) -> (str, str):
        messages = body.get("messages") or []
        image_bytes, text = b"", ""
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                for part in content:
                    if part.get("type") == "image_url":
                        url = part["image_url"]["url"]
                        image_bytes = base64.b64decode(url.split(",", 1)[1])
                    elif part.get("type") == "text":
                        text = part.get("text", "")
        key = image_key(image_bytes)
        item = self._names.get(key, key)
        if len(messages) > 1:
            kind = "fix"
        elif text == self.prompts.global_.text:
            kind = GLOBAL
        elif text == self.prompts.fine_grained.text:
            kind = FINE_GRAINED
        else:
            kind = "unknown"
        return item, kind

    def _next_fault(self, item: str, kind: str) -> (Optional[str], Optional[threading.Event]):
        # Counting and the gate decision share one lock, so exactly the requests after the
        # first ``gate_after`` are held even when several arrive at once.
        with self.lock:
            self.counts[(item, kind)] += 1
            queue = self._faults.get((item, kind))
            fault = queue.pop(0) if queue else None
            self.log.append({"item": item, "kind": kind, "fault": fault})
            hold = self.gate is not None and sum(self.counts.values()) > self.gate_after
            if hold:
                self.blocked += 1
            return fault, self.gate if hold else None

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, headers: Optional[dict] = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                auth = self.headers.get("Authorization")
                with server.lock:
                    server.auth_headers[auth] += 1
                    server.requests_total += 1
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, b'{"error": "not found"}')
                try:
                    body = json.loads(raw)
                    item, kind = server._classify(body)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    return self._send(400, json.dumps({"error": str(exc)}).encode())
                if server.api_key is not None and auth != f"Bearer {server.api_key}":
                    token = (auth or "").split(" ", 1)[-1]
                    return self._send(401, json.dumps({"error": {
                        "message": f"Incorrect API key provided: {token}",
                        "type": "invalid_request_error"}}).encode())
                fault, gate = server._next_fault(item, kind)
                if gate is not None:
                    gate.wait(30)
                if server.delay:
                    time.sleep(server.delay)
                if fault == "hang":
                    server._closing.wait(server.hang_seconds)
                    return self._send(504, b'{"error": "hung"}')
                if fault == "500":
                    return self._send(500, b'{"error": "injected"}')
                if fault == "400":
                    return self._send(400, b'{"error": "injected permanent error"}')
                if fault in ("401", "403"):
                    return self._send(int(fault), json.dumps(
                        {"error": f"not allowed; you sent Authorization: {auth}"}).encode())
                if fault == "429":
                    return self._send(429, b'{"error": "slow down"}',
                                      {"Retry-After": server.retry_after})
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                if fault == "empty":
                    return self._send(200, b'{"choices": []}')
                caption = expected_caption(item, kind)
                if fault == "hallucinate":
                    caption = f"infrared thermal scene {item} with white lane markings and a red car."
                if fault == "echo_auth":
                    caption = f"infrared thermal scene {item}; request carried Authorization: {auth}"
                answer = {
                    "id": f"mock-{item}-{kind}", "object": "chat.completion", "created": 0,
                    "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": caption}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": len(caption.split()),
                              "total_tokens": 100 + len(caption.split())},
                }
                return self._send(200, json.dumps(answer).encode())

        return Handler

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> "MockChatServer":
        """Start serving in a background thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Release hanging requests and stop the server."""
        self._closing.set()
        if self.gate is not None:
            self.gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
