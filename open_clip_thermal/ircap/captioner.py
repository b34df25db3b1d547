"""One pair -> one caption record: load the RGB image, ask both prompts, optionally re-ask.

A record carries the fields of docs/contracts.md (``global_caption``, ``fg_caption`` and the
pair's ``id``/``image``/``rgb``/``split``/``dataset``/``meta``) plus an ``ircap`` provenance object.
"""
import base64
import mimetypes
import time
from datetime import datetime, timezone
from typing import Callable, Dict, List, Optional

import fsspec

from ..contracts import ANNOTATION_CAPTION_FIELDS, BRANCHES
from ..data.annotations import UnsafePathError, resolve_annotation_path
from .client import AuthenticationError, CaptionRequestError, ChatCompletionsClient, Completion
from .prompts import PromptSet, caption_messages, fix_messages
from .quality import RGBHallucinationLint
from .records import PASSTHROUGH_FIELDS

RECORD_FORMAT = 1  # bump when the ``ircap`` provenance object changes shape


class CaptionFailure(Exception):
    """A pair that could not be captioned in this run; ``stage`` is ``input`` or a caption kind.

    ``auth`` marks a 401/403 (the run should stop); ``sent`` is False when the failing request
    was never sent because an earlier one was rejected.
    """

    def __init__(self, stage: str, reason: str, attempts: int = 0, auth: bool = False,
                 sent: bool = True):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.attempts = attempts
        self.auth = auth
        self.sent = sent


def image_data_url(path: str) -> str:
    """The file at ``path`` (local or fsspec URL) as a ``data:<mime>;base64,...`` URL."""
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    with fsspec.open(path, "rb") as f:
        data = f.read()
    if not data:
        raise OSError(f"RGB image {path} is empty")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def clean_caption(text: str) -> str:
    """Caption without surrounding whitespace or one pair of wrapping quotes (a common VLM habit)."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def _request_info(completion: Completion) -> dict:
    info = {"attempts": completion.attempts, "seconds": round(completion.seconds, 3),
            "finish_reason": completion.finish_reason}
    if completion.retries:
        info["retries"] = completion.retries
    if completion.usage:
        info["usage"] = completion.usage
    return info


class Captioner:
    """Turns one pair record into one caption record.

    Args:
        client: the chat-completions client.
        prompts: the prompt set.
        rgb_root: folder (or URL prefix) that relative ``rgb`` paths are relative to. When given,
            every ``rgb`` path must stay under it (``..``, symlinks, absolute paths and other
            URLs are refused: :func:`open_clip_thermal.data.annotations.resolve_annotation_path`,
            the converter's rule); without it paths are read as written.
        allow_outside_root: read paths outside ``rgb_root`` anyway (``--allow-outside-root``).
        fix_hallucinations: re-ask with the corrective prompt when the lint flags a caption.
        max_fix_rounds: at most this many re-asks per caption.
        lint: the lint used for re-asks (the shipped lexicon by default).
    """

    def __init__(self, client: ChatCompletionsClient, prompts: PromptSet,
                 rgb_root: Optional[str] = None, fix_hallucinations: bool = False,
                 max_fix_rounds: int = 1, lint: Optional[RGBHallucinationLint] = None,
                 allow_outside_root: bool = False):
        self.client = client
        self.prompts = prompts
        self.rgb_root = rgb_root
        self.allow_outside_root = allow_outside_root
        self.fix_hallucinations = fix_hallucinations
        self.max_fix_rounds = max_fix_rounds
        self.lint = lint or (RGBHallucinationLint() if fix_hallucinations else None)

    def load_rgb(self, pair: dict) -> str:
        """Data URL of the pair's RGB image; :class:`CaptionFailure` (stage ``input``) if unreadable."""
        if self.rgb_root:
            try:
                path = resolve_annotation_path(pair["rgb"], self.rgb_root, self.allow_outside_root)
            except UnsafePathError as exc:
                raise CaptionFailure("input", f"refused RGB path: {exc} (--allow-outside-root "
                                              "reads it anyway)") from None
        else:
            path = pair["rgb"]  # no root: read as written (local path or fsspec URL)
        try:
            return image_data_url(path)
        except (OSError, ValueError) as exc:
            raise CaptionFailure("input", f"cannot read RGB image {path}: {exc}") from None

    def first_request(self, pair: dict) -> dict:
        """The JSON body of the first request for ``pair`` (used by the dry run)."""
        messages = caption_messages(self.prompts.global_.text, self.load_rgb(pair))
        return self.client.payload(messages)

    def _ask(self, kind: str, messages: List[dict], should_stop) -> Completion:
        try:
            return self.client.complete(messages, should_stop)
        except AuthenticationError as exc:
            raise CaptionFailure(kind, exc.reason, exc.attempts, auth=True, sent=exc.sent) from None
        except CaptionRequestError as exc:
            raise CaptionFailure(kind, exc.reason, exc.attempts) from None

    def _fix(self, messages: List[dict], text: str, info: dict, should_stop) -> str:
        terms = self.lint.flagged_terms(text)
        if not terms:
            return text
        fix = {"prompt": self.prompts.fix_hallucination.version, "flagged": terms,
               "original": text, "rounds": 0}
        while terms and fix["rounds"] < self.max_fix_rounds:
            follow_up = fix_messages(messages, text, self.prompts.fix_hallucination, terms)
            try:
                completion = self.client.complete(follow_up, should_stop)
            except CaptionRequestError as exc:
                # A failed re-ask is not fatal: the first caption is kept and the report shows it.
                fix["error"] = exc.reason
                info["attempts"] += exc.attempts
                break
            fix["rounds"] += 1
            info["attempts"] += completion.attempts
            info["seconds"] = round(info["seconds"] + completion.seconds, 3)
            text = clean_caption(completion.text)
            terms = self.lint.flagged_terms(text)
        fix["remaining"] = terms
        fix["resolved"] = not terms
        info["fix"] = fix
        return text

    def caption(self, pair: dict, should_stop: Optional[Callable[[], bool]] = None) -> dict:
        """Both captions for ``pair`` as an output record.

        Raises:
            CaptionFailure: unreadable RGB image or a request that failed for good.
            StopRequested: the run is being interrupted.
        """
        start = time.monotonic()
        data_url = self.load_rgb(pair)
        record = {f: pair[f] for f in PASSTHROUGH_FIELDS if f in pair}
        requests: Dict[str, dict] = {}
        for kind in BRANCHES:
            messages = caption_messages(self.prompts.for_kind(kind).text, data_url)
            completion = self._ask(kind, messages, should_stop)
            info = _request_info(completion)
            text = clean_caption(completion.text)
            if self.fix_hallucinations:
                text = self._fix(messages, text, info, should_stop)
            record[ANNOTATION_CAPTION_FIELDS[kind]] = text
            requests[kind] = info
        record["ircap"] = {
            "format": RECORD_FORMAT,
            "model": self.client.model,
            "server": self.client.server,
            "prompts": {k: self.prompts.for_kind(k).version for k in BRANCHES},
            "requests": requests,
            "attempts": sum(r["attempts"] for r in requests.values()),
            "seconds": round(time.monotonic() - start, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return record
