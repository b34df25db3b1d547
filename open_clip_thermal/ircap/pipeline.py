"""IR-Cap captioning run: two captions per RGB/thermal pair, concurrent, resumable.

A record is complete only when both captions (global and fine-grained) are answered; it is then
appended to the output JSONL in one durable write. A re-run reads the output, skips finished ids
and tries everything else again, so failures of an earlier run are retried. Every pending input
ends either as a caption record or as a line in the errors file with the reason.
"""
import base64
import mimetypes
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import fsspec
from tqdm import tqdm

from .client import CaptionRequestError, ChatCompletionsClient, Completion, StopRequested
from .prompts import CAPTION_KINDS, PromptSet, caption_messages, fix_messages
from .quality import RGBHallucinationLint
from .records import PASSTHROUGH_FIELDS, JsonlAppender, iter_jsonl, load_jsonl_ids

OUTPUT_FIELD = {"global": "global_caption", "fine_grained": "fg_caption"}  # docs/contracts.md
RECORD_FORMAT = 1  # bump when the ``ircap`` provenance object changes shape


class CaptionFailure(Exception):
    """A pair that could not be captioned in this run; ``stage`` is ``input`` or a caption kind."""

    def __init__(self, stage: str, reason: str, attempts: int = 0):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.attempts = attempts


def resolve_path(path: str, root: Optional[str]) -> str:
    """``path`` joined to ``root`` unless it is absolute or a URL (``s3://``, ``http://``...)."""
    if "://" in path or os.path.isabs(path) or not root:
        return path
    if "://" in root:
        return root.rstrip("/") + "/" + path
    return os.path.join(root, path)


def image_data_url(path: str) -> str:
    """The file at ``path`` (local or fsspec URL) as a ``data:<mime>;base64,...`` URL."""
    mime = mimetypes.guess_type(path)[0] or "image/jpeg"
    with fsspec.open(path, "rb") as f:
        data = f.read()
    if not data:
        raise OSError(f"RGB image {path} is empty")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


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
        rgb_root: folder (or URL prefix) that relative ``rgb`` paths are relative to.
        fix_hallucinations: re-ask with the corrective prompt when the lint flags a caption.
        max_fix_rounds: at most this many re-asks per caption.
        lint: the lint used for re-asks (the shipped lexicon by default).
    """

    def __init__(self, client: ChatCompletionsClient, prompts: PromptSet,
                 rgb_root: Optional[str] = None, fix_hallucinations: bool = False,
                 max_fix_rounds: int = 1, lint: Optional[RGBHallucinationLint] = None):
        self.client = client
        self.prompts = prompts
        self.rgb_root = rgb_root
        self.fix_hallucinations = fix_hallucinations
        self.max_fix_rounds = max_fix_rounds
        self.lint = lint or (RGBHallucinationLint() if fix_hallucinations else None)

    def load_rgb(self, pair: dict) -> str:
        """Data URL of the pair's RGB image; :class:`CaptionFailure` (stage ``input``) if unreadable."""
        path = resolve_path(pair["rgb"], self.rgb_root)
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
            text = completion.text
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
        for kind in CAPTION_KINDS:
            messages = caption_messages(self.prompts.for_kind(kind).text, data_url)
            completion = self._ask(kind, messages, should_stop)
            info = _request_info(completion)
            text = completion.text
            if self.fix_hallucinations:
                text = self._fix(messages, text, info, should_stop)
            record[OUTPUT_FIELD[kind]] = text
            requests[kind] = info
        record["ircap"] = {
            "format": RECORD_FORMAT,
            "model": self.client.model,
            "server": self.client.server,
            "prompts": {k: self.prompts.for_kind(k).version for k in CAPTION_KINDS},
            "requests": requests,
            "attempts": sum(r["attempts"] for r in requests.values()),
            "seconds": round(time.monotonic() - start, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return record


@dataclass
class RunSummary:
    """Counts of one captioning run."""

    total: int  # pairs in the input
    already_done: int  # skipped because the output had them
    attempted: int  # pairs tried in this run
    captioned: int  # newly written caption records
    failed: int  # newly written error records
    interrupted: bool  # stopped by Ctrl-C before all pending pairs were tried
    out_path: str
    errors_path: str

    def as_dict(self) -> dict:
        """Plain dict for JSON output."""
        return asdict(self)


def default_errors_path(out_path: Union[str, Path]) -> Path:
    """``captions.jsonl`` -> ``captions.errors.jsonl``."""
    out_path = Path(out_path)
    stem = out_path.name[:-len(".jsonl")] if out_path.name.endswith(".jsonl") else out_path.name
    return out_path.with_name(stem + ".errors.jsonl")


def _error_record(pair: dict, stage: str, reason: str, attempts: int) -> dict:
    return {"id": pair["id"], "image": pair.get("image"), "rgb": pair.get("rgb"), "stage": stage,
            "error": reason, "attempts": attempts,
            "failed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _carry_over_errors(errors_path: Path, keep_ids: set) -> List[dict]:
    # Old failures of ids this run will not retry (e.g. beyond --limit) stay listed; the rest are
    # retried now and would otherwise show up twice.
    if not errors_path.exists():
        return []
    return [e for e in iter_jsonl(errors_path) if str(e.get("id")) in keep_ids]


def pending_pairs(pairs: Sequence[dict], out_path: Union[str, Path],
                  limit: Optional[int] = None) -> (List[dict], int):
    """Pairs not yet in ``out_path`` (first ``limit`` of them) and how many were already done."""
    done = load_jsonl_ids(out_path)
    pending = [p for p in pairs if p["id"] not in done]
    already = len(pairs) - len(pending)
    if limit is not None:
        pending = pending[:limit]
    return pending, already


def run_captioning(pairs: Sequence[dict], captioner: Captioner, out_path: Union[str, Path],
                   errors_path: Optional[Union[str, Path]] = None, concurrency: int = 4,
                   limit: Optional[int] = None, progress: bool = True) -> RunSummary:
    """Caption every pair not yet in ``out_path``.

    Args:
        pairs: records from :func:`open_clip_thermal.ircap.records.read_pairs`.
        captioner: does the requests for one pair.
        out_path: caption JSONL, appended to (created if missing).
        errors_path: JSONL of pairs that failed in this run (rewritten at the start);
            ``<out>.errors.jsonl`` by default.
        concurrency: pairs captioned at the same time (each sends its requests one after another).
        limit: caption at most this many pending pairs.
        progress: show a tqdm bar with throughput and ETA.

    Returns:
        The run's counts. On Ctrl-C the run stops taking new pairs, lets requests in flight
        finish without retrying, writes what was answered and returns with ``interrupted=True``.
    """
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    out_path = Path(out_path)
    errors_path = Path(errors_path) if errors_path else default_errors_path(out_path)
    pending, already = pending_pairs(pairs, out_path, limit)
    pending_ids = {p["id"] for p in pending}
    done_ids = set(load_jsonl_ids(out_path, repair=False))
    untried = {p["id"] for p in pairs} - pending_ids - done_ids
    old_errors = _carry_over_errors(errors_path, untried)

    stop = threading.Event()
    counts = {"ok": 0, "failed": 0, "stopped": 0}
    writer = JsonlAppender(out_path)
    errors = JsonlAppender(errors_path, truncate=True)
    for e in old_errors:
        errors.append(e)

    counts_lock = threading.Lock()

    def work(pair: dict) -> str:
        outcome = _work(pair)
        with counts_lock:  # counted here so pairs finished after Ctrl-C are counted too
            counts[outcome] += 1
        return outcome

    def _work(pair: dict) -> str:
        if stop.is_set():
            return "stopped"
        try:
            record = captioner.caption(pair, should_stop=stop.is_set)
        except StopRequested:
            return "stopped"
        except CaptionFailure as exc:
            errors.append(_error_record(pair, exc.stage, exc.reason, exc.attempts))
            return "failed"
        except Exception as exc:  # a bug or odd input must not lose the pair silently
            errors.append(_error_record(pair, "internal", f"{type(exc).__name__}: {exc}", 0))
            return "failed"
        writer.append(record)
        return "ok"

    interrupted = False
    bar = tqdm(total=len(pending), unit="pair", disable=not progress, dynamic_ncols=True,
               desc="IR-Cap", smoothing=0.1)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ircap")
    try:
        futures = [pool.submit(work, p) for p in pending]
        try:
            for future in as_completed(futures):
                future.result()
                bar.update(1)
                bar.set_postfix(ok=counts["ok"], failed=counts["failed"], refresh=False)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            for future in futures:
                future.cancel()
            tqdm.write("IR-Cap: interrupted; finishing requests in flight (Ctrl-C again to abort)",
                       file=sys.stderr)
    finally:
        pool.shutdown(wait=True)
        bar.close()
        writer.close()
        errors.close()
    return RunSummary(total=len(pairs), already_done=already, attempted=len(pending),
                      captioned=counts["ok"], failed=counts["failed"],
                      interrupted=interrupted or counts["stopped"] > 0,
                      out_path=str(out_path), errors_path=str(errors_path))
