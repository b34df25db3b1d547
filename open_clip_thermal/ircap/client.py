"""Minimal client for OpenAI-compatible ``POST {base}/chat/completions`` with retries.

Why httpx and not the ``openai`` SDK: httpx is already a dependency, is thread-safe with one shared
connection pool, and lets us own the retry policy (which responses count as transient, Retry-After,
jitter, a hard attempt bound) so that every attempt is counted in the caption record. The SDK
would add a dependency and a second, hidden retry loop on top of ours.

The API key is taken by the caller from an environment variable and only ever placed in the
``Authorization`` header; it is never logged, printed or written to a record. Error reasons pass
through :class:`Redactor`, so a server that echoes the key back cannot put it into the errors file.

Limits on one attempt (both enforced while the answer streams in, never after):

* ``timeout`` is a **total deadline** for the attempt, connect + send + headers + body. Every
  socket operation waits at most for what is left of it, so a server that trickles one byte at a
  time (headers or body) cannot keep a request alive past ``timeout`` seconds.
* ``max_response_bytes`` caps the (decoded) answer body; a larger or endless answer fails the
  request at once with ``response too large`` and is not retried.
"""
import email.utils
import json
import random
import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
AUTH_STATUS = frozenset({401, 403})
DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # a caption answer is a few KiB
ERROR_SNIPPET_BYTES = 64 * 1024  # read at most this much of an error body for its message


class TransientError(Exception):
    """A failure worth retrying (timeout, 5xx, 429, malformed body)."""

    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class CaptionRequestError(Exception):
    """A request that failed for good: a permanent error or all attempts used."""

    def __init__(self, reason: str, attempts: int, history: List[str]):
        super().__init__(f"{reason} (after {attempts} attempt{'s' if attempts != 1 else ''})")
        self.reason = reason
        self.attempts = attempts
        self.history = history


class AuthenticationError(CaptionRequestError):
    """HTTP 401/403: the key is missing, wrong or not allowed. Retrying or going on is pointless.

    ``sent`` is False when the request was refused locally because an earlier one got the 401/403.
    """

    def __init__(self, reason: str, attempts: int, history: List[str], sent: bool = True):
        super().__init__(reason, attempts, history)
        self.sent = sent


class StopRequested(Exception):
    """Raised between attempts when the caller asked to stop (Ctrl-C)."""


_BEARER = re.compile(r"(?i)\b(bearer)(\s+)[^\s\"',;}\]]+")
_AUTH_HEADER = re.compile(r"(?i)(\b(?:proxy-)?authorization\b[\"']?\s*[:=]\s*[\"']?)"
                          r"(?!bearer\s)([^\s\"',;}\]]+)")


class Redactor:
    """Masks secrets in text bound for a file, the terminal or a log.

    Replaces every occurrence of the given secrets (the API key) and the value of anything that
    looks like an ``Authorization`` header (``Bearer <token>``, ``Authorization: <value>``) with
    ``***``. :meth:`scrub` does the same for every string inside a JSON-like object.
    """

    def __init__(self, *secrets: Optional[str]):
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        text = _BEARER.sub(lambda m: m.group(1) + m.group(2) + "***", text)
        return _AUTH_HEADER.sub(lambda m: m.group(1) + "***", text)

    def scrub(self, obj):
        """``obj`` with every string (keys included) redacted."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {self.scrub(k): self.scrub(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.scrub(v) for v in obj]
        return obj


# ---- total deadline per attempt -------------------------------------------------------------
# httpx's timeouts bound each socket operation, so a server sending a byte every few seconds
# never trips them. The client therefore sets a per-thread deadline for each attempt and this
# network backend shortens every connect / read / write to what is left of it.
_deadline = threading.local()


def _left(timeout: Optional[float], exc_type) -> Optional[float]:
    end = getattr(_deadline, "end", None)
    if end is None:
        return timeout
    left = end - time.monotonic()
    if left <= 0:
        raise exc_type("request deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream):
        self._stream = stream

    def read(self, max_bytes, timeout=None):
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer, timeout=None):
        return self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self):
        return self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None):
        return _DeadlineStream(self._stream.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend):
        self._backend = backend

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options))

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds):
        return self._backend.sleep(seconds)


def _env_proxy(url: str) -> Optional[str]:
    # httpx ignores the *_proxy environment when given a transport; honour it here instead.
    parts = urlsplit(url)
    if parts.hostname and urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def _deadline_transport(url: str, limits: httpx.Limits) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(limits=limits, proxy=_env_proxy(url))
    # httpx has no public hook for the network backend; its pool (httpcore) keeps it here.
    # tests/faults/test_faults_ircap.py fails if a new httpx moves it.
    pool = getattr(transport, "_pool", None)
    if pool is not None and hasattr(pool, "_network_backend"):
        pool._network_backend = _DeadlineBackend(pool._network_backend)
    return transport


@dataclass
class RetryPolicy:
    """Bounded exponential back-off with jitter.

    The n-th retry waits ``uniform(0.5, 1) * min(max_delay, base_delay * 2**(n-1))`` seconds, or the
    server's Retry-After when that is longer (capped at ``max_retry_after``).
    """

    max_attempts: int = 5  # total tries per request, first one included
    base_delay: float = 1.0  # seconds before the first retry (before jitter)
    max_delay: float = 60.0  # cap on the exponential part
    max_retry_after: float = 300.0  # cap on a server's Retry-After

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("back-off delays must be >= 0")

    def delay(self, retry_number: int, retry_after: Optional[float], rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based)."""
        backoff = min(self.max_delay, self.base_delay * 2 ** (retry_number - 1))
        backoff *= rng.uniform(0.5, 1.0)  # jitter spreads the retries of concurrent workers
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.max_retry_after))
        return backoff


@dataclass
class Completion:
    """The text of one successful request and how it was obtained."""

    text: str
    attempts: int
    seconds: float  # wall time including back-off
    finish_reason: Optional[str] = None
    usage: Dict[str, int] = field(default_factory=dict)
    retries: List[str] = field(default_factory=list)  # reason of each failed attempt


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def redact_url(url: str) -> str:
    """The server URL without user:password or query string, safe to store in records."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def extract_text(body: dict) -> (str, Optional[str], Dict[str, int]):
    """Caption text, finish reason and token usage from a chat-completions response body.

    Raises:
        TransientError: if the body lacks ``choices[0].message.content`` or it is empty.
    """
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TransientError("malformed response: no choices[0].message.content") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise TransientError("malformed response: empty caption")
    usage = body.get("usage") or {}
    usage = {k: v for k, v in usage.items() if isinstance(v, int)}
    return content.strip(), choice.get("finish_reason"), usage


class ChatCompletionsClient:
    """Sends chat-completions requests to one server, retrying transient failures.

    Args:
        base_url: server root including the API prefix, e.g. ``http://localhost:8000/v1``.
        model: model name the server knows (``--model``).
        api_key: bearer token, or None for servers without auth.
        timeout: seconds one attempt may take in all (connect, send, wait, receive).
        retry: the retry policy.
        temperature: sampling temperature sent with every request.
        max_tokens: cap on the caption length in model tokens.
        extra_body: further request fields (e.g. ``{"seed": 0}``), merged into the payload.
        max_connections: size of the shared connection pool (use the concurrency).
        sleep: function used to wait between attempts (tests pass a recorder).
        seed: seed of the jitter generator, for reproducible back-off in tests.
        max_response_bytes: cap on an answer body; a larger one fails the request unretried.

    Once a server answers 401/403, every later :meth:`complete` raises
    :class:`AuthenticationError` without sending anything. ``requests_sent`` counts the attempts
    that went out.
    """

    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None,
                 timeout: float = 120.0, retry: Optional[RetryPolicy] = None,
                 temperature: float = 0.2, max_tokens: int = 400,
                 extra_body: Optional[dict] = None, max_connections: int = 8,
                 sleep: Callable[[float], None] = time.sleep, seed: Optional[int] = None,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--server-url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.endpoint = self.base_url + "/chat/completions"
        self.model = model
        self.retry = retry or RetryPolicy()
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        if timeout <= 0:
            raise ValueError(f"--timeout must be > 0, got {timeout}")
        if max_response_bytes < 1:
            raise ValueError(f"--max-response-bytes must be >= 1, got {max_response_bytes}")
        self.timeout = float(timeout)
        self.max_response_bytes = int(max_response_bytes)
        self.redact = Redactor(api_key)
        self.requests_sent = 0
        self.auth_failure: Optional[str] = None  # reason of the first 401/403, if any
        self._count_lock = threading.Lock()
        self._sleep = sleep
        self._rng = random.Random(seed)
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        self._http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout),
                                  transport=_deadline_transport(self.endpoint, limits))

    @property
    def server(self) -> str:
        """Server URL safe to record (no credentials)."""
        return redact_url(self.base_url)

    def payload(self, messages: List[dict]) -> dict:
        """The JSON body sent for ``messages``."""
        body = {"model": self.model, "messages": messages, "temperature": self.temperature,
                "max_tokens": self.max_tokens}
        body.update(self.extra_body)
        return body

    def _read_capped(self, response: httpx.Response, cap: int, fail: bool) -> bytes:
        # Streams the body; stops at ``cap`` bytes (an error when ``fail``, else truncates).
        declared = response.headers.get("Content-Length", "")
        if fail and declared.isdigit() and int(declared) > cap:
            raise CaptionRequestError(
                f"response too large: Content-Length {declared} > {cap} bytes "
                "(--max-response-bytes)", 1, [])
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                if fail:
                    raise CaptionRequestError(
                        f"response too large: more than {cap} bytes (--max-response-bytes)", 1, [])
                break
        return b"".join(chunks)[:cap]

    def _attempt(self, body: dict) -> Completion:
        with self._count_lock:
            self.requests_sent += 1
        _deadline.end = time.monotonic() + self.timeout
        try:
            with self._http.stream("POST", self.endpoint, json=body) as response:
                status = response.status_code
                if status in RETRYABLE_STATUS:
                    raise TransientError(f"HTTP {status}",
                                         parse_retry_after(response.headers.get("Retry-After")))
                if status >= 400:
                    raw = self._read_capped(response, ERROR_SNIPPET_BYTES, fail=False)
                    snippet = raw.decode("utf-8", "replace")[:200].replace("\n", " ")
                    reason = self.redact(f"HTTP {status}: {snippet}")
                    if status in AUTH_STATUS:
                        raise AuthenticationError(reason, 1, [])
                    raise CaptionRequestError(reason, 1, [])
                raw = self._read_capped(response, self.max_response_bytes, fail=True)
        except httpx.TimeoutException as exc:
            raise TransientError(f"timeout ({type(exc).__name__}; --timeout {self.timeout:g} s "
                                 "bounds the whole request)") from None
        except httpx.TransportError as exc:
            raise TransientError(
                self.redact(f"connection error ({type(exc).__name__}: {exc})")) from None
        finally:
            _deadline.end = None
        try:
            body_json = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TransientError("malformed response: body is not JSON") from None
        text, finish_reason, usage = extract_text(body_json)
        return Completion(text=text, attempts=1, seconds=0.0, finish_reason=finish_reason,
                          usage=usage)

    def complete(self, messages: List[dict],
                 should_stop: Optional[Callable[[], bool]] = None) -> Completion:
        """Send one request, retrying transient failures within the policy.

        Args:
            messages: chat messages (see :mod:`open_clip_thermal.ircap.prompts`).
            should_stop: polled before every retry; if it returns True, stop with
                :class:`StopRequested` instead of waiting.

        Returns:
            The completion, with the attempts used and the failures met on the way.

        Raises:
            CaptionRequestError: permanent HTTP error (4xx other than 408/409/425/429), an answer
                over ``max_response_bytes``, or all attempts failed.
            AuthenticationError: HTTP 401/403, now or in an earlier request of this client.
            StopRequested: ``should_stop`` became true between attempts.
        """
        body = self.payload(messages)
        start = time.monotonic()
        history: List[str] = []
        for attempt in range(1, self.retry.max_attempts + 1):
            if self.auth_failure is not None:
                reason = f"not sent: the server rejected the API key earlier ({self.auth_failure})"
                raise AuthenticationError(reason, attempt - 1, history + [reason], sent=False)
            try:
                result = self._attempt(body)
            except AuthenticationError as exc:
                if self.auth_failure is None:
                    self.auth_failure = exc.reason
                raise AuthenticationError(exc.reason, attempt, history + [exc.reason]) from None
            except CaptionRequestError as exc:
                raise CaptionRequestError(exc.reason, attempt, history + [exc.reason]) from None
            except TransientError as exc:
                history.append(exc.reason)
                if attempt == self.retry.max_attempts:
                    raise CaptionRequestError(exc.reason, attempt, history) from None
                if should_stop is not None and should_stop():
                    raise StopRequested() from None
                self._sleep(self.retry.delay(attempt, exc.retry_after, self._rng))
                continue
            result.attempts = attempt
            result.seconds = time.monotonic() - start
            result.retries = history
            return result
        raise AssertionError("unreachable: the loop returns or raises")

    def close(self):
        """Close the connection pool."""
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
