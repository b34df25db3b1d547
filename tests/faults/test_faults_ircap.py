"""IR-Cap against misbehaving servers: trickling bytes, huge answers, bad keys, echoed keys.

Every server here binds to 127.0.0.1 and every loop on both sides is bounded (by a byte or time
budget), so a regression makes a test fail in seconds instead of hanging the suite.
"""
import io
import json
import socket
import socketserver
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from open_clip_thermal.ircap import main
from open_clip_thermal.ircap.client import CaptionRequestError, ChatCompletionsClient, RetryPolicy
from open_clip_thermal.ircap.prompts import caption_messages, load_prompt_set
from open_clip_thermal.testing.mock_vlm import MockChatServer

FAST = ["--backoff", "0.001", "--backoff-max", "0.002", "--no-progress"]
KEY = "sk-test-Zq8v3LkP0wX9"  # what a leaked key looks like in the files if redaction fails


class RawServer:
    """A TCP server on 127.0.0.1 whose ``behave(sock, stop)`` writes whatever it likes.

    It reads the request head and body first (so the client's write completes), then hands the
    socket to ``behave``. ``stop`` is set on close so behaviours end with the test.
    """

    def __init__(self, behave):
        self.stop = threading.Event()
        self.connections = 0
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                outer.connections += 1
                sock = self.request
                sock.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and len(data) < 1 << 20:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    while len(rest) < length:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        rest += chunk
                    behave(sock, outer.stop)
                except OSError:
                    pass  # the client hung up: that is what most of these tests want

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self._srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._srv.daemon_threads = True
        self._thread = threading.Thread(target=self._srv.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self._srv.server_address[1]}/v1"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self._srv.shutdown()
        self._srv.server_close()


def _trickle_body(sock, stop):
    # Headers at once, then one byte of a (never finished) body every 50 ms for at most 8 s:
    # each read gets a byte well inside any read timeout, so only a total deadline ends it.
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n")
    end = time.monotonic() + 8
    while time.monotonic() < end and not stop.wait(0.05):
        sock.sendall(b" ")


def _trickle_headers(sock, stop):
    # The status line, then a header that grows by one byte every 50 ms for at most 8 s.
    sock.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
    end = time.monotonic() + 8
    while time.monotonic() < end and not stop.wait(0.05):
        sock.sendall(b"a")


def _huge_body(sock, stop):
    # A declared 50 MB answer, sent in 1 MiB blocks until the client hangs up.
    size = 50 * 1024 * 1024
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % size)
    block = b" " * (1 << 20)
    for _ in range(size // len(block)):
        if stop.is_set():
            return
        sock.sendall(block)


def _endless_chunked(sock, stop):
    # No Content-Length: chunked blocks of 256 KiB, at most 64 MiB in all, until the client hangs up.
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    block = b" " * (256 * 1024)
    frame = b"%x\r\n" % len(block) + block + b"\r\n"
    for _ in range(256):
        if stop.is_set():
            return
        sock.sendall(frame)


def _messages():
    return caption_messages(load_prompt_set().global_.text, "data:image/png;base64,AAAA")


def _client(url, **kw):
    retry = RetryPolicy(max_attempts=kw.pop("max_attempts", 2), base_delay=0.001, max_delay=0.002)
    return ChatCompletionsClient(url, "mock-vlm", retry=retry, sleep=lambda s: None, seed=0, **kw)


# ---- 1. --timeout bounds the whole request, not each read ------------------------------------

@pytest.mark.parametrize("behave", [_trickle_body, _trickle_headers], ids=["body", "headers"])
def test_trickling_server_fails_the_request_at_the_timeout(behave):
    with RawServer(behave) as server, _client(server.url, timeout=0.6) as client:
        start = time.monotonic()
        with pytest.raises(CaptionRequestError) as info:
            client.complete(_messages())
        elapsed = time.monotonic() - start
    # Two attempts of at most 0.6 s each (plus slack for a loaded machine), not 2 x 8 s.
    assert elapsed < 3.5, f"took {elapsed:.1f} s"
    assert info.value.attempts == 2 and server.connections == 2
    assert all(reason.startswith("timeout") for reason in info.value.history), info.value.history


# ---- 5. oversized answers are capped ---------------------------------------------------------

@pytest.mark.parametrize("behave", [_huge_body, _endless_chunked], ids=["50MB", "endless"])
def test_huge_answer_fails_the_request_without_buffering_it(behave):
    with RawServer(behave) as server, _client(server.url, timeout=20) as client:
        tracemalloc.start()
        try:
            start = time.monotonic()
            with pytest.raises(CaptionRequestError) as info:
                client.complete(_messages())
            elapsed = time.monotonic() - start
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "response too large" in info.value.reason, info.value.reason
    assert info.value.attempts == 1  # the same server would send it again: not retried
    assert peak < 24 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
    assert elapsed < 10


def test_response_cap_is_configurable_and_small_answers_pass():
    with MockChatServer() as server:
        with _client(server.url, timeout=5, max_response_bytes=100) as client:
            with pytest.raises(CaptionRequestError) as info:
                client.complete(_messages())
        assert "response too large" in info.value.reason and "100 bytes" in info.value.reason
        with _client(server.url, timeout=5) as client:
            assert client.complete(_messages()).text.startswith("infrared thermal")


# ---- 2 + 4. a rejected key stops the run; an echoed key is never written ---------------------

def _make_pairs(root: Path, n: int) -> Path:
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), color=(i, 3, 7)).save(buf, format="PNG")
        (root / "rgb" / f"p{i}.png").write_bytes(buf.getvalue())
        rows.append({"id": f"p{i}", "image": f"thermal/p{i}.png", "rgb": f"rgb/p{i}.png"})
    listing = root / "pairs.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


def _caption_args(root, server, *extra):
    return ["caption", "--pairs", str(root / "pairs.jsonl"), "--rgb-root", str(root),
            "--server-url", server.url, "--model", "mock-vlm",
            "--out", str(root / "captions.jsonl"), "--api-key-env", "IRCAP_FAULT_KEY",
            *FAST, *extra]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_rejected_key_stops_the_run_after_the_first_answer(tmp_path, monkeypatch, capsys,
                                                           concurrency):
    _make_pairs(tmp_path, 12)
    monkeypatch.setenv("IRCAP_FAULT_KEY", KEY)
    with MockChatServer(api_key="the-right-key") as server:
        status = main(_caption_args(tmp_path, server, "--concurrency", str(concurrency)))
    err = capsys.readouterr().err
    assert server.requests_total <= concurrency, server.requests_total  # not 12 pairs x 2
    assert status == 2
    assert "HTTP 401" in err and "authentication" in err.lower()
    assert f"{server.requests_total} request" in err
    assert KEY not in err


def test_403_also_stops_the_run(tmp_path, monkeypatch, capsys):
    _make_pairs(tmp_path, 6)
    with MockChatServer() as server:
        for i in range(6):
            server.name_image((tmp_path / "rgb" / f"p{i}.png").read_bytes(), f"p{i}")
        server.add_faults("p0", "global", ["403"])
        status = main(_caption_args(tmp_path, server, "--concurrency", "1"))
    err = capsys.readouterr().err
    assert status == 2 and "HTTP 403" in err
    assert server.requests_total == 1


def test_echoed_key_is_redacted_from_errors_records_and_stderr(tmp_path, monkeypatch, capsys):
    _make_pairs(tmp_path, 3)
    monkeypatch.setenv("IRCAP_FAULT_KEY", KEY)
    with MockChatServer() as server:
        for i in range(3):
            server.name_image((tmp_path / "rgb" / f"p{i}.png").read_bytes(), f"p{i}")
        server.add_faults("p1", "global", ["echo_auth"])  # a caption quoting the header
        server.add_faults("p2", "fine_grained", ["500", "500"])
        assert main(_caption_args(tmp_path, server, "--concurrency", "1",
                                  "--max-attempts", "2")) == 1
        # The retry of p2 meets a server that rejects the key and quotes it in the error body.
        server.api_key = "the-right-key"
        assert main(_caption_args(tmp_path, server, "--concurrency", "1")) == 2
    captured = capsys.readouterr()
    files = {p.name: p.read_text() for p in tmp_path.glob("captions*.jsonl")}
    assert files, "nothing written"
    for name, text in list(files.items()) + [("stderr", captured.err), ("stdout", captured.out)]:
        assert KEY not in text, f"key leaked into {name}: {text[:300]}"
    errors = [json.loads(line) for line in files["captions.errors.jsonl"].splitlines()]
    assert [e["id"] for e in errors] == ["p2"]
    assert "Incorrect API key provided: ***" in errors[0]["error"]
    records = [json.loads(line) for line in files["captions.jsonl"].splitlines()]
    assert sorted(r["id"] for r in records) == ["p0", "p1"]
    assert "Authorization: Bearer ***" in next(r for r in records if r["id"] == "p1")["global_caption"]


# ---- --rgb-root confines the RGB paths a pairs file may name ---------------------------------

def test_rgb_paths_outside_the_rgb_root_are_refused(tmp_path, capsys):
    root = tmp_path / "data"
    _make_pairs(root, 2)
    secret = tmp_path / "outside.png"
    secret.write_bytes((root / "rgb" / "p0.png").read_bytes())
    rows = [{"id": "p0", "image": "thermal/p0.png", "rgb": "../outside.png"},
            {"id": "p1", "image": "thermal/p1.png", "rgb": str(secret)},
            {"id": "p2", "image": "thermal/p2.png", "rgb": "rgb/p1.png"}]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with MockChatServer() as server:
        assert main(_caption_args(root, server, "--concurrency", "1")) == 1
        errors = [json.loads(line) for line in
                  (root / "captions.errors.jsonl").read_text().splitlines()]
        assert sorted(e["id"] for e in errors) == ["p0", "p1"]
        assert all(e["stage"] == "input" and "not under" in e["error"] for e in errors)
        assert server.requests_total == 2  # only p2 was sent
        # The converter's escape hatch, under the same name.
        assert main(_caption_args(root, server, "--allow-outside-root")) == 0
        assert server.requests_total == 6
