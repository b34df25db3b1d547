"""Command line: ``python -m open_clip_thermal.ircap caption|report ...`` (also ``tclip-ircap``)."""
import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


class _RefuseKeyOnCommandLine(argparse.Action):
    """``--api-key``: refused, without echoing the value (argparse's own error would)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--api-key is not accepted: a key on the command line ends up in the shell "
                     "history and the process list. Export it and pass the variable's NAME with "
                     "--api-key-env (default OPENAI_API_KEY).")


def _check_env_name(name: str) -> str:
    # A value that cannot be a variable name is most likely the key itself: refuse it unseen.
    if not _ENV_NAME.fullmatch(name):
        raise ValueError("--api-key-env takes the name of an environment variable (letters, "
                         "digits, '_'), not the key; the value given is not shown")
    return name


def _add_caption_parser(sub) -> None:
    p = sub.add_parser(
        "caption", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        help="caption RGB/thermal pairs through an OpenAI-compatible VLM server",
        description="Send every pair's RGB image with the global and the fine-grained IR-Cap "
                    "prompt to a chat-completions server and append one record per pair to "
                    "--out. Re-running skips finished pairs and retries failed ones.")
    p.add_argument("--pairs", required=True,
                   help="pair listing (.jsonl/.json/.csv/.tsv) with id, image, rgb and optional "
                        "split, dataset, meta (e.g. from tools/list_pairs.py)")
    p.add_argument("--rgb-root", default=None,
                   help="folder or URL prefix that relative 'rgb' paths start from "
                        "(default: as written, relative to the working directory). When given, "
                        "'rgb' paths must stay under it: '..', symlinks, absolute paths and other "
                        "URLs leading outside are refused (the pair goes to the errors file)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="read 'rgb' paths outside --rgb-root anyway (as the converter's flag)")
    p.add_argument("--server-url", required=True,
                   help="server root with the API prefix, e.g. http://localhost:8000/v1")
    p.add_argument("--model", required=True,
                   help="model name as the server knows it, e.g. Qwen/Qwen2.5-VL-72B-Instruct")
    p.add_argument("--out", required=True, help="caption JSONL, appended to")
    p.add_argument("--errors", default=None,
                   help="JSONL of pairs that failed in this run (default: <out>.errors.jsonl)")
    p.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV,
                   help="environment variable holding the API key; unset means no auth header. "
                        "The key is never printed or written")
    p.add_argument("--api-key", nargs="?", action=_RefuseKeyOnCommandLine, help=argparse.SUPPRESS)
    p.add_argument("--prompts", default=None,
                   help="folder with global.txt / fine_grained.txt / fix_hallucination.txt "
                        "overriding the shipped prompts (missing files fall back)")
    p.add_argument("--concurrency", type=int, default=8, help="pairs in flight at once")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds one request attempt may take in all (connect, send, wait for "
                        "and receive the answer); a server trickling bytes is cut off here")
    p.add_argument("--max-response-bytes", type=int, default=8 * 1024 * 1024,
                   help="cap on one answer's body; a larger or endless answer fails the request "
                        "(not retried)")
    p.add_argument("--max-attempts", type=int, default=5,
                   help="tries per request, first included, on timeouts, 5xx, 429 and "
                        "malformed answers")
    p.add_argument("--backoff", type=float, default=1.0,
                   help="seconds before the first retry; doubles each retry, with jitter")
    p.add_argument("--backoff-max", type=float, default=60.0, help="cap on one back-off")
    p.add_argument("--max-retry-after", type=float, default=300.0,
                   help="cap on a server's Retry-After, in seconds")
    p.add_argument("--temperature", type=float, default=0.2, help="sampling temperature")
    p.add_argument("--max-tokens", type=int, default=400, help="max new tokens per caption")
    p.add_argument("--extra-body", default=None,
                   help='JSON object merged into every request, e.g. \'{"seed": 0}\'')
    p.add_argument("--fix-hallucinations", action="store_true",
                   help="re-ask with a corrective instruction when the RGB-hallucination lint "
                        "flags a caption; the re-ask is recorded in the record")
    p.add_argument("--max-fix-rounds", type=int, default=1, help="re-asks per caption at most")
    p.add_argument("--limit", type=int, default=None,
                   help="caption at most this many pending pairs (default: all)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the first request (image shortened) and the request count, "
                        "send nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report", formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False,
        help="caption-quality report (lint, coverage, CLIP-token lengths)",
        description="Lint captions for RGB words, measure attribute coverage beside the "
                    "paper's numbers and caption lengths in CLIP tokens; writes JSON + Markdown "
                    "and prints the Markdown.")
    p.add_argument("captions", help="caption JSONL written by 'caption'")
    p.add_argument("--errors", default=None,
                   help="errors file to count (default: <captions>.errors.jsonl if present)")
    p.add_argument("--json-out", default=None,
                   help="report JSON path (default: <captions>.report.json)")
    p.add_argument("--md-out", default=None,
                   help="report Markdown path (default: <captions>.report.md)")
    p.add_argument("--context-length", type=int, default=77,
                   help="CLIP text context for the share of over-long captions")
    p.add_argument("--rgb-lexicon", default=None,
                   help="JSON lexicon for the lint (default: shipped lexicons/rgb_terms.json)")
    p.add_argument("--coverage-lexicon", default=None,
                   help="JSON coverage lexicon (default: shipped lexicons/coverage.json)")


def build_parser() -> argparse.ArgumentParser:
    """The ``ircap`` argument parser with its two sub-commands."""
    parser = argparse.ArgumentParser(
        prog="python -m open_clip_thermal.ircap", allow_abbrev=False,
        description="IR-Cap: RGB-anchored dual-prompt thermal captions from a vision-language "
                    "server, and their quality report. See docs/ircap.md.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_caption_parser(sub)
    _add_report_parser(sub)
    return parser


def _shorten_data_urls(obj):
    # The dry run shows the request shape, not megabytes of base64.
    if isinstance(obj, dict):
        return {k: _shorten_data_urls(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_shorten_data_urls(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("data:") and len(obj) > 80:
        head = obj.split(",", 1)[0]
        return f"{head},<{len(obj) - len(head) - 1} base64 characters>"
    return obj


def _caption(args) -> int:
    from .client import ChatCompletionsClient, RetryPolicy, redact_url
    from .pipeline import Captioner, default_errors_path, pending_pairs, run_captioning
    from .prompts import load_prompt_set
    from .records import read_pairs

    pairs = read_pairs(args.pairs)
    prompts = load_prompt_set(args.prompts)
    try:
        extra = json.loads(args.extra_body) if args.extra_body else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--extra-body is not valid JSON ({exc}): {args.extra_body!r}") from None
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"--extra-body must be a JSON object, got {args.extra_body!r}")
    api_key = os.environ.get(_check_env_name(args.api_key_env)) or None
    retry = RetryPolicy(max_attempts=args.max_attempts, base_delay=args.backoff,
                        max_delay=args.backoff_max, max_retry_after=args.max_retry_after)
    client = ChatCompletionsClient(
        args.server_url, args.model, api_key=api_key, timeout=args.timeout, retry=retry,
        temperature=args.temperature, max_tokens=args.max_tokens, extra_body=extra,
        max_connections=args.concurrency, max_response_bytes=args.max_response_bytes)
    captioner = Captioner(client, prompts, rgb_root=args.rgb_root,
                          allow_outside_root=args.allow_outside_root,
                          fix_hallucinations=args.fix_hallucinations,
                          max_fix_rounds=args.max_fix_rounds)
    try:
        if args.dry_run:
            show = client.redact  # nothing printed here may carry the key
            pending, _, done = pending_pairs(pairs, args.out, args.limit)
            print(show(f"POST {redact_url(client.endpoint)}"))
            print(f"Authorization: {'Bearer ***' if api_key else '(none; $' + args.api_key_env + ' unset)'}")
            print(f"prompts: {json.dumps(prompts.versions())}")
            print(f"pairs: {len(pairs)}, already captioned: {done}, to caption: {len(pending)}, "
                  f"requests: {2 * len(pending)} without retries or re-asks")
            if pending:
                body = captioner.first_request(pending[0])
                print(show(f"first request (pair {pending[0]['id']!r}, global prompt):"))
                print(show(json.dumps(_shorten_data_urls(body), indent=2, ensure_ascii=False)))
            return 0
        errors_path = args.errors or default_errors_path(args.out)
        summary = run_captioning(pairs, captioner, args.out, errors_path,
                                 concurrency=args.concurrency, limit=args.limit,
                                 progress=not args.no_progress)
    finally:
        client.close()
    print(client.redact(json.dumps(summary.as_dict())), file=sys.stderr)
    if summary.auth_error is not None:
        print(client.redact(
            f"error: authentication failed: the server answered {summary.auth_error}. Stopped: "
            f"{summary.requests_sent} request{'s' if summary.requests_sent != 1 else ''} sent, "
            f"{summary.not_sent} pair{'s' if summary.not_sent != 1 else ''} not sent (a re-run "
            f"tries them). Check ${args.api_key_env} (--api-key-env)."), file=sys.stderr)
        return 2
    if summary.interrupted:
        return 130
    return 0 if summary.failed == 0 else 1


def _report(args) -> int:
    from .quality import CoverageLexicon, RGBHallucinationLint
    from .report import build_report, render_markdown, write_report
    from .pipeline import default_errors_path

    captions = Path(args.captions)
    stem = captions.name[:-len(".jsonl")] if captions.name.endswith(".jsonl") else captions.name
    errors = args.errors or default_errors_path(captions)
    report = build_report(captions, errors_path=errors, context_length=args.context_length,
                          lint=RGBHallucinationLint(args.rgb_lexicon),
                          lexicon=CoverageLexicon(args.coverage_lexicon))
    json_out = args.json_out or captions.with_name(stem + ".report.json")
    md_out = args.md_out or captions.with_name(stem + ".report.md")
    write_report(report, json_out, md_out)
    print(render_markdown(report))
    print(f"wrote {json_out} and {md_out}", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the IR-Cap command line.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        Exit status: 0 success; 1 some pairs failed (see the errors file); 2 bad input or
        flags, or the server rejected the API key (401/403; the run stops there); 130
        interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "caption":
            return _caption(args)
        return _report(args)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input files or flags: one readable line instead of a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
