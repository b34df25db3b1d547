"""Chat-completions client against a real HTTP server on 127.0.0.1 with injected faults."""
import pytest

from open_clip_thermal.ircap.client import (CaptionRequestError, ChatCompletionsClient, RetryPolicy,
                                            parse_retry_after, redact_url)
from open_clip_thermal.ircap.prompts import caption_messages, load_prompt_set
from open_clip_thermal.testing.mock_vlm import MockChatServer, expected_caption

IMAGE = b"\x89PNG fake rgb bytes"
DATA_URL = "data:image/png;base64,iVBORyBmYWtlIHJnYiBieXRlcw=="  # base64 of IMAGE


@pytest.fixture()
def server():
    with MockChatServer(hang_seconds=2.0) as s:
        s.name_image(IMAGE, "item0")
        yield s


@pytest.fixture()
def messages():
    return caption_messages(load_prompt_set().global_.text, DATA_URL)


def make_client(server, sleeps, **kw):
    retry = RetryPolicy(max_attempts=kw.pop("max_attempts", 4), base_delay=0.001, max_delay=0.002)
    return ChatCompletionsClient(server.url, "mock-vlm", retry=retry, sleep=sleeps.append, seed=0,
                                 timeout=kw.pop("timeout", 5.0), **kw)


def test_success_sends_model_image_prompt_and_key(server, messages):
    sleeps = []
    with make_client(server, sleeps, api_key="sekrit-key") as client:
        result = client.complete(messages)
    assert result.text == expected_caption("item0", "global")
    assert (result.attempts, result.retries, sleeps) == (1, [], [])
    assert result.finish_reason == "stop" and result.usage["prompt_tokens"] == 100
    assert server.counts == {("item0", "global"): 1}
    assert server.auth_headers == {"Bearer sekrit-key": 1}
    assert "sekrit" not in client.server and client.server == server.url


def test_transient_failures_are_retried_until_success(server, messages):
    server.add_faults("item0", "global", ["500", "malformed", "empty"])
    sleeps = []
    with make_client(server, sleeps) as client:
        result = client.complete(messages)
    assert result.text == expected_caption("item0", "global")
    assert result.attempts == 4 and len(sleeps) == 3
    assert result.retries == ["HTTP 500", "malformed response: body is not JSON",
                              "malformed response: no choices[0].message.content"]
    assert server.counts[("item0", "global")] == 4


def test_429_waits_for_retry_after(server, messages):
    server.add_faults("item0", "global", ["429"])  # the server sends Retry-After: 1
    sleeps = []
    with make_client(server, sleeps) as client:
        result = client.complete(messages)
    assert result.attempts == 2 and result.retries == ["HTTP 429"]
    assert sleeps == [1.0]  # the back-off alone would be ~0.001 s


def test_hang_past_timeout_is_retried(server, messages):
    server.add_faults("item0", "global", ["hang"])
    sleeps = []
    with make_client(server, sleeps, timeout=0.3) as client:
        result = client.complete(messages)
    assert result.attempts == 2 and result.retries[0].startswith("timeout")
    assert result.text == expected_caption("item0", "global")


def test_attempts_are_bounded(server, messages):
    server.add_faults("item0", "global", ["500"] * 5)
    with make_client(server, [], max_attempts=3) as client:
        with pytest.raises(CaptionRequestError) as info:
            client.complete(messages)
    assert info.value.attempts == 3 and info.value.history == ["HTTP 500"] * 3
    assert server.counts[("item0", "global")] == 3


def test_permanent_error_is_not_retried(server, messages):
    server.add_faults("item0", "global", ["400"])
    with make_client(server, []) as client:
        with pytest.raises(CaptionRequestError, match="HTTP 400") as info:
            client.complete(messages)
    assert info.value.attempts == 1
    assert server.counts[("item0", "global")] == 1


def test_backoff_is_exponential_with_jitter_and_caps():
    import random
    policy = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=5.0, max_retry_after=10.0)
    rng = random.Random(0)
    for n, full in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)]:
        assert full / 2 <= policy.delay(n, None, rng) <= full
    assert policy.delay(1, 7.0, rng) == 7.0
    assert policy.delay(1, 3600.0, rng) == 10.0
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_header_and_url_helpers():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert redact_url("https://user:pw@api.example.com:8443/v1?key=x") == "https://api.example.com:8443/v1"
    with pytest.raises(ValueError, match="--server-url"):
        ChatCompletionsClient("localhost:8000/v1", "m")
