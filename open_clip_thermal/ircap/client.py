"""Minimal client for OpenAI-compatible ``POST {base}/chat/completions`` with retries.

Why httpx and not the ``openai`` SDK: httpx is already a dependency, is thread-safe with one shared
connection pool, and lets us own the retry policy (which responses count as transient, Retry-After,
jitter, a hard attempt bound) so that every attempt is counted in the caption record. The SDK
would add a dependency and a second, hidden retry loop on top of ours.

The API key is taken by the caller from an environment variable and only ever placed in the
``Authorization`` header; it is never logged, printed or written to a record.
"""
import email.utils
import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional
from urllib.parse import urlsplit, urlunsplit

import httpx

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


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


class StopRequested(Exception):
    """Raised between attempts when the caller asked to stop (Ctrl-C)."""


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
        timeout: seconds for connect / read / write of one attempt.
        retry: the retry policy.
        temperature: sampling temperature sent with every request.
        max_tokens: cap on the caption length in model tokens.
        extra_body: further request fields (e.g. ``{"seed": 0}``), merged into the payload.
        max_connections: size of the shared connection pool (use the concurrency).
        sleep: function used to wait between attempts (tests pass a recorder).
        seed: seed of the jitter generator, for reproducible back-off in tests.
    """

    def __init__(self, base_url: str, model: str, api_key: Optional[str] = None,
                 timeout: float = 120.0, retry: Optional[RetryPolicy] = None,
                 temperature: float = 0.2, max_tokens: int = 400,
                 extra_body: Optional[dict] = None, max_connections: int = 8,
                 sleep: Callable[[float], None] = time.sleep, seed: Optional[int] = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"--server-url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.endpoint = self.base_url + "/chat/completions"
        self.model = model
        self.retry = retry or RetryPolicy()
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep
        self._rng = random.Random(seed)
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections))

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

    def _attempt(self, body: dict) -> Completion:
        try:
            response = self._http.post(self.endpoint, json=body)
        except httpx.TimeoutException as exc:
            raise TransientError(f"timeout ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientError(f"connection error ({type(exc).__name__}: {exc})") from None
        if response.status_code in RETRYABLE_STATUS:
            raise TransientError(f"HTTP {response.status_code}",
                                 parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code >= 400:
            snippet = response.text[:200].replace("\n", " ")
            raise CaptionRequestError(f"HTTP {response.status_code}: {snippet}", 1, [])
        try:
            body_json = response.json()
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
            CaptionRequestError: permanent HTTP error (4xx other than 408/409/425/429) or all
                attempts failed.
            StopRequested: ``should_stop`` became true between attempts.
        """
        body = self.payload(messages)
        start = time.monotonic()
        history: List[str] = []
        for attempt in range(1, self.retry.max_attempts + 1):
            try:
                result = self._attempt(body)
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
