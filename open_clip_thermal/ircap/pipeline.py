"""IR-Cap captioning run: two captions per RGB/thermal pair, concurrent, resumable.

A record is complete only when both captions (global and fine-grained) are answered; it is then
appended to the output JSONL in one durable write. A re-run reads the output, skips finished ids
and tries everything else again, so failures of an earlier run are retried. Every pending input
ends either as a caption record or as a line in the errors file with the reason.
"""
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from .captioner import CaptionFailure, Captioner
from .client import Redactor, StopRequested
from .records import JsonlAppender, iter_jsonl, load_jsonl_ids


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
    not_sent: int = 0  # pairs left untried because the server rejected the API key
    requests_sent: int = 0  # HTTP requests that went out (attempts, re-asks included)
    auth_error: Optional[str] = None  # the 401/403 that stopped the run, if one did

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
                  limit: Optional[int] = None) -> Tuple[List[dict], List[dict], int]:
    """Split ``pairs`` by the state of ``out_path``.

    Returns:
        ``(pending, deferred, already_done)``: pairs to caption now (at most ``limit``), pairs
        left for a later run by ``limit``, and the number already in ``out_path``.
    """
    done = load_jsonl_ids(out_path)
    not_done = [p for p in pairs if p["id"] not in done]
    cut = len(not_done) if limit is None else max(0, limit)
    return not_done[:cut], not_done[cut:], len(pairs) - len(not_done)


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
        On a 401/403 it does the same at once (no later request is sent) and returns with
        ``auth_error`` set; the pairs it did not try count as ``not_sent``.

    Everything written to ``out_path`` and ``errors_path`` passes through the client's
    :class:`~open_clip_thermal.ircap.client.Redactor` (API key, Authorization values).
    """
    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    out_path = Path(out_path)
    errors_path = Path(errors_path) if errors_path else default_errors_path(out_path)
    pending, deferred, already = pending_pairs(pairs, out_path, limit)
    old_errors = _carry_over_errors(errors_path, {p["id"] for p in deferred})

    stop = threading.Event()
    auth_stop = threading.Event()
    client = getattr(captioner, "client", None)
    redact = getattr(client, "redact", None) or Redactor()
    counts = {"ok": 0, "failed": 0, "stopped": 0, "not_sent": 0}
    writer = JsonlAppender(out_path)
    errors = JsonlAppender(errors_path, truncate=True)
    for e in old_errors:
        errors.append(redact.scrub(e))  # files from before redaction existed may hold a key

    counts_lock = threading.Lock()

    def work(pair: dict) -> str:
        outcome = _work(pair)
        if getattr(client, "auth_failure", None) is not None:
            auth_stop.set()  # also catches a 401 met by a re-ask, which keeps its pair
            stop.set()
        with counts_lock:  # counted here so pairs finished after Ctrl-C are counted too
            counts[outcome] += 1
        return outcome

    def _work(pair: dict) -> str:
        if stop.is_set():
            return "not_sent" if auth_stop.is_set() else "stopped"
        try:
            record = captioner.caption(pair, should_stop=stop.is_set)
        except StopRequested:
            return "not_sent" if auth_stop.is_set() else "stopped"
        except CaptionFailure as exc:
            if exc.auth:
                auth_stop.set()
                stop.set()
                if not exc.sent:
                    return "not_sent"
            errors.append(redact.scrub(_error_record(pair, exc.stage, exc.reason, exc.attempts)))
            return "failed"
        except Exception as exc:  # a bug or odd input must not lose the pair silently
            errors.append(redact.scrub(
                _error_record(pair, "internal", f"{type(exc).__name__}: {exc}", 0)))
            return "failed"
        writer.append(redact.scrub(record))
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
            tqdm.write("IR-Cap: interrupted; finishing the requests in flight, then exiting",
                       file=sys.stderr)
    finally:
        pool.shutdown(wait=True)
        bar.close()
        writer.close()
        errors.close()
    return RunSummary(total=len(pairs), already_done=already, attempted=len(pending),
                      captioned=counts["ok"], failed=counts["failed"],
                      interrupted=interrupted or counts["stopped"] > 0,
                      out_path=str(out_path), errors_path=str(errors_path),
                      not_sent=counts["not_sent"],
                      requests_sent=getattr(client, "requests_sent", 0),
                      auth_error=getattr(client, "auth_failure", None))
